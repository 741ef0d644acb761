"""The query service's components, built once at start-up and shared by the HTTP app and topic requests.

``QueryServices`` exists only when everything in it is open: there is no half-started state to
check for. It also holds the one search path both front ends use (``search``): resolve the index
the request reads (``IndexTarget``), wait for its read-your-writes position, search through the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from fluxstream.core import metrics
from fluxstream.core.settings import Settings
from fluxstream.indexer.bm25 import BM25Params
from fluxstream.indexer.chat import ChatModel
from fluxstream.indexer.embedders.coalescing import CoalescingEmbedder
from fluxstream.indexer.generations import GenerationRegistry, IndexTarget
from fluxstream.indexer.positions import Positions
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.indexer.wiring import build_tokenizer, open_embedder, open_redis
from fluxstream.query.answering import Answerer
from fluxstream.query.auth import Gatekeeper
from fluxstream.query.cache.store import CacheConfig, SemanticCache
from fluxstream.query.cached_search import CachedSearcher
from fluxstream.query.errors import STORE_DOWN, collection_not_found, unavailable
from fluxstream.query.read_your_writes import position_problem
from fluxstream.query.search import CollectionNotFound, SearchDefaults, Searcher
from fluxstream.query.usage import UsageStore
from fluxstream.schemas.api import ErrorResponse, RetrievalRequest, SearchRequest, SearchResponse


@dataclass(frozen=True)
class QueryServices:
    settings: Settings
    gate: Gatekeeper
    redis: aioredis.Redis
    vectors: VectorStore
    generations: GenerationRegistry
    positions: Positions
    searcher: Searcher
    cache: SemanticCache | None  # None: FLUXSTREAM_CACHE_ENABLED=false
    cached: CachedSearcher
    answerer: Answerer
    usage: UsageStore

    @classmethod
    async def open(cls, settings: Settings, gate: Gatekeeper) -> QueryServices:
        """Load the embedding model, connect Redis and PostgreSQL, start the usage log."""
        s = settings
        embedder = CoalescingEmbedder(await open_embedder(s))
        await embedder.embed(["warm up"])  # load the model now, not on the first request
        redis = open_redis(s.redis_url)
        vectors = await VectorStore.connect(s.database_url, dimensions=embedder.dimensions,
                                            model_id=embedder.model_id, pool_timeout=s.database_pool_timeout)
        postings = PostingsStore(redis)
        searcher = Searcher(
            postings, vectors, embedder, build_tokenizer(s),
            BM25Params(s.bm25_k1, s.bm25_b),
            SearchDefaults(s.rrf_k, s.weight_bm25, s.weight_vector, s.candidate_pool, s.hnsw()[1]),
        )
        cache = None
        if s.cache_enabled:
            config = CacheConfig(threshold=s.cache_threshold, ttl_seconds=s.cache_ttl_seconds,
                                 max_entries=s.cache_max_entries)
            cache = SemanticCache(redis, postings, embedder.dimensions, config)
        cached = CachedSearcher(searcher, cache)
        answerer = Answerer(cached, ChatModel.from_settings(s), context_tokens=s.answer_context_tokens,
                            quote_questions=s.quote_questions)
        usage = UsageStore(vectors.pool)
        await usage.start()
        return cls(settings=s, gate=gate, redis=redis, vectors=vectors, generations=GenerationRegistry(redis),
                   positions=Positions(redis), searcher=searcher, cache=cache, cached=cached,
                   answerer=answerer, usage=usage)

    async def close(self) -> None:
        await self.searcher.postgres.close()
        await self.usage.stop()
        await self.vectors.close()
        await self.redis.aclose()

    async def target(self, collection: str) -> IndexTarget:
        """The index requests on ``collection`` read now: its serving generation (indexer.generations)."""
        return await self.generations.serving(collection)

    async def position_problem(self, req: RetrievalRequest, target: IndexTarget) -> ErrorResponse | None:
        """None once ``req.min_position`` is applied in ``target`` (see query.read_your_writes)."""
        return await position_problem(self.positions, self.settings, req, target)

    async def search(self, req: SearchRequest) -> SearchResponse | ErrorResponse:
        """The response, or the error (HTTP answers it with 404, 409 or 503; topic requests get it as the reply)."""
        try:
            target = await self.target(req.collection)
            problem = await self.position_problem(req, target)
            if problem is not None:
                return problem
            return await self.cached.search(req, target)
        except STORE_DOWN as exc:
            return unavailable(exc)
        except CollectionNotFound:
            metrics.SEARCHES.labels(req.mode, "collection_not_found").inc()
            return collection_not_found(req.collection)
