"""Lua scripts live as ``.lua`` files loaded by one module, with other modules' field names passed in
(issue 17, item 3)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from fluxstream.core import lua
from fluxstream.indexer.postings import CHUNK_FIELDS, SEQ_FIELD, STATS_FIELDS
from fluxstream.indexer.redis_plan import Plan, PlanRunner

PACKAGE = Path(__file__).resolve().parent.parent / "fluxstream"


def test_every_script_is_a_file_the_loader_names() -> None:
    shipped = {p.name.removesuffix(".lua") for p in files("fluxstream.core.lua").iterdir() if p.name.endswith(".lua")}
    assert shipped == set(lua.NAMES)
    for name in lua.NAMES:
        assert lua.source(name).startswith("--"), f"{name}.lua has no header saying its KEYS and ARGV"


def test_no_python_module_carries_or_registers_a_script() -> None:
    """One loader: no Lua text in Python sources, no ``register_script`` outside ``core.lua``."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.parent.name != "lua" and "register_script(" in text:
            offenders.append(f"{path}: register_script")
        if re.search(r"redis\.call\(", text):
            offenders.append(f"{path}: Lua text")
    assert not offenders


def test_scripts_do_not_name_the_postings_fields() -> None:
    """The postings' field names come in as arguments from ``indexer.postings``, which defines them."""
    for name in lua.NAMES:
        quoted = set(re.findall(r"'([a-z_]+)'", lua.source(name)))
        assert not quoted & {*STATS_FIELDS, SEQ_FIELD, *CHUNK_FIELDS}, (name, quoted)


async def test_every_script_loads(redis_client: aioredis.Redis) -> None:
    for name in lua.NAMES:
        sha = await redis_client.script_load(lua.source(name))
        assert (await redis_client.script_exists(sha)) == [True]


async def test_exact_lookup_reads_the_fields_it_is_given(redis_client: aioredis.Redis, collection: str) -> None:
    tag = f"{{{collection}}}"
    await redis_client.set(f"t:{tag}:x", "e1")
    await redis_client.hset(f"t:{tag}:e:e1", mapping={"query": "q", "retrieval": "{}", "terms": '["w"]',
                                                      "hits": orjson.dumps(["c1"])})
    await redis_client.hset(f"t:{tag}:stamps", "w", 7)
    await redis_client.hset(f"t:{tag}:meta", mapping={"alpha": 1, "beta": 2, "counter": 3})
    await redis_client.hset(f"t:{tag}:chunk:c1", mapping={"body": "text", "other": "x"})
    lookup = lua.register(redis_client, "cache_exact_lookup")
    found = await lookup(keys=[f"t:{tag}:x", f"t:{tag}:lru"],
                         args=[f"t:{tag}:e:", f"t:{tag}:stamps", 100, f"t:{tag}:meta", f"t:{tag}:chunk:",
                               3, "alpha", "beta", "counter", "body"])
    entry_id, query, _, _, _, stamps, meta, answered, records = found
    assert (entry_id, query, stamps) == (b"e1", b"q", [b"7"])
    assert meta == [b"1", b"2", b"3"]
    assert (answered, records) == (b'["c1"]', [[b"text"]])
    assert await redis_client.zscore(f"t:{tag}:lru", "e1") == 100


async def test_stamps_bump_the_counter_field_they_are_given(redis_client: aioredis.Redis, collection: str) -> None:
    plan = Plan()
    plan.stamp_fields(f"t:{{{collection}}}:stamps", f"t:{{{collection}}}:meta", "counter", ["w", "v"])
    assert await PlanRunner(redis_client).run(plan) is None
    assert await redis_client.hgetall(f"t:{{{collection}}}:meta") == {b"counter": b"1"}
    assert await redis_client.hgetall(f"t:{{{collection}}}:stamps") == {b"w": b"1", b"v": b"1"}
