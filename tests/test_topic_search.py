"""Search request/reply over Kafka topics, answered by the query service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from fluxstream.core.kafka import ReplyTopics, new_producer
from fluxstream.core.settings import Settings, SettingsError
from fluxstream.query.kafka_requests import send_within
from fluxstream.schemas.api import TopicSearchReply
from fluxstream.schemas.events import DeadLetter
from fluxstream.schemas.topics import create_topics, topic_names
from fluxstream.search_client import KafkaSearchClient, SearchTimeout
from fluxstream.stack import free_port
from tests.conftest import TopicReader, change, eventually, send
from tests.helpers import query_service


def searched(reply: TopicSearchReply) -> bool:
    """The request reached the search itself: "nothing-here" was never written, so that is its answer."""
    return reply.error is not None and reply.error.error == "collection_not_found"


async def test_concurrent_requests_bad_requests_and_deadlines(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, collection: str
) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for i, text in enumerate(["comets have icy tails", "asteroids are rocky", "planets orbit stars"]):
            await send(producer, stack.documents_topic, change(f"s{i}", collection, text, version=1))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=3)

    queries = ["comets", "rocky asteroids", "orbit", "icy tails", "stars"] * 8
    async with KafkaSearchClient(stack) as client:
        replies = await asyncio.gather(*(client.search(q, collection=collection, mode="hybrid", k=3)
                                         for q in queries))
        for query, reply in zip(queries, replies, strict=True):
            assert reply.status == "ok", reply
            expected = (await http.post("/v1/search", json={"query": query, "collection": collection,
                                                             "mode": "hybrid", "k": 3})).json()
            assert [h.chunk_id for h in reply.response.hits] == [h["chunk_id"] for h in expected["hits"]]

        invalid = await client.send_raw("bad-1", orjson.dumps({"request_id": "bad-1", "reply_to": client.reply_to,
                                                               "query": "comets", "k": 1000}))
        assert invalid.status == "error" and invalid.error.error == "invalid_request"
        assert any("k" in map(str, d["loc"]) for d in invalid.error.details)

        late = await client.search("comets", collection=collection, deadline_ms=1)
        assert late.status == "error" and late.error.error == "deadline_exceeded"

        unreached = await client.search("comets", collection=collection, wait_timeout_ms=100,
                                        min_position={"topic": stack.documents_topic, "partition": 0,
                                                      "offset": 10**12})
        assert unreached.status == "error" and unreached.error.error == "position_not_reached"

        missing = await client.search("comets", collection=f"{collection}-never")
        assert missing.status == "error" and missing.error.error == "collection_not_found", missing

    async with TopicReader(stack, stack.dead_letters_topic) as letters:
        await producer.send_and_wait(stack.search_requests_topic, key=b"junk-request", value=b"not json at all")
        [record] = await letters.wait_for_records(lambda r: r.key == b"junk-request")
    assert record.value == b"not json at all"
    assert DeadLetter.from_headers(list(record.headers)).reason == "invalid_json"


@pytest.fixture
async def own_service(stack: Settings) -> AsyncIterator[Settings]:
    """Settings of a query service with topics and a consumer group of its own (started by the test)."""
    run = uuid.uuid4().hex[:8]
    settings = replace(stack, http_port=free_port(), search_requests_topic=f"req-{run}",
                       search_replies_topic=f"fluxstream.search-replies.{run}", dead_letters_topic=f"dl-{run}",
                       app_id=f"topics-{run}")
    await create_topics(settings)
    yield settings


async def first_answer(client: KafkaSearchClient) -> None:
    """Until the service's consumer has joined its group (a new group starts at the latest offset)."""
    for _ in range(30):
        with contextlib.suppress(SearchTimeout):
            await client.search("warm up", collection="nothing-here", mode="bm25", timeout=2)
            return
    raise AssertionError("the query service never answered")


async def committed(settings: Settings, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_url, group_id=f"{settings.app_id}-query",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp) or -1
    finally:
        await consumer.stop()


async def test_a_request_that_cannot_be_answered_is_dead_lettered_and_blocks_nothing(
    own_service: Settings, producer: AIOKafkaProducer
) -> None:
    settings = own_service
    run = settings.app_id
    partitions = sorted(await producer.partitions_for(settings.search_requests_topic))
    valid_id = f"valid-{run}"
    partition = DefaultPartitioner()(valid_id.encode(), partitions, partitions)  # where the valid one goes
    poison = orjson.dumps({"request_id": f"poison-{run}", "reply_to": "bad topic!", "query": "x", "mode": "bm25"})
    async with query_service(settings), KafkaSearchClient(settings) as client:
        await first_answer(client)
        sent = await producer.send_and_wait(settings.search_requests_topic, key=b"poison", value=poison,
                                            partition=partition)
        await asyncio.sleep(2)  # as reported: the poison fetched alone, the valid request in a later batch
        started = time.monotonic()
        valid = await client.send_raw(valid_id, orjson.dumps(
            {"request_id": valid_id, "reply_to": client.reply_to, "query": "x", "mode": "bm25",
             "collection": "nothing-here"}), timeout=10)
        answered_in = time.monotonic() - started
        assert searched(valid), valid
        assert answered_in < 5, answered_in  # the poison before it on the same partition holds nothing up
        async with TopicReader(settings, settings.dead_letters_topic) as letters:
            [letter] = await letters.wait_for_records(lambda r: r.key == b"poison", timeout=10)
        assert letter.value == poison
        meta = DeadLetter.from_headers(list(letter.headers))
        assert meta.reason == "invalid_reply_to" and "bad topic!" in meta.detail and f"poison-{run}" in meta.detail
        assert (meta.source.partition, meta.source.offset) == (sent.partition, sent.offset)
        tp = TopicPartition(settings.search_requests_topic, sent.partition)
        await eventually(lambda: _past(settings, tp, sent.offset), timeout=10)  # committed past the poison

    # A restart resumes after the poison: it is neither met nor dead-lettered again.
    async with query_service(settings), KafkaSearchClient(settings) as client:
        await first_answer(client)
        again = await client.search("x", collection="nothing-here", mode="bm25", timeout=10)
        assert searched(again), again
    async with TopicReader(settings, settings.dead_letters_topic) as letters:
        with pytest.raises(TimeoutError):
            await letters.wait_for_records(lambda r: r.key == b"poison", count=2, timeout=3)
        assert [r.key for r in letters.records] == [b"poison"]


async def _past(settings: Settings, tp: TopicPartition, offset: int) -> bool:
    return await committed(settings, tp) > offset


async def test_replies_go_only_to_allowed_topics(own_service: Settings, producer: AIOKafkaProducer) -> None:
    settings = own_service
    request_id = f"to-documents-{settings.app_id}"
    request = orjson.dumps({"request_id": request_id, "reply_to": settings.documents_topic, "query": "x"})
    documents = AIOKafkaConsumer(bootstrap_servers=settings.kafka_url, group_id=None, enable_auto_commit=False)
    await documents.start()
    try:
        tps = [TopicPartition(settings.documents_topic, p)
               for p in sorted(await producer.partitions_for(settings.documents_topic))]
        documents.assign(tps)
        await documents.seek_to_end(*tps)
        for tp in tps:
            await documents.position(tp)
        async with query_service(settings), KafkaSearchClient(settings) as client:
            await first_answer(client)
            await producer.send_and_wait(settings.search_requests_topic, key=request_id.encode(), value=request)
            async with TopicReader(settings, settings.dead_letters_topic) as letters:
                [letter] = await letters.wait_for_records(lambda r: r.key == request_id.encode(), timeout=10)
            meta = DeadLetter.from_headers(list(letter.headers))
            assert meta.reason == "reply_to_not_allowed" and settings.documents_topic in meta.detail, meta
            assert letter.value == request
            # The refusal is settled before anything after it is answered: nothing reached the documents.
            await client.search("x", collection="nothing-here", mode="bm25", timeout=10)
        batches = await documents.getmany(timeout_ms=1000)
        assert not [r for rs in batches.values() for r in rs if r.key == request_id.encode()]
    finally:
        await documents.stop()


async def test_a_send_that_cannot_succeed_gives_up_within_its_budget(stack: Settings) -> None:
    """Replies are retried with backoff for FLUXSTREAM_REPLY_TIMEOUT, not for the producer's 40 s metadata wait."""
    producer = new_producer(stack, linger_ms=0)
    await producer.start()
    try:
        started = time.monotonic()
        error = await send_within(producer, "bad topic!", b"k", b"v", budget=2.0)
        assert error is not None and time.monotonic() - started < 3.0, error
        assert await send_within(producer, f"fluxstream.search-replies.{uuid.uuid4().hex[:8]}", b"k", b"v",
                                 budget=2.0) is None
    finally:
        await producer.stop()


def test_reply_topics_follow_kafka_rules_and_the_pattern(stack: Settings) -> None:
    rule = ReplyTopics(stack, protected=topic_names(stack))
    assert rule.refusal("fluxstream.search-replies") is None
    assert rule.refusal("fluxstream.search-replies.billing-7") is None
    for illegal in ("bad topic!", ".", "..", "", "r" * 250, "é", 42, None):
        assert rule.refusal(illegal)[0] == "invalid_reply_to", illegal
    for foreign in (stack.documents_topic, stack.dead_letters_topic, "fluxstream.search-repliesx", "r" * 249):
        assert rule.refusal(foreign)[0] == "reply_to_not_allowed", foreign
    with pytest.raises(ValueError, match=r"would include 'fluxstream\.documents'"):
        ReplyTopics(replace(stack, reply_topic_pattern="fluxstream[.].*"), protected=topic_names(stack))
    with pytest.raises(ValueError, match=r"would include 'fluxstream\.documents'"):  # the default follows renames
        ReplyTopics(replace(stack, search_replies_topic="fluxstream"), protected=topic_names(stack))
    renamed = ReplyTopics(replace(stack, search_replies_topic="app-7.replies"), protected=topic_names(stack))
    assert renamed.refusal("app-7.replies.web") is None and renamed.refusal("fluxstream.search-replies") is not None
    with pytest.raises(ValueError, match="not an allowed reply topic"):
        ReplyTopics(replace(stack, reply_topic_pattern="billing[.].+"))
    with pytest.raises(SettingsError, match="not a regular expression"):
        ReplyTopics(replace(stack, reply_topic_pattern="("))
    with pytest.raises(SettingsError, match=r"FLUXSTREAM_REPLY_TOPIC_PATTERN='\(': expected a regular expression"):
        Settings.from_env({"FLUXSTREAM_REPLY_TOPIC_PATTERN": "("})
    with pytest.raises(ValueError, match="will not reply there"):
        KafkaSearchClient(stack, reply_to=stack.documents_topic)


async def test_a_slow_request_holds_up_no_later_one(stack: Settings) -> None:
    """A request waiting for its read-your-writes position (4 s) must not delay requests fetched after it."""
    async with KafkaSearchClient(stack) as client:
        await first_answer(client)
        slow = asyncio.create_task(client.search(
            "x", collection="nothing-here", mode="bm25", wait_timeout_ms=4000, timeout=30,
            min_position={"topic": stack.documents_topic, "partition": 0, "offset": 10**12}))
        await asyncio.sleep(1)  # fetched apart from the slow one
        started = time.monotonic()
        quick = await client.search("x", collection="nothing-here", mode="bm25", timeout=30)
        quick_s = time.monotonic() - started
        assert searched(quick) and not slow.done()
        assert quick_s < 1.5, quick_s
        assert (await slow).error.error == "position_not_reached"


def test_a_bad_reply_topic_pattern_stops_the_query_service_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FLUXSTREAM_REDIS_URL": "redis://127.0.0.1:1", "FLUXSTREAM_DATABASE_URL": "postgresql://x",
           "FLUXSTREAM_REPLY_TOPIC_PATTERN": "fluxstream[.].*"}
    done = subprocess.run([sys.executable, "-m", "fluxstream.cli", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "fluxstream: reply topics (FLUXSTREAM_REPLY_TOPIC_PATTERN=fluxstream[.].*) would include "
        "'fluxstream.documents', a topic fluxstream reads or writes; replies must go to topics of their own"]
