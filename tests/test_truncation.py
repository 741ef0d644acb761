"""CDC truncates (issue 15, items 7 and 8): the truncation floor is part of the write script's atomic
check, so batches in flight cannot bring truncated rows back, and a truncate removes only the
truncated table's documents when several tables feed one collection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.apply import BM25Stage
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.documents import DocumentState, DocumentWrite
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.postings import PostingsStore, VersionConflict
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.indexer.write_plan import CollectionWrite, plan_writes
from fluxstream.schemas.events import DocumentChange, SourcePosition
from tests.conftest import eventually
from tests.debezium_fixtures import envelope, pg_source, record
from tests.helpers import bm25_ids


def upsert(collection: str, doc_id: str, version: int, table: str | None) -> list[CollectionWrite]:
    """The plan writing the first version of a document."""
    return plan_writes([DocumentWrite(DocumentState(collection, doc_id),
                                      DocumentState(collection, doc_id, version, title="t", table=table))])


async def test_the_write_script_refuses_an_upsert_at_or_below_its_tables_floor(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    store = PostingsStore(redis_client)
    big = 2**62 + 1  # not a double: the check must compare exactly
    await store.raise_truncation(collection, "notes", big)
    for version in (2**62, big):
        try:
            await store.write_documents(upsert(collection, "a", version, "notes"), updated_at="now")
            raise AssertionError(f"version {version} at or below the floor was written")
        except VersionConflict:
            pass
        assert (await store.get_document(collection, "a")).version is None  # nothing of the plan was written
    await store.write_documents(upsert(collection, "a", big + 1, "notes"), updated_at="now")
    await store.write_documents(upsert(collection, "b", 7, "posts"), updated_at="now")  # another table's floor
    await store.write_documents(upsert(collection, "c", 7, None), updated_at="now")  # native: no table
    states = await store.read_documents([(collection, d) for d in "abc"])
    assert [s.version for s in states.values()] == [big + 1, 7, 7]
    assert (await store.get_document(collection, "a")).table == "notes"


class FloorRaisedAfterTheRead(PostingsStore):
    """Forces the interleaving of batches in flight: a truncate raises the floor just after this
    batch read it (the old code then wrote the row, which survived the truncate)."""

    def __init__(self, redis: aioredis.Redis, collection: str, table: str, floor: int) -> None:
        super().__init__(redis)
        self.truncate = (collection, table, floor)
        self.reads = 0

    async def truncations(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        floors = await super().truncations(refs)
        self.reads += 1
        if self.reads == 1:
            await self.raise_truncation(*self.truncate)
        return floors


async def test_a_batch_that_read_the_floor_before_a_truncate_cannot_bring_a_row_back(
        stack: Settings, redis_client: aioredis.Redis, collection: str) -> None:
    store = FloorRaisedAfterTheRead(redis_client, collection, "notes", 2000)
    tokenizer = build_tokenizer(stack)
    stage = BM25Stage(store, DocumentBuilder(Chunker(64, 8, tokenizer), tokenizer))
    change = DocumentChange(op="upsert", doc_id="1", collection=collection, version=1500, text="walrus")
    outcome = await stage.apply([SourcedChange(change, SourcePosition(topic="t", partition=0, offset=0),
                                               table="notes")])
    assert store.reads == 2  # refused by the script, re-read, then skipped
    assert outcome.applied == 0 and outcome.embed_jobs == []
    assert (await store.get_document(collection, "1")).version is None


async def handled(redis: aioredis.Redis, sent: list[Any]) -> bool:
    """The worker has handled every record in ``sent`` (record metadata), truncates included."""
    ends: dict[str, int] = {}
    for meta in sent:
        field = f"{meta.topic}:{meta.partition}"
        ends[field] = max(ends.get(field, -1), meta.offset)
    values = await redis.hmget(keyspace.APPLIED, *ends)
    return all(v is not None and int(v) >= end for v, end in zip(values, ends.values(), strict=True))


async def test_rows_written_just_before_a_truncate_never_survive_it(
        stack: Settings, producer: AIOKafkaProducer, redis_client: aioredis.Redis) -> None:
    """300 creates then a truncate, back to back, round after round, with the worker's default
    FLUXSTREAM_BATCHES_IN_FLIGHT (4): the issue saw survivors in 2 of 13 rounds."""
    assert stack.batches_in_flight == 4
    topic, coll, rows = "pg.public.burst", "cdc-burst", 300
    store = PostingsStore(redis_client)
    survivors: dict[int, list[str]] = {}
    for round_no in range(10):
        base = 100_000 * (round_no + 1)
        ids = [round_no * 1000 + i for i in range(rows)]
        events = [record({"id": i}, envelope("c", pg_source(base + n, "burst"),
                                             after={"id": i, "body": f"row {i} of round {round_no}"}))
                  for n, i in enumerate(ids)]
        events.append(record(None, envelope("t", pg_source(base + rows, "burst"))))
        futures = [await producer.send(topic, key=key, value=value) for key, value in events]
        sent = await asyncio.gather(*futures)
        await eventually(lambda sent=sent: handled(redis_client, sent), timeout=60, interval=0.2)
        states = await store.read_documents([(coll, str(i)) for i in ids])
        survivors[round_no] = sorted(ref[1] for ref, state in states.items() if state.live)
    assert survivors == {round_no: [] for round_no in range(10)}
    assert (await store.stats(coll)).docs == 0


async def send(producer: AIOKafkaProducer, topic: str, key_value: tuple[bytes | None, bytes | None]) -> None:
    key, value = key_value
    await producer.send_and_wait(topic, key=key, value=value)


async def test_a_truncate_removes_only_its_own_tables_documents(
        stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient) -> None:
    """posts and comments feed cdc-mixed: row 1 of each is its own document, and truncating comments
    leaves the posts."""
    coll = "cdc-mixed"
    for table, lsn in (("posts", 10), ("comments", 20)):
        for i in (1, 2):
            await send(producer, f"pg.public.{table}", record({"id": i}, envelope(
                "c", pg_source(lsn + i, table), after={"id": i, "body": f"otter {table} {i}"})))

    async def indexed(expected: list[str]) -> bool:
        return await bm25_ids(http, coll, "otter") == expected

    await eventually(lambda: indexed(["comments:1", "comments:2", "posts:1", "posts:2"]), timeout=60)
    await send(producer, "pg.public.comments", record(None, envelope("t", pg_source(100, "comments"))))
    await send(producer, "pg.public.comments", record({"id": 3}, envelope(
        "c", pg_source(110, "comments"), after={"id": 3, "body": "otter comments 3"})))
    await eventually(lambda: indexed(["comments:3", "posts:1", "posts:2"]), timeout=60)
    resp = await http.get("/v1/documents/comments:1", params={"collection": coll})
    assert resp.status_code == 200 and resp.json()["deleted"]
