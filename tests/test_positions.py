"""Read-your-writes positions against real Valkey, with the BM25 stage's own writes: a position is
reached for vectors only when every change at or below it is vector-visible, a superseded change
counting as visible once its successor is (issue 15, item 2). The embed jobs' handling is driven by
hand (``clear_pending``), so every interleaving of batches and jobs is exercised deterministically."""

from __future__ import annotations

import redis.asyncio as aioredis

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.apply import BM25Stage
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.positions import ChangeAt, Positions, applied_positions
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.schemas.events import DocumentChange, EmbedJob, SourcePosition


class Harness:
    """One collection and one private partition; BM25 batches applied and recorded like the worker does."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, collection: str) -> None:
        store = PostingsStore(redis)
        tokenizer = build_tokenizer(settings)
        self.stage = BM25Stage(store, DocumentBuilder(Chunker(64, 8, tokenizer), tokenizer))
        self.positions = Positions(redis)
        self.collection = collection
        self.topic = f"positions-{collection}"  # fx:applied is global: a topic nobody else uses

    def at(self, offset: int) -> SourcePosition:
        return SourcePosition(topic=self.topic, partition=0, offset=offset)

    async def batch(self, *changes: tuple[str, int, int], record: bool = True) -> list[EmbedJob]:
        """Apply (doc_id, version, offset) changes as one batch; returns the embed jobs it sends."""
        items = [SourcedChange(DocumentChange(op="upsert", doc_id=d, collection=self.collection, version=v,
                                              text=f"river stone version {v}"), self.at(o)) for d, v, o in changes]
        outcome = await self.stage.apply(items)
        if record:
            await self.positions.record_handled(i.source for i in items)
        return outcome.embed_jobs

    async def reached(self, offset: int, *, vectors: bool = True) -> bool:
        return await self.positions.reached(self.collection, self.at(offset), vectors=vectors)


async def test_changes_folded_into_one_job_hold_the_first_position_back(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    h = Harness(stack, redis_client, collection)
    [job] = await h.batch(("x", 1, 10), ("x", 2, 11))  # v1 then v2 back to back: one job, at v2's offset
    assert job.source.offset == 11
    assert not await h.reached(10)  # v1's position must wait for the vectors of x
    assert await h.reached(10, vectors=False)  # BM25 does not wait for vectors
    await h.positions.clear_pending([job])
    assert await h.reached(10) and await h.reached(11)


async def test_a_later_batch_does_not_release_an_earlier_pending_change(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    h = Harness(stack, redis_client, collection)
    [first] = await h.batch(("x", 1, 10))
    [second] = await h.batch(("x", 2, 11))
    assert not await h.reached(10) and not await h.reached(11)
    await h.positions.clear_pending([first])  # v1's vectors: 10 is visible, 11 (v2) still is not
    assert await h.reached(10)
    assert not await h.reached(11)
    await h.positions.clear_pending([second])
    assert await h.reached(11)


async def test_the_successors_job_releases_the_superseded_change(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    h = Harness(stack, redis_client, collection)
    [first] = await h.batch(("x", 1, 10))
    [second] = await h.batch(("x", 2, 11))
    await h.positions.clear_pending([second])  # jobs reach the vector stage out of order: v2 first
    assert await h.reached(10) and await h.reached(11)  # v1 is superseded by the visible v2
    await h.positions.clear_pending([first])  # v1's job, skipped by the vector stage: nothing left to clear
    assert await h.reached(11)
    assert await redis_client.hlen(keyspace.pending_entries(collection, h.topic, 0)) == 0


async def test_a_change_skipped_behind_an_in_flight_successor_waits_for_it(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    """Batches in flight: the later batch (v2) writes first, the earlier one (v1) is then skipped and
    sends no job; v1's position must still wait for v2's vectors."""
    h = Harness(stack, redis_client, collection)
    [second] = await h.batch(("x", 2, 11), record=False)
    assert await h.batch(("x", 1, 10)) == []  # skipped: the index holds v2
    assert not await h.reached(10)
    await h.positions.clear_pending([second])
    await h.positions.record_handled([h.at(11)])
    assert await h.reached(10) and await h.reached(11)


async def test_a_skip_after_the_successor_is_visible_leaves_nothing_pending(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    h = Harness(stack, redis_client, collection)
    [second] = await h.batch(("x", 2, 11), record=False)
    await h.positions.clear_pending([second])  # v2's vectors are in before the earlier batch is skipped
    assert await h.batch(("x", 1, 10)) == []
    await h.positions.record_handled([h.at(11)])
    assert await h.reached(10) and await h.reached(11)  # no entry that no job would ever clear


async def test_a_redelivered_job_clears_what_it_re_sends(stack: Settings, redis_client: aioredis.Redis,
                                                         collection: str) -> None:
    h = Harness(stack, redis_client, collection)
    [job] = await h.batch(("x", 1, 10))
    [again] = await h.batch(("x", 1, 12))  # the applied version again (a crash before the job went out)
    assert again.source.offset == 12
    assert not await h.reached(12)
    await h.positions.clear_pending([job])
    assert await h.reached(10) and not await h.reached(12)
    await h.positions.clear_pending([again])
    assert await h.reached(12)


async def test_a_dead_lettered_change_releases_only_its_own_mark(stack: Settings, redis_client: aioredis.Redis,
                                                                 collection: str) -> None:
    """v2 is written, then dead-lettered (its embed job could not be sent): its own mark goes, but v1's
    job is still coming, so v1's position keeps waiting for it."""
    h = Harness(stack, redis_client, collection)
    [first] = await h.batch(("x", 1, 10))
    await h.batch(("x", 2, 11))
    await h.positions.clear_documents([ChangeAt(collection, "x", h.at(11))])
    assert not await h.reached(10)
    await h.positions.clear_pending([first])
    assert await h.reached(10) and await h.reached(11)


async def test_offsets_of_another_kafka_cluster_never_count(stack: Settings) -> None:
    """A restarted memory-only broker counts offsets from 0 again under a new cluster id: what the old one's
    worker applied must not satisfy a position on the new one (issue 16, item 3). Own Redis database:
    adopting a cluster resets the global ``fx:applied``."""
    redis = aioredis.from_url(stack.redis_url.rsplit("/", 1)[0] + "/9")
    try:
        await redis.flushdb()
        at = lambda offset: SourcePosition(topic="docs", partition=0, offset=offset)  # noqa: E731
        old = Positions(redis)
        assert not await old.adopt_cluster("old-broker")  # nothing recorded before: nothing dropped
        await old.record_handled([at(500)])
        await redis.zadd(keyspace.pending_vectors("c", "docs", 0), {"x": 400})
        await redis.hset(keyspace.pending_entries("c", "docs", 0), "x", "400:400 ")
        lookalike = keyspace.document("c", "y}:pending:docs:0")  # a document id may look like a pending key
        await redis.hset(lookalike, "version", 1)

        reader = Positions(redis, cluster="new-broker")  # a query service reaching the new broker
        assert not await reader.reached("c", at(10), vectors=False)  # the old broker's 500 is not the new one's
        assert await reader.bm25_offset("docs", 0) == -1
        assert await Positions(redis, cluster="old-broker").reached("c", at(10), vectors=False)

        worker = Positions(redis)
        assert await worker.adopt_cluster("new-broker")  # the new broker's worker starts: old positions go
        assert not await redis.exists(keyspace.pending_vectors("c", "docs", 0),
                                      keyspace.pending_entries("c", "docs", 0))
        assert await redis.exists(lookalike)
        await old.record_handled([at(600)])  # a worker still on the old broker changes nothing now
        assert not await reader.reached("c", at(10), vectors=False)
        await worker.record_handled([at(10)])
        assert await reader.reached("c", at(10), vectors=True) and not await reader.reached("c", at(11), vectors=False)
        assert not await worker.adopt_cluster("new-broker")  # a second worker of the same broker keeps them
        assert await reader.bm25_offset("docs", 0) == 10
        assert await applied_positions(redis) == ("new-broker", {"docs:0": 10})  # what `fluxstream status` shows
    finally:
        await redis.flushdb()
        await redis.aclose()
