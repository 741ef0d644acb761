"""One real stack per test session: Tansu (Kafka protocol), Valkey, PostgreSQL+pgvector,
plus the Faust worker and the query service as child processes, started by the same
code as `fluxstream dev`. External services are used instead when FLUXSTREAM_*_URL is set.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fluxstream.core.settings import Settings
from fluxstream.stack import AppProcesses, Stack, free_port
from tests.schema_registry_server import RegistryState, schema_registry

# Debezium topics the session worker reads (tests/test_cdc.py, tests/test_debezium_real.py).
CDC_CONFIG = """
[[sources]]
topics = ["pg.public.articles"]
collection = "cdc-articles"
id_columns = ["id"]
title = "{title}"
text = "{summary}\\n\\n{body}"
metadata = ["author", "tags"]

[[sources]]
topics = ["mysql.shop.products"]
collection = "cdc-products"
id_columns = ["shop", "sku"]
title = "{name}"
text = "{description}"
metadata = ["shop"]

[[sources]]
topics = ["pg.public.notes"]
collection = "cdc-notes"
id_columns = ["id"]
text = "{body}"

# tests/test_truncation.py: a burst of rows then a truncate; two tables feeding one collection
[[sources]]
topics = ["pg.public.burst"]
collection = "cdc-burst"
id_columns = ["id"]
text = "{body}"

[[sources]]
topics = ["pg.public.posts"]
collection = "cdc-mixed"
id_columns = ["id"]
text = "{body}"

[[sources]]
topics = ["pg.public.comments"]
collection = "cdc-mixed"
id_columns = ["id"]
text = "{body}"

# Written by real Debezium (tests/test_debezium_real.py).
[[sources]]
topics = ["dbz.public.articles"]
collection = "dbz-articles"
id_columns = ["id"]
title = "{title}"
text = "{body}"
metadata = ["tags", "price", "updated"]

# Written by `fluxstream cdc` (tests/test_cdc_command.py).
[[sources]]
topics = ["cli.public.notes"]
collection = "cdc-cli"
id_columns = ["id"]
title = "{title}"
text = "{body}"

# Written by real Debezium through Confluent's AvroConverter (tests/test_debezium_avro.py).
[[sources]]
topics = ["avro.public.articles"]
collection = "avro-articles"
id_columns = ["id"]
title = "{title}"
text = "{body}"
metadata = ["tags", "price", "updated", "day"]
format = "avro"

[[sources]]
topics = ["dbz.public.articles_full"]
collection = "dbz-articles-full"
id_columns = ["id"]
title = "{title}"
text = "{body}"
metadata = ["tags", "price", "updated"]
"""


@pytest.fixture(scope="session")
def schema_registry_server() -> Iterator[tuple[str, RegistryState]]:
    """The session's Schema Registry (tests/schema_registry_server.py): the worker reads Avro schemas there."""
    with schema_registry() as served:
        yield served


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory,
          schema_registry_server: tuple[str, RegistryState]) -> Iterator[Settings]:
    state_dir = tmp_path_factory.mktemp("stack")
    cdc_config = state_dir / "cdc.toml"
    cdc_config.write_text(CDC_CONFIG)
    base = replace(
        Settings.from_env(),
        state_dir=str(state_dir),
        session_timeout=6.0,  # Tansu makes a group join wait session_timeout / 2
        http_port=free_port(),
        worker_web_port=free_port(),
        log_format="console",
        batch_within=0.01,
        embed_batch_within=0.05,
        cdc_config=str(cdc_config),
        schema_registry_url=schema_registry_server[0],
        gc_interval_seconds=1.0,  # tests/test_rebuild.py waits for retired generations to go
    )
    running = Stack(base)
    settings = running.start()
    _session_stacks.append(running)
    yield settings
    running.stop()
    for log in sorted(Path(state_dir).glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            print(f"--- {log.name} contains a traceback ---\n{text[-4000:]}")


_session_stacks: list[Stack] = []


@pytest.fixture
def stack_apps(stack: Settings) -> AppProcesses:
    """The session stack's worker and query service processes (tests that kill and restart them)."""
    apps = _session_stacks[-1].apps
    assert apps is not None
    return apps


@pytest.fixture
def collection() -> str:
    """A fresh collection per test keeps BM25 statistics independent between tests."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def http(stack: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=30) as client:
        yield client


@pytest.fixture
async def redis_client(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def producer(stack: Settings) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=stack.kafka_url, acks="all", enable_idempotence=False)
    await prod.start()
    yield prod
    await prod.stop()


_versions = itertools.count(1)


def change(doc_id: str, collection: str, text: str = "", *, op: str = "upsert", title: str = "",
           version: int | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"op": op, "doc_id": doc_id, "collection": collection, "version": version or next(_versions),
            "title": title, "text": text, "metadata": metadata or {}}


async def send(producer: AIOKafkaProducer, topic: str, event: dict[str, Any] | bytes,
               key: bytes | None = None) -> None:
    value = event if isinstance(event, bytes) else orjson.dumps(event)
    if key is None and isinstance(event, dict):
        key = event["doc_id"].encode()
    await producer.send_and_wait(topic, key=key, value=value)


class TopicReader:
    """Reads a topic from the beginning (no group) to find events a test is waiting for."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_url, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.records: list[Any] = []

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def wait_for_records(self, predicate: Callable[[Any], bool], count: int = 1,
                               timeout: float = 60.0) -> list[Any]:
        """Raw ConsumerRecords matching ``predicate``, once ``count`` of them have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            matched = [r for r in self.records if predicate(r)]
            if len(matched) >= count:
                return matched
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(matched)}/{count} matching events after {timeout}s")
            batches = await self.consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for records in batches.values():
                self.records.extend(records)

    async def wait_for(self, predicate: Callable[[Any], bool], count: int = 1, timeout: float = 60.0) -> list[Any]:
        """(key, decoded JSON value) pairs matching ``predicate``."""
        records = await self.wait_for_records(lambda r: predicate(_decoded(r)), count, timeout)
        return [_decoded(r) for r in records]


def _decoded(record: Any) -> tuple[bytes | None, Any]:
    return record.key, orjson.loads(record.value) if record.value else None


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Await ``check()`` until it returns a truthy value (or raise with the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@pytest.fixture(scope="session", autouse=True)
def _no_proxy() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
