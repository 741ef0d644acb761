"""API keys with scopes, rate limits and request size limits, on a query service started with them
(HTTP and topic requests), against the session's real Redis, PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fluxstream.core.settings import Settings
from fluxstream.query.auth import ApiKeys, new_key
from fluxstream.schemas.topics import create_topics
from fluxstream.search_client import CollectionNotFound, KafkaSearchClient
from fluxstream.stack import free_port
from tests.helpers import query_service

SEARCH_KEY, SEARCH_ENTRY = new_key(["search"])
ADMIN_KEY, ADMIN_ENTRY = new_key(["search", "admin"])
ADMITTED = 404  # past the keys and rate limits, a search of "nothing-here" reaches the index: collection_not_found


@pytest.fixture
async def guarded(stack: Settings) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    run = uuid.uuid4().hex[:8]
    settings = replace(stack, api_keys=f"{SEARCH_ENTRY},{ADMIN_ENTRY}", rate_limit_per_second=2.0,
                       rate_limit_burst=5, max_request_bytes=2048, http_port=free_port(),
                       search_requests_topic=f"sec-req-{run}", search_replies_topic=f"sec-rep-{run}",
                       app_id=f"sec-{run}")  # its own consumer group: never rebalances the session service
    await create_topics(settings)
    async with query_service(settings, topic_search=True) as client:
        yield settings, client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_and_scopes(guarded: tuple[Settings, httpx.AsyncClient]) -> None:
    _, http = guarded
    body = {"query": "anything", "collection": "nothing-here", "mode": "bm25"}
    missing = await http.post("/v1/search", json=body)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await http.post("/v1/search", json=body, headers=auth("fx_not-a-key"))
    assert wrong.status_code == 401
    ok = await http.post("/v1/search", json=body, headers={"X-API-Key": SEARCH_KEY, "X-Request-ID": "req-42"})
    assert ok.status_code == ADMITTED and ok.headers["x-request-id"] == "req-42"
    forbidden = await http.get("/v1/admin/collections", headers=auth(SEARCH_KEY))
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    admin = await http.get("/v1/admin/collections", headers=auth(ADMIN_KEY))
    assert admin.status_code == 200 and "collections" in admin.json()
    cleared = await http.delete("/v1/admin/cache/nothing-here", headers=auth(ADMIN_KEY))
    assert cleared.status_code == 200 and cleared.json()["removed_keys"] == 0
    for public in ("/healthz", "/metrics", "/openapi.json"):
        assert (await http.get(public)).status_code == 200


async def test_docs_authorize_schemes_admit_a_key(guarded: tuple[Settings, httpx.AsyncClient]) -> None:
    """What Swagger UI's "Authorize" sends for each scheme of the OpenAPI document is accepted; the docs
    page and its assets need no key."""
    _, http = guarded
    assert (await http.get("/docs")).status_code == 200
    assert (await http.get("/docs/assets/swagger-ui-bundle.js")).status_code == 200
    spec = (await http.get("/openapi.json")).json()
    body = {"query": "anything", "collection": "nothing-here", "mode": "bm25"}
    for name, scheme in spec["components"]["securitySchemes"].items():
        if scheme["type"] == "http":
            assert scheme["scheme"] == "bearer"
            header = {"Authorization": f"Bearer {SEARCH_KEY}"}
        else:
            assert scheme["type"] == "apiKey" and scheme["in"] == "header"
            header = {scheme["name"]: SEARCH_KEY}
        resp = await http.post("/v1/search", json=body, headers=header)
        assert resp.status_code == ADMITTED, (name, resp.text)
        await asyncio.sleep(0.5)  # stay within the 2/s rate of this service


async def test_rate_limit_and_body_size(guarded: tuple[Settings, httpx.AsyncClient]) -> None:
    _, http = guarded
    body = {"query": "q", "collection": "nothing-here", "mode": "bm25"}
    statuses = [(await http.post("/v1/search", json=body, headers=auth(SEARCH_KEY))).status_code for _ in range(8)]
    assert statuses[:5] == [ADMITTED] * 5 and 429 in statuses[5:]
    limited = await http.post("/v1/search", json=body, headers=auth(SEARCH_KEY))
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    # Another key has its own bucket.
    assert (await http.post("/v1/search", json=body, headers=auth(ADMIN_KEY))).status_code == ADMITTED
    huge = await http.post("/v1/search", content=b'{"query": "' + b"x" * 5000 + b'"}',
                           headers={**auth(ADMIN_KEY), "content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"] == "request_too_large"
    await asyncio.sleep(1.0)  # tokens refill at 2/s
    assert (await http.post("/v1/search", json=body, headers=auth(SEARCH_KEY))).status_code == ADMITTED


async def test_topic_requests_need_a_key(guarded: tuple[Settings, httpx.AsyncClient]) -> None:
    settings, _ = guarded
    async with KafkaSearchClient(settings) as anonymous:
        refused = await anonymous.search("anything", collection="nothing-here", mode="bm25", timeout=30)
    assert refused.status == "error" and refused.error is not None and refused.error.error == "unauthorized"
    async with KafkaSearchClient(settings, api_key=SEARCH_KEY) as client:
        answered = await client.search("anything", collection="nothing-here", mode="bm25", timeout=30)
    # Admitted, and the structured error of the search itself comes back as the reply.
    assert answered.status == "error" and answered.error is not None, answered
    assert answered.error.error == "collection_not_found", answered
    with pytest.raises(CollectionNotFound, match="nothing-here"):
        async with KafkaSearchClient(settings, api_key=SEARCH_KEY) as client:
            await client.search_response("anything", collection="nothing-here", mode="bm25", timeout=30)


def test_key_entries_are_validated() -> None:
    assert ApiKeys.parse(f"{SEARCH_ENTRY}, {ADMIN_ENTRY}").authenticate(ADMIN_KEY, "admin").scopes == {
        "search", "admin"}
    with pytest.raises(ValueError, match="sha256"):
        ApiKeys.parse("plain-text-key:search")
    with pytest.raises(ValueError, match="scopes"):
        ApiKeys.parse(SEARCH_ENTRY.replace("search", "root"))


async def test_search_command_takes_url_and_key(guarded: tuple[Settings, httpx.AsyncClient], tmp_path: Path) -> None:
    """`fluxstream search --url --api-key`, as `eval` takes them, against a guarded service elsewhere."""
    settings, _ = guarded
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    url = f"http://127.0.0.1:{settings.http_port}"

    def search(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fluxstream.cli", "search", "anything", "--collection",
                               "nothing-here", "--mode", "bm25", "--url", url, *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    refused = await asyncio.to_thread(search)
    assert refused.returncode == 1 and f"{url} answered 401" in refused.stderr
    answered = await asyncio.to_thread(search, "--api-key", SEARCH_KEY)
    assert "401" not in answered.stderr, answered.stderr  # the key was sent and accepted; the collection
    assert answered.returncode == 1 and "collection_not_found" in answered.stderr  # does not exist: one line
    assert "Traceback" not in answered.stderr and answered.stdout == ""
