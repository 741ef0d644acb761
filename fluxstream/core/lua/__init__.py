"""The Lua scripts fluxstream runs in Redis: one ``.lua`` file each, next to this loader.

A script is how a multi-key change stays atomic (every write of the index goes through the
compare-and-set ``apply_plan``). Each file's header says what its KEYS and ARGV are; names of
another module's hash fields (the postings' statistics, the chunk records) come in as ARGV from
the module that defines them, never written into a script. Keys come from ``core.keyspace``.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal, get_args

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

ScriptName = Literal[
    "apply_plan",  # indexer.redis_plan: checks, then the writes of a plan (postings batches, cache entries)
    "raise_field",  # indexer.redis_plan: a monotonic hash-field watermark (truncation floors)
    "hmget_each",  # indexer.postings: HMGET the same fields of many keys in one command
    "raise_applied",  # indexer.positions: the BM25 stage's handled offsets, per Kafka cluster
    "clear_pending",  # indexer.positions: drop the vector-pending entries handled jobs clear
    "begin_rebuild",  # indexer.generations: register the next generation as building
    "switch_generation",  # indexer.generations: serve the built generation
    "cache_exact_lookup",  # query.cache: an exact hit with everything its replay reads, one snapshot
    "delete_if_equal",  # query.cache: drop an exact key only while it still names the entry
]
NAMES: tuple[ScriptName, ...] = get_args(ScriptName)


@cache
def source(name: ScriptName) -> str:
    """The text of script ``name`` (shipped as package data)."""
    return files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(redis: aioredis.Redis, name: ScriptName) -> AsyncScript:
    """Script ``name`` bound to ``redis`` (EVALSHA, loading it on a server that lacks it)."""
    return redis.register_script(source(name))
