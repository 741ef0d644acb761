"""Cache entries in Redis: look up (exact, then semantic), store, evict, delete, count.

Every hit is validated (``validity``) before it is served; ``invalidation`` also deletes
entries proactively (see docs/cache.md). What an entry's keys are (``core.keyspace``):

``fxc:{c}:e:<id>``          hash   entry: query, exact key, retrieval, terms, hits, embedding, threshold
``fxc:{c}:x:<digest>``      string exact key (params + what the retrievers read of the query) -> id
``fxc:{c}:l:<p>:<band>:<sig>`` set  LSH buckets (random-hyperplane signatures) -> ids, per parameter set
``fxc:{c}:t:<term>``        set    ids of entries whose query has the term
``fxc:{c}:d:<doc_id>``      set    ids of entries whose vector candidates include the document
``fxc:{c}:lru``             zset   id -> last use (size bound, least recently used evicted)
``fxc:{c}:new``             stream ids of entries with vector candidates (the invalidator's mirror feed)
``fx:cache:stats``          hash   hits, semantic_hits, misses, stored, refused, invalidations

``{c}`` is the index's hash tag, shared with its postings, so the exact lookup's one script reads
the entry, the term stamps, the statistics and the chunk records in one snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fluxstream.core import keyspace, lua
from fluxstream.core.replies import text
from fluxstream.indexer.postings import (
    CHUNK_FIELDS,
    SEQ_FIELD,
    STATS_FIELDS,
    PostingsStore,
    decode_chunk,
    decode_stats,
    unlink_prefix,
)
from fluxstream.indexer.redis_plan import Plan, PlanRunner
from fluxstream.query.cache.entries import decode_retrieval, embedding_of, encode_embedding, encode_retrieval
from fluxstream.query.cache.keys import bucket_keys, exact_key
from fluxstream.query.cache.lsh import LSH
from fluxstream.query.cache.retrieval import Retrieval
from fluxstream.query.cache.validity import Validity, answer_docs, candidate_threshold
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.schemas.api import SearchRequest, SearchResponse

HitKind = Literal["exact", "semantic"]
_META_FIELDS = (*STATS_FIELDS, SEQ_FIELD)  # what an exact lookup reads of the collection's meta hash


@dataclass(frozen=True)
class CacheConfig:
    threshold: float = 0.95
    ttl_seconds: int = 86_400
    max_entries: int = 10_000  # per collection
    max_postings: int = 20_000  # larger retrievals are not cached
    lsh_bands: int = 16  # 16 bands of 18 bits: P(share a band | cos 0.95) = 1 - (1 - 0.9**18)**16 = 0.93
    lsh_bits: int = 18  # and about N / 2**18 unrelated entries per bucket: flat up to ~10^5-10^6 entries
    stream_maxlen: int = 100_000


@dataclass(frozen=True)
class CacheHit:
    kind: HitKind
    entry_id: str
    query: str
    similarity: float
    retrieval: Retrieval


@dataclass(frozen=True)
class Lookup:
    hit: CacheHit | None
    query_vector: np.ndarray | None  # computed for the semantic lookup; the search reuses it


async def clear_index(redis: aioredis.Redis, index: str) -> int:
    """Drop every cache key of ``index`` (entries, exact keys, buckets, sets); returns how many went."""
    return await unlink_prefix(redis, keyspace.cache_prefix(index))


class SemanticCache:
    def __init__(self, redis: aioredis.Redis, postings: PostingsStore, dimensions: int,
                 config: CacheConfig | None = None) -> None:
        self.redis = redis
        self.postings = postings
        self.config = config or CacheConfig()
        self.lsh = LSH(dimensions, self.config.lsh_bands, self.config.lsh_bits)
        self.validity = Validity(postings, VectorLog(redis))
        self._plans = PlanRunner(redis)
        self._exact_lookup = lua.register(redis, "cache_exact_lookup")
        self._background: set[asyncio.Task[Any]] = set()
        self._delete_if_equal = lua.register(redis, "delete_if_equal")

    # ---- lookup ----
    async def lookup(self, req: SearchRequest, index: str, identity: bytes, embed: Any) -> Lookup:
        """Answers cached for ``req`` on the index named ``index``: exact match first (``identity``: see
        ``exact_key``); for vector and hybrid searches, then the nearest cached query above the threshold,
        whose own answer is served (a semantic hit)."""
        hit = await self._load_exact(req, index, identity)
        if hit is not None:
            return Lookup(hit, hit.retrieval.query_vector)
        if req.mode == "bm25":
            return Lookup(None, None)
        vector = (await embed([req.query]))[0]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in bucket_keys(self.lsh, req, index, vector):
                pipe.smembers(key)
            buckets = await pipe.execute()
        candidates = sorted({m.decode() for members in buckets for m in members})
        if not candidates:
            return Lookup(None, vector)
        async with self.redis.pipeline(transaction=False) as pipe:
            for candidate in candidates:
                pipe.hget(keyspace.cache_entry(index, candidate), "embedding")
            embeddings = await pipe.execute()
        best, best_id = -1.0, None
        for candidate, raw in zip(candidates, embeddings, strict=True):
            stored = embedding_of(raw)
            if stored is not None:
                similarity = float(stored @ vector)
                if similarity > best:
                    best, best_id = similarity, candidate
        if best_id is not None and best >= self.config.threshold:
            hit = await self._load(index, best_id, "semantic", best)
            if hit is not None:
                return Lookup(hit, vector)
        return Lookup(None, vector)

    async def _load_exact(self, req: SearchRequest, coll: str, identity: bytes) -> CacheHit | None:
        found = await self._exact_lookup(
            keys=[exact_key(req, coll, identity), keyspace.cache_lru(coll)],
            args=[keyspace.cache_entry(coll, ""), keyspace.term_versions(coll), time.time(),
                  keyspace.meta(coll), keyspace.chunk(coll, ""), len(_META_FIELDS), *_META_FIELDS, *CHUNK_FIELDS])
        if not found:
            return None
        entry_id, query, raw, embedding, threshold, stamps, meta, answered, records = found
        retrieval = decode_retrieval(raw, embedding_of(embedding))
        if meta[-1] is not None:  # the collection exists (every write bumps its seq)
            retrieval.stats = decode_stats(meta[:-1])
            retrieval.records = {chunk_id: decode_chunk(chunk_id, row)
                                 for chunk_id, row in zip(orjson.loads(answered), records, strict=True)}
        terms = list(retrieval.term_versions or {})
        current = dict(zip(terms, (int(v) if v is not None else 0 for v in stamps), strict=True)) \
            if len(stamps) == len(terms) else None  # entries stored before the "terms" field: read them
        return await self._validated(coll, entry_id.decode(), "exact", 1.0, query, retrieval,
                                     float(threshold or -1.0), current)

    async def _load(self, collection: str, entry_id: str, kind: HitKind, similarity: float) -> CacheHit | None:
        fields = await self.redis.hmget(keyspace.cache_entry(collection, entry_id), "query", "retrieval", "embedding",
                                        "threshold")
        if fields[1] is None:
            return None  # invalidated or expired meanwhile
        await self.redis.zadd(keyspace.cache_lru(collection), {entry_id: time.time()})
        return await self._validated(collection, entry_id, kind, similarity, fields[0] or b"",
                                     decode_retrieval(fields[1], embedding_of(fields[2])), float(fields[3] or -1.0))

    async def _validated(self, collection: str, entry_id: str, kind: HitKind, similarity: float, query: bytes | str,
                         retrieval: Retrieval, threshold: float,
                         term_stamps: dict[str, int] | None = None) -> CacheHit | None:
        """The hit, or None after deleting the entry when a change since it was stored makes it wrong."""
        reason = await self.validity.invalid_because(collection, retrieval, threshold, term_stamps)
        if reason is not None:
            await self.delete(collection, [entry_id], count_as=f"invalid_on_read_{reason}")
            return None
        return CacheHit(kind, entry_id, text(query), similarity, retrieval)

    # ---- store ----
    async def store(self, req: SearchRequest, index: str, identity: bytes, retrieval: Retrieval,
                    response: SearchResponse, pool: int) -> bool:
        """Store a retrieval of the index named ``index`` under ``req``'s exact key (see ``exact_key``),
        tagged with the index positions it was read at (term versions, vector log).

        An entry computed from a state that a change has already moved past is stored too, but
        the validity check (``validity``) refuses it on first use, so it can never be served.
        """
        size = sum(len(p) for p in (retrieval.postings or {}).values()) + len(retrieval.vector_hits or [])
        if size > self.config.max_postings:
            return False
        coll, ttl = index, self.config.ttl_seconds
        entry_id = uuid.uuid4().hex
        entry_key, exact = keyspace.cache_entry(coll, entry_id), exact_key(req, coll, identity)
        plan = Plan()
        retrieval.answer_docs = answer_docs(req, retrieval, response)
        vector = retrieval.query_vector if retrieval.vector_hits is not None else None
        plan.op("HSET", entry_key, "query", req.query, "exact_key", exact,
                "retrieval", encode_retrieval(retrieval).decode(),
                "terms", orjson.dumps(list(retrieval.term_versions or {})).decode(),
                "hits", orjson.dumps([h.chunk_id for h in response.hits]).decode(),
                "embedding", "" if vector is None else encode_embedding(vector),
                "threshold", candidate_threshold(req, retrieval, response, pool) if vector is not None else "")
        plan.op("EXPIRE", entry_key, ttl)
        plan.op("SET", exact, entry_id, "EX", ttl)
        index_keys = [keyspace.cache_term(coll, t) for t in (retrieval.postings or {})]
        index_keys += [keyspace.cache_doc(coll, d) for d in retrieval.answer_docs]
        if vector is not None:
            index_keys += bucket_keys(self.lsh, req, coll, vector)
        for key in index_keys:
            plan.op("SADD", key, entry_id)
            plan.op("EXPIRE", key, ttl)
        plan.op("ZADD", keyspace.cache_lru(coll), time.time(), entry_id)
        if vector is not None:
            plan.op("XADD", keyspace.cache_new(coll), "MAXLEN", "~", self.config.stream_maxlen, "*", "id", entry_id)
        await self._plans.run(plan)
        self.record("stored")
        await self._evict(coll)
        return True

    async def _evict(self, collection: str) -> None:
        extra = await self.redis.zcard(keyspace.cache_lru(collection)) - self.config.max_entries
        if extra > 0:
            oldest = cast("list[tuple[bytes, float]]", await self.redis.zpopmin(keyspace.cache_lru(collection), extra))
            await self.delete(collection, [text(member) for member, _ in oldest], count_as="evicted")

    async def delete(self, collection: str, entry_ids: list[str], count_as: str = "invalidations") -> int:
        """Remove entries (their index-set memberships expire with the sets or are skipped as dangling)."""
        if not entry_ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hget(keyspace.cache_entry(collection, entry_id), "exact_key")
            exact_keys = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.delete(keyspace.cache_entry(collection, entry_id))
            removed = sum(await pipe.execute())
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, exact in zip(entry_ids, exact_keys, strict=True):
                if exact is not None:  # only if it still points here: a newer entry may own it now
                    await self._delete_if_equal(keys=[exact], args=[entry_id], client=pipe)
                pipe.zrem(keyspace.cache_lru(collection), entry_id)
            await pipe.execute()
        await self.redis.hincrby(keyspace.CACHE_STATS, count_as, removed)
        return removed

    def record(self, outcome: str) -> None:
        """Counted in the background: a statistic is not worth a round trip on the request's path."""
        task = asyncio.get_running_loop().create_task(self._count(outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count(self, outcome: str) -> None:
        with contextlib.suppress(RedisError):  # Redis down: the request reports that; one lost count is no loss
            await self.redis.hincrby(keyspace.CACHE_STATS, outcome, 1)

    async def stats(self) -> dict[str, float]:
        raw = {text(k): int(v) for k, v in (await self.redis.hgetall(keyspace.CACHE_STATS)).items()}
        hits = raw.get("hits", 0) + raw.get("semantic_hits", 0)
        lookups = hits + raw.get("misses", 0)
        return {**raw, **{k: raw.get(k, 0) for k in ("hits", "semantic_hits", "misses", "stored",
                                                     "invalidations", "evicted")},
                "hit_rate": round(hits / lookups, 4) if lookups else 0.0}
