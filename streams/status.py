"""`fluxstream status`: per collection counts and positions, per partition consumer lag."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fluxstream.settings import Settings
from indexer.positions import APPLIED_KEY
from indexer.postings import PostingsStore


async def consumer_lag(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Committed offset of the worker group and end offset, per partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_url)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_url)
    await admin.start()
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = await consumer.end_offsets(tps) if tps else {}
        committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps) if tps else {}
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for tp in tps:
        done = committed.get(tp)
        offset = done.offset if done is not None and done.offset >= 0 else 0
        rows.append({"topic": topic, "partition": tp.partition, "committed": offset, "end": ends[tp],
                     "lag": max(0, ends[tp] - offset)})
    return rows


async def collection_status(redis: aioredis.Redis) -> dict[str, Any]:
    store = PostingsStore(redis)
    applied = {k.decode(): int(v) for k, v in (await redis.hgetall(APPLIED_KEY)).items()}
    rows = []
    for name in await store.collections():
        stats = await store.stats(name)
        rows.append({"collection": name, "documents": stats.docs, "chunks": stats.chunks,
                     "change_seq": await store.change_seq(name)})
    return {"applied_positions": applied, "collections": rows}


async def status(settings: Settings) -> dict[str, Any]:
    redis = aioredis.from_url(settings.redis_url)
    try:
        collections = await collection_status(redis)
    finally:
        await redis.aclose()
    lag = []
    for topic in (settings.documents_topic, settings.embed_jobs_topic):
        lag += await consumer_lag(settings, topic)
    return {**collections, "consumer_lag": lag}
