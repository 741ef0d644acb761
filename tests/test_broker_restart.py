"""A restarted dev stack (issue 16, item 3): the embedded broker keeps its topics in memory, the index keeps
its state on disk. After a restart, a read-your-writes position that the new broker has not reached must wait
(409 ``position_not_reached`` at its timeout), not be satisfied by what the previous broker's worker applied."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from fluxstream.client import publish_documents
from fluxstream.core.settings import Settings
from fluxstream.schemas.events import SourcePosition
from fluxstream.stack import Stack, free_port


def _start(base: Settings) -> tuple[Stack, Settings]:
    stack = Stack(replace(base, http_port=free_port(), worker_web_port=free_port()))
    return stack, stack.start()


def _search(settings: Settings, query: str, position: SourcePosition | None, wait_ms: int) -> httpx.Response:
    body: dict[str, Any] = {"query": query, "collection": "restart", "mode": "bm25", "cache": False,
                            "wait_timeout_ms": wait_ms}
    if position is not None:
        body["min_position"] = position.model_dump(include={"topic", "partition", "offset"})
    return httpx.post(f"http://127.0.0.1:{settings.http_port}/v1/search", json=body, timeout=60)


def _publish(settings: Settings, docs: list[dict[str, Any]]) -> SourcePosition:
    """The highest position of one partition (all docs share a key prefix, the partition may differ)."""
    positions = asyncio.run(publish_documents(settings, docs))
    return max(positions, key=lambda p: p.offset)


def test_positions_of_a_previous_broker_do_not_satisfy_the_new_one(tmp_path: Path) -> None:
    base = replace(Settings.from_env(), state_dir=str(tmp_path / "state"), session_timeout=6.0, batch_within=0.01,
                   embed_batch_within=0.05, log_format="console", cdc_config="")
    first, settings = _start(base)
    assert first.services is not None
    first_cluster = first.services.kafka_cluster_id
    try:
        docs = [{"doc_id": f"old-{i}", "collection": "restart", "version": 1, "text": f"heron by the river {i}"}
                for i in range(30)]
        ahead = _publish(settings, docs)
        assert ahead.offset > 0
        resp = _search(settings, "heron", ahead, 60_000)
        assert resp.status_code == 200 and resp.json()["hits"], resp.text
    finally:
        first.stop()

    second, settings = _start(base)  # same state directory: the index is kept, the topics are new and empty
    try:
        assert second.services is not None and second.services.kafka_cluster_id != first_cluster
        started = time.monotonic()
        resp = _search(settings, "heron", ahead, 1500)  # this broker has no record at that offset yet
        assert resp.status_code == 409 and resp.json()["error"] == "position_not_reached", resp.text
        assert time.monotonic() - started >= 1.4  # it waited for this broker's worker, then gave up
        assert resp.json()["details"][0]["bm25_applied_offset"] == -1
        kept = _search(settings, "heron", None, 0)  # the previous run's documents are still searchable
        assert kept.status_code == 200 and kept.json()["hits"], kept.text
        fresh = _publish(settings, [{"doc_id": "new-0", "collection": "restart", "version": 1,
                                     "text": "kingfisher on the new broker"}])
        resp = _search(settings, "kingfisher", fresh, 60_000)  # positions of the new broker work
        assert resp.status_code == 200 and resp.json()["hits"][0]["doc_id"] == "new-0", resp.text
    finally:
        second.stop()
