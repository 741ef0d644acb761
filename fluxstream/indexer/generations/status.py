"""`fluxstream status`: per collection generations, counts and positions; per partition consumer lag of the
worker's topics (documents, embed jobs and every CDC topic of ``FLUXSTREAM_CDC_CONFIG``)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.core.topic_range import group_offsets
from fluxstream.indexer.generations.registry import GenerationRegistry, index_name, parse_index_name
from fluxstream.indexer.positions import applied_positions
from fluxstream.indexer.postings import PostingsStore
from fluxstream.schemas.cdc_mapping import CdcMapping


async def consumer_lag(settings: Settings, *topics: str) -> list[dict[str, Any]]:
    """One row per partition; ``ahead``: the group committed past the end, which a consistent broker
    never shows (the topic was recreated or lost records, e.g. an in-memory broker restarted)."""
    return [{"topic": topic, "partition": p, "committed": committed[p], "end": end, "lag": max(0, end - committed[p]),
             "ahead": committed[p] > end}
            for topic, (committed, ends) in (await group_offsets(settings, *topics)).items()
            for p, end in ends.items()]


async def collection_status(redis: aioredis.Redis) -> dict[str, Any]:
    """One row per collection: its serving generation's counts, and any rebuild in progress."""
    store = PostingsStore(redis)
    registry = GenerationRegistry(redis)
    cluster, applied = await applied_positions(redis)
    names = await store.collections()
    collections = sorted({parse_index_name(n)[0] for n in names} | {s.collection for s in await registry.all()})
    states = await registry.get_many(collections)
    rows = []
    for collection in collections:
        state = states[collection]
        serving = index_name(collection, state.serving)
        stats = await store.stats(serving)
        row: dict[str, Any] = {
            "collection": collection, "generation": state.serving, "index": serving, "documents": stats.docs,
            "chunks": stats.chunks, "change_seq": await store.change_seq(serving), "building": None,
            "retiring": state.retiring, "retire_after": state.retire_after,
        }
        if state.building is not None:
            building = await store.stats(index_name(collection, state.building))
            row["building"] = {"generation": state.building, "state": state.state, "documents": building.docs,
                               "chunks": building.chunks, **state.progress}
        rows.append(row)
    return {"applied_positions": applied, "kafka_cluster": cluster, "collections": rows}


async def status(settings: Settings) -> dict[str, Any]:
    redis = aioredis.from_url(settings.redis_url)
    try:
        collections = await collection_status(redis)
    finally:
        await redis.aclose()
    cdc_topics = CdcMapping.from_settings(settings).topics
    lag = await consumer_lag(settings, settings.documents_topic, settings.embed_jobs_topic, *cdc_topics)
    return {**collections, "consumer_lag": lag}
