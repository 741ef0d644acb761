"""Applied positions for read-your-writes.

* ``fx:applied`` hash, field ``<topic>:<partition>`` -> highest source offset the BM25 stage
  has handled (applied, skipped or dead-lettered); offsets are handled in order per partition.
* ``fx:{c}:pending:<topic>:<partition>`` sorted set, doc_id -> source offset, added in the same
  atomic write as the change and removed when the vector stage has handled that document.

A position (topic, partition, offset) is visible to BM25 once ``fx:applied`` reaches it, and to
vectors once, in addition, no pending entry of that partition is at or below it.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from indexer.postings import PostingsStore
from indexer.redis_plan import HashFieldRaiser
from schemas.events import EmbedJob, SourcePosition

APPLIED_KEY = "fx:applied"


_CLEAR_IF_AT_MOST = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""


class Positions:
    def __init__(self, redis: aioredis.Redis, store: PostingsStore) -> None:
        self.redis = redis
        self.store = store
        self._raise_to = HashFieldRaiser(redis)
        self._clear = redis.register_script(_CLEAR_IF_AT_MOST)

    async def record_handled(self, positions: Iterable[SourcePosition]) -> None:
        """Raise the BM25 stage's handled offset per partition to the highest of ``positions``."""
        highest: dict[str, int] = {}
        for pos in positions:
            field = f"{pos.topic}:{pos.partition}"
            highest[field] = max(highest.get(field, -1), pos.offset)
        for field, offset in highest.items():
            await self._raise_to(APPLIED_KEY, field, offset)

    async def mark_pending(self, jobs: Iterable[EmbedJob]) -> None:
        """Before embed jobs are sent (and before the batch's offsets count as handled)."""
        by_key: dict[str, dict[str, int]] = {}
        for job in jobs:
            key = self.store.pending_vectors_key(job.collection, job.source.topic, job.source.partition)
            by_key.setdefault(key, {})[job.doc_id] = job.source.offset  # a batch's jobs: one ZADD per key
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, members in by_key.items():
                pipe.zadd(key, members)
            await pipe.execute()

    async def clear_pending(self, jobs: Iterable[EmbedJob]) -> None:
        """The vector stage handled these jobs: their documents are no longer pending (up to their offset)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                key = self.store.pending_vectors_key(job.collection, job.source.topic, job.source.partition)
                await self._clear(keys=[key], args=[job.doc_id, job.source.offset], client=pipe)
            await pipe.execute()

    async def bm25_offset(self, topic: str, partition: int) -> int:
        value = await self.redis.hget(APPLIED_KEY, f"{topic}:{partition}")
        return int(value) if value is not None else -1

    async def oldest_pending(self, collection: str, topic: str, partition: int) -> int | None:
        key = self.store.pending_vectors_key(collection, topic, partition)
        first = await self.redis.zrange(key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def reached(self, collection: str, token: SourcePosition, *, vectors: bool) -> bool:
        if await self.bm25_offset(token.topic, token.partition) < token.offset:
            return False
        if not vectors:
            return True
        oldest = await self.oldest_pending(collection, token.topic, token.partition)
        return oldest is None or oldest > token.offset
