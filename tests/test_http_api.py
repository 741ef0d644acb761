"""The query service's contract: clear JSON 4xx errors, OpenAPI, health and metrics."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib.metadata import version
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer

import fluxstream
from fluxstream.core.settings import Settings
from tests.conftest import TopicReader, change, eventually, send


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"collection": "x"}, "query"),
        ({"query": "a", "k": 0}, "k"),
        ({"query": "a", "k": 101}, "k"),
        ({"query": "a", "mode": "fuzzy"}, "mode"),
        ({"query": "a", "fusion": "median"}, "fusion"),
        ({"query": "a", "ef_search": 0}, "ef_search"),
        ({"query": ""}, "query"),
        ({"query": "a", "collection": "bad name!"}, "collection"),
        ({"query": "a", "filters": {"x": {"nested": 1}}}, "filters"),
        ({"query": "a", "surprise": 1}, "surprise"),
    ],
)
async def test_invalid_search_requests(http: httpx.AsyncClient, body: dict, field: str) -> None:
    resp = await http.post("/v1/search", json=body)
    assert resp.status_code == 422
    payload = resp.json()
    assert payload["error"] == "invalid_request"
    assert any(field in map(str, d["loc"]) for d in payload["details"]), payload


async def test_malformed_json_body(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request"


async def test_unknown_collection_is_404_and_emptied_one_is_empty(
        http: httpx.AsyncClient, stack: Settings, producer: AIOKafkaProducer, collection: str) -> None:
    """A collection never written answers 404 collection_not_found on every search route (as a missing
    Elasticsearch index does); one whose documents were all deleted still exists: 200, no hits."""
    for mode in ("bm25", "vector", "hybrid"):
        for cache in (True, False):
            resp = await http.post("/v1/search", json={"query": "anything", "collection": "never-created",
                                                       "mode": mode, "cache": cache})
            assert resp.status_code == 404, (mode, resp.text)
            assert resp.json()["error"] == "collection_not_found" and "never-created" in resp.json()["message"]
    batch = await http.post("/v1/search/batch", json={"requests": [
        {"query": "a", "collection": collection}, {"query": "b", "collection": "never-created"}]})
    assert batch.status_code == 404 and batch.json()["error"] == "collection_not_found"
    answer = await http.post("/v1/answer", json={"query": "anything", "collection": "never-created",
                                                 "transform": "none"})
    assert answer.status_code == 404 and answer.json()["error"] == "collection_not_found"

    async with TopicReader(stack, stack.index_updates_topic) as updates:
        await send(producer, stack.documents_topic, change("gone", collection, "a heron by the river", version=1))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"])
        await send(producer, stack.documents_topic, change("gone", collection, op="delete", version=2))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=2)
    for mode in ("bm25", "vector", "hybrid"):
        resp = await http.post("/v1/search", json={"query": "heron", "collection": collection, "mode": mode})
        assert resp.status_code == 200 and resp.json()["hits"] == [], (mode, resp.text)


async def test_unknown_document_and_route(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/documents/nope?collection=never-created")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = await http.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = await http.get("/v1/search")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


async def topic_search_connected(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).json()["topic_search"] == "connected"


async def test_health_ready_metrics_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert {k: v for k, v in ready.json().items() if k != "topic_search"} == {
        "ready": True, "redis": True, "postgres": True, "degraded": []}
    # Topic search joins in the background once Kafka answers (tests/test_kafka_optional.py).
    await eventually(lambda: topic_search_connected(http), timeout=30)
    await http.post("/v1/search", json={"query": "metrics please", "collection": "never-created"})
    metrics = (await http.get("/metrics")).text
    assert 'fluxstream_searches_total{mode="hybrid",status="collection_not_found"}' in metrics
    spec = (await http.get("/openapi.json")).json()
    assert "/v1/search" in spec["paths"] and "/v1/documents/{doc_id}" in spec["paths"]


async def test_batch_search_matches_single_searches(http: httpx.AsyncClient, stack: Settings,
                                                     producer: AIOKafkaProducer, collection: str) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for i, text in enumerate(["owls hunt at night", "salmon swim upstream", "owls and salmon in a river"]):
            await send(producer, stack.documents_topic, change(f"b{i}", collection, text, version=1))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=3)
    requests = [{"query": q, "collection": collection, "mode": m}
                for q in ("owls", "salmon river", "night birds") for m in ("bm25", "vector", "hybrid")]
    resp = await http.post("/v1/search/batch", json={"requests": requests})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["responses"]) == len(requests) and body["strategies"][2] == "hybrid/weighted"
    for req, batched in zip(requests, body["responses"], strict=True):
        single = (await http.post("/v1/search", json=req)).json()
        assert [(h["chunk_id"], round(h["score"], 5)) for h in batched["hits"]] == [
            (h["chunk_id"], round(h["score"], 5)) for h in single["hits"]]
    assert (await http.post("/v1/search/batch", json={"requests": []})).status_code == 422


async def test_every_fusion_method_and_auto_strategy(stack: Settings, producer: AIOKafkaProducer,
                                                     http: httpx.AsyncClient, collection: str) -> None:
    texts = {"f1": "pgvector stores embeddings and answers nearest neighbour queries with hnsw",
             "f2": "redis keeps inverted postings for keyword search with bm25 statistics",
             "f3": "kafka topics carry change events from the database to the indexer"}
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for doc_id, text in texts.items():
            await send(producer, stack.documents_topic, change(doc_id, collection, text))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=3)
    for fusion in ("rrf", "weighted", "product", "max", "harmonic"):
        resp = await http.post("/v1/search", json={"query": "hnsw embeddings", "collection": collection,
                                                   "fusion": fusion, "ef_search": 20, "cache": False})
        body = resp.json()
        assert resp.status_code == 200 and body["fusion"] == fusion and body["strategy"] is None
        assert body["hits"][0]["doc_id"] == "f1", (fusion, body["hits"])
    short = await http.post("/v1/search", json={"query": "bm25 postings", "collection": collection,
                                                "fusion": "auto"})
    assert short.json()["strategy"] == "sparse-first" and short.json()["hits"][0]["doc_id"] == "f2"
    question = await http.post("/v1/search", json={"query": "how do change events get from the database to search?",
                                                   "collection": collection, "fusion": "auto"})
    assert question.json()["strategy"] == "vector-first" and question.json()["hits"][0]["doc_id"] == "f3"


async def test_chunked_body_over_the_limit_is_413(http: httpx.AsyncClient, stack: Settings) -> None:
    """No Content-Length (chunked transfer): refused like a sized body once it grows past the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "'
        for _ in range(stack.max_request_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    resp = await http.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"] == "request_too_large"


async def test_min_position_wait_is_capped(http: httpx.AsyncClient, stack: Settings, collection: str) -> None:
    """However long a request asks to wait, the server's documented cap (10 s by default) holds."""
    assert stack.max_position_wait_ms == 10_000
    never = {"topic": stack.documents_topic, "partition": 0, "offset": 10**12}
    started = time.monotonic()
    resp = await http.post("/v1/search", json={"query": "x", "collection": collection, "mode": "bm25",
                                               "min_position": never, "wait_timeout_ms": 60_000})
    took = time.monotonic() - started
    assert resp.status_code == 409 and resp.json()["error"] == "position_not_reached", resp.text
    assert "within 10000 ms" in resp.json()["message"]
    assert 9.5 < took < 12, took


async def test_openapi_documents_what_the_service_answers(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert (await http.get("/metrics")).headers["content-type"].startswith("text/plain")
    assert "404" in spec["paths"]["/v1/documents/{doc_id}"]["get"]["responses"]
    for path in ("/v1/search", "/v1/search/batch", "/v1/answer"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"409", "503"} <= responses.keys(), (path, responses.keys())
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


async def test_405_names_the_allowed_methods(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/search")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"
    assert resp.headers["allow"] == "POST"
    resp = await http.put("/v1/documents/x")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


async def test_docs_page_is_served_from_the_package(http: httpx.AsyncClient) -> None:
    """/docs works offline: every asset it references is same-origin and served (no CDN)."""
    page = await http.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert re.search(r"(https?:)?//[a-z0-9]", page.text, re.IGNORECASE) is None, page.text  # no external host
    parser = _Links()
    parser.feed(page.text)
    assert len(parser.links) >= 3, parser.links  # script, stylesheet, icon
    for link in parser.links:
        assert urlsplit(link).netloc == "" and link.startswith("/"), link
        asset = await http.get(link)
        assert asset.status_code == 200 and len(asset.content) > 100, link
    assert "SwaggerUIBundle" in (await http.get("/docs/assets/swagger-ui-bundle.js")).text
    assert (await http.get("/redoc")).status_code == 404  # ReDoc would need a CDN: not offered


async def test_openapi_has_version_tags_and_key_schemes(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert spec["info"]["version"] == version("fluxstream") == fluxstream.__version__
    declared = {tag["name"] for tag in spec["tags"]}
    assert {"search", "answer", "documents", "admin", "operations"} <= declared
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("tags") and set(operation["tags"]) <= declared, (method, path)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"] == {**schemes["apiKeyHeader"], "type": "apiKey", "in": "header",
                                       "name": "X-API-Key"}
    # Either scheme admits a search; probes need none.
    assert {"bearerAuth": []} in spec["paths"]["/v1/search"]["post"]["security"]
    assert {"apiKeyHeader": []} in spec["paths"]["/v1/search"]["post"]["security"]
    assert {"apiKeyHeader": []} in spec["paths"]["/v1/admin/collections"]["get"]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
