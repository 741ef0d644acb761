"""Index updates (the index-updates topic) into semantic-cache invalidation (``query.cache.invalidation``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from functools import partial

import orjson

from fluxstream.core import metrics
from fluxstream.query.cache.invalidation import CacheInvalidator
from fluxstream.query.cache.store import SemanticCache
from fluxstream.schemas.decoding import Rejected, decode
from fluxstream.schemas.events import IndexUpdate
from fluxstream.streams.pipeline import Pipeline, Record, position


class IndexUpdatesHandler:
    """Keep the semantic cache exact: delete entries the applied changes could affect.

    An update that cannot be decoded or handled is dead-lettered and its collection's cache is
    cleared: without knowing what the change touched, no entry of it can be trusted.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        resources = pipeline.resources
        self.invalidator = CacheInvalidator(
            SemanticCache(resources.redis, resources.postings, resources.embedder.dimensions), resources.vectors)
        self.decode = partial(decode, model=IndexUpdate)

    async def __call__(self, records: Sequence[Record]) -> None:
        p = self.pipeline
        updates: list[tuple[IndexUpdate, Record]] = []
        sends: list[Awaitable[object]] = []
        doubtful: set[str] = set()
        for record in records:
            update = await p.dead_letters.take(record, position(record), self.decode, sends)
            if update is None:
                doubtful.update(_named_collection(record.value))
            else:
                updates.append((update, record))
        outcomes, failures = await p.apply_isolating(
            "cache", updates, lambda items: self.invalidator.handle([update for update, _ in items]))
        for (update, record), error in failures:
            doubtful.add(update.collection)
            sends.append(await p.reject(Rejected("invalidation_failed", error), record))
        for collection in sorted(doubtful):
            outcomes.append(await p.until_done("cache", partial(self.invalidator.clear, collection)))
        metrics.CACHE_INVALIDATIONS.inc(sum(outcomes))
        await asyncio.gather(*sends)


def _named_collection(raw: bytes | None) -> list[str]:
    """The collection a record names, if it is a JSON object naming one."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return []
    collection = value.get("collection") if isinstance(value, dict) else None
    return [collection] if isinstance(collection, str) else []
