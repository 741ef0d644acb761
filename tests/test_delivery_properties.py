"""Property-style test through Kafka: a messy delivery (duplicates, late and reordered events)
builds exactly the index that a clean in-order delivery builds: postings, N, lengths, versions, vectors."""

from __future__ import annotations

import random
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from tests.helpers import assert_same_index, history, messy, publish


async def test_messy_delivery_equals_clean_delivery(stack: Settings, producer: AIOKafkaProducer,
                                                    redis_client: aioredis.Redis) -> None:
    rng = random.Random(7)
    events = history(rng, docs=200, changes=700)
    final_versions = {e["doc_id"]: e["version"] for e in events}
    run = uuid.uuid4().hex[:8]
    clean, mixed = f"clean-{run}", f"messy-{run}"
    await publish(producer, stack.documents_topic, clean, events)
    await publish(producer, stack.documents_topic, mixed, messy(rng, events))

    await assert_same_index(redis_client, stack.database_url, clean, mixed, final_versions)
