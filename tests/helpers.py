"""Assertions shared by tests: BM25 statistics recomputed from scratch, compared with Redis."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import redis.asyncio as aioredis
import uvicorn
from aiokafka import AIOKafkaProducer

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.indexer.chunking import Chunker, make_chunk_id
from fluxstream.indexer.documents import pack_posting
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.query.http import create_app
from fluxstream.stack import Stack, free_port
from tests.conftest import eventually
from tests.debezium_harness import SourcePostgres


async def bm25_ids(http: httpx.AsyncClient, collection: str, query: str) -> list[str]:
    """Sorted doc ids of a BM25 search (k = 50); none while the collection has no document yet (404)."""
    resp = await http.post("/v1/search", json={"query": query, "collection": collection, "mode": "bm25", "k": 50})
    if resp.status_code == 404 and resp.json()["error"] == "collection_not_found":
        return []  # nothing indexed into it yet
    assert resp.status_code == 200, resp.text
    return sorted(h["doc_id"] for h in resp.json()["hits"])

def own_stack_settings(state_dir: str, **overrides: Any) -> Settings:
    """Settings for a test's own Stack (fault drills stop its servers): fast batching, a short group
    session (Tansu makes a join wait session_timeout / 2), free ports; ``overrides`` win."""
    return replace(Settings.from_env(), state_dir=state_dir, session_timeout=6.0, http_port=free_port(),
                   worker_web_port=free_port(), log_format="console", batch_within=0.01, embed_batch_within=0.05,
                   **overrides)


@contextmanager
def own_stack(state_dir: str, workers: int, **overrides: Any) -> Iterator[Stack]:
    """A started Stack of the test's own (``own_stack_settings``), stopped on the way out."""
    stack = Stack(own_stack_settings(state_dir, **overrides), workers=workers)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def scan_postings(redis: aioredis.Redis, collection: str) -> dict[str, dict[str, int]]:
    store = PostingsStore(redis)
    postings: dict[str, dict[str, int]] = {}
    for term in await store.scan_suffixes(keyspace.posting(collection, "")):
        raw = await redis.hgetall(keyspace.posting(collection, term))
        postings[term] = {k.decode(): int(v) for k, v in raw.items()}
    return postings


def recompute(settings: Settings, documents: dict[str, tuple[str, str]]) -> tuple[dict[str, dict[str, int]], int, int]:
    """Postings, N and total length for live documents {doc_id: (title, text)}, from nothing."""
    tokenizer = build_tokenizer(settings)
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer)
    postings: dict[str, dict[str, int]] = {}
    n_chunks = total = 0
    for doc_id, (title, text) in documents.items():
        for chunk in chunker.split(title, text):
            tf = Counter(tokenizer.tokenize(chunk.text))
            dl = sum(tf.values())
            n_chunks += 1
            total += dl
            for term, count in tf.items():
                postings.setdefault(term, {})[make_chunk_id(doc_id, chunk.chunk_no)] = pack_posting(count, dl)
    return postings, n_chunks, total


async def assert_stats_match(redis: aioredis.Redis, settings: Settings, collection: str,
                             documents: dict[str, tuple[str, str]]) -> None:
    expected, n_chunks, total = recompute(settings, documents)
    assert await scan_postings(redis, collection) == expected
    stats = await PostingsStore(redis).stats(collection)
    assert (stats.chunks, stats.total_len, stats.docs) == (n_chunks, total, len(documents))


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


async def assert_same_index(redis: aioredis.Redis, database_url: str, expected_collection: str,
                            actual_collection: str, final_versions: dict[str, int], timeout: float = 240) -> None:
    """Wait until both collections applied every final version (BM25 and vectors), then compare all state."""

    async def caught_up(collection: str) -> bool:
        snap = await index_snapshot(redis, database_url, collection)
        bm25_done = {d: v for d, (v, _, _) in snap["docs"].items()} == final_versions
        vectors_done = {d: v for d, v, _ in snap["vector_versions"]} == final_versions
        return bm25_done and vectors_done

    await eventually(lambda: caught_up(expected_collection), timeout=timeout, interval=0.5)
    await eventually(lambda: caught_up(actual_collection), timeout=timeout, interval=0.5)
    expected = await index_snapshot(redis, database_url, expected_collection)
    actual = await index_snapshot(redis, database_url, actual_collection)
    assert expected["stats"][0] > 0 and expected["vectors"]
    for part in ("stats", "postings", "docs", "vectors", "vector_versions"):
        assert actual[part] == expected[part], part


@asynccontextmanager
async def query_service(settings: Settings, *, topic_search: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """A query service configured by ``settings``, in this process (real Redis, PostgreSQL, Kafka); with
    ``topic_search`` (and a Kafka URL) it also waits until the service answers the request topic."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.http_port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():  # start-up failed (uvicorn logged why): say so instead of waiting for ever
            task.result()
            raise RuntimeError("the query service stopped during start-up")
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as client:
            if topic_search and settings.kafka_url:
                async def joined() -> bool:
                    return (await client.get("/readyz")).json()["topic_search"] == "connected"

                await eventually(joined, timeout=60)
            yield client
    finally:
        server.should_exit = True
        await task


def as_indexed(value: Any) -> Any:
    """A source column's value as the CDC path keeps it in metadata (the JSON converter's forms: decimal text,
    ISO timestamps with Z, ISO dates)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


async def mirror_problems(redis: aioredis.Redis, source: SourcePostgres, table: str, collection: str,
                          metadata: Sequence[str]) -> list[str]:
    """What differs between a captured table and its collection: ids, titles, the ``metadata`` columns (empty:
    the index mirrors the table)."""
    rows = {str(r[0]): r for r in source.query(f"SELECT id, title, {', '.join(metadata)} FROM {table}")}
    store = PostingsStore(redis)
    states = await store.read_documents([(collection, d) for d in await store.document_ids(collection)])
    live = {doc_id: s for (_, doc_id), s in states.items() if s.live}
    problems = [f"{table}: ids {sorted(set(rows) ^ set(live))} differ"] if set(rows) != set(live) else []
    for doc_id in set(rows) & set(live):
        _, title, *values = rows[doc_id]
        expected = {name: as_indexed(value) for name, value in zip(metadata, values, strict=True)}
        state = live[doc_id]
        if state.title != (title or "") or state.metadata != expected:
            problems.append(f"{table} {doc_id}: {state.title!r} {state.metadata!r} != {title!r} {expected!r}")
    return problems


async def mirrored(redis: aioredis.Redis, settings: Settings, source: SourcePostgres, phase: str, *,
                   tables: Mapping[str, str], metadata: Sequence[str], timeout: float = 90) -> None:
    """Wait until every table's collection (``tables``: table -> collection) mirrors it, then check the BM25
    state exactly."""
    async def problems() -> list[str]:
        return [p for table, collection in tables.items()
                for p in await mirror_problems(redis, source, table, collection, metadata)]

    async def settled() -> bool:
        return not await problems()

    try:
        await eventually(settled, timeout=timeout, interval=0.3)
    except AssertionError:
        raise AssertionError(f"after {phase}: {(await problems())[:5]}") from None
    for table, collection in tables.items():
        rows = source.query(f"SELECT id, title, body FROM {table}")
        await assert_stats_match(redis, settings, collection,
                                 {str(i): ((t or "").strip(), (b or "").strip()) for i, t, b in rows})
