"""Freshness: time from producing a change event to its IndexUpdate (BM25 stage, vector stage).

Reference measured in the same run: a plain Kafka round trip (produce, then receive on a
consumer) on the same broker, i.e. the floor any Kafka-driven indexer pays.

    python bench/freshness.py [--docs 200] [--rate 20]

Starts the embedded stack (or uses FLUXSTREAM_*_URL), sends --docs single-document changes
at --rate per second, and prints p50/p95/p99 in milliseconds as a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import replace

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from fluxstream.client import new_producer
from fluxstream.settings import Settings
from fluxstream.stack import Stack, free_port

WORDS = ["stream", "index", "query", "vector", "token", "chunk", "shard", "replica", "offset", "commit", "lag", "fresh"]


def percentiles(samples_ms: list[float]) -> str:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return f"{p50:.1f} | {p95:.1f} | {p99:.1f}"


async def kafka_round_trip(settings: Settings, n: int, rate: float) -> list[float]:
    topic = settings.index_updates_topic  # any existing topic; we only read our own keys
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_url, auto_offset_reset="latest",
                                fetch_max_wait_ms=100)
    await consumer.start()
    await asyncio.sleep(1.0)
    producer = new_producer(settings.kafka_url)
    await producer.start()
    sent: dict[bytes, float] = {}
    lat: list[float] = []

    async def receive() -> None:
        async for record in consumer:
            if record.key in sent:
                lat.append((time.perf_counter() - sent.pop(record.key)) * 1000)
                if len(lat) == n:
                    return

    task = asyncio.create_task(receive())
    for i in range(n):
        key = f"ref-{uuid.uuid4().hex}-{i}".encode()
        sent[key] = time.perf_counter()
        await producer.send_and_wait(topic, key=key, value=b"{}")
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(task, 60)
    await producer.stop()
    await consumer.stop()
    return lat


async def indexing_latency(settings: Settings, n: int, rate: float) -> tuple[list[float], list[float]]:
    collection = f"bench{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(settings.index_updates_topic, bootstrap_servers=settings.kafka_url,
                                auto_offset_reset="latest",
                                fetch_max_wait_ms=100)
    await consumer.start()
    await asyncio.sleep(1.0)
    producer = new_producer(settings.kafka_url)
    await producer.start()
    sent: dict[str, float] = {}
    bm25: list[float] = []
    vectors: list[float] = []

    async def receive() -> None:
        async for record in consumer:
            update = orjson.loads(record.value)
            if update["collection"] != collection or update["doc_id"] not in sent:
                continue
            elapsed = (time.perf_counter() - sent[update["doc_id"]]) * 1000
            (vectors if update["stages"]["vectors"] else bm25).append(elapsed)
            if len(vectors) == n and len(bm25) == n:
                return

    task = asyncio.create_task(receive())
    rng = np.random.default_rng(7)
    for i in range(n):
        doc_id = f"doc-{i}"
        text = " ".join(rng.choice(WORDS, size=60))
        event = {"op": "upsert", "doc_id": doc_id, "collection": collection, "version": 1, "text": text}
        sent[doc_id] = time.perf_counter()
        await producer.send_and_wait(settings.documents_topic, key=doc_id.encode(), value=orjson.dumps(event))
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(task, 120)
    await producer.stop()
    await consumer.stop()
    return bm25, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state_dir:
        base = replace(Settings.from_env(), state_dir=state_dir, session_timeout=6.0, http_port=free_port(),
                       worker_web_port=free_port(), log_format="console")
        stack = Stack(base)
        settings = stack.start()
        try:
            reference = asyncio.run(kafka_round_trip(settings, args.docs, args.rate))
            bm25, vectors = asyncio.run(indexing_latency(settings, args.docs, args.rate))
        finally:
            stack.stop()
    print(f"{args.docs} single-document changes at {args.rate:g}/s, latency in ms\n")
    print("| path | p50 | p95 | p99 |\n|---|---|---|---|")
    print(f"| reference: Kafka produce -> consume | {percentiles(reference)} |")
    print(f"| change -> BM25 applied (IndexUpdate bm25) | {percentiles(bm25)} |")
    print(f"| change -> vectors applied (IndexUpdate vectors) | {percentiles(vectors)} |")


if __name__ == "__main__":
    main()
