"""Semantic cache of searches in Redis, kept exact by index-update events.

What is cached is a search's *retrieval* (the query terms' posting lists and the vector
candidates, see ``query.search.Retrieval``), not its response: a hit replays it with the
current collection statistics and chunk records, so scores and order equal a fresh search
even after unrelated documents changed N, df or avgdl. An entry becomes wrong only when a
change touches one of its query terms, changes a document its answer depends on, or brings
a chunk at least as close to the query as its threshold. Every hit is validated against the
term change counters and the vector-change log before it is served (``invalid_because``);
``streams.invalidation`` also deletes such entries proactively (see docs/cache.md).

Key layout (``{c}`` = collection hash tag, shared with the index keys so one script can
check the collection's change sequence and write the entry atomically):

``fxc:{c}:e:<id>``          hash   entry: params, query, exact key, embedding, retrieval, seq, threshold
``fxc:{c}:x:<digest>``      string exact key (params + what the retrievers read of the query) -> id
``fxc:{c}:l:<p>:<band>:<sig>`` set  LSH buckets (random-hyperplane signatures) -> ids, per parameter set
``fxc:{c}:t:<term>``        set    ids of entries whose query has the term
``fxc:{c}:d:<doc_id>``      set    ids of entries whose vector candidates include the document
``fxc:{c}:lru``             zset   id -> last use (size bound, least recently used evicted)
``fxc:{c}:new``             stream ids of entries with vector candidates (the invalidator's mirror feed)
``fx:cache:stats``          hash   hits, semantic_hits, misses, stored, refused, invalidations
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fluxstream.core import keyspace, lua
from fluxstream.indexer.postings import CHUNK_FIELDS, SEQ_FIELD, STATS_FIELDS, PostingsStore, decode_chunk, decode_stats
from fluxstream.indexer.redis_plan import Plan, PlanRunner
from fluxstream.indexer.vector_store import VectorHit
from fluxstream.query.search import Retrieval
from fluxstream.schemas.api import SearchRequest, SearchResponse

SIMILARITY_SLACK = 1e-5  # float32 rounding between stored candidate scores and recomputed similarities
_META_FIELDS = (*STATS_FIELDS, SEQ_FIELD)  # what an exact lookup reads of the collection's meta hash
_PARAM_FIELDS = {"collection", "k", "mode", "fusion", "rrf_k", "weights", "filters", "ef_search"}


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
    kind: str  # "exact" | "semantic"
    entry_id: str
    query: str
    similarity: float
    retrieval: Retrieval


@dataclass(frozen=True)
class Lookup:
    hit: CacheHit | None
    query_vector: np.ndarray | None  # computed for the semantic lookup; the search reuses it


def params_digest(req: SearchRequest) -> str:
    """Everything but the query text that shapes a result: k, mode, fusion, weights, filters.

    Encoded so that values a retriever tells apart never share a digest: the standard library's JSON
    keeps NaN and infinities apart from null (orjson writes all three as null, which let a NaN
    filter's answer serve a null filter) and writes integers of any size.
    """
    params = json.dumps(req.model_dump(include=_PARAM_FIELDS), sort_keys=True, allow_nan=True)
    return hashlib.blake2b(params.encode(), digest_size=12).hexdigest()


class LSH:
    """Random-hyperplane signatures: vectors within a small angle share a band with high probability."""

    def __init__(self, dimensions: int, bands: int, bits: int, seed: int = 20261122) -> None:
        self.bands, self.bits = bands, bits
        self.planes = np.random.default_rng(seed).standard_normal((bands * bits, dimensions)).astype(np.float32)
        self.weights = 1 << np.arange(bits, dtype=np.int64)

    def signatures(self, vector: np.ndarray) -> list[int]:
        bits = (self.planes @ vector > 0).reshape(self.bands, self.bits).astype(np.int64)
        return [int(v) for v in bits @ self.weights]


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def embedding_of(raw: bytes | None) -> np.ndarray | None:
    """An entry's stored query embedding (None for BM25-only entries)."""
    return np.frombuffer(base64.b64decode(raw), dtype=np.float32) if raw else None


def encode_retrieval(retrieval: Retrieval) -> bytes:
    hits = None if retrieval.vector_hits is None else [
        [h.chunk_id, h.doc_id, h.content_hash, h.score] for h in retrieval.vector_hits]
    return orjson.dumps({"postings": retrieval.postings, "term_versions": retrieval.term_versions,
                         "vector_hits": hits, "vector_log_position": retrieval.vector_log_position,
                         "answer_docs": retrieval.answer_docs})


def decode_retrieval(raw: bytes, query_vector: np.ndarray | None) -> Retrieval:
    data = orjson.loads(raw)
    hits = None if data["vector_hits"] is None else [VectorHit(*h) for h in data["vector_hits"]]
    return Retrieval(postings=data["postings"], term_versions=data["term_versions"], vector_hits=hits,
                     vector_log_position=data["vector_log_position"], answer_docs=data.get("answer_docs"),
                     query_vector=query_vector)


class SemanticCache:
    def __init__(self, redis: aioredis.Redis, postings: PostingsStore, dimensions: int,
                 config: CacheConfig | None = None) -> None:
        self.redis = redis
        self.postings = postings
        self.config = config or CacheConfig()
        self.lsh = LSH(dimensions, self.config.lsh_bands, self.config.lsh_bits)
        self._plans = PlanRunner(redis)
        self._exact_lookup = lua.register(redis, "cache_exact_lookup")
        self._background: set[asyncio.Task[Any]] = set()
        self._delete_if_equal = lua.register(redis, "delete_if_equal")

    # ---- keys (see fluxstream.core.keyspace) ----
    def exact_key(self, req: SearchRequest, identity: bytes) -> str:
        """The key of answers equal to ``req``'s: its parameters and ``identity``, what the mode's
        retrievers read of the query text (``Searcher.query_identity``). Only texts every retriever
        treats identically share it; the cache normalises nothing itself (docs/cache.md)."""
        digest = hashlib.blake2b(b"v2\0" + params_digest(req).encode() + b"\0" + identity, digest_size=16)
        return keyspace.cache_exact(req.collection, digest.hexdigest())

    def bucket_keys(self, req: SearchRequest, vector: np.ndarray) -> list[str]:
        return keyspace.cache_buckets(req.collection, params_digest(req), self.lsh.signatures(vector))

    # ---- lookup ----
    async def lookup(self, req: SearchRequest, identity: bytes, embed: Any) -> Lookup:
        """Exact match first (``identity``: see ``exact_key``); for vector and hybrid searches, then the
        nearest cached query above the threshold, whose own answer is served (a semantic hit)."""
        hit = await self._load_exact(req, identity)
        if hit is not None:
            return Lookup(hit, hit.retrieval.query_vector)
        if req.mode == "bm25":
            return Lookup(None, None)
        vector = (await embed([req.query]))[0]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in self.bucket_keys(req, vector):
                pipe.smembers(key)
            buckets = await pipe.execute()
        candidates = sorted({m.decode() for members in buckets for m in members})
        if not candidates:
            return Lookup(None, vector)
        async with self.redis.pipeline(transaction=False) as pipe:
            for candidate in candidates:
                pipe.hget(keyspace.cache_entry(req.collection, candidate), "embedding")
            embeddings = await pipe.execute()
        best, best_id = -1.0, None
        for candidate, raw in zip(candidates, embeddings, strict=True):
            stored = embedding_of(raw)
            if stored is not None:
                similarity = float(stored @ vector)
                if similarity > best:
                    best, best_id = similarity, candidate
        if best_id is not None and best >= self.config.threshold:
            hit = await self._load(req.collection, best_id, "semantic", best)
            if hit is not None:
                return Lookup(hit, vector)
        return Lookup(None, vector)

    async def _load_exact(self, req: SearchRequest, identity: bytes) -> CacheHit | None:
        coll = req.collection
        found = await self._exact_lookup(
            keys=[self.exact_key(req, identity), keyspace.cache_lru(coll)],
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

    async def _load(self, collection: str, entry_id: str, kind: str, similarity: float) -> CacheHit | None:
        fields = await self.redis.hmget(keyspace.cache_entry(collection, entry_id), "query", "retrieval", "embedding",
                                        "threshold")
        if fields[1] is None:
            return None  # invalidated or expired meanwhile
        await self.redis.zadd(keyspace.cache_lru(collection), {entry_id: time.time()})
        return await self._validated(collection, entry_id, kind, similarity, fields[0],
                                     decode_retrieval(fields[1], embedding_of(fields[2])), float(fields[3] or -1.0))

    async def _validated(self, collection: str, entry_id: str, kind: str, similarity: float, query: bytes,
                         retrieval: Retrieval, threshold: float,
                         term_stamps: dict[str, int] | None = None) -> CacheHit | None:
        """The hit, or None after deleting the entry when a change since it was stored makes it wrong."""
        reason = await self.invalid_because(collection, retrieval, threshold, term_stamps)
        if reason is not None:
            await self.delete(collection, [entry_id], count_as=f"invalid_on_read_{reason}")
            return None
        return CacheHit(kind, entry_id, query.decode(), similarity, retrieval)

    async def invalid_because(self, collection: str, retrieval: Retrieval, threshold: float,
                              term_stamps: dict[str, int] | None = None) -> str | None:
        """Checked on every hit, so correctness never waits for the invalidation agent.

        None when valid: no write changed the postings of the query's terms since they were read,
        and no vector change since the k-NN query concerns a document the answer depends on or
        brings a chunk at least as similar as ``threshold``. Otherwise the reason. ``term_stamps``:
        the terms' current change stamps when the caller already read them.
        """
        if retrieval.term_versions:
            current = term_stamps
            if current is None:
                current = await self.postings.term_versions(collection, list(retrieval.term_versions))
            if current != retrieval.term_versions:
                return "terms"
        if retrieval.vector_hits is None:
            return None
        changes = await self.postings.vector_changes_since(collection, retrieval.vector_log_position)
        if changes is None:
            return "log_trimmed"  # cannot prove it valid
        docs = set(retrieval.answer_docs or [h.doc_id for h in retrieval.vector_hits])
        query = retrieval.query_vector
        for doc_id, raw in changes:
            if doc_id in docs:
                return "document"
            if raw and query is not None:
                chunks = np.frombuffer(raw, dtype=np.float32).reshape(-1, query.shape[0])
                if float((chunks @ query).max()) >= threshold - SIMILARITY_SLACK:
                    return "similar_chunk"
        return None

    # ---- store ----
    @staticmethod
    def answer_docs(req: SearchRequest, retrieval: Retrieval, response: SearchResponse) -> list[str]:
        """Documents whose vector change could alter the answer by themselves (not by similarity).

        Vector mode: the returned ones (a candidate below the k-th can only matter by rising above
        it, which the similarity rule catches). Hybrid: every candidate, since fusion uses all ranks.
        """
        if req.mode == "vector" and len(response.hits) == req.k:
            return sorted({h.doc_id for h in response.hits})
        return sorted({h.doc_id for h in retrieval.vector_hits or []})

    @staticmethod
    def threshold(req: SearchRequest, retrieval: Retrieval, response: SearchResponse, pool: int) -> float:
        """The similarity from which a new chunk could change this answer.

        Vector mode returns the best k, so a chunk must beat the k-th hit. Hybrid fusion uses the
        ranks of every vector candidate, so a chunk matters once it would enter the candidates;
        with fewer candidates than the pool (a small collection), any chunk would.
        """
        if req.mode == "vector" and len(response.hits) == req.k:
            return min(h.vector.score for h in response.hits if h.vector is not None)
        hits = retrieval.vector_hits or []
        return min(h.score for h in hits) if len(hits) >= pool else -1.0

    async def store(self, req: SearchRequest, identity: bytes, retrieval: Retrieval, response: SearchResponse,
                    pool: int) -> bool:
        """Store a retrieval under ``req``'s exact key (see ``exact_key``), tagged with the index positions
        it was read at (term versions, vector log).

        An entry computed from a state that a change has already moved past is stored too, but
        ``still_valid`` refuses it on first use, so it can never be served.
        """
        size = sum(len(p) for p in (retrieval.postings or {}).values()) + len(retrieval.vector_hits or [])
        if size > self.config.max_postings:
            return False
        coll, ttl = req.collection, self.config.ttl_seconds
        entry_id = uuid.uuid4().hex
        entry_key, exact_key = keyspace.cache_entry(coll, entry_id), self.exact_key(req, identity)
        plan = Plan()
        retrieval.answer_docs = self.answer_docs(req, retrieval, response)
        vector = retrieval.query_vector if retrieval.vector_hits is not None else None
        plan.op("HSET", entry_key, "query", req.query, "exact_key", exact_key,
                "retrieval", encode_retrieval(retrieval).decode(),
                "terms", orjson.dumps(list(retrieval.term_versions or {})).decode(),
                "hits", orjson.dumps([h.chunk_id for h in response.hits]).decode(),
                "embedding", "" if vector is None else _b64(vector),
                "threshold", self.threshold(req, retrieval, response, pool) if vector is not None else "")
        plan.op("EXPIRE", entry_key, ttl)
        plan.op("SET", exact_key, entry_id, "EX", ttl)
        index_keys = [keyspace.cache_term(coll, t) for t in (retrieval.postings or {})]
        index_keys += [keyspace.cache_doc(coll, d) for d in retrieval.answer_docs]
        if vector is not None:
            index_keys += self.bucket_keys(req, vector)
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
            oldest = await self.redis.zpopmin(keyspace.cache_lru(collection), extra)
            await self.delete(collection, [m.decode() for m, _ in oldest], count_as="evicted")

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
        raw = {k.decode(): int(v) for k, v in (await self.redis.hgetall(keyspace.CACHE_STATS)).items()}
        hits = raw.get("hits", 0) + raw.get("semantic_hits", 0)
        lookups = hits + raw.get("misses", 0)
        return {**raw, **{k: raw.get(k, 0) for k in ("hits", "semantic_hits", "misses", "stored",
                                                     "invalidations", "evicted")},
                "hit_rate": round(hits / lookups, 4) if lookups else 0.0}
