"""Query latency and footprint as the index grows (synthetic corpus from a seeded generator).

    python -m bench.latency [--sizes 10000,100000] [--vectors-up-to 100000] [--queries 200]

One collection grows through each size in turn; BM25 postings are written by the live pipeline
(a worker running the BM25 stage), vector rows are bulk-loaded with synthetic embeddings (their
geometry follows the generator's topics; query embedding in the service is the real local model).
At each size: BM25, hybrid (RRF) and cache-hit latency over HTTP at concurrency 1 and 8, Redis
bytes per posting and PostgreSQL bytes per chunk. The reference in the same run is the service's
``/healthz`` round trip (HTTP and event-loop overhead with no index work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import redis.asyncio as aioredis
from pgvector.psycopg import register_vector

from bench.common import percentiles, running_stack, wait_until_indexed
from fluxstream.client import publish_documents
from fluxstream.core.settings import Settings
from fluxstream.indexer.chunking import Chunker, make_chunk_id
from fluxstream.indexer.wiring import build_tokenizer

VOCABULARY = 30_000
TOPICS = 300
DIM = 384
BLOCK = 1000  # documents drawn together


class Corpus:
    """Documents of 60-140 words: a topic's own words mixed with Zipf-distributed common words."""

    def __init__(self, seed: int = 11) -> None:
        self.rng = np.random.default_rng(seed)
        syllables = ["ka", "lo", "mi", "ran", "te", "su", "vor", "el", "qui", "zan", "po", "dri", "fen", "ux"]
        words: set[str] = set()
        while len(words) < VOCABULARY:
            words.add("".join(self.rng.choice(syllables, size=int(self.rng.integers(2, 5)))))
        self.words = sorted(words)
        self.zipf = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
        self.zipf /= self.zipf.sum()
        self.topic_words = [self.rng.choice(VOCABULARY, size=60, replace=False) for _ in range(TOPICS)]
        self.centroids = self.rng.normal(size=(TOPICS, DIM)).astype(np.float32)
        self._block_no, self._block = -1, []

    def document(self, i: int) -> tuple[str, int]:
        """(text, topic) of document ``i``; documents are drawn a block at a time (one sampling call per
        block, not per document: a per-document weighted draw over the vocabulary made this generator,
        not the indexer, the bottleneck at a million documents)."""
        block_no, offset = divmod(i, BLOCK)
        if self._block_no != block_no:
            self._block = self._draw_block(block_no)
            self._block_no = block_no
        return self._block[offset]

    def _draw_block(self, block_no: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng((11, block_no))
        topics = rng.integers(TOPICS, size=BLOCK)
        lengths = rng.integers(60, 140, size=BLOCK)
        own = lengths // 3
        common = rng.choice(VOCABULARY, size=int((lengths - own).sum()), p=self.zipf)
        own_picks = rng.integers(60, size=int(own.sum()))
        out, c, o = [], 0, 0
        for topic, length, n_own in zip(topics, lengths, own, strict=True):
            ids = np.concatenate([self.topic_words[topic][own_picks[o : o + n_own]], common[c : c + length - n_own]])
            o, c = o + n_own, c + length - n_own
            out.append((" ".join(self.words[j] for j in rng.permutation(ids)), int(topic)))
        return out

    def embedding(self, topic: int, i: int) -> np.ndarray:
        noise = np.random.default_rng(i).normal(scale=0.8, size=DIM).astype(np.float32)
        v = self.centroids[topic] + noise
        return v / np.linalg.norm(v)

    def queries(self, n: int, seed: int = 99) -> list[str]:
        """Fresh texts per seed: the query service remembers recent query embeddings."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            topic = int(rng.integers(TOPICS))
            picked = rng.choice(self.topic_words[topic], size=int(rng.integers(2, 5)))
            out.append(" ".join(self.words[j] for j in picked))
        return out


async def grow(settings: Settings, corpus: Corpus, collection: str, start: int, end: int, vectors: bool) -> None:
    batch = 20_000
    for lo in range(start, end, batch):
        docs = [{"doc_id": f"s{i}", "collection": collection, "version": 1, "text": corpus.document(i)[0]}
                for i in range(lo, min(end, lo + batch))]
        await publish_documents(settings, docs)
    await wait_until_indexed(settings, collection, end, vectors=False, timeout=7200)
    if vectors:
        load_vectors(settings, corpus, collection, start, end)


def load_vectors(settings: Settings, corpus: Corpus, collection: str, start: int, end: int) -> None:
    """Rows as the vector stage writes them (chunk id and content hash from the same chunker)."""
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap, build_tokenizer(settings))
    hnsw, _ = settings.hnsw()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        register_vector(conn)
        # Bulk load: inserting into a live HNSW graph row by row is far slower than building it once.
        conn.execute("DROP INDEX IF EXISTS fluxstream_chunks_hnsw")
        with conn.cursor().copy(
            "COPY fluxstream_chunks (collection, chunk_id, doc_id, chunk_no, text, content_hash, model, embedding, "
            "version) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "text", "int4", "text", "text", "text", "vector", "int8"])
            for i in range(start, end):
                text, topic = corpus.document(i)
                for chunk in chunker.split("", text):
                    copy.write_row((collection, make_chunk_id(f"s{i}", chunk.chunk_no), f"s{i}", chunk.chunk_no,
                                    chunk.text, chunk.content_hash, "synthetic", corpus.embedding(topic, i), 1))
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(f"CREATE INDEX fluxstream_chunks_hnsw ON fluxstream_chunks USING hnsw "
                     f"(embedding vector_cosine_ops) WITH (m = {hnsw.m}, ef_construction = {hnsw.ef_construction})")
        # Without statistics the planner guesses a few rows per collection and sorts them exactly
        # (34 ms at 10k rows instead of 4 ms through HNSW): analyse after a bulk load. VACUUM too, or
        # autovacuum starts on the new rows a minute later, in the middle of the latency measurements.
        conn.execute("VACUUM ANALYZE fluxstream_chunks")
        # And write the load's dirty pages back now (the graph outgrows shared_buffers at 100k): else
        # the checkpointer, or queries evicting dirty buffers, write them during the measurements.
        conn.execute("CHECKPOINT")


async def quiesce(settings: Settings, timeout: float = 1800) -> float:
    """Wait out Valkey's AOF rewrite (started by the growth just indexed) and let autovacuum settle.

    Latency is measured on a quiet index: a rewrite forks and copies the whole dataset, and during it
    every percentile measures the rewrite rather than the query path. Returns the seconds waited.
    """
    started = time.monotonic()
    redis = aioredis.from_url(settings.redis_url)
    try:
        while time.monotonic() - started < timeout:
            info = await redis.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                break
            await asyncio.sleep(1.0)
    finally:
        await redis.aclose()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                                ).fetchone()[0]
            if not busy:
                break
            time.sleep(1.0)
    return round(time.monotonic() - started, 1)


WARM_UP_QUERIES = 20


async def latencies(http: httpx.AsyncClient, bodies: list[dict[str, Any]], concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    samples: list[float] = []

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            started = time.perf_counter()
            resp = await (http.post("/v1/search", json=body) if body else http.get("/healthz"))
            samples.append((time.perf_counter() - started) * 1000)
            resp.raise_for_status()

    await asyncio.gather(*(one(b) for b in bodies))
    return samples


async def footprint(settings: Settings, collection: str, before_redis: int) -> dict[str, Any]:
    redis = aioredis.from_url(settings.redis_url)
    try:
        used = int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM fluxstream_chunks WHERE collection = %s", (collection,)).fetchone()[0]
        total = conn.execute("SELECT pg_total_relation_size('fluxstream_chunks')").fetchone()[0]
    return {"redis_bytes": used - before_redis, "pg_rows": rows, "pg_bytes": total}


async def measure(settings: Settings, sizes: list[int], vectors_up_to: int, n_queries: int) -> dict[str, Any]:
    corpus = Corpus()
    collection = f"scale-{uuid.uuid4().hex[:6]}"
    tokenizer = build_tokenizer(settings)
    redis = aioredis.from_url(settings.redis_url)
    before_redis = int((await redis.info("memory"))["used_memory"])
    await redis.aclose()
    results: dict[str, Any] = {}
    done = postings = 0

    def searches(texts: list[str], params: dict[str, str]) -> list[dict[str, Any]]:
        return [{"query": q, "collection": collection, "k": 10, "cache": False, **params} for q in texts]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=120) as http:
        for size in sizes:
            started = time.monotonic()
            await grow(settings, corpus, collection, done, size, vectors=size <= vectors_up_to)
            postings += sum(len(Counter(tokenizer.tokenize(corpus.document(i)[0]))) for i in range(done, size))
            done = size
            row: dict[str, Any] = {"index_seconds": round(time.monotonic() - started, 1)}
            row["waited_for_background_seconds"] = await quiesce(settings)
            queries = corpus.queries(n_queries, seed=size)
            modes = {"bm25": {"mode": "bm25"}}
            if size <= vectors_up_to:
                modes["hybrid"] = {"mode": "hybrid", "fusion": "rrf"}
            # Warm up first (pages of the index just built, connections): the live index a query
            # service serves is queried all the time. Other texts than the measured ones, whose
            # embeddings the service would otherwise have cached.
            for params in modes.values():
                await latencies(http, searches(corpus.queries(WARM_UP_QUERIES, seed=size + 1), params), 1)
            for concurrency in (1, 8):
                row[f"healthz_c{concurrency}"] = percentiles(await latencies(http, [{}] * n_queries, concurrency))
                for name, params in modes.items():
                    row[f"{name}_c{concurrency}"] = percentiles(await latencies(http, searches(queries, params),
                                                                                concurrency))
                cached = [{"query": q, "collection": collection, "k": 10, "mode": "bm25"} for q in queries]
                await latencies(http, cached, concurrency)  # fill
                row[f"cache_hit_c{concurrency}"] = percentiles(await latencies(http, cached, concurrency))
            space = await footprint(settings, collection, before_redis)
            row["postings"] = postings
            row["redis_bytes_per_posting"] = round(space["redis_bytes"] / postings, 1)
            if space["pg_rows"]:
                row["pg_bytes_per_chunk"] = round(space["pg_bytes"] / space["pg_rows"], 1)
            results[str(size)] = row
            print(json.dumps({size: row}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--vectors-up-to", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with running_stack(worker_stages="bm25", cache_enabled=True) as settings:
        results = asyncio.run(measure(settings, sizes, args.vectors_up_to, args.queries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
