"""Search over the live index: BM25 from Redis, k-NN from pgvector, and their fusion.

Vector hits are checked against the chunk records in Redis (the source of truth
for what a document currently is): a vector whose chunk was deleted or whose text
changed since it was embedded is dropped, so hybrid results never show stale text
while the vector stage catches up.

While PostgreSQL is unreachable, hybrid searches answer from BM25 alone and say so
(``degraded: ["vectors"]``) and vector searches fail at once with ``StoreUnavailable``.
The reverse is not offered: without Redis there is no serving generation, no staleness
check and no chunk record (title) for a vector hit, so every mode needs Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fluxstream.core.logging import get_logger
from fluxstream.indexer.bm25 import BM25Params, score_postings
from fluxstream.indexer.embedders.base import Embedder, model_input
from fluxstream.indexer.enrichment import PREFIX as ENRICHMENT_PREFIX
from fluxstream.indexer.generations import IndexTarget
from fluxstream.indexer.postings import CollectionStats, PostingsStore, StoredChunk
from fluxstream.indexer.tokenizer import Tokenizer
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.query.availability import Availability, StoreUnavailable
from fluxstream.query.cache.retrieval import Retrieval
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.query.filters import matches
from fluxstream.query.fusion import rrf, score_fusion
from fluxstream.query.strategy import AutoStrategy
from fluxstream.schemas.api import RetrieverScore, SearchHit, SearchRequest, SearchResponse

SPARE_HITS = 5  # extra fused candidates fetched in case a chunk was deleted meanwhile
T = TypeVar("T")

log = get_logger("fluxstream.search")


@dataclass(frozen=True)
class SearchDefaults:
    rrf_k: int = 40
    weight_bm25: float = 0.3
    weight_vector: float = 0.7
    candidate_pool: int = 100
    ef_search: int = 100


class CollectionNotFound(LookupError):
    """The searched index has never been written (``fx:collections``): a 404, not an empty answer,
    so a misspelt collection name is not mistaken for "no match" (as Elasticsearch's missing index)."""

    def __init__(self, collection: str) -> None:
        super().__init__(f"collection {collection!r} does not exist (no document was ever indexed into it)")
        self.collection = collection


class Timer:
    """Collects named stage durations in milliseconds."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def mark(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round((now - since) * 1000, 3)
        return now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round((time.perf_counter() - self._start) * 1000, 3)
        return self.timings


async def _all_of(named: dict[str, Awaitable[T]]) -> dict[str, T]:
    """Await several retrievers at once (hybrid: the query embedding and the HNSW search overlap the
    BM25 round trip and scoring); if one fails, the others are cancelled and the error goes on."""
    if len(named) == 1:
        ((name, only),) = named.items()
        return {name: await only}
    tasks = [asyncio.ensure_future(awaitable) for awaitable in named.values()]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return dict(zip(named, results, strict=True))


class Searcher:
    def __init__(self, postings: PostingsStore, vectors: VectorStore, embedder: Embedder, tokenizer: Tokenizer,
                 bm25: BM25Params | None = None, defaults: SearchDefaults | None = None) -> None:
        self.postings = postings
        self.vector_log = VectorLog(postings.redis)  # its head is what cached vector candidates are valid from
        self.vectors = vectors
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.bm25 = bm25 or BM25Params()
        self.defaults = defaults or SearchDefaults()
        self.auto = AutoStrategy()
        self.postgres = Availability(vectors)

    async def search(self, req: SearchRequest, target: IndexTarget,
                     query_vector: np.ndarray | None = None) -> SearchResponse:
        """Run one search of ``target``; ``query_vector`` skips embedding the query (batch search embeds
        all at once)."""
        return (await self.search_with_retrieval(req, target, query_vector))[0]

    async def search_with_retrieval(
        self, req: SearchRequest, target: IndexTarget, query_vector: np.ndarray | None = None,
        replay: Retrieval | None = None,
    ) -> tuple[SearchResponse, Retrieval]:
        """A search of ``target`` and its retriever outputs; with ``replay``, the retrievers are not asked again.

        Raises CollectionNotFound for an index never written (an emptied one answers no hits)."""
        timer = Timer()
        pool = self.pool(req)
        retrieval = Retrieval(query_vector=query_vector)
        replayed: tuple[CollectionStats, dict[str, dict[str, int]]] | None = None
        if replay is not None and replay.postings is not None:  # a cache hit: existence and stats in one trip
            stats = replay.stats or await self.postings.stats_if_exists(target.index)
            replayed = (stats, replay.postings) if stats is not None else None
            found = replayed is not None
        else:
            found = await self.postings.collection_exists(target.index)
        if not found:
            raise CollectionNotFound(target.collection)
        retrievers: dict[str, Awaitable[list[tuple[str, float]] | None]] = {}
        if req.mode in ("bm25", "hybrid"):
            retrievers["bm25"] = self._bm25(req, target.index, pool, timer, retrieval, replayed)
        if req.mode in ("vector", "hybrid"):
            retrievers["vector"] = self._vector_if_up(req, target.index, pool, timer, retrieval, replay)
        rankings = {name: ranking for name, ranking in (await _all_of(retrievers)).items() if ranking is not None}
        degraded = ["vectors"] if req.mode == "hybrid" and "vector" not in rankings else []
        started = time.perf_counter()
        strategy = None
        if req.mode == "hybrid":
            fused, strategy = self._fuse(req, rankings)
        else:
            fused = rankings[req.mode]
        started = timer.mark("fusion", started)
        # Full records (text, title, metadata) only for what is returned; a chunk deleted since the
        # retrievers ran is skipped, and the few spare candidates fill its place.
        top = fused[: req.k + SPARE_HITS]
        records = await self._records(req, target.index, [chunk_id for chunk_id, _ in top], replay)
        hits = [self._hit(chunk_id, score, rankings, record)
                for chunk_id, score in top if (record := records.get(chunk_id)) is not None][: req.k]
        timer.mark("fetch", started)
        response = self._response(req, target, hits, timer)
        return response.model_copy(update={"strategy": strategy, "degraded": degraded}), retrieval

    async def _records(self, req: SearchRequest, index: str, chunk_ids: list[str],
                       replay: Retrieval | None) -> dict[str, StoredChunk | None]:
        """Records of the ranked chunks; a cache hit brings those it answered with before, and when they
        are still the first k (the usual case) nothing is fetched."""
        known = dict(replay.records) if replay is not None and replay.records else {}
        if any(known.get(c) is None for c in chunk_ids[: req.k]):
            missing = [c for c in chunk_ids if c not in known]
            known.update(zip(missing, await self.postings.fetch_chunks(index, missing), strict=True))
        return known

    def _fuse(self, req: SearchRequest, rankings: dict[str, list[tuple[str, float]]]
              ) -> tuple[list[tuple[str, float]], str | None]:
        """The fused ranking and, for ``auto``, the strategy the query's shape chose."""
        if req.fusion == "rrf":
            return rrf(rankings, k=req.rrf_k or self.defaults.rrf_k), None
        balanced = (self.defaults.weight_bm25, self.defaults.weight_vector)
        if req.fusion == "auto":
            strategy, weights = self.auto.choose(req.query, self.tokenizer, balanced)
            return score_fusion("weighted", rankings, weights), strategy
        w = req.weights
        weights = {"bm25": w.bm25, "vector": w.vector} if w else dict(zip(("bm25", "vector"), balanced, strict=True))
        return score_fusion(req.fusion, rankings, weights), None

    def query_identity(self, req: SearchRequest) -> bytes:
        """Everything the retrievers of ``req.mode`` read from the query text, as one digest.

        Two requests with equal parameters and equal identities get the same answer, so the
        semantic cache's exact key is built on this, next to the code it describes: BM25 reads
        the tokenizer's terms (in order and with repeats, as ``score_postings`` sums them), the
        vector retriever what the embedder receives (``model_input``: the local model's token ids,
        any other model's raw text), ``auto`` fusion the query's shape. Hybrid reads all of them.
        """
        digest = hashlib.blake2b(req.mode.encode(), digest_size=16)

        def part(tag: bytes, value: bytes) -> None:
            digest.update(b"\0%s:%d:" % (tag, len(value)))
            digest.update(value)

        if req.mode in ("bm25", "hybrid"):
            part(b"terms", "\0".join(self.tokenizer.tokenize(req.query)).encode())
        if req.mode in ("vector", "hybrid"):
            part(b"model", self.embedder.model_id.encode())
            part(b"input", model_input(self.embedder, req.query))
        if req.mode == "hybrid" and req.fusion == "auto":
            part(b"shape", self.auto.choose(req.query, self.tokenizer, (0.0, 0.0))[0].encode())
        return digest.digest()

    def pool(self, req: SearchRequest) -> int:
        """Candidates asked of each retriever before filters and fusion."""
        return max(self.defaults.candidate_pool, req.k)

    async def _bm25(self, req: SearchRequest, index: str, pool: int, timer: Timer, retrieval: Retrieval,
                    replayed: tuple[CollectionStats, dict[str, dict[str, int]]] | None
                    ) -> list[tuple[str, float]]:
        """The BM25 ranking; ``replayed``: a cache hit's (current statistics, stored posting lists)."""
        started = time.perf_counter()
        terms = self.tokenizer.tokenize(req.query)
        retrieval.postings = {}
        if not terms:
            return []
        if replayed is not None:
            stats, postings = replayed
        else:
            stats, postings, retrieval.term_versions = await self.postings.postings(
                index, list(dict.fromkeys(terms)))
        retrieval.postings = postings
        scores = score_postings(terms, stats, postings, self.bm25)
        if not req.filters:
            timer.mark("bm25", started)
            return heapq.nsmallest(pool, scores.items(), key=_best_first)
        ranked = sorted(scores.items(), key=_best_first)
        started = timer.mark("bm25", started)
        # Walk the exact ranking in pages until `pool` chunks pass the filters (usually one page).
        kept: list[tuple[str, float]] = []
        for offset in range(0, len(ranked), pool):
            page = ranked[offset : offset + pool]
            facts = await self.postings.chunk_facts(index, [c for c, _ in page])
            kept += [(chunk_id, score) for (chunk_id, score), fact in zip(page, facts, strict=True)
                     if fact is not None and matches(fact.metadata, req.filters)]
            if len(kept) >= pool:
                break
        timer.mark("bm25_filter", started)
        return kept[:pool]

    async def _vector_if_up(self, req: SearchRequest, index: str, pool: int, timer: Timer, retrieval: Retrieval,
                            replay: Retrieval | None) -> list[tuple[str, float]] | None:
        """The vector ranking; None (hybrid: answer without it) or ``StoreUnavailable`` (vector mode)
        while PostgreSQL is unreachable. A cache hit replays stored vector hits: it needs no PostgreSQL."""
        vector = self._vector(req, index, pool, timer, retrieval, replay)
        if replay is not None and replay.vector_hits is not None:
            return await vector
        try:
            return await self.postgres.run(vector)
        except StoreUnavailable:
            if req.mode == "hybrid":
                return None
            raise

    async def _vector(self, req: SearchRequest, index: str, pool: int, timer: Timer, retrieval: Retrieval,
                      replay: Retrieval | None) -> list[tuple[str, float]]:
        started = time.perf_counter()
        if replay is not None and replay.vector_hits is not None:
            hits = replay.vector_hits
        else:
            if retrieval.query_vector is None:
                retrieval.query_vector = (await self.embedder.embed([req.query]))[0]
                started = timer.mark("embed_query", started)
            retrieval.vector_log_position = await self.vector_log.head(index)
            # Enrichment fields live in Redis only: they filter the candidates below, not the SQL.
            sql_filters = {k: v for k, v in req.filters.items() if not k.startswith(ENRICHMENT_PREFIX)}
            hits = await self.vectors.search(index, retrieval.query_vector, limit=pool,
                                             filters=sql_filters or None,
                                             ef_search=req.ef_search or self.defaults.ef_search)
            started = timer.mark("vector", started)
        retrieval.vector_hits = hits
        # A vector whose chunk is gone or whose text changed since it was embedded is stale: dropped.
        facts = await self.postings.chunk_facts(index, [h.chunk_id for h in hits])
        timer.mark("vector_check", started)
        return [
            (h.chunk_id, h.score) for h, fact in zip(hits, facts, strict=True)
            if fact is not None and fact.content_hash == h.content_hash and matches(fact.metadata, req.filters)
        ]

    async def search_many(self, searches: Sequence[tuple[SearchRequest, IndexTarget]],
                          concurrency: int = 8) -> list[SearchResponse]:
        """Many searches at once: one embedding call for every distinct query that needs a vector."""
        texts = list(dict.fromkeys(r.query for r, _ in searches if r.mode != "bm25"))
        vectors = dict(zip(texts, await self.embedder.embed(texts), strict=True)) if texts else {}
        gate = asyncio.Semaphore(concurrency)

        async def one(req: SearchRequest, target: IndexTarget) -> SearchResponse:
            async with gate:
                return await self.search(req, target, vectors.get(req.query))

        return list(await asyncio.gather(*(one(r, t) for r, t in searches)))

    def _hit(self, chunk_id: str, score: float, rankings: dict[str, list[tuple[str, float]]],
             record: StoredChunk) -> SearchHit:
        per_retriever = {name: _rank_of(chunk_id, ranking) for name, ranking in rankings.items()}
        return SearchHit(
            doc_id=record.doc_id, chunk_id=chunk_id, chunk_no=record.chunk_no, title=record.title,
            text=record.text, metadata=record.metadata, score=score,
            bm25=per_retriever.get("bm25"), vector=per_retriever.get("vector"),
        )

    def _response(self, req: SearchRequest, target: IndexTarget, hits: list[SearchHit],
                  timer: Timer) -> SearchResponse:
        return SearchResponse(
            query=req.query, collection=target.collection, mode=req.mode,
            fusion=req.fusion if req.mode == "hybrid" else None, hits=hits, timings_ms=timer.total(),
            generation=target.generation,
        )


def _best_first(item: tuple[str, float]) -> tuple[float, str]:
    """Highest score first; ties by id, so results are deterministic."""
    return -item[1], item[0]


def _rank_of(chunk_id: str, ranking: Sequence[tuple[str, float]]) -> RetrieverScore | None:
    for rank, (item, score) in enumerate(ranking, start=1):
        if item == chunk_id:
            return RetrieverScore(rank=rank, score=score)
    return None
