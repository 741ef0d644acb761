"""Faults injected for real on a stack of its own (two workers in one consumer group):
kill -9 of workers, a forced rebalance, and Valkey / PostgreSQL outages while events flow.
Each run is compared with a clean build of the same history made on the same stack."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from fluxstream.core import keyspace
from fluxstream.core.settings import Settings
from fluxstream.stack import AppProcesses, Stack
from tests.conftest import eventually
from tests.helpers import assert_same_index, history, own_stack, publish

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("faults")
    with own_stack(str(state_dir), workers=2, app_id="fluxstream-faults") as stack:
        yield stack
    for log in sorted(Path(state_dir).glob("worker-*.log")):
        print(f"--- {log.name}: {len(re.findall('Traceback', log.read_text(errors='replace')))} tracebacks")


@pytest.fixture
async def clients(faulty: Stack) -> AsyncIterator[tuple[AIOKafkaProducer, aioredis.Redis]]:
    settings = faulty.settings
    assert settings is not None
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_url, acks="all", enable_idempotence=False)
    await producer.start()
    redis = aioredis.from_url(settings.redis_url)
    yield producer, redis
    await producer.stop()
    await redis.aclose()


async def applied_count(url: str) -> float:
    text = (await httpx.AsyncClient().get(url + "/metrics", timeout=5)).text
    found = re.findall(r'^fluxstream_events_total\{([^}]*)\} (\S+)$', text, flags=re.M)
    return sum(float(value) for labels, value in found if 'result="applied"' in labels)


async def trickle(producer: AIOKafkaProducer, topic: str, collection: str, events: list[dict],
                  chunks: int = 10, pause: float = 0.5) -> None:
    """Publish in slices so faults land while events are flowing."""
    step = max(1, len(events) // chunks)
    for i in range(0, len(events), step):
        await publish(producer, topic, collection, events[i : i + step])
        await asyncio.sleep(pause)


@dataclass
class Drill:
    """One fault drill: a history, its clean build already published, and a stream to disturb."""

    producer: AIOKafkaProducer
    settings: Settings
    apps: AppProcesses
    events: list[dict]
    run: str

    @property
    def final(self) -> dict[str, int]:
        return {e["doc_id"]: e["version"] for e in self.events}

    def disturbed_stream(self, name: str, chunks: int, pause: float) -> asyncio.Task[None]:
        collection = f"{name}-{self.run}"
        return asyncio.create_task(trickle(self.producer, self.settings.documents_topic, collection, self.events,
                                           chunks, pause))

    async def assert_equals_clean(self, redis: aioredis.Redis, name: str) -> None:
        await assert_same_index(redis, self.settings.database_url, f"clean-{self.run}", f"{name}-{self.run}",
                                self.final)

    def live_workers(self) -> list[str]:
        return [n for n, p in self.apps.procs.items() if n.startswith("worker") and p.poll() is None]


async def drill(faulty: Stack, producer: AIOKafkaProducer, seed: int, docs: int, changes: int) -> Drill:
    assert faulty.settings is not None and faulty.apps is not None
    run = Drill(producer, faulty.settings, faulty.apps, history(random.Random(seed), docs, changes),
                uuid.uuid4().hex[:6])
    await publish(producer, run.settings.documents_topic, f"clean-{run.run}", run.events)
    return run


async def test_two_workers_split_the_partitions_and_survive_a_rebalance(
    faulty: Stack, clients: tuple[AIOKafkaProducer, aioredis.Redis]
) -> None:
    producer, redis = clients
    run = await drill(faulty, producer, seed=11, docs=300, changes=1200)
    apps = run.apps
    await eventually(lambda: _all_positive([applied_count(apps.url(w)) for w in ("worker-0", "worker-1")]),
                     timeout=120)  # both members of the group got partitions and applied changes
    flowing = run.disturbed_stream("rebalanced", chunks=10, pause=0.5)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(apps.kill, "worker-1", 15)  # graceful leave: the group rebalances mid-stream
    await asyncio.sleep(2.0)
    await asyncio.to_thread(apps.start_worker, "worker-2")  # a new member: another rebalance
    await flowing
    await run.assert_equals_clean(redis, "rebalanced")


async def _all_positive(counts: list) -> bool:
    return all(c > 0 for c in await asyncio.gather(*counts))


async def test_kill_9_and_restart_loses_nothing(
    faulty: Stack, clients: tuple[AIOKafkaProducer, aioredis.Redis]
) -> None:
    producer, redis = clients
    run = await drill(faulty, producer, seed=12, docs=400, changes=3000)
    apps = run.apps
    flowing = run.disturbed_stream("crashed", chunks=12, pause=0.7)
    workers = run.live_workers()
    for round_no in range(3):
        await asyncio.sleep(1.5)
        victim = workers[round_no % len(workers)]
        await asyncio.to_thread(apps.kill, victim)  # SIGKILL: no commit, no cleanup
        await asyncio.to_thread(apps.start_worker, victim)
    await flowing
    await run.assert_equals_clean(redis, "crashed")


async def test_redis_and_postgres_outages_lose_nothing(
    faulty: Stack, clients: tuple[AIOKafkaProducer, aioredis.Redis]
) -> None:
    producer, _ = clients
    services = faulty.services
    assert services is not None
    run = await drill(faulty, producer, seed=13, docs=200, changes=800)
    apps = run.apps
    worker = run.live_workers()[0]

    async def not_ready() -> bool:
        return (await httpx.AsyncClient().get(apps.url(worker) + "/readyz", timeout=5)).status_code == 503

    flowing = run.disturbed_stream("outage", chunks=24, pause=0.5)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(services.stop_redis)
    await eventually(not_ready, timeout=30)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(services.start_redis)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(services.stop_postgres)
    await eventually(not_ready, timeout=30)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(services.start_postgres)
    await flowing
    redis = aioredis.from_url(run.settings.redis_url)  # a fresh client after the restart
    try:
        await run.assert_equals_clean(redis, "outage")
    finally:
        await redis.aclose()
    await eventually(lambda: _ready(apps.url(worker)), timeout=30)


async def _ready(url: str) -> bool:
    return (await httpx.AsyncClient().get(url + "/readyz", timeout=5)).status_code == 200


async def test_sigterm_finishes_the_batch_in_hand(
    faulty: Stack, clients: tuple[AIOKafkaProducer, aioredis.Redis]
) -> None:
    """A worker told to stop while embedding finishes and acks that batch before it leaves the group."""
    producer, redis = clients
    run = await drill(faulty, producer, seed=14, docs=400, changes=400)  # the clean build: 400 embed jobs
    apps = run.apps
    victim = run.live_workers()[0]
    log = Path(faulty.settings.state_dir) / f"{victim}.log"
    before = log.read_text(errors="replace").count("finishing_batch_before_stop")

    async def embedding() -> bool:  # vectors of the clean build are landing: batches are in flight
        return bool(await redis.exists(keyspace.vector_log(f"clean-{run.run}")))

    await eventually(embedding, timeout=120, interval=0.1)
    await asyncio.to_thread(apps.kill, victim, 15)
    code = await asyncio.to_thread(apps.procs[victim].wait, 60)  # a clean exit, within the grace period
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    if text.count("finishing_batch_before_stop") > before:  # it had a batch in hand: that batch completed
        assert "Traceback" not in text[text.rfind("finishing_batch_before_stop"):], text[-3000:]
    await asyncio.to_thread(apps.start_worker, victim)
    await assert_same_index(redis, run.settings.database_url, f"clean-{run.run}", f"clean-{run.run}", run.final)
