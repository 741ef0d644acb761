"""Change events on Kafka -> worker -> Redis + pgvector -> query service, on real servers."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from tests.conftest import TopicReader, change, eventually, send
from tests.helpers import assert_stats_match


async def search(http: httpx.AsyncClient, collection: str, query: str, mode: str = "bm25",
                 **extra: Any) -> dict[str, Any]:
    resp = await http.post("/v1/search", json={"query": query, "collection": collection, "mode": mode, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_create_update_delete_through_kafka(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, redis_client: aioredis.Redis,
    collection: str,
) -> None:
    topic = stack.documents_topic
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        def vectors_done(doc_id: str, version: int):
            return lambda e: (e[1]["collection"] == collection and e[1]["doc_id"] == doc_id
                              and e[1]["version"] == version and e[1]["stages"]["vectors"])

        # --- create
        await send(producer, topic, change("a", collection, "The quick brown fox jumps over the lazy dog",
                                           title="Fox", version=1, metadata={"lang": "en"}))
        await send(producer, topic, change("b", collection, "Streaming indexes keep search fresh",
                                           title="Streams", version=1, metadata={"lang": "en"}))
        await send(producer, topic, change("c", collection, "Le renard brun saute par-dessus le chien",
                                           title="Renard", version=1, metadata={"lang": "fr"}))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], 3)
        body = await search(http, collection, "fox")
        assert [h["doc_id"] for h in body["hits"]] == ["a"]
        assert body["hits"][0]["bm25"]["rank"] == 1
        hybrid = await search(http, collection, "a fast fox leaping", mode="hybrid")
        assert hybrid["hits"][0]["doc_id"] == "a"
        assert hybrid["hits"][0]["vector"] is not None and hybrid["hits"][0]["bm25"] is not None
        assert {"bm25", "vector", "fusion", "total"} <= set(hybrid["timings_ms"])
        filtered = await search(http, collection, "brun renard fox", filters={"lang": "fr"})
        assert [h["doc_id"] for h in filtered["hits"]] == ["c"]

        # --- update the text: old terms gone, new terms searchable, vectors replaced
        await send(producer, topic, change("a", collection, "A red panda naps in the bamboo", title="Panda",
                                           version=2, metadata={"lang": "en"}))
        [bm25_update] = await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["doc_id"] == "a"
                                               and e[1]["version"] == 2 and not e[1]["stages"]["vectors"])
        assert {"fox", "panda", "dog", "bamboo"} <= set(bm25_update[1]["terms"])  # old and new terms
        await updates.wait_for(vectors_done("a", 2))
        assert (await search(http, collection, "fox"))["hits"] == []
        assert [h["doc_id"] for h in (await search(http, collection, "panda"))["hits"]] == ["a"]
        doc = (await http.get(f"/v1/documents/a?collection={collection}")).json()
        assert doc["version"] == 2 and doc["title"] == "Panda" and not doc["deleted"]
        assert "red panda" in doc["chunks"][0]["text"] and doc["chunks"][0]["has_vector"]

        # --- metadata-only change: same text, new metadata everywhere (BM25 hit, vector filter)
        await send(producer, topic, change("a", collection, "A red panda naps in the bamboo", title="Panda",
                                           version=3, metadata={"lang": "zh"}))
        await updates.wait_for(vectors_done("a", 3))
        doc = (await http.get(f"/v1/documents/a?collection={collection}")).json()
        assert doc["version"] == 3 and doc["metadata"] == {"lang": "zh"}
        assert (await search(http, collection, "panda", filters={"lang": "en"}))["hits"] == []
        vec = await search(http, collection, "sleeping bear-like animal", mode="vector", filters={"lang": "zh"})
        assert [h["doc_id"] for h in vec["hits"]] == ["a"]

        # --- delete
        await send(producer, topic, change("b", collection, op="delete", version=2))
        await updates.wait_for(vectors_done("b", 2))
        assert (await search(http, collection, "streaming"))["hits"] == []
        assert all(h["doc_id"] != "b" for h in (await search(http, collection, "search", mode="vector"))["hits"])
        doc = (await http.get(f"/v1/documents/b?collection={collection}")).json()
        assert doc["deleted"] and doc["chunks"] == []

        # --- a stale event (older version) does not regress the document
        await send(producer, topic, change("a", collection, "The fox is back", version=1))
        await send(producer, topic, change("a", collection, "marker text zebra", version=4))
        await updates.wait_for(vectors_done("a", 4))
        assert (await search(http, collection, "fox"))["hits"] == []

    await assert_stats_match(redis_client, stack, collection, {
        "a": ("", "marker text zebra"),
        "c": ("Renard", "Le renard brun saute par-dessus le chien"),
    })


async def test_keyword_searchable_before_vectors(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, collection: str
) -> None:
    """The BM25 stage announces its update separately, before (or without) the vector stage."""
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await send(producer, stack.documents_topic, change("x", collection, "quasar luminosity", version=1))
        events = await updates.wait_for(lambda e: e[1]["collection"] == collection, count=2)
    stages = [e[1]["stages"] for e in events[:2]]
    assert stages[0] == {"bm25": True, "vectors": False}
    assert stages[1] == {"bm25": True, "vectors": True}
    assert events[0][1]["source"]["topic"] == stack.documents_topic
    assert events[0][1]["chunk_ids"] == ["x#0"]
    assert events[0][1]["terms"] == ["luminosity", "quasar"]
    hits = await eventually(lambda: _hits(http, collection, "quasar"))
    assert hits[0]["doc_id"] == "x"


async def _hits(http: httpx.AsyncClient, collection: str, query: str) -> list[dict[str, Any]]:
    return (await search(http, collection, query))["hits"]
