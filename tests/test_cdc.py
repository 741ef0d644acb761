"""Debezium topics -> worker -> index, on real servers: a snapshot then live changes, every event shape.

The session worker reads the topics of tests/conftest.py's CDC_CONFIG.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.settings import Settings
from indexer.postings import PostingsStore
from tests.conftest import eventually
from tests.debezium_fixtures import TOAST, envelope, mysql_source, pg_source, record, unwrapped
from tests.helpers import assert_stats_match

ARTICLES = "pg.public.articles"


def article(i: int, title: str, body: str, author: str = "ann") -> dict[str, Any]:
    return {"id": i, "title": title, "summary": f"summary {i}", "body": body, "author": author, "tags": None,
            "internal_notes": "never indexed"}


async def produce(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None) -> None:
    await producer.send_and_wait(topic, key=key, value=value)


async def doc(http: httpx.AsyncClient, collection: str, doc_id: str) -> dict[str, Any] | None:
    resp = await http.get(f"/v1/documents/{doc_id}", params={"collection": collection})
    return resp.json() if resp.status_code == 200 else None


async def bm25_ids(http: httpx.AsyncClient, collection: str, query: str) -> list[str]:
    resp = await http.post("/v1/search", json={"query": query, "collection": collection, "mode": "bm25", "k": 50})
    return sorted(h["doc_id"] for h in resp.json()["hits"])


async def test_snapshot_then_live_changes(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                                          redis_client: aioredis.Redis) -> None:
    coll = "cdc-articles"
    # --- snapshot (op r), schema-wrapped as with schemas.enable=true
    for i, (title, body) in enumerate([("Alpha", "aardvark burrows"), ("Beta", "badger setts"),
                                       ("Gamma", "gecko toes")], start=1):
        snapshot = "last" if i == 3 else "true"
        await produce(producer, ARTICLES, *record({"id": i}, envelope(
            "r", pg_source(100, "articles", snapshot=snapshot), after=article(i, title, body)), with_schema=True))
    async def snapshot_indexed() -> bool:  # the rows sit in different partitions: wait for all of them
        return await bm25_ids(http, coll, "aardvark badger gecko") == ["1", "2", "3"]

    await eventually(snapshot_indexed, timeout=60)

    # --- live changes, without the schema wrapper
    await produce(producer, ARTICLES, *record({"id": 1}, envelope(
        "u", pg_source(200, "articles"), before=None, after=article(1, "Alpha", "armadillo plates"))))
    await produce(producer, ARTICLES, *record({"id": 2}, envelope("d", pg_source(210, "articles"), before={"id": 2})))
    await produce(producer, ARTICLES, *record({"id": 2}, None))  # tombstone: nothing happens
    await produce(producer, ARTICLES, *record({"id": 4}, envelope(
        "c", pg_source(220, "articles"), after=article(4, "Delta", "dingo dens"))))
    # unchanged TOAST column: the body keeps its indexed value, the title changes
    await produce(producer, ARTICLES, *record({"id": 3}, envelope(
        "u", pg_source(230, "articles"), after=article(3, "Gamma v2", TOAST))))
    # primary key 4 -> 5: delete of the old key, tombstone, create of the new key
    await produce(producer, ARTICLES, *record({"id": 4}, envelope("d", pg_source(240, "articles"), before={"id": 4})))
    await produce(producer, ARTICLES, *record({"id": 4}, None))
    await produce(producer, ARTICLES, *record({"id": 5}, envelope(
        "c", pg_source(240, "articles"), after=article(5, "Delta", "dingo dens"))))
    # redelivery of old events (connector restart): must not regress anything
    await produce(producer, ARTICLES, *record({"id": 1}, envelope(
        "r", pg_source(100, "articles", snapshot="true"), after=article(1, "Alpha", "aardvark burrows"))))
    await produce(producer, ARTICLES, *record({"id": 4}, envelope(
        "c", pg_source(220, "articles"), after=article(4, "Delta", "dingo dens"))))
    # the unwrapped (ExtractNewRecordState) form, last so we can wait for it
    await produce(producer, ARTICLES, *record({"id": 6}, unwrapped(article(6, "Epsilon", "eland herds"),
                                                                    op="c", lsn=250, table="articles")))

    async def live_changes_applied() -> bool:  # every key's last event, whatever its partition
        expected = {"eland": ["6"], "armadillo": ["1"], "dingo": ["5"], "badger": [], "aardvark": [],
                    "gecko": ["3"]}
        for query, ids in expected.items():
            if await bm25_ids(http, coll, query) != ids:
                return False
        gamma = await doc(http, coll, "3")
        return gamma is not None and gamma["version"] == 230

    await eventually(live_changes_applied, timeout=60)
    assert await bm25_ids(http, coll, "aardvark") == []
    assert await bm25_ids(http, coll, "armadillo") == ["1"]
    assert await bm25_ids(http, coll, "badger") == []
    assert await bm25_ids(http, coll, "dingo") == ["5"]
    assert await bm25_ids(http, coll, "gecko") == ["3"]  # kept through the TOAST placeholder
    assert TOAST.lower() not in str(await doc(http, coll, "3"))
    gamma = await doc(http, coll, "3")
    assert gamma is not None and gamma["title"] == "Gamma v2" and gamma["version"] == 230
    assert (await doc(http, coll, "2"))["deleted"] and (await doc(http, coll, "4"))["deleted"]
    assert (await doc(http, coll, "1"))["metadata"] == {"author": "ann", "tags": None}
    await assert_stats_match(redis_client, stack, coll, {
        "1": ("Alpha", "summary 1\n\narmadillo plates"),
        "3": ("Gamma v2", "summary 3\n\ngecko toes"),
        "5": ("Delta", "summary 5\n\ndingo dens"),
        "6": ("Epsilon", "summary 6\n\neland herds"),
    })


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
