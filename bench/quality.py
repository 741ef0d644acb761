"""Retrieval quality on Vaswani (11,429 abstracts, 93 queries), indexed through the live pipeline.

    python bench/quality.py [--data ../shared/data/vaswani] [--out bench/results/quality.json]

Documents go to Kafka as change events; the worker indexes them (BM25 in Redis, vectors in
pgvector); every query goes through the query service's HTTP batch endpoint. Reference in the
same run: bm25s with the same tokenizer, k1 and b (our BM25 must be within 0.005 nDCG@10).
Fusion defaults are tuned on the odd-numbered queries and reported on the even-numbered ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import bm25s
import httpx
import numpy as np

from bench.common import VASWANI, load_vaswani_corpus, running_stack, wait_until_indexed
from fluxstream.client import publish_documents
from fluxstream.core.settings import Settings
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.query.evaluation import evaluate, load_qrels, load_trec_topics

K = 100
RRF_KS = [5, 10, 20, 40, 60, 100]
WEIGHTS = [round(w, 1) for w in np.arange(0.1, 1.0, 0.1)]
SCORE_FUSIONS = ["weighted", "product", "max", "harmonic"]


def split(qids: list[str]) -> tuple[list[str], list[str]]:
    """(tune, test): odd query numbers tune, even ones are reported."""
    return [q for q in qids if int(q) % 2 == 1], [q for q in qids if int(q) % 2 == 0]


async def run_queries(http: httpx.AsyncClient, collection: str, topics: dict[str, str],
                      **params: Any) -> tuple[dict[str, list[str]], list[str | None], float]:
    """Ranked doc ids per query, the auto strategies chosen, and the batch's wall time in seconds."""
    qids = list(topics)
    body = {"requests": [{"query": topics[q], "collection": collection, "k": K, "cache": False, **params}
                         for q in qids]}
    started = time.perf_counter()
    resp = await http.post("/v1/search/batch", json=body)
    elapsed = time.perf_counter() - started
    resp.raise_for_status()
    responses = resp.json()["responses"]
    run = {q: [h["doc_id"] for h in r["hits"]] for q, r in zip(qids, responses, strict=True)}
    return run, [r.get("strategy") for r in responses], elapsed


def bm25s_run(settings: Settings, corpus: dict[str, str], topics: dict[str, str]) -> tuple[dict[str, list[str]],
                                                                                          float]:
    tokenizer = build_tokenizer(settings)
    ids = list(corpus)
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=settings.bm25_k1, b=settings.bm25_b, method="lucene")
    retriever.index([tokenizer.tokenize(corpus[d]) for d in ids], show_progress=False)
    qids = list(topics)
    docs, _ = retriever.retrieve([tokenizer.tokenize(topics[q]) or ["_"] for q in qids], k=K, show_progress=False)
    return {q: [ids[i] for i in row] for q, row in zip(qids, docs, strict=True)}, time.perf_counter() - started


def scores(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], queries: list[str]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in evaluate(run, qrels, 10, 100, queries).items()}


async def index_corpus(settings: Settings, corpus: dict[str, str],
                       vectors: bool = True) -> tuple[str, dict[str, float]]:
    collection = f"vaswani-{uuid.uuid4().hex[:6]}"
    await publish_documents(settings, ({"doc_id": d, "collection": collection, "version": 1, "text": t}
                                       for d, t in corpus.items()))
    return collection, await wait_until_indexed(settings, collection, len(corpus), vectors=vectors)


async def bm25_only(settings: Settings, corpus: dict[str, str], topics: dict[str, str],
                    qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A tokenizer variant: BM25 through the service against bm25s with the same tokenizer."""
    collection, _ = await index_corpus(settings, corpus, vectors=False)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=600) as http:
        ours, _, _ = await run_queries(http, collection, topics, mode="bm25")
    reference, _ = bm25s_run(settings, corpus, topics)
    qids = list(topics)
    return {"bm25": scores(ours, qrels, qids), "bm25s": scores(reference, qrels, qids)}


async def evaluate_all(settings: Settings, corpus: dict[str, str], topics: dict[str, str],
                       qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    started = time.monotonic()
    collection, stages = await index_corpus(settings, corpus)
    ingest = {"documents": len(corpus), "publish_and_index_seconds": round(time.monotonic() - started, 1),
              **{f"{k}_seconds": round(v, 1) for k, v in stages.items()}}
    qids = sorted(topics, key=int)
    tune, test = split(qids)
    everything = {"all": qids, "tune": tune, "test": test}
    results: dict[str, Any] = {"collection_size": len(corpus), "queries": len(qids), "ingest": ingest}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=600) as http:
        runs: dict[str, dict[str, list[str]]] = {}
        latency: dict[str, float] = {}
        for name, params in {"bm25": {"mode": "bm25"}, "vector": {"mode": "vector"},
                             "hybrid-rrf (k=60)": {"mode": "hybrid", "fusion": "rrf"},
                             **{f"hybrid-{f} (0.5/0.5)": {"mode": "hybrid", "fusion": f} for f in SCORE_FUSIONS},
                             "hybrid-auto": {"mode": "hybrid", "fusion": "auto"}}.items():
            runs[name], strategies, elapsed = await run_queries(http, collection, topics, **params)
            latency[name] = round(elapsed / len(qids) * 1000, 2)
            if name == "hybrid-auto":
                results["auto_strategies"] = {s: strategies.count(s) for s in set(strategies) if s}
        reference, reference_seconds = bm25s_run(settings, corpus, topics)
        results["reference_bm25s_seconds"] = round(reference_seconds, 2)
        runs["reference: bm25s (same tokenizer, k1, b)"] = reference
        results["fixed"] = {name: {split_name: scores(run, qrels, queries) for split_name, queries
                                   in everything.items()} | {"ms_per_query_in_batch": latency.get(name)}
                            for name, run in runs.items()}
        results["tuning"] = await tune_fusion(http, collection, topics, qrels, tune, test)
    ours = results["fixed"]["bm25"]["all"]["ndcg@10"]
    ref = results["fixed"]["reference: bm25s (same tokenizer, k1, b)"]["all"]["ndcg@10"]
    results["bm25_vs_bm25s_ndcg10_delta"] = round(ours - ref, 4)
    return results


async def tune_fusion(http: httpx.AsyncClient, collection: str, topics: dict[str, str],
                      qrels: dict[str, dict[str, int]], tune: list[str], test: list[str]) -> dict[str, Any]:
    """Grid on the tune split; the best setting of each method is then scored on the test split."""
    grid: dict[str, list[dict[str, Any]]] = {
        "rrf": [{"fusion": "rrf", "rrf_k": k} for k in RRF_KS],
        **{f: [{"fusion": f, "weights": {"bm25": w, "vector": round(1 - w, 1)}} for w in WEIGHTS]
           for f in SCORE_FUSIONS},
    }
    tuned: dict[str, Any] = {}
    for method, settings in grid.items():
        trials = []
        for params in settings:
            run, _, _ = await run_queries(http, collection, topics, mode="hybrid", **params)
            trials.append((evaluate(run, qrels, 10, 100, tune)["ndcg@10"], params, run))
        best_ndcg, best, run = max(trials, key=lambda t: t[0])
        tuned[method] = {"params": best, "tune_ndcg@10": round(best_ndcg, 4), "test": scores(run, qrels, test)}
    return tuned


def markdown(results: dict[str, Any]) -> str:
    lines = ["| method | nDCG@10 | MAP | Recall@100 | MRR@10 | nDCG@10 (test half) | ms/query |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["fixed"].items():
        a = r["all"]
        lines.append(f"| {name} | {a['ndcg@10']:.4f} | {a['map']:.4f} | {a['recall@100']:.4f} | {a['mrr@10']:.4f} "
                     f"| {r['test']['ndcg@10']:.4f} | {r['ms_per_query_in_batch'] or '-'} |")
    lines += ["", "| tuned on odd queries | best setting | nDCG@10 tune | nDCG@10 test | MAP test |",
              "|---|---|---|---|---|"]
    for method, t in results["tuning"].items():
        params = {k: v for k, v in t["params"].items() if k != "fusion"}
        lines.append(f"| {method} | {json.dumps(params)} | {t['tune_ndcg@10']:.4f} | {t['test']['ndcg@10']:.4f} "
                     f"| {t['test']['map']:.4f} |")
    delta = results["bm25_vs_bm25s_ndcg10_delta"]
    lines += ["", f"BM25 vs bm25s nDCG@10 delta: {delta:+.4f} ({'within' if abs(delta) <= 0.005 else 'OUTSIDE'} 0.005)",
              f"auto strategies chosen: {results.get('auto_strategies')}", f"ingest: {results['ingest']}"]
    lines += [f"{name}: {json.dumps(value)}" for name, value in results.items() if name.startswith("stemmer=")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=VASWANI)
    parser.add_argument("--limit-docs", type=int, default=0, help="index only the first N documents (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    parser.add_argument("--stemmers", nargs="*", default=["english"], help="BM25-only tokenizer variants")
    parser.add_argument("--variants-only", action="store_true", help="only the tokenizer variants")
    args = parser.parse_args()
    corpus = load_vaswani_corpus(args.data)
    if args.limit_docs:
        corpus = dict(list(corpus.items())[: args.limit_docs])
    topics = load_trec_topics(args.data / "query-text.trec")
    qrels = load_qrels(args.data / "qrels")
    results: dict[str, Any] = {}
    if not args.variants_only:
        with running_stack(chunk_size=300) as settings:  # one chunk per abstract: documents are the unit, as in bm25s
            results = asyncio.run(evaluate_all(settings, corpus, topics, qrels))
    for stemmer in args.stemmers:
        with running_stack(chunk_size=300, stemmer=stemmer, worker_stages="bm25") as settings:
            results[f"stemmer={stemmer}"] = asyncio.run(bm25_only(settings, corpus, topics, qrels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results) if not args.variants_only else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
