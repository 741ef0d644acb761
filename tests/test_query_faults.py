"""The query service through PostgreSQL and Redis outages, on a stack of its own whose servers are
stopped and restarted for real: fast 503 JSON errors, hybrid answers from BM25 alone while
PostgreSQL is down (never cached), readiness that means "can answer", and prompt recovery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from fluxstream.stack import Stack
from tests.conftest import TopicReader, change, eventually, send
from tests.helpers import own_stack

pytestmark = pytest.mark.slow

TEXTS = {"q1": "river stones are smoothed by the water over many years",
         "q2": "a lantern hangs by the harbor at night",
         "q3": "glaciers carve valleys and leave stones behind"}


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("query-faults")
    with own_stack(str(state_dir), workers=1, app_id="fluxstream-query-faults") as stack:
        yield stack


@pytest.fixture(scope="module")
def indexed(outage_stack: Stack) -> str:
    """A collection whose documents are searchable by BM25 and by vectors."""
    settings = outage_stack.settings
    assert settings is not None
    collection = f"qf{uuid.uuid4().hex[:8]}"

    async def index() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_url)
        await producer.start()
        try:
            async with TopicReader(settings, settings.index_updates_topic) as updates:
                for doc_id, text in TEXTS.items():
                    await send(producer, settings.documents_topic, change(doc_id, collection, text))
                await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"],
                                       count=len(TEXTS), timeout=120)
        finally:
            await producer.stop()

    asyncio.run(index())
    return collection


@pytest.fixture
async def http(outage_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    assert outage_stack.settings is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{outage_stack.settings.http_port}",
                                 timeout=60) as client:
        yield client


async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


def assert_unavailable(resp: httpx.Response, store: str) -> None:
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["error"] == "unavailable" and body["details"] == [{"store": store}], body
    assert resp.headers["retry-after"] == "1"


async def test_postgres_outage_fails_fast_degrades_hybrid_and_recovers(
    outage_stack: Stack, indexed: str, http: httpx.AsyncClient
) -> None:
    services, apps = outage_stack.services, outage_stack.apps
    assert services is not None and apps is not None
    query = {"query": "river stones", "collection": indexed, "k": 3}
    before = (await http.post("/v1/search", json=query | {"mode": "hybrid", "cache": False})).json()
    assert before["degraded"] == [] and before["hits"][0]["vector"] is not None

    await asyncio.to_thread(services.stop_postgres)
    stopped = time.monotonic()
    try:
        first, took = await timed(http.post("/v1/search", json=query | {"mode": "vector"}))
        assert_unavailable(first, "postgres")
        assert took < outage_stack.settings.database_pool_timeout + 2, took  # the pool wait is bounded
        again, took = await timed(http.post("/v1/search", json=query | {"mode": "vector", "cache": False}))
        assert_unavailable(again, "postgres")
        assert took < 1.0, took  # known down: no wait at all

        hybrid, took = await timed(http.post("/v1/search", json=query | {"mode": "hybrid"}))
        assert hybrid.status_code == 200, hybrid.text
        body = hybrid.json()
        assert body["degraded"] == ["vectors"] and took < 1.0, (body, took)
        assert [h["doc_id"] for h in body["hits"]] and all(h["vector"] is None for h in body["hits"])
        assert body["cache"]["status"] == "miss"
        bm25 = await http.post("/v1/search", json=query | {"mode": "bm25"})
        assert bm25.status_code == 200 and bm25.json()["degraded"] == []

        batch = await http.post("/v1/search/batch", json={"requests": [query | {"mode": "hybrid"},
                                                                         query | {"mode": "bm25"}]})
        assert batch.status_code == 200 and [r["degraded"] for r in batch.json()["responses"]] == [["vectors"], []]
        assert_unavailable(await http.post("/v1/search/batch", json={"requests": [query | {"mode": "vector"}]}),
                           "postgres")
        answer = await http.post("/v1/answer", json=query | {"mode": "hybrid"})  # no chat model: sources only
        assert answer.status_code == 200 and answer.json()["degraded"] == ["vectors"], answer.text
        assert answer.json()["sources"]
        assert_unavailable(await http.post("/v1/answer", json=query | {"mode": "vector"}), "postgres")
        doc, took = await timed(http.get("/v1/documents/q1", params={"collection": indexed}))
        assert_unavailable(doc, "postgres")
        assert took < 1.0, took
        for call in (http.post("/v1/feedback", json={"request_id": "r1", "score": 1}), http.get("/v1/stats")):
            resp, took = await timed(call)
            assert_unavailable(resp, "postgres")
            assert took < outage_stack.settings.database_pool_timeout + 2, took

        ready = await http.get("/readyz")  # BM25 still answers: ready, and says what is missing
        assert ready.status_code == 200, ready.text
        assert {k: v for k, v in ready.json().items() if k != "topic_search"} == {
            "ready": True, "redis": True, "postgres": False, "degraded": ["vectors"]}
        # A 20 s outage: psycopg's own reconnect backoff (1, 2, 4, 8, 16 s) would next try at about 31 s.
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
    finally:
        await asyncio.to_thread(services.start_postgres)
    restarted = time.monotonic()

    async def vectors_back() -> bool:
        resp = await http.post("/v1/search", json=query | {"mode": "vector", "cache": False})
        return resp.status_code == 200

    await eventually(vectors_back, timeout=6, interval=0.2)
    recovered = time.monotonic() - restarted
    # The degraded answer was not cached: the same hybrid search is a miss, with vectors.
    after = (await http.post("/v1/search", json=query | {"mode": "hybrid"})).json()
    assert after["degraded"] == [] and after["cache"]["status"] == "miss", after
    assert after["hits"][0]["vector"] is not None
    cached = (await http.post("/v1/search", json=query | {"mode": "hybrid"})).json()
    assert cached["cache"]["status"] == "exact" and cached["degraded"] == []
    assert (await http.get("/readyz")).json()["degraded"] == []
    assert (await http.get("/v1/documents/q1", params={"collection": indexed})).status_code == 200
    assert (await http.get("/v1/stats")).status_code == 200

    async def worker_ready() -> bool:
        return (await http.get(apps.url("worker-0") + "/readyz")).status_code == 200

    await eventually(worker_ready, timeout=20, interval=0.2)
    print(f"query service recovered {recovered:.1f} s after PostgreSQL restarted")


async def test_redis_outage_fails_fast_and_a_restart_breaks_no_search(
    outage_stack: Stack, indexed: str, http: httpx.AsyncClient
) -> None:
    services = outage_stack.services
    assert services is not None
    queries = [{"query": q, "collection": indexed, "mode": m, "cache": False}
               for q in ("river stones", "harbor lantern", "glaciers", "water") for m in ("bm25", "hybrid")]

    async def all_at_once() -> list[httpx.Response]:
        return list(await asyncio.gather(*(http.post("/v1/search", json=q) for q in queries)))

    assert {r.status_code for r in await all_at_once()} == {200}  # the pool now holds several connections
    await asyncio.to_thread(services.stop_redis)
    try:
        for mode in ("bm25", "vector", "hybrid"):
            resp, took = await timed(http.post("/v1/search", json=queries[0] | {"mode": mode}))
            assert_unavailable(resp, "redis")
            assert took < 8, took
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False
    finally:
        await asyncio.to_thread(services.start_redis)

    async def ready() -> bool:
        return (await http.get("/readyz")).status_code == 200

    await eventually(ready, timeout=10, interval=0.1)
    # Every pooled connection died with the old server: none of them may fail a search now.
    statuses = [r.status_code for r in await all_at_once()]
    assert statuses == [200] * len(queries), statuses


async def test_a_rebalance_leaves_the_workers_ready(outage_stack: Stack, http: httpx.AsyncClient) -> None:
    """A worker joining the group rebalances every member: reported, but nobody leaves readiness."""
    apps = outage_stack.apps
    assert apps is not None
    url = apps.url("worker-0") + "/readyz"
    seen: list[tuple[int, bool]] = []
    await asyncio.to_thread(apps.start_worker, "worker-1", wait=False)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            resp = await http.get(url)
            seen.append((resp.status_code, resp.json()["rebalancing"]))
            if any(rebalancing for _, rebalancing in seen) and not seen[-1][1]:
                break  # a whole rebalance observed
            await asyncio.sleep(0.05)
        assert any(rebalancing for _, rebalancing in seen), "no rebalance observed"
        assert {status for status, _ in seen} == {200}, seen
    finally:
        await asyncio.to_thread(apps.kill, "worker-1", 15)


def test_logs_have_no_tracebacks_for_outages(outage_stack: Stack) -> None:
    """Outages are expected events: one warning line each, not a traceback per request."""
    log = Path(outage_stack.settings.state_dir) / "query.log"
    assert "Traceback" not in log.read_text(errors="replace")
