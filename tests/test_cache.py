"""The semantic cache is never stale, invalidates precisely, and serves near-duplicates."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.embedders.base import model_input
from fluxstream.indexer.embedders.coalescing import CoalescingEmbedder
from fluxstream.indexer.embedders.minilm import LocalMiniLMEmbedder
from fluxstream.indexer.embedders.openai_compat import OpenAICompatibleEmbedder
from fluxstream.indexer.postings import PostingsStore
from fluxstream.query.cache.keys import params_digest
from fluxstream.schemas.api import SearchRequest
from tests.conftest import TopicReader, change, eventually, send

STABLE = ["granite quarry stone", "maple syrup harvest", "violin concerto strings", "glacier ice melt",
          "honeybee hive pollen", "lighthouse coast beacon", "saffron spice market", "falcon flight hunting",
          "cello suite for strings", "string quartet rehearsal", "viola and violin duet", "orchestra string section",
          "fiddle tunes on a violin"]
CHURN = ["tidal marsh heron", "desert cactus bloom", "volcanic ash cloud", "coral reef fish"]


async def search(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post("/v1/search", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def comparable(response: dict[str, Any]) -> list[tuple[str, float, str]]:
    return [(h["chunk_id"], round(h["score"], 6), h["text"]) for h in response["hits"]]


async def index(stack: Settings, producer: AIOKafkaProducer, collection: str, docs: dict[str, str]) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for doc_id, text in docs.items():
            await send(producer, stack.documents_topic, change(doc_id, collection, text))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"]
                               and e[1]["doc_id"] in docs, count=len(docs))


async def test_cache_hits_equal_fresh_searches_while_the_corpus_changes(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, redis_client: aioredis.Redis,
    collection: str,
) -> None:
    docs = {f"s{i}": f"{text} number {i}" for i, text in enumerate(STABLE)}
    docs |= {f"c{i}": f"{text} changing {i}" for i, text in enumerate(CHURN)}
    await index(stack, producer, collection, docs)
    store = PostingsStore(redis_client)
    stop = asyncio.Event()

    async def churn() -> None:  # updates, deletes and inserts on the churn part, plus a shared term
        rng = random.Random(5)
        n = 0
        while not stop.is_set():
            n += 1
            doc_id = f"c{rng.randrange(6)}"
            if rng.random() < 0.2:
                event = change(doc_id, collection, op="delete")
            else:
                event = change(doc_id, collection, f"{rng.choice(CHURN)} {rng.choice(['stone', 'heron', 'ash'])} {n}")
            await send(producer, stack.documents_topic, event)
            await asyncio.sleep(0.15)

    queries = [("granite stone", "bm25"), ("maple syrup", "hybrid"), ("violin strings", "vector"),
               ("heron marsh", "hybrid"), ("stone", "bm25"), ("ash cloud", "vector"), ("honeybee pollen", "bm25"),
               ("violin strings", "vector")]
    stats = {"compared": 0, "mismatches": 0, "stable_hits": 0, "stable_lookups": 0}

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            query, mode = rng.choice(queries)
            body = {"query": query, "collection": collection, "mode": mode, "k": 5}
            before = await store.change_seq(collection)
            cached = await search(http, body)
            fresh = await search(http, body | {"cache": False})
            after = await store.change_seq(collection)
            if mode == "vector" and query == "violin strings":  # far from every churned document
                stats["stable_lookups"] += 1
                stats["stable_hits"] += cached["cache"]["status"] != "miss"
            if cached["cache"]["status"] in ("exact", "semantic") and before == after:
                stats["compared"] += 1
                if comparable(cached) != comparable(fresh):
                    stats["mismatches"] += 1
                    stats.setdefault("examples", []).append((query, mode, cached["cache"], comparable(cached),
                                                             comparable(fresh)))

    churner = asyncio.create_task(churn())
    clients = [asyncio.create_task(client(seed)) for seed in range(4)]
    await asyncio.sleep(15)
    stop.set()
    await asyncio.gather(churner, *clients)
    assert stats["mismatches"] == 0, stats
    assert stats["compared"] >= 15, stats
    assert stats["stable_hits"] / max(1, stats["stable_lookups"]) > 0.5, stats


async def test_a_new_top_document_invalidates_bm25_and_vector_entries(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, collection: str
) -> None:
    await index(stack, producer, collection, {"a": "a xylophone in the orchestra", "b": "kittens sleeping in a basket",
                                              "c": "rainy weather in autumn"})
    bm25 = {"query": "xylophone", "collection": collection, "mode": "bm25"}
    vector = {"query": "a small dog barking loudly", "collection": collection, "mode": "vector", "k": 1}
    for body in (bm25, vector):
        await search(http, body)
        assert (await search(http, body))["cache"]["status"] == "exact"
    before = (await http.get("/v1/cache/stats")).json()["invalidations"]
    # The BM25 case: more occurrences of the term; the vector case: a close paraphrase with no shared term.
    await index(stack, producer, collection, {"x": "xylophone xylophone xylophone",
                                              "p": "puppy yapping noisily"})

    async def agent_invalidated_both() -> bool:  # the worker's agent, before any lookup checks them
        return (await http.get("/v1/cache/stats")).json()["invalidations"] >= before + 2

    await eventually(agent_invalidated_both, timeout=30)
    bm25_after = await search(http, bm25)
    assert bm25_after["cache"]["status"] == "miss" and bm25_after["hits"][0]["doc_id"] == "x"
    vector_after = await search(http, vector)
    assert vector_after["cache"]["status"] == "miss" and vector_after["hits"][0]["doc_id"] == "p"
    stats = (await http.get("/v1/cache/stats")).json()
    assert stats["enabled"] and stats["hits"] >= 2 and stats["misses"] >= 4 and 0 < stats["hit_rate"] < 1


async def test_near_duplicate_query_is_a_semantic_hit(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, collection: str
) -> None:
    await index(stack, producer, collection, {"v": "vector databases answer similarity search over embeddings",
                                              "w": "sourdough bread needs a starter"})
    first = await search(http, {"query": "how do vector databases work", "collection": collection})
    assert first["cache"]["status"] == "miss"
    near = await search(http, {"query": "How do  vector databases WORK", "collection": collection})
    assert near["cache"]["status"] == "exact"  # case and white space are normalised away
    similar = await search(http, {"query": "how does a vector database work", "collection": collection})
    assert similar["cache"]["status"] == "semantic", similar["cache"]
    assert similar["cache"]["cached_query"] == "how do vector databases work"
    assert similar["cache"]["similarity"] >= 0.95
    assert [h["chunk_id"] for h in similar["hits"]] == [h["chunk_id"] for h in first["hits"]]
    other = await search(http, {"query": "how do vector databases work", "collection": collection, "k": 3})
    assert other["cache"]["status"] == "miss"  # another parameter set never shares entries


async def test_a_hit_shows_the_current_record_of_its_answer(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, redis_client: aioredis.Redis,
    collection: str,
) -> None:
    """Enrichment lands on chunk records without moving postings, so entries stay valid; a hit must still
    show the record as it is now (the cache reads the records it answered with along with the hit)."""
    await index(stack, producer, collection, {"m": "marmalade recipe with oranges", "n": "bread baking at home"})
    body = {"query": "marmalade oranges", "collection": collection, "mode": "bm25", "k": 1}
    await search(http, body)
    assert "enrich_shelf" not in (await search(http, body))["hits"][0]["metadata"]
    chunk = keyspace.chunk(collection, "m#0")
    await redis_client.hset(chunk, "enrich", orjson.dumps({"enrich_shelf": "jams"}))  # as the enrich stage writes
    after = await search(http, body)
    assert after["cache"]["status"] == "exact"  # the same retrieval, replayed...
    assert after["hits"][0]["metadata"]["enrich_shelf"] == "jams"  # ...with the live record


# (cached query, then a variant): whether each mode's retrievers read the two alike. BM25 reads the
# tokenizer's terms (NFKC + case folding: all three alike); the local model reads its tokenizer's ids
# (lower-cased, but no NFKC and "ß" kept: full-width letters become [UNK], "STRAẞE" is "straße").
VARIANTS = [("river stone", "ＲＩＶＥＲ ＳＴＯＮＥ", {"bm25"}),
            ("strasse", "STRAẞE", {"bm25"}),
            ("straße", "STRAẞE", {"bm25", "vector", "hybrid"}),
            ("river stone", "RIVER STONE", {"bm25", "vector", "hybrid"})]


async def test_an_exact_hit_only_merges_queries_every_retriever_reads_alike(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, collection: str
) -> None:
    await index(stack, producer, collection, {"r": "river stone by the water", "s": "a quiet strasse in the old town",
                                              "m": "mountain stream over granite rocks",
                                              "p": "pebbles on the lake shore", "g": "die straße am fluss"})
    k = 2
    for base, variant, alike in VARIANTS:
        for mode in ("bm25", "vector", "hybrid"):
            k += 1  # a parameter set of its own per case: no other case's entry can answer
            body = {"collection": collection, "mode": mode, "k": k}
            assert (await search(http, body | {"query": base}))["cache"]["status"] == "miss"
            cached = await search(http, body | {"query": variant})
            fresh = await search(http, body | {"query": variant, "cache": False})
            status = cached["cache"]["status"]
            case = (base, variant, mode, cached["cache"], comparable(cached), comparable(fresh))
            assert (status == "exact") == (mode in alike), case
            if status == "exact":
                assert comparable(cached) == comparable(fresh), case
            elif status == "semantic":  # labelled as another query's answer, and exactly that answer
                assert cached["cache"]["cached_query"] == base, case
                assert comparable(cached) == comparable(await search(http, body | {"query": base, "cache": False}))


def test_model_input_is_what_the_model_receives() -> None:
    """The exact key's vector part: equal model inputs embed identically; an unknown model sees raw text."""
    local = LocalMiniLMEmbedder()
    assert model_input(local, "RIVER STONE") == model_input(local, "river  stone")
    assert model_input(local, "ＲＩＶＥＲ ＳＴＯＮＥ") != model_input(local, "river stone")
    assert model_input(local, "STRAẞE") == model_input(local, "straße") != model_input(local, "strasse")
    assert model_input(CoalescingEmbedder(local), "STRAẞE") == model_input(local, "STRAẞE")
    vectors = local.embed_sync(["RIVER STONE", "river  stone"])
    assert np.array_equal(vectors[0], vectors[1])
    remote = OpenAICompatibleEmbedder("any-model", base_url="http://127.0.0.1:9", dimensions=8)
    assert model_input(remote, "RIVER STONE") != model_input(remote, "river stone")
    assert model_input(remote, "river stone") == model_input(remote, "river stone")


def test_the_parameter_digest_keeps_apart_what_retrievers_tell_apart() -> None:
    """NaN, infinities and null select different chunks, but orjson wrote all of them as null, and it raised
    on integers beyond 64 bits. The API refuses those values now; the key must not depend on that."""
    def digest(value: Any) -> str:
        return params_digest(SearchRequest.model_construct(query="x", filters={"tag": value}))

    assert len({digest(float("nan")), digest(float("inf")), digest(float("-inf")), digest(None)}) == 4
    assert digest(2**70) != digest(2**70 + 1)
    assert len({digest(1), digest(True), digest(1.0), digest("1")}) == 4
    assert digest(1) == params_digest(SearchRequest(query="y", filters={"tag": 1}))  # the text is not a parameter


async def test_clearing_a_collections_cache_drops_its_entries_not_its_index(
    stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient, redis_client: aioredis.Redis,
    collection: str,
) -> None:
    """``DELETE /v1/admin/cache/{collection}`` and the invalidator's clear share one home (cache.store)."""
    await index(stack, producer, collection, {"k": "kestrel hovering over a meadow"})
    body = {"query": "kestrel meadow", "collection": collection, "mode": "bm25"}
    await search(http, body)
    assert (await search(http, body))["cache"]["status"] == "exact"
    cleared = await http.delete(f"/v1/admin/cache/{collection}")
    assert cleared.status_code == 200 and cleared.json()["removed_keys"] >= 3, cleared.text  # entry, exact, lru...
    assert not await redis_client.keys(keyspace.cache_prefix(collection) + "*")
    assert await redis_client.exists(keyspace.meta(collection))  # the index stays
    assert (await search(http, body))["cache"]["status"] == "miss"
