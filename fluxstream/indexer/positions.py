"""Applied positions for read-your-writes.

* ``fx:applied`` hash, field ``<topic>:<partition>`` -> highest source offset the BM25 stage
  has handled (applied, skipped or dead-lettered); offsets are handled in order per partition.
  Field ``cluster``: the Kafka cluster id those offsets belong to. Offsets mean nothing on another
  broker (a restarted memory-only dev broker starts again at 0 under a new id): a worker adopts its
  broker's id at start-up, which clears the offsets and pending marks of the old one
  (``adopt_cluster``), raises offsets only while the id is its own, and a reader that knows its
  broker's id counts no offset recorded under another id as reached.
* ``fx:{c}:pending:<topic>:<partition>`` sorted set, doc_id -> the lowest source offset of the
  document's changes whose vectors are not visible yet;
* ``fx:{c}:pending-entries:<topic>:<partition>`` hash, doc_id -> its entries ``offset:clear_at ``:
  the change at ``offset`` is visible to vectors once the vector stage has handled the document's
  job at ``clear_at`` or a later one (that job carries the same or a newer version: a superseded
  change counts as visible once its successor is). Entries are added inside the BM25 stage's
  atomic write (``indexer.fold.pending_marks``), before the job is sent; each handled job removes
  its document's entries clearing at or below its offset and rescores the document.

A position (topic, partition, offset) is visible to BM25 once ``fx:applied`` reaches it, and to
vectors once, in addition, no pending score of that partition is at or below it. So v1 at o1 and
v2 at o2 of one document, folded into one job (at o2) or sent as two, hold o1 back until a job at
o2 is handled if v1's own job was skipped or folded, and only until v1's job otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import redis.asyncio as aioredis

from fluxstream.core import keyspace, lua
from fluxstream.core.replies import text
from fluxstream.schemas.events import EmbedJob, SourcePosition

CLUSTER_FIELD = "cluster"


async def applied_positions(redis: aioredis.Redis) -> tuple[str | None, dict[str, int]]:
    """(the Kafka cluster id they belong to, ``<topic>:<partition>`` -> handled offset), as recorded."""
    raw = {text(k): text(v) for k, v in (await redis.hgetall(keyspace.APPLIED)).items()}
    cluster = raw.pop(CLUSTER_FIELD, None)
    return cluster, {field: int(value) for field, value in raw.items()}


class ChangeAt(NamedTuple):
    """A change of document ``doc_id`` of index ``collection``, read at ``source``."""

    collection: str
    doc_id: str
    source: SourcePosition


class _PendingKey(NamedTuple):
    collection: str
    topic: str
    partition: int


class Positions:
    """Applied positions; ``cluster``: the id of the Kafka cluster this process reads (None: unknown,
    offsets are taken as they are)."""

    def __init__(self, redis: aioredis.Redis, cluster: str | None = None) -> None:
        self.redis = redis
        self.cluster = cluster
        self._raise = lua.register(redis, "raise_applied")
        self._clear = lua.register(redis, "clear_pending")

    async def adopt_cluster(self, cluster: str) -> bool:
        """Tie applied positions to ``cluster`` (a worker's broker); True if those of another one were dropped.

        The old broker's offsets and pending marks say nothing about the new one's: kept, a position on
        the new broker would count as applied before the new worker got there."""
        self.cluster = cluster
        stored = await self.redis.hget(keyspace.APPLIED, CLUSTER_FIELD)
        if stored is not None and text(stored) == cluster:
            return False
        # Index names cannot hold "}" (CollectionName), document ids can: the regex keeps only pending keys.
        pending = [key async for key in self.redis.scan_iter(match=keyspace.PENDING_SCAN, count=1000)
                   if keyspace.PENDING_KEY.match(key)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.APPLIED, *pending)
            pipe.hset(keyspace.APPLIED, CLUSTER_FIELD, cluster)
            await pipe.execute()
        return stored is not None

    async def record_handled(self, positions: Iterable[SourcePosition]) -> None:
        """Raise the BM25 stage's handled offset per partition to the highest of ``positions``."""
        highest: dict[str, int] = {}
        for pos in positions:
            field = f"{pos.topic}:{pos.partition}"
            highest[field] = max(highest.get(field, -1), pos.offset)
        if highest:
            args = [CLUSTER_FIELD, self.cluster or ""] + [str(v) for item in highest.items() for v in item]
            await self._raise(keys=[keyspace.APPLIED], args=args)

    async def clear_pending(self, jobs: Iterable[EmbedJob]) -> None:
        """The vector stage handled these jobs: what each one supersedes is no longer pending."""
        await self._cleared("upto", (ChangeAt(job.collection, job.doc_id, job.source) for job in jobs))

    async def clear_documents(self, handled: Iterable[ChangeAt]) -> None:
        """Each change was dead-lettered after its BM25 write, so no job will clear what that write
        marked: its own entry goes. Entries of the document's earlier jobs stay, since those jobs are
        still coming."""
        await self._cleared("at", handled)

    async def _cleared(self, mode: str, handled: Iterable[ChangeAt]) -> None:
        by_key: dict[_PendingKey, list[str]] = {}
        for change in handled:
            source = change.source
            by_key.setdefault(_PendingKey(change.collection, source.topic, source.partition), [mode]).extend(
                (change.doc_id, str(source.offset)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, args in by_key.items():
                keys = [keyspace.pending_vectors(*key), keyspace.pending_entries(*key)]
                await self._clear(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def bm25_offset(self, topic: str, partition: int) -> int:
        """The BM25 stage's handled offset of the partition on this process's broker (-1: none yet)."""
        stored, value = await self.redis.hmget(keyspace.APPLIED, [CLUSTER_FIELD, f"{topic}:{partition}"])
        if self.cluster is not None and stored is not None and text(stored) != self.cluster:
            return -1  # recorded on another broker: no offset of this one is applied yet
        return int(value) if value is not None else -1

    async def oldest_pending(self, collection: str, topic: str, partition: int) -> int | None:
        key = keyspace.pending_vectors(collection, topic, partition)
        first = await self.redis.zrange(key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def reached(self, collection: str, token: SourcePosition, *, vectors: bool) -> bool:
        if await self.bm25_offset(token.topic, token.partition) < token.offset:
            return False
        if not vectors:
            return True
        oldest = await self.oldest_pending(collection, token.topic, token.partition)
        return oldest is None or oldest > token.offset
