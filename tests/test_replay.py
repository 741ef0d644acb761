"""Event logs: export a topic range, replay it (twice) into an empty collection, identical index;
`--dry-run` reports bad lines with their numbers and publishes nothing."""

from __future__ import annotations

import asyncio
import gzip
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from fluxstream.settings import Settings
from tests.conftest import TopicReader, change, eventually, send
from tests.helpers import assert_same_index, history, publish


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "fluxstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def end_offsets(settings: Settings) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_url)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.documents_topic) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(settings.documents_topic) or set()
        return await consumer.end_offsets([TopicPartition(settings.documents_topic, p) for p in parts])
    finally:
        await consumer.stop()


async def test_export_then_replay_twice_builds_the_same_index(
    stack: Settings, producer: AIOKafkaProducer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    events = history(random.Random(21), docs=60, changes=200)
    final = {e["doc_id"]: e["version"] for e in events}
    await asyncio.sleep(1.1)
    started = time.time()
    await publish(producer, stack.documents_topic, f"orig-{run}", events)
    await asyncio.sleep(1.1)
    finished = time.time()
    log = tmp_path / "range.ndjson.gz"
    exported = await asyncio.to_thread(cli, stack, "export", "--out", str(log), "--from-time", iso(started),
                                       "--to-time", iso(finished))
    assert exported.returncode == 0, exported.stderr
    with gzip.open(log) as stream:
        lines = stream.read().splitlines()
    assert len(lines) == len(events)
    first = orjson.loads(lines[0])
    assert {"topic", "partition", "offset", "timestamp", "key", "value"} <= first.keys()
    for _ in range(2):  # replaying the same log again must leave the index identical
        replayed = await asyncio.to_thread(cli, stack, "replay", str(log), "--collection", f"copy-{run}")
        assert replayed.returncode == 0, replayed.stderr
        assert f"published {len(events)} records" in replayed.stdout
        await assert_same_index(redis_client, stack.database_url, f"orig-{run}", f"copy-{run}", final)
    # A window of the topic straight back into the pipeline (re-running a range after an incident).
    window = await asyncio.to_thread(cli, stack, "replay", "--from-topic", stack.documents_topic,
                                     "--from-time", iso(started), "--to-time", iso(finished),
                                     "--collection", f"window-{run}")
    assert window.returncode == 0 and f"published {len(events)} records" in window.stdout, window.stderr
    await assert_same_index(redis_client, stack.database_url, f"orig-{run}", f"window-{run}", final)


async def test_dry_run_reports_bad_lines_and_publishes_nothing(stack: Settings, tmp_path: Path) -> None:
    good = {"value": {"op": "upsert", "doc_id": "g", "collection": "dry", "version": 1, "text": "fine"}}
    log = tmp_path / "mixed.ndjson"
    log.write_bytes(b"\n".join([
        orjson.dumps(good),
        b"{not json",
        orjson.dumps({"key": "k"}),  # no value
        orjson.dumps({"value": {"op": "upsert", "collection": "dry", "version": 1}}),  # no doc_id
        orjson.dumps(good),
    ]) + b"\n")
    before = await end_offsets(stack)
    result = await asyncio.to_thread(cli, stack, "replay", "--dry-run", str(log))
    assert result.returncode == 1
    assert "checked 5 records; 3 bad lines" in result.stdout
    for line_no in (2, 3, 4):
        assert f"bad line {line_no}:" in result.stderr, result.stderr
    # Without --dry-run a log with bad lines is refused as a whole.
    refused = await asyncio.to_thread(cli, stack, "replay", str(log))
    assert refused.returncode == 1 and "nothing published" in refused.stdout
    assert await end_offsets(stack) == before


async def test_status_reports_collections_positions_and_lag(stack: Settings, producer: AIOKafkaProducer,
                                                            collection: str) -> None:
    async with TopicReader(stack, stack.index_updates_topic) as updates:
        for i in range(3):
            await send(producer, stack.documents_topic, change(f"st{i}", collection, f"status document {i}"))
        await updates.wait_for(lambda e: e[1]["collection"] == collection and e[1]["stages"]["vectors"], count=3)

    async def report() -> dict | None:
        result = await asyncio.to_thread(cli, stack, "status", "--json")
        assert result.returncode == 0, result.stderr
        data = orjson.loads(result.stdout)
        lag = [r for r in data["consumer_lag"] if r["topic"] == stack.documents_topic]
        return data if lag and all(r["lag"] == 0 for r in lag) else None  # offsets commit every second

    data = await eventually(report, timeout=30, interval=1.0)
    [row] = [r for r in data["collections"] if r["collection"] == collection]
    assert (row["documents"], row["chunks"]) == (3, 3) and row["change_seq"] > 0
    assert any(k.startswith(f"{stack.documents_topic}:") for k in data["applied_positions"])
    table = await asyncio.to_thread(cli, stack, "status")
    assert table.returncode == 0 and collection in table.stdout and stack.documents_topic in table.stdout
