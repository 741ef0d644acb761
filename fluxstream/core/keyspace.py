"""Every Redis key fluxstream reads or writes, built in one place.

Data of one index (a collection generation, see ``indexer.generations``) carries the index name
as a Redis-Cluster hash tag ``{<index>}``, so one collection's keys share a slot and one Lua
script may touch them all (postings and cache entries alike: the cache's exact lookup reads the
postings' statistics and chunk records in the same script). Index names cannot hold ``}``
(``schemas.api.CollectionName``); document ids and terms can, which is why patterns below match
on the tag, never on what follows it.

The index's BM25 data (``indexer.postings``), ``{c}`` = the index:

``fx:{c}:meta``                      hash   chunks, total_len, docs, seq, truncated:<table>
``fx:{c}:p:<term>``                  hash   chunk_id -> dl * 2**16 + tf
``fx:{c}:doc:<doc_id>``              hash   the document's record
``fx:{c}:chunk:<chunk_id>``          hash   the chunk's record
``fx:{c}:termver``                   hash   term -> ``seq`` after the last write that changed it
``fx:{c}:vlog``                      stream vector-stage changes (doc, emb), for cache validation
``fx:{c}:pending:<topic>:<p>``       zset   doc_id -> lowest offset whose vectors are not visible
``fx:{c}:pending-entries:<topic>:<p>`` hash doc_id -> ``offset:clear_at `` entries (indexer.positions)

Its semantic cache (``query.cache``):

``fxc:{c}:e:<id>``                   hash   entry
``fxc:{c}:x:<digest>``               string exact key -> id
``fxc:{c}:l:<params>:<band>:<sig>``  set    LSH bucket -> ids
``fxc:{c}:t:<term>``                 set    ids of entries whose query has the term
``fxc:{c}:d:<doc_id>``               set    ids of entries depending on the document
``fxc:{c}:lru``                      zset   id -> last use
``fxc:{c}:new``                      stream ids of entries with vector candidates

Global keys:

``fx:collections``                   set    index names ever written (or being rebuilt)
``fx:applied``                       hash   ``<topic>:<partition>`` -> handled offset, ``cluster``
``fx:generations:<collection>``      hash   the collection's generation alias
``fx:generations-dropped``           zset   index name -> drop time
``fx:cache:stats``                   hash   cache counters

Key strings are part of the stored data: changing one orphans what a running deployment holds
(``tests/test_keyspace.py`` pins every layout).
"""

from __future__ import annotations

import re

PREFIX = "fx"
CACHE_PREFIX = "fxc"

COLLECTIONS = f"{PREFIX}:collections"
APPLIED = f"{PREFIX}:applied"
GENERATIONS_PREFIX = f"{PREFIX}:generations:"
GENERATIONS_DROPPED = f"{PREFIX}:generations-dropped"
CACHE_STATS = f"{PREFIX}:cache:stats"


# ---- an index's BM25 data ----
def index_base(index: str) -> str:
    """``fx:{<index>}``: what every key of the index's BM25 data starts with."""
    return f"{PREFIX}:{{{index}}}"


def meta(index: str) -> str:
    return f"{index_base(index)}:meta"


def posting(index: str, term: str) -> str:
    """The posting list of ``term`` (``posting(index, "")`` is the prefix of them all)."""
    return f"{index_base(index)}:p:{term}"


def document(index: str, doc_id: str) -> str:
    return f"{index_base(index)}:doc:{doc_id}"


def chunk(index: str, chunk_id: str) -> str:
    return f"{index_base(index)}:chunk:{chunk_id}"


def term_versions(index: str) -> str:
    return f"{index_base(index)}:termver"


def vector_log(index: str) -> str:
    return f"{index_base(index)}:vlog"


def pending_vectors(index: str, topic: str, partition: int) -> str:
    return f"{index_base(index)}:pending:{topic}:{partition}"


def pending_entries(index: str, topic: str, partition: int) -> str:
    return f"{index_base(index)}:pending-entries:{topic}:{partition}"


PENDING_SCAN = f"{PREFIX}:*:pending*"  # candidates; ``PENDING_KEY`` tells real pending keys apart
PENDING_KEY = re.compile((re.escape(PREFIX) + r":\{[^}]+\}:pending(-entries)?:").encode())


# ---- an index's semantic cache ----
def cache_base(index: str) -> str:
    """``fxc:{<index>}``: what every key of the index's cache starts with."""
    return f"{CACHE_PREFIX}:{{{index}}}"


def cache_entry(index: str, entry_id: str) -> str:
    return f"{cache_base(index)}:e:{entry_id}"


def cache_exact(index: str, digest: str) -> str:
    return f"{cache_base(index)}:x:{digest}"


def cache_buckets(index: str, params: str, signatures: list[int]) -> list[str]:
    """The LSH bucket of each band's signature, for one parameter digest."""
    return [f"{cache_base(index)}:l:{params}:{band}:{sig}" for band, sig in enumerate(signatures)]


def cache_term(index: str, term: str) -> str:
    return f"{cache_base(index)}:t:{term}"


def cache_doc(index: str, doc_id: str) -> str:
    return f"{cache_base(index)}:d:{doc_id}"


def cache_lru(index: str) -> str:
    return f"{cache_base(index)}:lru"


def cache_new(index: str) -> str:
    return f"{cache_base(index)}:new"


# ---- whole indexes, globals ----
def index_prefix(index: str) -> str:
    """What every key of the index's BM25 data starts with (to drop them all)."""
    return f"{index_base(index)}:"


def cache_prefix(index: str) -> str:
    """What every key of the index's cache starts with (to clear it)."""
    return f"{cache_base(index)}:"


def index_prefixes(index: str) -> tuple[str, str]:
    """The prefixes of every key of ``index``: its BM25 data, its cache."""
    return index_prefix(index), cache_prefix(index)


def generation_registry(collection: str) -> str:
    return GENERATIONS_PREFIX + collection


def scan_pattern(prefix: str) -> str:
    """SCAN pattern for keys starting with ``prefix`` (hash-tag braces escaped)."""
    return prefix.replace("{", "\\{").replace("}", "\\}") + "*"
