"""``DeadLetters``, the one site where every consumer turns a rejected record into a dead letter (real broker)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.schemas.decoding import DeadLetters, Rejected, decode
from fluxstream.schemas.events import DeadLetter, EmbedJob, SourcePosition
from fluxstream.schemas.topics import create_topics
from tests.conftest import TopicReader


@dataclass
class Raw:
    key: bytes | None
    value: bytes | None


async def _sink(stack: Settings, max_request_size: int) -> tuple[AIOKafkaProducer, DeadLetters, str]:
    topic = f"sink-{uuid.uuid4().hex[:8]}.dead-letters"
    await create_topics(replace(stack, dead_letters_topic=topic))
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, max_request_size=max_request_size)
    await producer.start()

    async def send(topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]]) -> Awaitable[object]:
        return await producer.send(topic, value, key=key, headers=headers)

    return producer, DeadLetters(send, topic, max_bytes=1024 * 1024), topic


async def test_a_record_that_does_not_decode_is_dead_lettered_with_its_reason_and_bytes(stack: Settings) -> None:
    producer, letters, topic = await _sink(stack, max_request_size=1024 * 1024)
    try:
        sends: list[Awaitable[object]] = []
        source = SourcePosition(topic="embed-jobs", partition=2, offset=41)
        taken = await letters.take(Raw(b"k", b"{not json"), source, lambda raw: decode(raw, EmbedJob), sends)
        assert taken is None and len(sends) == 1
        await asyncio.gather(*sends)
        async with TopicReader(stack, topic) as reader:
            [record] = await reader.wait_for_records(lambda r: r.key == b"k")
        letter = DeadLetter.from_headers(list(record.headers))
        assert (letter.reason, letter.source.offset, record.value) == ("invalid_json", 41, b"{not json")
        assert letters.rejected == 1
    finally:
        await producer.stop()


async def test_a_dead_letter_refused_for_good_goes_again_without_its_payload(stack: Settings) -> None:
    """The producer refuses the 200 KB dead letter (its request limit is 64 KB): it is sent once more
    with the payload cut away, its size and SHA-256 kept, instead of holding the record for ever."""
    producer, letters, topic = await _sink(stack, max_request_size=64 * 1024)
    big = b"x" * 200_000
    try:
        sent = await letters.reject(Rejected("oversized", "too big"), SourcePosition(topic="t", partition=0, offset=7),
                                    b"big", big)
        await asyncio.wait_for(sent, 30)
        async with TopicReader(stack, topic) as reader:
            [record] = await reader.wait_for_records(lambda r: r.key == b"big")
        letter = DeadLetter.from_headers(list(record.headers))
        assert record.value == b"" and letter.reason == "oversized"
        assert (letter.original_size, letter.original_sha256) == (len(big), hashlib.sha256(big).hexdigest())
    finally:
        await producer.stop()
