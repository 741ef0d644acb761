"""The index-update handler of the cache: deletes entries ``fluxstream.index-updates`` make wrong (docs/cache.md).

For each applied change it deletes every cache entry that
* has one of the change's terms (old or new) among its query terms: its posting lists changed;
* has the document among its vector candidates: a candidate changed or disappeared;
* (vector-stage updates) is at most as similar to its query as one of the document's new chunks,
  i.e. the chunk could now enter its vector candidates.
The last rule is checked against an in-memory mirror of the collection's vector entries, fed by
the cache's ``new`` stream; the mirror is synced before every batch, and an entry is written
before the change sequence moves on, so no entry that a change could affect is missed. The rules
are ``validity``'s; ``streams`` wires this handler to its agent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from fluxstream.core import keyspace
from fluxstream.core.replies import text
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.query.cache.entries import embedding_of
from fluxstream.query.cache.store import SemanticCache, clear_index
from fluxstream.query.cache.validity import could_enter
from fluxstream.schemas.events import IndexUpdate


@dataclass
class VectorEntries:
    last_stream_id: str = "0-0"
    ids: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)


class CacheInvalidator:
    def __init__(self, cache: SemanticCache, vectors: VectorStore) -> None:
        self.cache = cache
        self.vectors = vectors
        self.mirrors: dict[str, VectorEntries] = defaultdict(VectorEntries)

    async def handle(self, updates: list[IndexUpdate]) -> int:
        """Invalidate what ``updates`` could affect; returns how many entries were deleted."""
        by_collection: dict[str, list[IndexUpdate]] = defaultdict(list)
        for update in updates:
            by_collection[update.collection].append(update)
        removed = 0
        for collection, group in by_collection.items():
            doomed = await self._by_terms_and_docs(collection, group)
            doomed |= await self._by_similarity(collection, [u for u in group if u.stages.vectors])
            removed += await self.cache.delete(collection, sorted(doomed))
        return removed

    async def clear(self, collection: str) -> int:
        """Drop every entry of ``collection`` (an index): for a change whose effects are unknown."""
        self.mirrors.pop(collection, None)
        return await clear_index(self.cache.redis, collection)

    async def _by_terms_and_docs(self, collection: str, updates: list[IndexUpdate]) -> set[str]:
        keys = {keyspace.cache_term(collection, t) for u in updates for t in u.terms}
        keys |= {keyspace.cache_doc(collection, u.doc_id) for u in updates}
        if not keys:
            return set()
        return {text(m) for m in await self.cache.redis.sunion(sorted(keys))}

    async def _by_similarity(self, collection: str, updates: list[IndexUpdate]) -> set[str]:
        chunk_ids = [c for u in updates if u.op == "upsert" for c in u.chunk_ids]
        if not chunk_ids:
            return set()
        mirror = await self._sync(collection)
        if not mirror.ids:
            return set()
        embeddings = await self.vectors.embeddings_of(collection, chunk_ids)
        if not embeddings:
            return set()
        similarities = np.stack(list(embeddings.values())) @ np.stack(mirror.vectors).T  # chunks x entries
        reach = could_enter(similarities.max(axis=0), mirror.thresholds)
        return {entry_id for entry_id, hit in zip(mirror.ids, reach, strict=True) if hit}

    async def _sync(self, collection: str) -> VectorEntries:
        """Read entries added since the last sync (their embeddings and candidate thresholds)."""
        mirror = self.mirrors[collection]
        redis = self.cache.redis
        if len(mirror.ids) > 2 * max(1, await redis.zcard(keyspace.cache_lru(collection))):
            mirror = self.mirrors[collection] = VectorEntries()  # mostly gone: rebuild from the stream
        records = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                       await redis.xrange(keyspace.cache_new(collection), min=f"({mirror.last_stream_id}"))
        if not records:
            return mirror
        entry_ids = [fields[b"id"].decode() for _, fields in records]
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(keyspace.cache_entry(collection, entry_id), "embedding", "threshold")
            rows = await pipe.execute()
        for entry_id, (raw, threshold) in zip(entry_ids, rows, strict=True):
            vector = embedding_of(raw)
            if vector is not None and threshold:
                mirror.ids.append(entry_id)
                mirror.vectors.append(vector)
                mirror.thresholds.append(float(threshold))
        mirror.last_stream_id = records[-1][0].decode()
        return mirror
