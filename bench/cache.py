"""Semantic-cache lookup cost as the cache grows (exact hits, near-duplicate hits, misses).

    python bench/cache.py [--sizes 1000,10000,100000] [--lookups 300]

Starts an embedded Valkey, fills one collection with synthetic entries (random unit query
vectors, a small retrieval each) up to each size, and times lookups through the real
``SemanticCache`` (each query's identity, see ``Searcher.query_identity``, is its text). The
reference is the smallest size measured in the same run: a flat structure keeps the ratios near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.vector_store import VectorHit
from fluxstream.query.cache.retrieval import Retrieval
from fluxstream.query.cache.store import CacheConfig, SemanticCache
from fluxstream.schemas.api import CacheInfo, SearchRequest, SearchResponse
from fluxstream.stack import EmbeddedServices

DIM = 384
COLLECTION = "bench"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(rng: np.random.Generator, v: np.ndarray, cosine: float = 0.97) -> np.ndarray:
    noise = unit(rng, 1)[0]
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    return (cosine * v + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


async def fill(cache: SemanticCache, vectors: np.ndarray, start: int, stop: int) -> None:
    response = SearchResponse(query="", collection=COLLECTION, mode="vector", fusion=None, hits=[], timings_ms={},
                              cache=CacheInfo(status="miss"))
    for i in range(start, stop):
        req = SearchRequest(query=f"query {i}", collection=COLLECTION, mode="vector", k=5)
        hits = [VectorHit(f"d{i}-{j}#0", f"d{i}-{j}", "h", 0.5 - j / 100) for j in range(5)]
        await cache.store(req, COLLECTION, req.query.encode(),
                          Retrieval(vector_hits=hits, query_vector=vectors[i]), response, pool=100)


async def time_lookups(cache: SemanticCache, requests: list[tuple[SearchRequest, np.ndarray]]) -> list[float]:
    samples = []
    for req, vector in requests:
        async def embed(texts: list[str], v: np.ndarray = vector) -> np.ndarray:
            return v[None, :]

        started = time.perf_counter()
        await cache.lookup(req, COLLECTION, req.query.encode(), embed)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def run(sizes: list[int], lookups: int, redis_url: str) -> None:
    import redis.asyncio as aioredis

    redis = aioredis.from_url(redis_url)
    cache = SemanticCache(redis, PostingsStore(redis), DIM, CacheConfig(max_entries=max(sizes) * 2))
    rng = np.random.default_rng(1)
    vectors = unit(rng, max(sizes))
    rows = []
    filled = 0
    for size in sizes:
        started = time.perf_counter()
        await fill(cache, vectors, filled, size)
        fill_s = time.perf_counter() - started
        filled = size
        picks = rng.choice(size, lookups, replace=False)
        exact = [(SearchRequest(query=f"query {i}", collection=COLLECTION, mode="vector", k=5), vectors[i])
                 for i in picks]
        semantic = [(SearchRequest(query=f"paraphrase {i}", collection=COLLECTION, mode="vector", k=5),
                     near(rng, vectors[i])) for i in picks]
        miss = [(SearchRequest(query=f"unseen {i}", collection=COLLECTION, mode="vector", k=5), v)
                for i, v in enumerate(unit(rng, lookups))]
        found = 0
        for req, vector in semantic[:50]:
            async def embed(texts: list[str], v: np.ndarray = vector) -> np.ndarray:
                return v[None, :]
            found += (await cache.lookup(req, COLLECTION, req.query.encode(), embed)).hit is not None
        memory = int((await redis.info("memory"))["used_memory"]) / 2**20
        latencies = [np.percentile(await time_lookups(cache, reqs), [50, 99]) for reqs in (exact, semantic, miss)]
        rows.append((size, *latencies, found / 50, memory, fill_s))
    base = rows[0]
    print(f"lookup latency in ms (p50 / p99), {lookups} lookups each; ratio = p50 / p50 at {base[0]:,} entries\n")
    print("| entries | exact hit | near-duplicate hit (cos 0.97) | miss | near-dup recall | Redis MiB |")
    print("|---|---|---|---|---|---|")
    for size, ex, se, mi, recall, memory, _ in rows:
        cells = [f"{v[0]:.2f} / {v[1]:.2f} ({v[0] / b[0]:.2f}x)" for v, b in ((ex, base[1]), (se, base[2]),
                                                                             (mi, base[3]))]
        print(f"| {size:,} | {' | '.join(cells)} | {recall:.2f} | {memory:.0f} |")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as state:
        services = EmbeddedServices(Path(state), kafka_url="unused", database_url="unused")
        services.start()
        try:
            asyncio.run(run(sizes, args.lookups, services.redis_url))
        finally:
            services.stop()


if __name__ == "__main__":
    main()
