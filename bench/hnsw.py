"""HNSW presets: recall@10 against exact search, query latency, build time and index size.

    python -m bench.hnsw [--docs 11429]

Vectors: the Vaswani abstracts and its 93 queries, embedded by the local MiniLM (cached under
~/.cache/fluxstream). One table per preset in the embedded PostgreSQL + pgvector; exact top-10 by
brute-force cosine in NumPy; reference in the same run: PostgreSQL's exact scan (no index).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from bench.common import VASWANI, load_vaswani_corpus, percentiles
from fluxstream.core.hnsw import HNSW_PRESETS
from fluxstream.core.settings import Settings
from fluxstream.indexer.wiring import open_embedder
from fluxstream.query.evaluation import load_trec_topics
from fluxstream.stack import EmbeddedServices

CACHE = Path.home() / ".cache" / "fluxstream"
EF_SEARCH = [20, 40, 100, 200, 400]


async def embed_all(texts: list[str], name: str) -> np.ndarray:
    path = CACHE / f"{name}-{len(texts)}.npy"
    if path.exists():
        return np.load(path)
    embedder = await open_embedder(Settings.from_env())
    vectors = np.concatenate([await embedder.embed(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def exact_top(corpus: np.ndarray, queries: np.ndarray, k: int = 10) -> list[set[int]]:
    norm = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ norm.T
    return [set(np.argsort(-row)[:k].tolist()) for row in sims]


def timed_queries(conn: psycopg.Connection, table: str, queries: np.ndarray,
                  ef_search: int | None) -> tuple[list[list[int]], list[float]]:
    results, latencies = [], []
    with conn.transaction():
        if ef_search is None:
            conn.execute("SET LOCAL enable_indexscan = off")
        else:
            conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        for q in queries:
            started = time.perf_counter()
            rows = conn.execute(f"SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT 10", (q,)).fetchall()
            latencies.append((time.perf_counter() - started) * 1000)
            results.append([r[0] for r in rows])
    return results, latencies


def recall(found: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(truth[i] & set(f)) / 10 for i, f in enumerate(found)]))


def run(database_url: str, corpus: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    truth = exact_top(corpus, queries)
    out: dict[str, Any] = {"vectors": len(corpus), "queries": len(queries), "presets": {}}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench_vectors")
        conn.execute(f"CREATE TABLE bench_vectors (id int PRIMARY KEY, embedding vector({corpus.shape[1]}))")
        with conn.cursor().copy("COPY bench_vectors (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            for i, v in enumerate(corpus):
                copy.write_row((i, v))
        found, latencies = timed_queries(conn, "bench_vectors", queries, None)
        out["exact_scan"] = {"recall@10": round(recall(found, truth), 4), "latency_ms": percentiles(latencies)}
        for name, (params, default_ef) in HNSW_PRESETS.items():
            table = f"bench_{name}"
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} AS SELECT * FROM bench_vectors")
            started = time.perf_counter()
            conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
                         f"WITH (m = {params.m}, ef_construction = {params.ef_construction})")
            build = time.perf_counter() - started
            size = conn.execute(f"SELECT pg_relation_size('{table}_hnsw')").fetchone()[0]
            rows: dict[str, Any] = {}
            for ef in sorted({default_ef, *EF_SEARCH}):
                found, latencies = timed_queries(conn, table, queries, ef)
                rows[str(ef)] = {"recall@10": round(recall(found, truth), 4), "latency_ms": percentiles(latencies)}
            out["presets"][name] = {"m": params.m, "ef_construction": params.ef_construction,
                                    "default_ef_search": default_ef, "build_seconds": round(build, 2),
                                    "index_mib": round(size / 2**20, 1), "ef_search": rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=0, help="first N abstracts (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hnsw.json"))
    args = parser.parse_args()
    texts = list(load_vaswani_corpus().values())
    texts = texts[: args.docs] if args.docs else texts
    corpus = asyncio.run(embed_all(texts, "vaswani-minilm"))
    queries = asyncio.run(embed_all(list(load_trec_topics(VASWANI / "query-text.trec").values()), "vaswani-q"))
    with tempfile.TemporaryDirectory() as state:
        services = EmbeddedServices(Path(state), kafka_url="unused", redis_url="unused")  # PostgreSQL only
        services.start()
        try:
            results = run(services.database_url, corpus, queries)
        finally:
            services.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
