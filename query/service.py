"""The HTTP query service (FastAPI): search, document lookup, health, readiness and metrics.

Every error body has the shape of ``schemas.api.ErrorResponse`` so clients can
branch on ``error`` without parsing messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluxstream import metrics
from fluxstream.logging import get_logger
from fluxstream.settings import Settings
from fluxstream.wiring import build_tokenizer, check_dependencies, open_embedder, open_redis
from indexer.bm25 import BM25Params
from indexer.generations import GenerationRegistry
from indexer.positions import Positions
from indexer.postings import PostingsStore
from indexer.vector_store import VectorStore
from query.cache import CacheConfig, SemanticCache
from query.cached_search import CachedSearcher
from query.kafka_requests import SearchRequestServer
from query.search import SearchDefaults, Searcher
from schemas.api import (
    BatchSearchRequest,
    BatchSearchResponse,
    ChunkView,
    DocumentResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)

log = get_logger("fluxstream.query")


def error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


class QueryState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis | None = None
        self.vectors: VectorStore | None = None
        self.searcher: Searcher | None = None
        self.positions: Positions | None = None
        self.cache: SemanticCache | None = None
        self.cached: CachedSearcher | None = None
        self.generations: GenerationRegistry | None = None

    async def open(self) -> None:
        s = self.settings
        embedder = await open_embedder(s)
        await embedder.embed(["warm up"])  # load the model now, not on the first request
        self.redis = open_redis(s.redis_url)
        self.vectors = await VectorStore.connect(s.database_url, dimensions=embedder.dimensions,
                                                 model_id=embedder.model_id)
        postings = PostingsStore(self.redis)
        self.generations = GenerationRegistry(self.redis)
        self.positions = Positions(self.redis, postings)
        self.searcher = Searcher(
            postings, self.vectors, embedder, build_tokenizer(s),
            BM25Params(s.bm25_k1, s.bm25_b),
            SearchDefaults(s.rrf_k, s.weight_bm25, s.weight_vector, s.candidate_pool, s.hnsw()[1]),
        )
        if s.cache_enabled:
            config = CacheConfig(threshold=s.cache_threshold, ttl_seconds=s.cache_ttl_seconds,
                                 max_entries=s.cache_max_entries)
            self.cache = SemanticCache(self.redis, postings, embedder.dimensions, config)
        self.cached = CachedSearcher(self.searcher, self.cache)

    async def close(self) -> None:
        if self.vectors is not None:
            await self.vectors.close()
        if self.redis is not None:
            await self.redis.aclose()


async def wait_for_position(positions: Positions, req: SearchRequest, timeout: float) -> bool:
    """Poll until the stages this mode reads have applied ``req.min_position`` (or time runs out)."""
    assert req.min_position is not None
    deadline = time.monotonic() + timeout
    vectors = req.mode != "bm25"
    while not await positions.reached(req.collection, req.min_position, vectors=vectors):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def current_position(positions: Positions, req: SearchRequest) -> dict[str, Any]:
    assert req.min_position is not None
    token = req.min_position
    return {"topic": token.topic, "partition": token.partition,
            "bm25_applied_offset": await positions.bm25_offset(token.topic, token.partition),
            "oldest_pending_vectors_offset": await positions.oldest_pending(req.collection, token.topic,
                                                                            token.partition)}


def create_app(settings: Settings) -> FastAPI:
    state = QueryState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        requests = SearchRequestServer(settings, search_or_error) if settings.kafka_url else None
        if requests is not None:
            await requests.start()
        log.info("query_service_ready", port=settings.http_port, topic_requests=requests is not None)
        yield
        if requests is not None:
            await requests.stop()
        await state.close()

    app = FastAPI(title="fluxstream query service", version="1", lifespan=lifespan,
                  responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return error(422, "invalid_request", "the request body or parameters are invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RedisError)
    @app.exception_handler(OSError)
    async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency_unavailable", error=repr(exc))
        return error(503, "unavailable", "a backing store is unavailable; retry later")

    async def position_problem(req: SearchRequest) -> ErrorResponse | None:
        """None once ``req.min_position`` is applied (or absent); the error if not within the timeout."""
        if req.min_position is None:
            return None
        assert state.positions is not None
        timeout_ms = req.wait_timeout_ms if req.wait_timeout_ms is not None else settings.min_position_timeout_ms
        if await wait_for_position(state.positions, req, timeout_ms / 1000):
            return None
        metrics.SEARCHES.labels(req.mode, "position_not_reached").inc()
        message = f"the index has not applied {req.min_position.model_dump()} within {timeout_ms} ms"
        return ErrorResponse(error="position_not_reached", message=message,
                             details=[await current_position(state.positions, req)])

    async def on_serving_generation(req: SearchRequest) -> tuple[SearchRequest, int]:
        """The request aimed at the index its collection serves now (see indexer.generations)."""
        assert state.generations is not None
        index, generation = await state.generations.serving_index(req.collection)
        return req.model_copy(update={"collection": index}), generation

    def as_asked(req: SearchRequest, response: SearchResponse, generation: int) -> SearchResponse:
        return response.model_copy(update={"collection": req.collection, "generation": generation})

    async def search_or_error(req: SearchRequest) -> SearchResponse | ErrorResponse:
        """The response, or the error (HTTP answers it with 409; topic requests get it as the reply)."""
        assert state.cached is not None
        routed, generation = await on_serving_generation(req)
        problem = await position_problem(routed)
        if problem is not None:
            return problem
        return as_asked(req, await state.cached.search(routed), generation)

    @app.post("/v1/search", response_model=SearchResponse, responses={409: {"model": ErrorResponse}})
    async def search(req: SearchRequest) -> Any:
        started = time.perf_counter()
        result = await search_or_error(req)
        if isinstance(result, ErrorResponse):
            return JSONResponse(result.model_dump(exclude_none=True), status_code=409)
        metrics.SEARCH_SECONDS.labels(req.mode).observe(time.perf_counter() - started)
        metrics.SEARCHES.labels(req.mode, "ok").inc()
        return result

    @app.post("/v1/search/batch", response_model=BatchSearchResponse)
    async def search_batch(batch: BatchSearchRequest) -> Any:
        """Read-your-writes tokens are waited for first; then one embedding call serves every query."""
        assert state.searcher is not None
        started = time.perf_counter()
        routed = [await on_serving_generation(req) for req in batch.requests]
        for req, _ in routed:
            if (problem := await position_problem(req)) is not None:
                return JSONResponse(problem.model_dump(exclude_none=True), status_code=409)
        found = await state.searcher.search_many([req for req, _ in routed])
        responses = [as_asked(req, response, generation)
                     for req, response, (_, generation) in zip(batch.requests, found, routed, strict=True)]
        for req in batch.requests:
            metrics.SEARCHES.labels(req.mode, "ok").inc()
        strategies = [f"{r.mode}/{r.fusion}" if r.mode == "hybrid" else r.mode for r in batch.requests]
        return BatchSearchResponse(responses=responses, strategies=strategies,
                                   timings_ms={"total": round((time.perf_counter() - started) * 1000, 3)})

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentResponse)
    async def get_document(doc_id: str, collection: str = Query("default", max_length=64)) -> Any:
        assert state.searcher is not None and state.vectors is not None and state.generations is not None
        postings = state.searcher.postings
        asked = collection
        collection, _ = await state.generations.serving_index(asked)
        doc = await postings.get_document(collection, doc_id)
        if doc.version is None:
            return error(404, "not_found", f"document {doc_id!r} is not in collection {asked!r}")
        records = await postings.fetch_chunks(collection, [c.chunk_id for c in doc.chunks])
        embedded = await state.vectors.document_hashes(collection, doc_id)
        chunks = [
            ChunkView(chunk_id=c.chunk_id, chunk_no=c.chunk_no, text=r.text if r else "",
                      content_hash=c.content_hash, has_vector=embedded.get(c.chunk_id) == c.content_hash)
            for c, r in zip(doc.chunks, records, strict=True)
        ]
        return DocumentResponse(doc_id=doc_id, collection=asked, version=doc.version, deleted=doc.deleted,
                                title=doc.title, metadata=doc.metadata, chunks=chunks)

    @app.get("/v1/cache/stats")
    async def cache_stats() -> dict[str, Any]:
        if state.cache is None:
            return {"enabled": False}
        return {"enabled": True, **await state.cache.stats()}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = {"redis": False, "postgres": False}
        if state.redis is not None and state.vectors is not None:
            checks = await check_dependencies(state.redis, state.vectors)
        ready = all(checks.values())
        metrics.READY.set(int(ready))
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
