"""Index generations: rebuild under a query loop and a producer, atomic switch, old generation
dropped after the grace period; a failed rebuild leaves the old generation serving and is removable."""

from __future__ import annotations

import asyncio
import gzip
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.generations import GenerationRegistry, index_name
from fluxstream.indexer.postings import PostingsStore
from tests.conftest import eventually
from tests.helpers import VOCAB, assert_same_index, history, index_snapshot, publish
from tests.test_replay import cli, iso


async def _keys_of(redis: aioredis.Redis, index: str) -> list[str]:
    store = PostingsStore(redis)
    return await store.scan_suffixes(keyspace.index_prefix(index))


async def _vector_rows(database_url: str, index: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM fluxstream_chunks WHERE collection = %s", (index,))
        (count,) = await cur.fetchone()
    return int(count)


async def _query_loop(http: httpx.AsyncClient, collection: str, stop: asyncio.Event,
                      seen: list[tuple[int, int, int]]) -> None:
    """(status, generation, hits) of every search until ``stop``; modes alternate."""
    modes = ["bm25", "hybrid", "vector"]
    n = 0
    while not stop.is_set():
        body = {"query": f"{VOCAB[n % len(VOCAB)]} {VOCAB[(n * 7) % len(VOCAB)]}", "collection": collection,
                "k": 5, "mode": modes[n % 3], "cache": n % 2 == 0}
        resp = await http.post("/v1/search", json=body)
        data = resp.json()
        seen.append((resp.status_code, data.get("generation", -1), len(data.get("hits", []))))
        n += 1
        await asyncio.sleep(0.02)


async def test_rebuild_switches_atomically_under_load(
    stack: Settings, producer: AIOKafkaProducer, redis_client: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    run = uuid.uuid4().hex[:6]
    live, reference = f"gen-{run}", f"genref-{run}"
    rng = random.Random(5)
    events = history(rng, docs=80, changes=240)
    for target in (live, reference):
        await publish(producer, stack.documents_topic, target, events)
    final = {e["doc_id"]: e["version"] for e in events}
    await assert_same_index(redis_client, stack.database_url, reference, live, final)

    stop = asyncio.Event()
    seen: list[tuple[int, int, int]] = []
    queries = asyncio.create_task(_query_loop(http, live, stop, seen))
    during: list[dict[str, Any]] = []

    async def produce() -> None:
        """Changes made while the rebuild runs: new versions, new documents, deletes."""
        versions = dict(final)
        n = 0
        while not stop.is_set():
            doc_id = f"p{rng.randrange(100)}"
            versions[doc_id] = versions.get(doc_id, 0) + 1
            op = "delete" if n % 9 == 8 else "upsert"
            event = {"op": op, "doc_id": doc_id, "version": versions[doc_id], "title": f"during {n}",
                     "text": f"rebuilt{n} " + " ".join(rng.choice(VOCAB) for _ in range(12)) if op == "upsert" else "",
                     "metadata": {"bucket": n % 5}}
            during.append(event)
            for target in (live, reference):
                await publish(producer, stack.documents_topic, target, [event])
            n += 1
            await asyncio.sleep(0.03)

    changes = asyncio.create_task(produce())
    await asyncio.sleep(0.5)
    result = await asyncio.to_thread(cli, stack, "rebuild", live, "--grace", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{live}: generation 2 ({live}@g2) serving now" in result.stdout
    await asyncio.sleep(1.0)  # keep changing and querying after the switch too
    stop.set()
    await asyncio.gather(queries, changes)

    assert len(during) > 20 and len(seen) > 20
    assert all(status == 200 for status, _, _ in seen), [s for s in seen if s[0] != 200][:5]
    generations = [g for _, g, _ in seen]
    assert set(generations) == {1, 2} and generations == sorted(generations)  # one switch, never back
    assert all(hits > 0 for _, _, hits in seen)

    final.update({e["doc_id"]: e["version"] for e in during})
    await assert_same_index(redis_client, stack.database_url, reference, index_name(live, 2), final)
    last_upsert = next(e for e in reversed(during) if e["op"] == "upsert" and final[e["doc_id"]] == e["version"])
    marker = last_upsert["text"].split()[0]
    resp = await http.post("/v1/search", json={"query": marker, "collection": live, "mode": "bm25"})
    body = resp.json()
    assert body["generation"] == 2 and body["collection"] == live
    assert body["hits"][0]["doc_id"] == last_upsert["doc_id"]

    async def old_generation_gone() -> bool:
        return not await _keys_of(redis_client, live) and await _vector_rows(stack.database_url, live) == 0

    await eventually(old_generation_gone, timeout=30, interval=0.5)
    state = await GenerationRegistry(redis_client).get(live)
    assert (state.serving, state.building, state.retiring) == (2, None, None)
    status = await asyncio.to_thread(cli, stack, "status", "--json")
    [row] = [r for r in orjson.loads(status.stdout)["collections"] if r["collection"] == live]
    assert row["generation"] == 2 and row["building"] is None and row["documents"] > 0


async def test_failed_rebuild_keeps_serving_and_can_be_aborted(
    stack: Settings, producer: AIOKafkaProducer, redis_client: aioredis.Redis, http: httpx.AsyncClient,
    tmp_path: Path
) -> None:
    collection = f"genfail-{uuid.uuid4().hex[:6]}"
    events = history(random.Random(9), docs=30, changes=700)  # more than a replay batch (500)
    await publish(producer, stack.documents_topic, collection, events)
    final = {e["doc_id"]: e["version"] for e in events}
    await assert_same_index(redis_client, stack.database_url, collection, collection, final)
    original = await index_snapshot(redis_client, stack.database_url, collection)
    # An archive cut off mid-stream: its first records reach the new generation, then reading fails.
    archive = tmp_path / "cut.ndjson.gz"
    lines = b"".join(orjson.dumps({"value": e | {"collection": collection}}) + b"\n" for e in events)
    archive.write_bytes(gzip.compress(lines)[:-40])
    failed = await asyncio.to_thread(cli, stack, "rebuild", collection, str(archive))
    assert failed.returncode != 0
    registry = GenerationRegistry(redis_client)
    state = await registry.get(collection)
    assert (state.serving, state.building, state.state) == (1, 2, "failed")
    assert "error" in state.progress
    assert await _keys_of(redis_client, index_name(collection, 2))  # partly built, kept for inspection
    resp = await http.post("/v1/search", json={"query": "river stone", "collection": collection, "mode": "bm25"})
    assert resp.status_code == 200 and resp.json()["generation"] == 1 and resp.json()["hits"]
    again = await asyncio.to_thread(cli, stack, "rebuild", collection)
    assert again.returncode != 0 and "--abort" in again.stderr
    aborted = await asyncio.to_thread(cli, stack, "rebuild", collection, "--abort")
    assert aborted.returncode == 0 and f"dropped {collection}@g2" in aborted.stdout
    assert not await _keys_of(redis_client, index_name(collection, 2))
    assert await _vector_rows(stack.database_url, index_name(collection, 2)) == 0
    state = await registry.get(collection)
    assert (state.serving, state.building, state.state) == (1, None, "idle")
    retried = await asyncio.to_thread(cli, stack, "rebuild", collection, "--grace", "0")
    assert retried.returncode == 0 and "generation 3" in retried.stdout, retried.stderr[-2000:]
    assert await index_snapshot(redis_client, stack.database_url, index_name(collection, 3)) == original


async def test_replay_topic_window_into_a_new_generation(
    stack: Settings, producer: AIOKafkaProducer, redis_client: aioredis.Redis
) -> None:
    collection = f"genwin-{uuid.uuid4().hex[:6]}"
    events = history(random.Random(13), docs=15, changes=45)
    await asyncio.sleep(1.1)
    started = time.time()
    await publish(producer, stack.documents_topic, collection, events)
    final = {e["doc_id"]: e["version"] for e in events}
    await assert_same_index(redis_client, stack.database_url, collection, collection, final)
    original = await index_snapshot(redis_client, stack.database_url, collection)
    refused = await asyncio.to_thread(cli, stack, "replay", "--from-topic", stack.documents_topic,
                                      "--from-time", iso(started), "--to-time", iso(time.time()),
                                      "--into-generation", collection)
    assert refused.returncode != 0 and "must catch up" in refused.stderr
    replayed = await asyncio.to_thread(cli, stack, "replay", "--from-topic", stack.documents_topic,
                                       "--from-time", iso(started), "--into-generation", collection,
                                       "--no-switch")
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert f"{collection}: generation 2 ({collection}@g2) built, not switched" in replayed.stdout
    assert await index_snapshot(redis_client, stack.database_url, index_name(collection, 2)) == original
    state = await GenerationRegistry(redis_client).get(collection)
    assert (state.serving, state.building, state.progress["phase"]) == (1, 2, "ready")
    promoted = await asyncio.to_thread(cli, stack, "rebuild", collection, "--promote", "--grace", "0")
    assert promoted.returncode == 0 and "generation 2 serving now" in promoted.stdout, promoted.stderr
    target = await GenerationRegistry(redis_client).serving(collection)
    assert (target.index, target.generation) == (index_name(collection, 2), 2)


async def test_a_generation_exists_from_its_rebuild_start(http: httpx.AsyncClient, redis_client: aioredis.Redis,
                                                         collection: str) -> None:
    """A collection is found (200, no hits) once a rebuild gave it a generation, even one whose source held
    nothing to index: only a collection never written or rebuilt is ``collection_not_found``."""
    body = {"query": "anything", "collection": collection, "mode": "bm25"}
    assert (await http.post("/v1/search", json=body)).status_code == 404
    registry = GenerationRegistry(redis_client)
    generation = await registry.begin(collection, {"phase": "starting"})
    assert await PostingsStore(redis_client).collection_exists(index_name(collection, generation))
    assert await registry.switch(collection, generation, grace_seconds=60)
    resp = await http.post("/v1/search", json=body)
    assert resp.status_code == 200 and resp.json()["hits"] == [] and resp.json()["generation"] == generation
