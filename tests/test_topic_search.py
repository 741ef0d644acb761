"""Search request/reply over Kafka topics, answered by the query service."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from fluxstream.search_client import KafkaSearchClient
from fluxstream.settings import Settings
from schemas.events import DeadLetter
from tests.conftest import TopicReader, change, send


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

    async with TopicReader(stack, stack.dead_letters_topic) as letters:
        await producer.send_and_wait(stack.search_requests_topic, key=b"junk-request", value=b"not json at all")
        [record] = await letters.wait_for_records(lambda r: r.key == b"junk-request")
    assert record.value == b"not json at all"
    assert DeadLetter.from_headers(list(record.headers)).reason == "invalid_json"
