"""Dropping index generations: after a switch's grace period, after an aborted rebuild, and orphans.

A writer that read the write targets just before a generation was detached may still
write into it once; such stragglers re-register the index name, and the periodic
sweep (``collect_garbage``, run by every worker) drops them again: any index name whose
generation its collection no longer keeps, plus recently dropped names for a while.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fluxstream.core import keyspace
from fluxstream.core.logging import get_logger
from fluxstream.indexer.generations.registry import GenerationRegistry, index_name, parse_index_name
from fluxstream.indexer.postings import PostingsStore, unlink_prefix
from fluxstream.indexer.vector_store import VectorStore

log = get_logger("fluxstream.retirement")

RESWEEP_SECONDS = 600.0  # how long a dropped name is swept again for stragglers


@dataclass(frozen=True)
class Dropped:
    index: str
    redis_keys: int
    vector_rows: int


class Retirement:
    def __init__(self, postings: PostingsStore, vectors: VectorStore) -> None:
        self.postings = postings
        self.vectors = vectors
        self.redis = postings.redis
        self.registry = GenerationRegistry(postings.redis)

    async def drop(self, name: str, *, remember: bool = True) -> Dropped:
        """Remove index ``name`` everywhere: postings and records, cache entries, vector rows."""
        if remember:
            await self.redis.zadd(keyspace.GENERATIONS_DROPPED, {name: time.time()})
        keys = await self.postings.drop_index(name)
        keys += await unlink_prefix(self.redis, keyspace.cache_prefix(name))
        rows = await self.vectors.drop_index(name)
        if keys or rows:
            log.info("index_dropped", index=name, redis_keys=keys, vector_rows=rows)
        return Dropped(name, keys, rows)

    async def abort(self, collection: str) -> Dropped | None:
        """Detach and drop the building (or failed) generation; the serving one is untouched."""
        generation = await self.registry.forget_building(collection)
        if generation is None:
            return None
        return await self.drop(index_name(collection, generation))

    async def collect_garbage(self, now: float | None = None) -> list[Dropped]:
        """Drop retired generations past their grace period, orphans and stragglers."""
        now = time.time() if now is None else now
        dropped: list[Dropped] = []
        for state in await self.registry.all():
            if state.retiring is not None and state.retire_after is not None and state.retire_after <= now:
                await self.registry.forget_retiring(state.collection, state.retiring)
                dropped.append(await self.drop(index_name(state.collection, state.retiring)))
        names = await self.postings.collections()
        states = await self.registry.get_many(parse_index_name(n)[0] for n in names)
        for name in names:
            collection, generation = parse_index_name(name)
            if not states[collection].keeps(generation):
                dropped.append(await self.drop(name))
        await self.redis.zremrangebyscore(keyspace.GENERATIONS_DROPPED, "-inf", now - RESWEEP_SECONDS)
        for raw in await self.redis.zrange(keyspace.GENERATIONS_DROPPED, 0, -1):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            collection, generation = parse_index_name(name)
            if (await self.registry.get(collection)).keeps(generation):
                await self.redis.zrem(keyspace.GENERATIONS_DROPPED, name)  # the name is in use again (a later rebuild)
            elif name not in {d.index for d in dropped}:
                dropped.append(await self.drop(name, remember=False))
        return [d for d in dropped if d.redis_keys or d.vector_rows]
