"""Ingest throughput, end to end (produced -> applied, from the IndexUpdate events), with references.

    python -m bench.ingest [--docs 20000] [--full-docs 2000]

* BM25 path: one worker running only the BM25 stage (``FLUXSTREAM_WORKER_STAGES=bm25``) indexes
  ``--docs`` Vaswani abstracts (cycled with fresh ids). Reference in the same run, on the same
  records: a plain aiokafka consumer plus the same tokenizing, chunking and Redis writes, pipelined,
  without Faust, version checks or follow-up events (the "raw limit").
* Full path: one worker with the BM25 and vector stages and the local embedder indexes ``--full-docs``
  abstracts until their vectors are applied. Reference in the same run: the embedder alone (set up as
  the worker sets it up) on the same chunk texts, in the vector stage's parts. Then once more with every
  stage (cache invalidation and chunk enrichment too), against its own embedder-alone run.
* The full path once more with one embedding process (``FLUXSTREAM_EMBED_PROCESSES=1``), against the
  embedder alone set up the same way: the embedder keeps one core and the other stages get the other.
* Every measurement reports ``cpu_cores``: the cores each part of the stack used meanwhile
  (bench/cpu.py), which is what sets the ratios on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import datetime
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import orjson

from bench.common import load_vaswani_corpus, percentiles, running_stack, wait_until_indexed
from bench.cpu import CpuMeter
from fluxstream.client import publish_documents
from fluxstream.core.settings import Settings
from fluxstream.core.topic_range import TopicRange, read_range
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.documents import DocumentState, pack_posting
from fluxstream.indexer.embedders.base import close_embedder
from fluxstream.indexer.fold import DocumentBuilder
from fluxstream.indexer.vector_stage import PART_SIZE as EMBED_PART
from fluxstream.indexer.wiring import build_tokenizer, open_embedder, open_redis
from fluxstream.schemas.events import DocumentChange


def workload(n: int, collection: str, skip: int = 0) -> list[dict[str, Any]]:
    """``n`` abstracts starting at ``skip`` (cycled): distinct texts per repeat, or embeddings would be reused."""
    texts = list(load_vaswani_corpus().values())
    return [{"doc_id": f"d{i}", "collection": collection, "version": 1, "text": text}
            for i, text in enumerate(islice(cycle(texts), skip, skip + n))]


async def index_updates(settings: Settings, collection: str, vectors: bool) -> list[dict[str, Any]]:
    updates = []
    async for batch in read_range(settings, TopicRange(settings.index_updates_topic)):
        for record in batch:
            update = orjson.loads(record.value)
            if update["collection"] == collection and update["stages"]["vectors"] == vectors:
                updates.append(update)
    return updates


async def produced_at(settings: Settings, collection: str) -> dict[tuple[int, int], float]:
    """(partition, offset) -> produce time (s) of the collection's change events."""
    stamps = {}
    async for batch in read_range(settings, TopicRange(settings.documents_topic)):
        for record in batch:
            if collection.encode() in record.value:
                stamps[(record.partition, record.offset)] = record.timestamp / 1000
    return stamps


async def measure_pipeline(settings: Settings, docs: int, vectors: bool, skip: int = 0) -> dict[str, Any]:
    warmup = f"warm-{uuid.uuid4().hex[:6]}"
    await publish_documents(settings, workload(100, warmup, skip=11_000 - skip))
    await wait_until_indexed(settings, warmup, 100, vectors=vectors)
    collection = f"ingest-{uuid.uuid4().hex[:6]}"
    meter = CpuMeter()
    meter.start()
    started = time.time()
    await publish_documents(settings, workload(docs, collection, skip))
    published = time.time() - started
    await wait_until_indexed(settings, collection, docs, vectors=vectors)
    cores = meter.cores()  # until the poll saw the last document: up to 0.25 s after it was applied
    updates = await index_updates(settings, collection, vectors)
    stamps = await produced_at(settings, collection)
    applied = [datetime.fromisoformat(u["applied_at"]).timestamp() for u in updates]
    latencies = [(a - stamps[(u["source"]["partition"], u["source"]["offset"])]) * 1000
                 for u, a in zip(updates, applied, strict=True)]
    elapsed = max(applied) - started
    return {"documents": docs, "updates": len(updates), "publish_seconds": round(published, 2),
            "seconds": round(elapsed, 2), "docs_per_second": round(docs / elapsed, 1),
            "produced_to_applied_ms": percentiles(latencies), "cpu_cores": cores, "collection": collection}


async def raw_limit(settings: Settings, collection: str) -> dict[str, Any]:
    """Consume the same records with plain aiokafka; tokenize, chunk and write postings pipelined."""
    tokenizer = build_tokenizer(settings)
    builder = DocumentBuilder(Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer), tokenizer)
    redis = open_redis(settings.redis_url)  # the worker's client set-up (commands packed in C)
    base = f"fxraw:{{{collection}}}"
    written = 0
    started = time.perf_counter()
    try:
        async for batch in read_range(settings, TopicRange(settings.documents_topic)):
            async with redis.pipeline(transaction=False) as pipe:
                for record in batch:
                    event = orjson.loads(record.value)
                    if event.get("collection") != collection:
                        continue
                    change = DocumentChange.model_validate(event)
                    chunks = builder.chunks(change, DocumentState(collection, change.doc_id))
                    for chunk in chunks:
                        for term, tf in chunk.tf.items():
                            pipe.hset(f"{base}:p:{term}", chunk.chunk_id, pack_posting(tf, chunk.dl))
                        pipe.hset(f"{base}:chunk:{chunk.chunk_id}", mapping={
                            "doc_id": change.doc_id, "text": chunk.text, "hash": chunk.content_hash})
                    pipe.hset(f"{base}:doc:{change.doc_id}", mapping={"version": change.version})
                    pipe.hincrby(f"{base}:meta", "chunks", len(chunks))
                    written += 1
                await pipe.execute()
        elapsed = time.perf_counter() - started
    finally:
        await redis.aclose()
    return {"documents": written, "seconds": round(elapsed, 2), "docs_per_second": round(written / elapsed, 1)}


async def embedder_alone(settings: Settings, docs: int, skip: int = 0, *, child_process: bool = True
                         ) -> dict[str, Any]:
    tokenizer = build_tokenizer(settings)
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer)
    texts = [c.text for d in workload(docs, "x", skip) for c in chunker.split("", d["text"])]
    # The worker's own embedder set-up (child processes unless turned off), given the texts in the
    # vector stage's parts of 64, two parts in flight as in the worker (so the embedder never waits
    # for its caller); ``child_process=False``: the same model in this process with OpenBLAS threads,
    # as the query service runs it (what the worker used before).
    embedder = await open_embedder(settings, child_process=child_process and settings.embed_in_child_process)
    in_flight = asyncio.Semaphore(2)

    async def part(start: int) -> None:
        async with in_flight:
            await embedder.embed(texts[start:start + EMBED_PART])

    meter = CpuMeter()
    try:
        await embedder.embed(["warm up"] * EMBED_PART)
        meter.start()
        started = time.perf_counter()
        await asyncio.gather(*(part(i) for i in range(0, len(texts), EMBED_PART)))
        elapsed = time.perf_counter() - started
        cores = meter.cores()
    finally:
        await close_embedder(embedder)
    # In process, the embedding shows under "benchmark".
    return {"documents": docs, "chunks": len(texts), "seconds": round(elapsed, 2),
            "docs_per_second": round(docs / elapsed, 1), "cpu_cores": cores}


def alternated(settings: Settings, docs: int, repeats: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``repeats`` runs of the full path, each followed by the embedder alone on the same texts."""
    paths, references = [], []
    for repeat in range(repeats):
        paths.append(asyncio.run(measure_pipeline(settings, docs, True, skip=repeat * docs)))
        references.append(asyncio.run(embedder_alone(settings, docs, skip=repeat * docs)))
    return paths, references


def _ratios(paths: list[dict[str, Any]], references: list[dict[str, Any]]) -> list[float]:
    return [round(p["docs_per_second"] / r["docs_per_second"], 3) for p, r in zip(paths, references, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--full-docs", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3, help="full path and embedder alone, alternated")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with running_stack(worker_stages="bm25") as settings:
        results["bm25_path"] = asyncio.run(measure_pipeline(settings, args.docs, vectors=False))
        results["raw_limit"] = asyncio.run(raw_limit(settings, results["bm25_path"]["collection"]))
    if args.full_docs:
        # The indexing path (BM25 + vectors); alternated with the embedder alone, so drift on a noisy
        # machine hits both alike.
        with running_stack(worker_stages="bm25,vectors") as settings:
            results["full_path"], results["embedder_alone"] = alternated(settings, args.full_docs, args.repeats)
            results["embedder_in_process"] = asyncio.run(embedder_alone(settings, args.full_docs, 0,
                                                                         child_process=False))
        results["full_vs_embedder"] = _ratios(results["full_path"], results["embedder_alone"])
        # The same with one embedding process: the embedder keeps one core, the other stages get the
        # other (on two cores, the two-process figures above measure how the cores are shared).
        with running_stack(worker_stages="bm25,vectors", embed_processes=1) as settings:
            results["one_process_full_path"], results["one_process_embedder_alone"] = alternated(
                settings, args.full_docs, args.repeats)
        results["one_process_full_vs_embedder"] = _ratios(results["one_process_full_path"],
                                                          results["one_process_embedder_alone"])
        # The same worker also running cache invalidation and chunk enrichment: what they cost it.
        with running_stack(worker_stages="bm25,vectors,cache,enrich") as settings:
            skip = args.repeats * args.full_docs
            results["all_stages"] = asyncio.run(measure_pipeline(settings, args.full_docs, True, skip))
            results["all_stages_embedder_alone"] = asyncio.run(embedder_alone(settings, args.full_docs, skip))
    bm25, raw = results["bm25_path"], results["raw_limit"]
    results["bm25_vs_raw"] = round(bm25["docs_per_second"] / raw["docs_per_second"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
