"""Prometheus metrics of the worker and the query service, and request ids in the query service's logs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from tests.conftest import TopicReader, change, eventually, send


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels matched as a subset)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_worker_and_query_metrics(stack: Settings, producer: AIOKafkaProducer, http: httpx.AsyncClient,
                                        collection: str) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await send(producer, stack.documents_topic, change("m1", collection, "metrics make operators happy"))
        await send(producer, stack.documents_topic, b"{broken", key=b"m2")
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"])
    worker = f"http://127.0.0.1:{stack.worker_web_port}/metrics"

    async def worker_metrics() -> str | None:
        text = (await http.get(worker)).text
        return text if sample(text, "fluxstream_consumer_lag", topic=stack.documents_topic) is not None else None

    text = await eventually(worker_metrics, timeout=40, interval=1.0)  # lag is reported every 15 s
    topic = stack.documents_topic
    assert sample(text, "fluxstream_events_total", topic=topic, result="consumed") >= 2
    assert sample(text, "fluxstream_events_total", topic=topic, result="applied") >= 1
    assert sample(text, "fluxstream_events_total", topic=topic, result="dead_lettered") >= 1
    assert sample(text, "fluxstream_event_to_searchable_seconds_count", stage="bm25") >= 1
    assert sample(text, "fluxstream_event_to_searchable_seconds_count", stage="vectors") >= 1
    assert sample(text, "fluxstream_embedding_batch_size_count") >= 1
    assert sample(text, "fluxstream_store_call_seconds_count", store="redis", operation="write_documents") >= 1
    assert sample(text, "fluxstream_store_call_seconds_count", store="postgres", operation="replace_documents") >= 1
    assert sample(text, "fluxstream_ready") == 1.0
    ready = await http.get(f"http://127.0.0.1:{stack.worker_web_port}/readyz")
    assert ready.status_code == 200 and ready.json()["rebalancing"] is False

    resp = await http.post("/v1/search", json={"query": "operators", "collection": collection},
                           headers={"X-Request-ID": "trace-me-123"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "trace-me-123"
    text = (await http.get("/metrics")).text
    assert sample(text, "fluxstream_search_seconds_count", mode="hybrid") >= 1
    assert sample(text, "fluxstream_cache_lookups_total", result="miss") >= 1
    assert sample(text, "fluxstream_http_requests_in_flight") is not None
    log = Path(stack.state_dir) / "query.log"
    lines = [line for line in log.read_text().splitlines() if "trace-me-123" in line]
    assert lines and "http_request" in lines[0] and "operators" not in lines[0]  # no query text in logs


async def test_each_process_exports_its_own_metrics(stack: Settings, http: httpx.AsyncClient) -> None:
    """The query service does not export the worker's metrics (as zeros), nor the worker the query service's."""
    query = (await http.get("/metrics")).text
    worker = (await http.get(f"http://127.0.0.1:{stack.worker_web_port}/metrics")).text
    worker_only = ("fluxstream_events_total", "fluxstream_consumer_lag", "fluxstream_embed_jobs_total",
                   "fluxstream_stage_batch_seconds", "fluxstream_event_to_searchable_seconds")
    query_only = ("fluxstream_searches_total", "fluxstream_search_seconds", "fluxstream_cache_lookups_total",
                  "fluxstream_http_requests_in_flight")
    for name in worker_only:
        assert name in worker and name not in query, name
    for name in query_only:
        assert name in query and name not in worker, name
    for text in (query, worker):  # both report readiness, store latency and their process
        assert "fluxstream_ready" in text and "fluxstream_store_call_seconds" in text
        assert "process_resident_memory_bytes" in text


def test_every_metric_is_exported_by_a_process() -> None:
    """A metric added to fluxstream.core.metrics must be in the registry of a process that serves it: the worker,
    the query service or the cdc process."""
    from prometheus_client import REGISTRY

    from fluxstream.core import metrics

    def names(registry: object) -> set[str]:
        return {f.name for f in registry.collect() if f.name.startswith("fluxstream_")}  # type: ignore[attr-defined]

    assert names(REGISTRY) == names(metrics.WORKER) | names(metrics.QUERY) | names(metrics.CDC)
