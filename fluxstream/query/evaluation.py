"""Retrieval-quality metrics over a run (ranked doc ids per query) and qrels (graded judgments).

One implementation for `bench/quality.py` and `fluxstream eval`; tests check it against
pytrec_eval (trec_eval's definitions): nDCG uses the gain ``rel`` with a log2(rank+1) discount
and the ideal ranking of all judged documents; AP divides by the number of relevant documents
(rel > 0), retrieved or not; MRR@k is the reciprocal rank of the first relevant document within k.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean

Qrels = Mapping[str, Mapping[str, int]]  # query id -> doc id -> relevance grade
Run = Mapping[str, Sequence[str]]  # query id -> doc ids, best first


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid iteration docid relevance`` per line."""
    qrels: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def load_trec_topics(path: str | Path) -> dict[str, str]:
    """TREC topics: ``<top><num>qid</num><title>text</title></top>``."""
    text = Path(path).read_text(errors="replace")
    topics = {}
    for block in re.findall(r"<top>(.*?)</top>", text, flags=re.S):
        num = re.search(r"<num>\s*(?:Number:)?\s*(\S+?)\s*</num>", block, flags=re.S)
        title = re.search(r"<title>(.*?)</title>", block, flags=re.S)
        if num and title:
            topics[num.group(1)] = " ".join(title.group(1).split())
    return topics


def load_queries(path: str | Path) -> dict[str, str]:
    """TREC topics (``<top>...``) or one ``qid<TAB>text`` per line."""
    text = Path(path).read_text(errors="replace")
    if "<top>" in text:
        return load_trec_topics(path)
    queries = {}
    for line in text.splitlines():
        qid, sep, query = line.partition("\t")
        if sep and qid.strip() and query.strip():
            queries[qid.strip()] = query.strip()
    return queries


def ndcg_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision(ranked: Sequence[str], judged: Mapping[str, int]) -> float:
    relevant = sum(1 for g in judged.values() if g > 0)
    if relevant == 0:
        return 0.0
    found, total = 0, 0.0
    for i, d in enumerate(ranked):
        if judged.get(d, 0) > 0:
            found += 1
            total += found / (i + 1)
    return total / relevant


def recall_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def precision_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    return sum(1 for d in ranked[:k] if judged.get(d, 0) > 0) / k


def reciprocal_rank_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def per_query(run: Run, qrels: Qrels, k: int = 10, recall_depth: int = 100) -> dict[str, dict[str, float]]:
    """Every metric per judged query (queries missing from the run score 0, as trec_eval -c does)."""
    out = {}
    for qid, judged in qrels.items():
        ranked = list(dict.fromkeys(run.get(qid, [])))  # a document counts once (chunks of one doc)
        p, r = precision_at(ranked, judged, k), recall_at(ranked, judged, k)
        out[qid] = {
            f"ndcg@{k}": ndcg_at(ranked, judged, k), "map": average_precision(ranked, judged),
            f"recall@{recall_depth}": recall_at(ranked, judged, recall_depth), f"mrr@{k}": reciprocal_rank_at(
                ranked, judged, k), f"p@{k}": p, f"recall@{k}": r, f"f1@{k}": f1(p, r),
        }
    return out


def evaluate(run: Run, qrels: Qrels, k: int = 10, recall_depth: int = 100,
             queries: Iterable[str] | None = None) -> dict[str, float]:
    """Means over ``queries`` (default: every judged query)."""
    scores = per_query(run, qrels, k, recall_depth)
    chosen = [q for q in (queries if queries is not None else scores) if q in scores]
    names = next(iter(scores.values())).keys() if scores else []
    return {name: fmean(scores[q][name] for q in chosen) if chosen else 0.0 for name in names}
