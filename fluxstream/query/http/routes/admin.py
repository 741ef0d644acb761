"""Administration (API keys with the admin scope): usage statistics, the cache, collections."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fluxstream.core.logging import get_logger
from fluxstream.indexer.generations.status import collection_status
from fluxstream.query.cache.store import clear_index
from fluxstream.query.http.dependencies import AdminKey, Services
from fluxstream.schemas.events import CollectionName

log = get_logger("fluxstream.query")
router = APIRouter(tags=["admin"])


@router.get("/v1/stats")
async def stats(principal: AdminKey, services: Services,
                hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0) -> dict[str, Any]:
    """Per collection: query and answer counts, latency percentiles, results, feedback and positive rate."""
    return {"window_hours": hours, "collections": await services.usage.stats(hours)}


@router.get("/v1/cache/stats")
async def cache_stats(principal: AdminKey, services: Services) -> dict[str, Any]:
    if services.cache is None:
        return {"enabled": False}
    return {"enabled": True, **await services.cache.stats()}


@router.get("/v1/admin/collections")
async def admin_collections(principal: AdminKey, services: Services) -> dict[str, Any]:
    """Per collection: serving generation, counts, a rebuild in progress (as `fluxstream status`)."""
    return await collection_status(services.redis)


@router.delete("/v1/admin/cache/{collection}")
async def admin_clear_cache(collection: CollectionName, principal: AdminKey, services: Services) -> dict[str, Any]:
    """Drop every cached answer of a collection's serving generation."""
    target = await services.target(collection)
    removed = await clear_index(services.redis, target.index)
    log.info("cache_cleared", collection=collection, keys=removed)
    return {"collection": collection, "removed_keys": removed}
