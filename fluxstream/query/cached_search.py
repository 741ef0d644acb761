"""Searches through the semantic cache: look up, replay a hit, or search and store the retrieval."""

from __future__ import annotations

from fluxstream.core import metrics
from fluxstream.indexer.enrichment import PREFIX as ENRICHMENT_PREFIX
from fluxstream.indexer.generations import IndexTarget
from fluxstream.query.cache.store import SemanticCache
from fluxstream.query.search import Searcher
from fluxstream.schemas.api import CacheInfo, SearchRequest, SearchResponse


class CachedSearcher:
    def __init__(self, searcher: Searcher, cache: SemanticCache | None) -> None:
        self.searcher = searcher
        self.cache = cache

    async def search(self, req: SearchRequest, target: IndexTarget) -> SearchResponse:
        # Enrichment lands after indexing without touching the counters the cache validates against,
        # so answers filtered on it are not cached.
        if self.cache is None or not req.cache or any(k.startswith(ENRICHMENT_PREFIX) for k in req.filters):
            metrics.CACHE_LOOKUPS.labels("bypass").inc()
            response = await self.searcher.search(req, target)
            return response.model_copy(update={"cache": CacheInfo(status="bypass")})
        identity = self.searcher.query_identity(req)
        lookup = await self.cache.lookup(req, target.index, identity, self.searcher.embedder.embed)
        if lookup.hit is not None:
            hit = lookup.hit
            replayed = req if hit.kind == "exact" else req.model_copy(update={"query": hit.query})
            response, _ = await self.searcher.search_with_retrieval(replayed, target, replay=hit.retrieval)
            self.cache.record("hits" if hit.kind == "exact" else "semantic_hits")
            metrics.CACHE_LOOKUPS.labels(hit.kind).inc()
            info = CacheInfo(status="exact" if hit.kind == "exact" else "semantic", cached_query=hit.query,
                             similarity=round(hit.similarity, 6))
            return response.model_copy(update={"query": req.query, "cache": info})
        response, retrieval = await self.searcher.search_with_retrieval(req, target, query_vector=lookup.query_vector)
        self.cache.record("misses")
        metrics.CACHE_LOOKUPS.labels("miss").inc()
        if not response.degraded:  # a degraded answer is not the answer
            await self.cache.store(req, target.index, identity, retrieval, response, self.searcher.pool(req))
        return response.model_copy(update={"cache": CacheInfo(status="miss")})
