"""The HTTP query service (FastAPI): search, document lookup, health, readiness and metrics.

Every error body has the shape of ``schemas.api.ErrorResponse`` so clients can
branch on ``error`` without parsing messages.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio as aioredis
import structlog
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg import OperationalError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluxstream import __version__
from fluxstream.core import keyspace, metrics
from fluxstream.core.kafka import cluster_id
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.indexer.bm25 import BM25Params
from fluxstream.indexer.chat import ChatError, ChatModel
from fluxstream.indexer.embedders.coalescing import CoalescingEmbedder
from fluxstream.indexer.generations import GenerationRegistry, parse_index_name
from fluxstream.indexer.positions import Positions
from fluxstream.indexer.postings import PostingsStore, unlink_prefix
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.query.answering import Answerer, TransformUnavailable
from fluxstream.query.api_docs import API_KEY, BEARER, TAGS, install_docs
from fluxstream.query.auth import ApiKeys, AuthError, Principal, RateLimiter, key_from_headers
from fluxstream.query.cache.store import CacheConfig, SemanticCache
from fluxstream.query.cached_search import CachedSearcher
from fluxstream.query.kafka_requests import SearchRequestServer
from fluxstream.query.search import CollectionNotFound, SearchDefaults, Searcher, StoreUnavailable
from fluxstream.query.usage import UsageStore
from fluxstream.schemas.api import (
    AnswerRequest,
    AnswerResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    ChunkView,
    DocumentResponse,
    ErrorResponse,
    FeedbackRequest,
    SearchRequest,
    SearchResponse,
)
from fluxstream.schemas.events import CollectionName, DocId
from fluxstream.streams.status import collection_status
from fluxstream.wiring import build_tokenizer, check_dependencies, open_embedder, open_redis

log = get_logger("fluxstream.query")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes are not logged
STORE_DOWN = (StoreUnavailable, OperationalError, RedisError, OSError)  # answered 503 "unavailable"


def error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _store_of(exc: Exception) -> str | None:
    """Which store a ``STORE_DOWN`` error is about (None: an OS-level error of unknown origin)."""
    if isinstance(exc, StoreUnavailable):
        return exc.store
    if isinstance(exc, RedisError):
        return "redis"
    return "postgres" if isinstance(exc, OperationalError) else None


def collection_not_found(collection: str) -> ErrorResponse:
    return ErrorResponse(error="collection_not_found", message=(
        f"collection {collection!r} does not exist: no document was ever indexed into it "
        "(check the name; a collection is created by its first document)"), details=[{"collection": collection}])


class Gatekeeper:
    """API-key scopes and per-client rate limits, shared by HTTP routes and topic requests."""

    def __init__(self, settings: Settings) -> None:
        self.keys = ApiKeys.configured(settings)
        self.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)

    def admit(self, key: str | None, scope: str, client: str, cost: int = 1) -> Principal:
        principal = self.keys.authenticate(key, scope)
        wait = self.limiter.check(principal.name if self.keys.enabled else client, cost)
        if wait > 0:
            metrics.RATE_LIMITED.inc()
            raise RateLimited(wait)
        return principal

    def for_topic(self, key: str | None, cost: int) -> ErrorResponse | None:
        try:
            self.admit(key, "search", "topic", cost)
        except AuthError as exc:
            return ErrorResponse(error=exc.code, message=exc.message)
        except RateLimited as exc:
            return ErrorResponse(error="rate_limited", message=f"too many requests; retry in {exc.wait:.1f} s")
        return None


class RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:.2f} s")
        self.wait = wait


def _scoped(scope: str) -> Any:
    """A dependency admitting requests whose API key has ``scope`` (and is within its rate)."""

    async def admit(request: Request,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
                    x_api_key: Annotated[str | None, Security(API_KEY)] = None) -> Principal:
        # ``bearer`` declares the scheme for the OpenAPI document; the header itself is parsed by query.auth.
        gate: Gatekeeper = request.app.state.gate
        client = request.client.host if request.client else "unknown"
        principal = gate.admit(key_from_headers(request.headers.get("authorization"), x_api_key), scope, client)
        structlog.contextvars.bind_contextvars(principal=principal.name)
        return principal

    return Depends(admit)


SearchKey = Annotated[Principal, _scoped("search")]
AdminKey = Annotated[Principal, _scoped("admin")]


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
        self.answerer: Answerer | None = None
        self.usage: UsageStore | None = None

    async def open(self) -> None:
        s = self.settings
        embedder = CoalescingEmbedder(await open_embedder(s))
        await embedder.embed(["warm up"])  # load the model now, not on the first request
        self.redis = open_redis(s.redis_url)
        self.vectors = await VectorStore.connect(s.database_url, dimensions=embedder.dimensions,
                                                 model_id=embedder.model_id, pool_timeout=s.database_pool_timeout)
        postings = PostingsStore(self.redis)
        self.generations = GenerationRegistry(self.redis)
        self.positions = Positions(self.redis)
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
        self.answerer = Answerer(self.cached, ChatModel.from_settings(s), context_tokens=s.answer_context_tokens,
                                 quote_questions=s.quote_questions)
        self.usage = UsageStore(self.vectors.pool)
        await self.usage.start()

    async def close(self) -> None:
        if self.searcher is not None:
            await self.searcher.postgres.close()
        if self.usage is not None:
            await self.usage.stop()
        if self.vectors is not None:
            await self.vectors.close()
        if self.redis is not None:
            await self.redis.aclose()


async def wait_for_position(positions: Positions, req: SearchRequest, timeout: float) -> bool:
    """Poll until the stages this mode reads have applied ``req.min_position`` (or time runs out).

    The deadline is checked between reads, never by cancelling one: redis-py 8.1's asyncio client can
    lose a cancellation that lands inside a command (the request then polled on for 81 s in a fuzz run).
    """
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


async def learn_cluster(settings: Settings, positions: Positions) -> None:
    """Tie read-your-writes checks to the Kafka cluster this service's clients reach (indexer.positions):
    until it answers, applied offsets are taken as recorded."""
    delay = 0.5
    while True:
        try:
            positions.cluster = await cluster_id(settings) or None
        except Exception as exc:  # not reachable yet; HTTP search goes on meanwhile
            log.debug("kafka_cluster_unknown", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.retry_max_backoff)
            continue
        log.info("kafka_cluster", cluster=positions.cluster)
        return


class BodyLimit:
    """ASGI middleware: bodies above ``limit`` bytes get a 413 JSON error before any parsing."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        limit = self.limit

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge(limit)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:  # read outside the routes' error handling
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = error(413, "request_too_large", f"the request body exceeds {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """A body without Content-Length (chunked) that grew past the limit while read.

    An HTTP exception, because FastAPI turns any other error raised while it reads a body into
    400 "error parsing the body"; the ``http_error`` handler answers it as 413 ``request_too_large``.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class RequestObserver:
    """ASGI middleware: a request id on every log line and response, an access log line, in-flight gauge.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs every
    request through an extra task group and body stream, which showed in the cache-hit profile.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex)[:64]
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.IN_FLIGHT.dec()
            if scope["path"] not in QUIET_PATHS:  # no query text or body: they may be confidential
                log.info("http_request", method=scope["method"], path=scope["path"], status=status,
                         ms=round((time.perf_counter() - started) * 1000, 2))


def create_app(settings: Settings) -> FastAPI:
    state = QueryState(settings)
    gate = Gatekeeper(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        # Everything loaded so far (model weights' wrappers, schemas, routes) lives as long as the process:
        # out of the collector's sight, a search's short-lived objects no longer make it rescan them.
        gc.freeze()
        requests = SearchRequestServer(settings, search_or_error, gate.for_topic) if settings.kafka_url else None
        app.state.topic_requests = requests
        if requests is not None:
            await requests.start()  # connects in the background: HTTP search does not wait for Kafka
        assert state.positions is not None
        learning = asyncio.create_task(learn_cluster(settings, state.positions)) if settings.kafka_url else None
        log.info("query_service_ready", port=settings.http_port, topic_requests=requests is not None)
        yield
        if learning is not None:
            learning.cancel()
            await asyncio.gather(learning, return_exceptions=True)
        if requests is not None:
            await requests.stop()
        await state.close()

    app = FastAPI(title="fluxstream query service", version=__version__, lifespan=lifespan, openapi_tags=TAGS,
                  docs_url=None, redoc_url=None,  # query.api_docs serves /docs without a CDN
                  responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                             403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                             413: {"model": ErrorResponse},
                             422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                             503: {"model": ErrorResponse, "description": "a backing store is unreachable"}})
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.state.gate = gate
    install_docs(app)

    app.add_middleware(RequestObserver)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error(exc.status, exc.code, exc.message, headers=headers)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return error(429, "rate_limited", f"too many requests; retry in {exc.wait:.1f} s",
                     headers={"Retry-After": str(max(1, math.ceil(exc.wait)))})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return error(422, "invalid_request", "the request body or parameters are invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code,
                                                                                          "http_error")
        return error(exc.status_code, code, str(exc.detail), headers=exc.headers)  # 405: Allow

    def unavailable(exc: Exception) -> ErrorResponse:
        store = _store_of(exc)
        log.warning("dependency_unavailable", store=store, error=repr(exc))
        return ErrorResponse(error="unavailable", message=f"{store or 'a backing store'} is unavailable; retry later",
                             details=[{"store": store}] if store else None)

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(OperationalError)
    @app.exception_handler(RedisError)
    @app.exception_handler(OSError)
    async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
        body = unavailable(exc)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "1"})

    def refusal(problem: ErrorResponse) -> JSONResponse:
        """An error a search function returned (rather than raised), with its HTTP status."""
        down = problem.error == "unavailable"
        status = 503 if down else 404 if problem.error == "collection_not_found" else 409
        return JSONResponse(problem.model_dump(exclude_none=True), status_code=status,
                            headers={"Retry-After": "1"} if down else None)

    async def position_problem(req: SearchRequest) -> ErrorResponse | None:
        """None once ``req.min_position`` is applied (or absent); the error if not within the timeout."""
        if req.min_position is None:
            return None
        assert state.positions is not None
        asked = req.wait_timeout_ms if req.wait_timeout_ms is not None else settings.min_position_timeout_ms
        timeout_ms = min(asked, settings.max_position_wait_ms)
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
        """The response, or the error (HTTP answers it with 409 or 503; topic requests get it as the reply)."""
        assert state.cached is not None
        try:
            routed, generation = await on_serving_generation(req)
            problem = await position_problem(routed)
            if problem is not None:
                return problem
            return as_asked(req, await state.cached.search(routed), generation)
        except STORE_DOWN as exc:
            return unavailable(exc)
        except CollectionNotFound:
            metrics.SEARCHES.labels(req.mode, "collection_not_found").inc()
            return collection_not_found(req.collection)

    @app.exception_handler(CollectionNotFound)
    async def missing_collection(request: Request, exc: CollectionNotFound) -> JSONResponse:
        """Batch and answer routes: the collection as asked (not its generation's index name)."""
        collection, _ = parse_index_name(exc.collection)
        return refusal(collection_not_found(collection))

    @app.post("/v1/search", response_model=SearchResponse, tags=["search"],
              responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    async def search(req: SearchRequest, request: Request, principal: SearchKey) -> Any:
        started = time.perf_counter()
        result = await search_or_error(req)
        if isinstance(result, ErrorResponse):
            if result.error == "unavailable":  # position_not_reached is counted where it is found
                metrics.SEARCHES.labels(req.mode, "unavailable").inc()
            return refusal(result)
        elapsed = time.perf_counter() - started
        metrics.SEARCH_SECONDS.labels(req.mode).observe(elapsed)
        metrics.SEARCHES.labels(req.mode, "ok").inc()
        assert state.usage is not None
        state.usage.record(request.state.request_id, req.collection, "search", req.mode, elapsed * 1000,
                           len(result.hits))
        # Serialised here, once: returning the model would have FastAPI validate it again against
        # response_model and encode it with the standard json module (about 0.8 ms per search).
        return Response(result.model_dump_json(), media_type="application/json")

    @app.post("/v1/answer", response_model=AnswerResponse, tags=["answer"],
              responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorResponse},
                         409: {"model": ErrorResponse},
                         502: {"model": ErrorResponse}})
    async def answer(req: AnswerRequest, request: Request, principal: SearchKey) -> Any:
        """Retrieve, cite and answer; ``stream: true`` answers with server-sent events."""
        assert state.answerer is not None and state.usage is not None
        started = time.perf_counter()
        probe = SearchRequest(query=req.query, collection=req.collection, mode=req.mode,
                              min_position=req.min_position, wait_timeout_ms=req.wait_timeout_ms)
        routed_probe, _ = await on_serving_generation(probe)
        if (problem := await position_problem(routed_probe)) is not None:
            return refusal(problem)
        routed = req.model_copy(update={"collection": routed_probe.collection})
        request_id = request.state.request_id
        try:
            if req.stream:
                found, prompt = await state.answerer.prepare(routed)
                state.usage.record(request_id, req.collection, "answer", req.mode,
                                   (time.perf_counter() - started) * 1000, len(found.hits))
                asked = req.model_copy(update={"collection": req.collection})
                return StreamingResponse(state.answerer.stream(asked, request_id, found, prompt),
                                         media_type="text/event-stream", headers={"cache-control": "no-cache"})
            result = await state.answerer.answer(routed, request_id)
        except TransformUnavailable as exc:
            return error(400, "transform_unavailable", str(exc))
        except ChatError as exc:
            log.warning("chat_failed", error=str(exc))
            return error(502, "chat_failed", str(exc))
        state.usage.record(request_id, req.collection, "answer", req.mode, (time.perf_counter() - started) * 1000,
                           len(result.sources))
        return result.model_copy(update={"collection": req.collection})

    @app.post("/v1/feedback", status_code=201, tags=["answer"])
    async def feedback(item: FeedbackRequest, principal: SearchKey) -> dict[str, Any]:
        """A rating of an answer or search, stored durably before this returns."""
        assert state.usage is not None
        return await state.usage.feedback(item)

    @app.get("/v1/stats", tags=["admin"])
    async def stats(principal: AdminKey,
                    hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0) -> dict[str, Any]:
        """Per collection: query and answer counts, latency percentiles, results, feedback and positive rate."""
        assert state.usage is not None
        return {"window_hours": hours, "collections": await state.usage.stats(hours)}

    @app.post("/v1/search/batch", response_model=BatchSearchResponse, tags=["search"],
              responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    async def search_batch(batch: BatchSearchRequest, principal: SearchKey) -> Any:
        """Read-your-writes tokens are waited for first; then one embedding call serves every query."""
        assert state.searcher is not None
        if len(batch.requests) > 1 and (wait := gate.limiter.check(principal.name, len(batch.requests) - 1)):
            raise RateLimited(wait)  # a batch costs one token per search
        started = time.perf_counter()
        routed = [await on_serving_generation(req) for req in batch.requests]
        # Positions are awaited together: the batch waits as long as its longest wait, not their sum.
        problems = await asyncio.gather(*(position_problem(req) for req, _ in routed))
        if (problem := next((p for p in problems if p is not None), None)) is not None:
            return refusal(problem)
        found = await state.searcher.search_many([req for req, _ in routed])
        responses = [as_asked(req, response, generation)
                     for req, response, (_, generation) in zip(batch.requests, found, routed, strict=True)]
        for req in batch.requests:
            metrics.SEARCHES.labels(req.mode, "ok").inc()
        strategies = [f"{r.mode}/{r.fusion}" if r.mode == "hybrid" else r.mode for r in batch.requests]
        return BatchSearchResponse(responses=responses, strategies=strategies,
                                   timings_ms={"total": round((time.perf_counter() - started) * 1000, 3)})

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentResponse, tags=["documents"],
             responses={404: {"model": ErrorResponse, "description": "no such document in the collection"}})
    async def get_document(doc_id: DocId, principal: SearchKey,
                           collection: Annotated[CollectionName, Query()] = "default") -> Any:
        assert state.searcher is not None and state.vectors is not None and state.generations is not None
        postings = state.searcher.postings
        asked = collection
        collection, _ = await state.generations.serving_index(asked)
        doc = await postings.get_document(collection, doc_id)
        if doc.version is None:
            return error(404, "not_found", f"document {doc_id!r} is not in collection {asked!r}")
        records = await postings.fetch_chunks(collection, [c.chunk_id for c in doc.chunks])
        embedded = await state.searcher.postgres.run(state.vectors.document_hashes(collection, doc_id))
        chunks = [
            ChunkView(chunk_id=c.chunk_id, chunk_no=c.chunk_no, text=r.text if r else "",
                      content_hash=c.content_hash, has_vector=embedded.get(c.chunk_id) == c.content_hash)
            for c, r in zip(doc.chunks, records, strict=True)
        ]
        return DocumentResponse(doc_id=doc_id, collection=asked, version=doc.version, deleted=doc.deleted,
                                title=doc.title, metadata=doc.metadata, chunks=chunks)

    @app.get("/v1/cache/stats", tags=["admin"])
    async def cache_stats(principal: AdminKey) -> dict[str, Any]:
        if state.cache is None:
            return {"enabled": False}
        return {"enabled": True, **await state.cache.stats()}

    @app.get("/v1/admin/collections", tags=["admin"])
    async def admin_collections(principal: AdminKey) -> dict[str, Any]:
        """Per collection: serving generation, counts, a rebuild in progress (as `fluxstream status`)."""
        assert state.redis is not None
        return await collection_status(state.redis)

    @app.delete("/v1/admin/cache/{collection}", tags=["admin"])
    async def admin_clear_cache(collection: CollectionName, principal: AdminKey) -> dict[str, Any]:
        """Drop every cached answer of a collection's serving generation."""
        assert state.redis is not None and state.generations is not None
        index, _ = await state.generations.serving_index(collection)
        removed = await unlink_prefix(state.redis, keyspace.cache_prefix(index))
        log.info("cache_cleared", collection=collection, keys=removed)
        return {"collection": collection, "removed_keys": removed}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"],
             responses={503: {"description": "not ready: Redis is unreachable or the service is starting"}})
    async def readyz() -> JSONResponse:
        """Ready when searches can be answered: Redis reachable. PostgreSQL down leaves the service
        ready but degraded (BM25 and hybrid answer from BM25 alone, vector searches get 503)."""
        checks = {"redis": False, "postgres": False}
        if state.redis is not None and state.vectors is not None:
            checks = await check_dependencies(state.redis, state.vectors)
        ready = checks["redis"]
        metrics.READY.set(int(ready))
        degraded = [] if checks["postgres"] else ["vectors"]
        requests = getattr(app.state, "topic_requests", None)  # topic search: "connecting" does not make it unready
        topic_search = "off" if requests is None else requests.status
        return JSONResponse({"ready": ready, **checks, "degraded": degraded, "topic_search": topic_search},
                            status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.exposition(metrics.QUERY), media_type=CONTENT_TYPE_LATEST)

    return app
