"""The HTTP app's floor plan: the index a request reads is an explicit value, and routes reach the
services only once start-up has opened them (no half-started state to assert on)."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.indexer.generations import IndexTarget, index_name, parse_index_name
from fluxstream.indexer.positions import Positions
from fluxstream.query.http import create_app
from fluxstream.query.read_your_writes import learn_cluster
from fluxstream.schemas.api import AnswerRequest, RetrievalRequest, SearchRequest
from fluxstream.stack import free_port


def test_an_index_target_names_its_index_in_one_place() -> None:
    first, rebuilt = IndexTarget("docs"), IndexTarget("docs", 3)
    assert (first.index, rebuilt.index) == ("docs", "docs@g3") == (index_name("docs", 1), index_name("docs", 3))
    assert parse_index_name(rebuilt.index) == ("docs", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rebuilt.generation = 4  # type: ignore[misc]


def test_search_and_answer_requests_share_their_common_fields() -> None:
    shared = set(RetrievalRequest.model_fields)
    assert {"query", "collection", "mode", "fusion", "filters", "cache", "min_position", "wait_timeout_ms"} == shared
    assert shared < set(SearchRequest.model_fields) and shared < set(AnswerRequest.model_fields)
    assert SearchRequest.model_fields["k"].default == 10 and AnswerRequest.model_fields["k"].default == 5


async def test_before_start_up_routes_answer_503_and_readiness_says_not_ready() -> None:
    app = create_app(Settings())  # lifespan not run: no services yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        search = await client.post("/v1/search", json={"query": "x"})
        ready = await client.get("/readyz")
    assert search.status_code == 503 and search.json()["error"] == "unavailable", search.text
    assert search.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "redis": False, "postgres": False, "degraded": ["vectors"],
                            "topic_search": "off"}


async def test_learning_the_kafka_cluster_retries_a_broker_away_and_gives_up_on_a_bad_setting() -> None:
    """A broker not listening yet is asked again (transient); a bootstrap address that cannot be parsed is
    said once and given up (permanent), where the old loop retried every error for ever."""
    positions = Positions(aioredis.Redis())  # never used: only the cluster id is set
    away = dataclasses.replace(Settings(), kafka_url=f"127.0.0.1:{free_port()}", retry_max_backoff=0.5)
    learning = asyncio.create_task(learn_cluster(away, positions))
    await asyncio.sleep(2)
    assert not learning.done()  # still retrying
    learning.cancel()
    await asyncio.gather(learning, return_exceptions=True)
    broken = dataclasses.replace(Settings(), kafka_url="127.0.0.1:not-a-port")
    await asyncio.wait_for(learn_cluster(broken, positions), timeout=10)
    assert positions.cluster is None
