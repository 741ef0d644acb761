"""Debezium topics -> worker -> index, on real servers, for shapes real Debezium cannot produce here:
MySQL's envelope (no LSN, composite key) and crafted orderings (a row older than a truncate arriving
after it). PostgreSQL captured by real Debezium: tests/test_debezium_real.py.

The session worker reads the topics of tests/conftest.py's CDC_CONFIG.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.indexer.postings import PostingsStore
from tests.conftest import eventually
from tests.debezium_fixtures import envelope, mysql_source, pg_source, record
from tests.helpers import bm25_ids

ARTICLES = "pg.public.articles"


async def produce(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None) -> None:
    await producer.send_and_wait(topic, key=key, value=value)


async def doc(http: httpx.AsyncClient, collection: str, doc_id: str) -> dict[str, Any] | None:
    resp = await http.get(f"/v1/documents/{doc_id}", params={"collection": collection})
    return resp.json() if resp.status_code == 200 else None


async def test_connector_without_lsn_and_composite_key(stack: Settings, producer: AIOKafkaProducer,
                                                       http: httpx.AsyncClient) -> None:
    topic, coll = "mysql.shop.products", "cdc-products"
    key = orjson.dumps({"shop": "eu", "sku": "K-1"})
    row = {"shop": "eu", "sku": "K-1", "name": "Kettle", "description": "copper kettle"}
    await producer.send_and_wait(topic, key=key, value=orjson.dumps(
        envelope("c", mysql_source("products", 1_763_800_000_000, 10), after=row)))
    await producer.send_and_wait(topic, key=key, value=orjson.dumps(
        envelope("u", mysql_source("products", 1_763_800_000_000, 20), after=row | {"description": "steel kettle"})))
    await eventually(lambda: bm25_ids(http, coll, "steel"), timeout=60)
    assert await bm25_ids(http, coll, "copper") == []
    assert (await doc(http, coll, "eu|K-1"))["metadata"] == {"shop": "eu"}


async def test_truncate_clears_the_collection(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                                              redis_client: aioredis.Redis) -> None:
    topic, coll = "pg.public.notes", "cdc-notes"
    for i in range(1, 4):
        await produce(producer, topic, *record({"id": i}, envelope(
            "c", pg_source(1000 + i, "notes"), after={"id": i, "body": f"note {i} about walruses"})))
    await produce(producer, topic, *record(None, envelope("t", pg_source(2000, "notes"))))
    # Truncates are unkeyed, so Kafka does not order them with row events: a row older than the
    # truncate that arrives after it must stay out.
    await produce(producer, topic, *record({"id": 5}, envelope(
        "c", pg_source(1500, "notes"), after={"id": 5, "body": "late walruses from before the truncate"})))
    await produce(producer, topic, *record({"id": 9}, envelope(
        "c", pg_source(2100, "notes"), after={"id": 9, "body": "after the truncate, narwhals"})))
    async def settled() -> bool:  # the truncate and the rows may sit in different partitions
        return await bm25_ids(http, coll, "narwhals") == ["9"] and await bm25_ids(http, coll, "walruses") == []

    await eventually(settled, timeout=60)
    stats = await PostingsStore(redis_client).stats(coll)
    assert (stats.docs, stats.chunks) == (1, 1)
