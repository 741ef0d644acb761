"""Records just under and over every size limit on the worker's path, against the real broker.

The limits: ``max_text_bytes`` (title+text), the consumer's max partition fetch size (1 MiB, Faust's
default), the dead-letter limit (``dead_letter_max_bytes``) and the worker producer's request limit
(8 MiB). A record over any of them must end in the dead-letter topic once (cut to fit, with the
original's size and SHA-256) and never hold its partition: a 10 MB upsert used to be retried forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.indexer.positions import Positions
from fluxstream.schemas.decoding import RECORD_OVERHEAD, Rejected, dead_letter_record
from fluxstream.schemas.events import DeadLetter, SourcePosition
from fluxstream.schemas.topics import create_topics
from fluxstream.stack import AppProcesses, free_port
from fluxstream.streams.handlers.bm25 import RecordHandled
from fluxstream.streams.handlers.changes import ChangesHandler
from fluxstream.streams.pipeline import PRODUCER_MAX_REQUEST_BYTES, Pipeline, Resources
from tests.conftest import TopicReader, change, eventually

MiB = 1024 * 1024
FETCH_MAX_BYTES = MiB  # Faust's consumer_max_fetch_size (aiokafka's max_partition_fetch_bytes)


def _record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


def _upsert(doc_id: str, collection: str, size: int, version: int = 1) -> bytes:
    """An upsert whose JSON is ``size`` bytes: long words, so a big text makes few chunks to embed."""
    head = orjson.dumps(change(doc_id, collection, "", version=version))
    words = size - len(head)
    text = ("a" * 999 + " ") * (words // 1000) + "b" * (words % 1000)
    raw = orjson.dumps(change(doc_id, collection, text, version=version))
    assert len(raw) == size
    return raw


def _not_json(size: int) -> bytes:
    return b"{" + b"x" * (size - 1)


def test_a_dead_letter_is_whole_up_to_the_limit_and_cut_just_over_it() -> None:
    source = SourcePosition(topic="fluxstream.documents", partition=3, offset=12)
    rejected = Rejected("invalid_json", "unexpected character")
    limit = 10_000
    _, _, headers = dead_letter_record(rejected, source, b"key", b"", limit)
    room = limit - RECORD_OVERHEAD - _record_size(b"key", b"", headers)
    whole = b"v" * room
    key, value, headers = dead_letter_record(rejected, source, b"key", whole, limit)
    assert (key, value) == (b"key", whole)
    letter = DeadLetter.from_headers(headers)
    assert letter.original_size is None and letter.original_sha256 is None
    over = b"w" * (room + 1)
    key, value, headers = dead_letter_record(rejected, source, b"key", over, limit)
    letter = DeadLetter.from_headers(headers)
    assert key == b"key" and value is not None and over.startswith(value) and len(value) < len(over)
    assert letter.original_size == room + 1 and letter.original_sha256 == hashlib.sha256(over).hexdigest()
    assert _record_size(key, value, headers) + RECORD_OVERHEAD <= limit
    # A key that alone would not fit is cut too, and says so.
    key, value, headers = dead_letter_record(rejected, source, b"k" * 8000, over, limit)
    assert key == b"k" * 1024 and "key cut from 8000 bytes" in DeadLetter.from_headers(headers).detail
    assert _record_size(key, value, headers) + RECORD_OVERHEAD <= limit


async def test_records_around_every_size_limit(stack: Settings, collection: str) -> None:
    limit = min(stack.dead_letter_max_bytes, PRODUCER_MAX_REQUEST_BYTES)
    assert stack.max_text_bytes < FETCH_MAX_BYTES < PRODUCER_MAX_REQUEST_BYTES and limit <= 1_000_000
    cases: dict[str, tuple[bytes, str | None]] = {  # key -> (value, dead-letter reason or None: indexed)
        "text-under": (_upsert("text-under", collection, stack.max_text_bytes - 200), None),
        "text-over": (_upsert("text-over", collection, stack.max_text_bytes + 400), "oversized"),
        "letter-under": (_not_json(limit - 20_000), "invalid_json"),
        "letter-over": (_not_json(limit + 1), "invalid_json"),
        "fetch-under": (_upsert("fetch-under", collection, FETCH_MAX_BYTES - 100), "oversized"),
        "fetch-over": (_upsert("fetch-over", collection, FETCH_MAX_BYTES + 100), "oversized"),
        "request-under": (_upsert("request-under", collection, PRODUCER_MAX_REQUEST_BYTES - 4096), "oversized"),
        "request-over": (_upsert("request-over", collection, PRODUCER_MAX_REQUEST_BYTES + 4096), "oversized"),
        "ten-mb": (_upsert("ten-mb", collection, 10_000_000, version=1), "oversized"),
    }
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, acks="all", enable_idempotence=False,
                                max_request_size=16 * MiB)
    await producer.start()
    sources: dict[tuple[int, int], str] = {}
    try:
        async with TopicReader(stack, stack.dead_letters_topic) as letters, \
                TopicReader(stack, stack.index_updates_topic) as updates:
            for name, (value, _) in cases.items():
                key = f"{collection}/{name}".encode()
                meta = await producer.send_and_wait(stack.documents_topic, key=key, value=value)
                sources[(meta.partition, meta.offset)] = name
            # The same key as the 10 MB upsert, so on the same partition right after it.
            small = orjson.dumps(change("ten-mb", collection, "a small heron after the big one", version=2))
            await producer.send_and_wait(stack.documents_topic, key=f"{collection}/ten-mb".encode(), value=small)
            indexed = await updates.wait_for(
                lambda e: e[1]["collection"] == collection and e[1]["stages"]["bm25"], count=2, timeout=120)
            assert {(e["doc_id"], e["version"]) for _, e in indexed} == {("text-under", 1), ("ten-mb", 2)}
            expected = {name for name, (_, reason) in cases.items() if reason}
            dead = await letters.wait_for_records(lambda r: _source_of(r, stack) in sources, count=len(expected),
                                                  timeout=60)
            await asyncio.sleep(3)  # a retried batch would re-send its dead letters: give it time to show
            for batch in (await letters.consumer.getmany(timeout_ms=1000)).values():
                letters.records.extend(batch)
            dead = [r for r in letters.records if _source_of(r, stack) in sources]
    finally:
        await producer.stop()
    names = [sources[_source_of(r, stack)] for r in dead]
    assert sorted(names) == sorted(expected), "each refused record is dead-lettered exactly once"
    for record in dead:
        name = sources[_source_of(record, stack)]
        original, reason = cases[name]
        letter = DeadLetter.from_headers(list(record.headers))
        assert letter.reason == reason, (name, letter)
        assert _record_size(record.key, record.value, list(record.headers)) + RECORD_OVERHEAD <= limit, name
        if name == "letter-under":
            assert record.value == original and letter.original_size is None, name
        else:
            assert original.startswith(record.value) and len(record.value) < len(original), name
            assert letter.original_size == len(original), name
            assert letter.original_sha256 == hashlib.sha256(original).hexdigest(), name
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.worker_web_port}") as worker:
        ready = (await worker.get("/readyz")).json()
    assert ready["ready"] is True and not ready["batches_retrying"], ready


def _source_of(record: Any, stack: Settings) -> tuple[int, int] | None:
    letter = DeadLetter.from_headers(list(record.headers))
    if letter.source.topic != stack.documents_topic:
        return None
    return letter.source.partition, letter.source.offset


async def test_a_follow_up_record_too_large_to_publish_dead_letters_its_change(
        stack: Settings, tmp_path: Path) -> None:
    """An embed job carries the chunk texts JSON-escaped: with a larger text limit, a text of control
    characters makes one beyond the producer's 8 MiB. That change is dead-lettered; the next change of
    the same document (same partition) is indexed in both stages, and the worker stays ready."""
    tag = uuid.uuid4().hex[:8]
    settings = replace(stack, max_text_bytes=3_000_000, app_id=f"limits-{tag}", cdc_config="",
                       worker_web_port=free_port(), worker_stages="bm25,vectors",
                       **{f"{t}_topic": f"limits-{tag}.{t}" for t in ("documents", "embed_jobs", "index_updates",
                                                                        "dead_letters")})
    await create_topics(settings)
    apps = AppProcesses(settings, tmp_path)
    await asyncio.to_thread(apps.start_worker, "worker-0")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, acks="all", enable_idempotence=False,
                                max_request_size=16 * MiB)
    await producer.start()
    try:
        text = ("word" + "\u0001" * 996) * 2_500  # 2.5 MB; about 15 MB once escaped in an embed job
        big = orjson.dumps(change("doc", "limits", text, version=1))
        small = orjson.dumps(change("doc", "limits", "a small heron", version=2))
        async with TopicReader(settings, settings.dead_letters_topic) as letters, \
                TopicReader(settings, settings.index_updates_topic) as updates:
            meta = await producer.send_and_wait(settings.documents_topic, key=b"doc", value=big)
            dead = await letters.wait_for_records(lambda r: r.key == b"doc", timeout=90)
            # Its embed job never comes: a read-your-writes position at it must not wait for one.
            token = SourcePosition(topic=meta.topic, partition=meta.partition, offset=meta.offset)
            redis = aioredis.from_url(stack.redis_url)
            try:
                positions = Positions(redis)
                assert await eventually(lambda: positions.reached("limits", token, vectors=True), timeout=30)
            finally:
                await redis.aclose()
            # Only now: in one batch the two would fold into version 2 and no large job would exist.
            await producer.send_and_wait(settings.documents_topic, key=b"doc", value=small)
            done = await updates.wait_for(lambda e: e[1]["doc_id"] == "doc" and e[1]["version"] == 2
                                          and e[1]["stages"]["vectors"], timeout=120)
        letter = DeadLetter.from_headers(list(dead[0].headers))
        assert "MessageSizeTooLarge" in letter.detail, letter
        assert letter.original_sha256 == hashlib.sha256(big).hexdigest()
        assert done
        async with httpx.AsyncClient(base_url=apps.url("worker-0")) as worker:
            assert (await worker.get("/readyz")).json()["ready"] is True
    finally:
        await producer.stop()
        await asyncio.to_thread(apps.stop)


@dataclass
class Consumed:
    """A record as the pipeline takes it (Faust's message has these fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


async def test_a_record_given_up_by_its_agent_leaves_no_pending_mark(stack: Settings, collection: str) -> None:
    """The agent's last resort (``dead_letter_unhandled``, after the record kept failing on its own, for
    example a follow-up record the broker refused) dead-letters it and clears the pending mark its BM25
    write left: read-your-writes positions at or after it must not wait for an embed job that never comes."""
    tag = uuid.uuid4().hex[:8]
    settings = replace(stack, embed_in_child_process=False, cdc_config="",
                       **{f"{t}_topic": f"unhandled-{tag}.{t}" for t in ("documents", "embed_jobs", "index_updates",
                                                                           "dead_letters")})
    await create_topics(settings)  # nobody consumes these embed jobs: the mark stays unless cleared
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, acks="all", enable_idempotence=False)
    await producer.start()

    async def publish(topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        return await producer.send(topic, value, key=key, headers=headers)

    resources = await Resources.open(settings, settings.redis_url, settings.database_url)
    try:
        pipeline = Pipeline(settings, resources, publish)
        record = Consumed(settings.documents_topic, 0, 7, b"doc",
                          orjson.dumps(change("doc", collection, "a heron", version=1)))
        await ChangesHandler(pipeline)([record])
        await RecordHandled(pipeline)([record])
        token = SourcePosition(topic=record.topic, partition=0, offset=7)
        assert not await pipeline.positions.reached(collection, token, vectors=True)  # its job is pending
        async with TopicReader(settings, settings.dead_letters_topic) as letters:
            await pipeline.dead_letter_unhandled(record, "ProducerSendError: MessageSizeTooLargeError")
            dead = await letters.wait_for_records(lambda r: r.key == b"doc")
        assert DeadLetter.from_headers(list(dead[0].headers)).reason == "handler_failed"
        assert dead[0].value == record.value
        assert await pipeline.positions.reached(collection, token, vectors=True)
    finally:
        await resources.close()
        await producer.stop()
