"""Freshness: time from producing a change event to its IndexUpdate (BM25 stage, vector stage).

Reference measured in the same run: a plain Kafka round trip (produce, then receive on a
consumer) on the same broker, i.e. the floor any Kafka-driven indexer pays.

    python bench/freshness.py [--docs 200] [--rate 20] [--stages bm25,vectors,cache]

Starts the embedded stack (or uses FLUXSTREAM_*_URL), sends --docs single-document changes
paced at --rate per second (sends are not awaited one by one, so high rates are reachable),
and prints p50/p95/p99 in milliseconds as a markdown table. ``--stages bm25`` runs a BM25-only
worker: the stage's freshness at a rate the embedder could not follow.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from fluxstream.core.kafka import new_producer
from fluxstream.core.settings import Settings
from fluxstream.stack import Stack, free_port

WORDS = ["stream", "index", "query", "vector", "token", "chunk", "shard", "replica", "offset", "commit", "lag", "fresh"]


def percentiles(samples_ms: list[float]) -> str:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return f"{p50:.1f} | {p95:.1f} | {p99:.1f}"


async def measure(
    settings: Settings, n: int, rate: float, send_topic: str,
    make_record: Callable[[int], tuple[str, bytes, bytes]],
    classify: Callable[[Any], tuple[str, str] | None], series: tuple[str, ...],
) -> dict[str, list[float]]:
    """Send ``n`` records at ``rate``/s; time each until ``classify`` reports it per series.

    ``make_record(i)`` gives (marker, key, value); ``classify(record)`` read from the
    index-updates topic gives (marker, series name) or None for records of others.
    """
    consumer = AIOKafkaConsumer(settings.index_updates_topic, bootstrap_servers=settings.kafka_url,
                                auto_offset_reset="latest", fetch_max_wait_ms=100)
    await consumer.start()
    await asyncio.sleep(1.0)
    producer = new_producer(settings)
    await producer.start()
    sent: dict[str, float] = {}
    sent_at: dict[str, float] = {}  # wall clock, to compare with the worker's applied_at
    latencies: dict[str, list[float]] = {name: [] for name in series}

    async def receive() -> None:
        async for record in consumer:
            found = classify(record)
            if found is None or found[0] not in sent:
                continue
            latencies[found[1]].append((time.perf_counter() - sent[found[0]]) * 1000)
            applied_at = orjson.loads(record.value).get("applied_at")
            if applied_at and f"{found[1]}@worker" in latencies:
                applied = datetime.fromisoformat(applied_at).timestamp()
                latencies[f"{found[1]}@worker"].append((applied - sent_at[found[0]]) * 1000)
            if all(len(v) == n for v in latencies.values()):
                return

    task = asyncio.create_task(receive())
    started = time.perf_counter()
    deliveries = []
    for i in range(n):
        marker, key, value = make_record(i)
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))  # pace to `rate` overall
        sent[marker], sent_at[marker] = time.perf_counter(), time.time()
        deliveries.append(await producer.send(send_topic, key=key, value=value))
    await asyncio.gather(*deliveries)
    await asyncio.wait_for(task, 300)
    await producer.stop()
    await consumer.stop()
    return latencies


async def kafka_round_trip(settings: Settings, n: int, rate: float) -> list[float]:
    """Reference: records written straight to the topic the indexing run is read from."""
    run = uuid.uuid4().hex

    def record(i: int) -> tuple[str, bytes, bytes]:
        return f"ref-{run}-{i}", f"ref-{run}-{i}".encode(), b"{}"

    def classify(rec: Any) -> tuple[str, str] | None:
        return (rec.key.decode(), "kafka") if rec.key and rec.key.startswith(b"ref-") else None

    result = await measure(settings, n, rate, settings.index_updates_topic, record, classify, ("kafka",))
    return result["kafka"]


async def indexing_latency(settings: Settings, n: int, rate: float,
                           series: tuple[str, ...] = ("bm25", "vectors")) -> dict[str, list[float]]:
    collection = f"bench{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(7)

    def record(i: int) -> tuple[str, bytes, bytes]:
        event = {"op": "upsert", "doc_id": f"doc-{i}", "collection": collection, "version": 1,
                 "text": " ".join(rng.choice(WORDS, size=60))}
        return event["doc_id"], event["doc_id"].encode(), orjson.dumps(event)

    def classify(rec: Any) -> tuple[str, str] | None:
        if rec.key is not None and rec.key.startswith(b"ref-"):
            return None
        update = orjson.loads(rec.value)
        if update["collection"] != collection:
            return None
        return update["doc_id"], "vectors" if update["stages"]["vectors"] else "bm25"

    return await measure(settings, n, rate, settings.documents_topic, record, classify,
                         (*series, *(f"{name}@worker" for name in series)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--stages", default="bm25,vectors,cache", help="FLUXSTREAM_WORKER_STAGES of the worker")
    args = parser.parse_args()
    series = ("bm25", "vectors") if "vectors" in args.stages else ("bm25",)
    with tempfile.TemporaryDirectory() as state_dir:
        base = replace(Settings.from_env(), state_dir=state_dir, session_timeout=6.0, http_port=free_port(),
                       worker_web_port=free_port(), log_format="console", worker_stages=args.stages)
        stack = Stack(base)
        settings = stack.start()
        try:
            reference = asyncio.run(kafka_round_trip(settings, args.docs, args.rate))
            result = asyncio.run(indexing_latency(settings, args.docs, args.rate, series))
        finally:
            stack.stop()
    print(f"{args.docs} single-document changes at {args.rate:g}/s, worker stages {args.stages}, latency in ms\n")
    print("| path | p50 | p95 | p99 |\n|---|---|---|---|")
    print(f"| reference: Kafka produce -> consume | {percentiles(reference)} |")
    print(f"| change -> BM25 applied, by the worker's clock (`applied_at`) | {percentiles(result['bm25@worker'])} |")
    print(f"| change -> BM25 applied, seen here (IndexUpdate bm25, one Kafka hop more) | "
          f"{percentiles(result['bm25'])} |")
    if "vectors" in result:
        print(f"| change -> vectors applied, by the worker's clock | {percentiles(result['vectors@worker'])} |")
        print(f"| change -> vectors applied, seen here (IndexUpdate vectors) | {percentiles(result['vectors'])} |")


if __name__ == "__main__":
    main()
