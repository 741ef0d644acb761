"""Property-style test through Kafka: a messy delivery (duplicates, late and reordered events)
builds exactly the index that a clean in-order delivery builds: postings, N, lengths, versions, vectors."""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.settings import Settings
from indexer.postings import PostingsStore
from tests.conftest import eventually
from tests.helpers import scan_postings

VOCAB = ["river", "stone", "cloud", "ember", "willow", "harbor", "lantern", "meadow", "quartz", "tundra",
         "violet", "canyon", "falcon", "glacier", "orchid", "prairie", "saffron", "thistle", "walnut", "zephyr"]


def history(rng: random.Random, docs: int, changes: int) -> list[dict[str, Any]]:
    """A clean per-document history: versions increase, deletes and re-creations included."""
    versions = dict.fromkeys(range(docs), 0)
    events = []
    for _ in range(changes):
        d = rng.randrange(docs)
        versions[d] += rng.randint(1, 3)
        op = "delete" if versions[d] > 1 and rng.random() < 0.15 else "upsert"
        text = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(3, 40)))
        events.append({"op": op, "doc_id": f"p{d}", "version": versions[d], "title": f"doc {d}",
                       "text": text if op == "upsert" else "", "metadata": {"bucket": d % 5}})
    return events


def messy(rng: random.Random, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Duplicates and stale redeliveries sprinkled in; some events swapped with the next one."""
    out: list[dict[str, Any]] = []
    for event in events:
        out.append(event)
        if rng.random() < 0.2:
            out.append(rng.choice(out))  # a duplicate of anything already sent (often stale by now)
    for i in range(len(out) - 1):
        if rng.random() < 0.1:
            out[i], out[i + 1] = out[i + 1], out[i]  # a retry overtaking the event before it
    return out


async def publish(producer: AIOKafkaProducer, topic: str, collection: str, events: list[dict[str, Any]]) -> None:
    for event in events:
        await producer.send(topic, key=event["doc_id"].encode(), value=orjson.dumps(event | {"collection": collection}))
    await producer.flush()


async def index_snapshot(redis: aioredis.Redis, database_url: str, collection: str) -> dict[str, Any]:
    store = PostingsStore(redis)
    stats = await store.stats(collection)
    doc_ids = sorted(await store.document_ids(collection))
    states = await store.read_documents([(collection, d) for d in doc_ids])
    docs = {d: (s.version, s.deleted, [(c.chunk_id, c.content_hash) for c in s.chunks]) for (_, d), s in states.items()}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT chunk_id, content_hash, version, metadata::text FROM fluxstream_chunks WHERE collection = %s "
            "ORDER BY chunk_id", (collection,))
        vectors = await cur.fetchall()
        cur = await conn.execute("SELECT doc_id, version, deleted FROM fluxstream_vector_versions "
                                 "WHERE collection = %s ORDER BY doc_id", (collection,))
        vector_versions = await cur.fetchall()
    return {"stats": (stats.chunks, stats.total_len, stats.docs), "postings": await scan_postings(redis, collection),
            "docs": docs, "vectors": vectors, "vector_versions": vector_versions}


async def test_messy_delivery_equals_clean_delivery(stack: Settings, producer: AIOKafkaProducer,
                                                    redis_client: aioredis.Redis) -> None:
    rng = random.Random(7)
    events = history(rng, docs=200, changes=700)
    final_versions = {e["doc_id"]: e["version"] for e in events}
    run = uuid.uuid4().hex[:8]
    clean, mixed = f"clean-{run}", f"messy-{run}"
    await publish(producer, stack.documents_topic, clean, events)
    await publish(producer, stack.documents_topic, mixed, messy(rng, events))

    async def caught_up(collection: str) -> bool:
        snap = await index_snapshot(redis_client, stack.database_url, collection)
        bm25_done = {d: v for d, (v, _, _) in snap["docs"].items()} == final_versions
        vectors_done = {d: v for d, v, _ in snap["vector_versions"]} == final_versions
        return bm25_done and vectors_done

    await eventually(lambda: caught_up(clean), timeout=180, interval=0.5)
    await eventually(lambda: caught_up(mixed), timeout=180, interval=0.5)
    expected = await index_snapshot(redis_client, stack.database_url, clean)
    actual = await index_snapshot(redis_client, stack.database_url, mixed)
    assert expected["stats"][0] > 0 and expected["vectors"]
    for part in ("stats", "postings", "docs", "vectors", "vector_versions"):
        assert actual[part] == expected[part], part
