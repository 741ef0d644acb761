"""BM25 scoring in the Lucene form, over postings read from Redis.

idf(t)  = ln(1 + (N - df + 0.5) / (df + 0.5))
score   = sum_t idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

N, df and avgdl are exact at the moment of the read (see indexer.postings).
Repeated query terms count once per occurrence, as in Lucene's BooleanQuery.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from fluxstream.indexer.documents import TF_BITS, TF_MASK
from fluxstream.indexer.postings import CollectionStats


@dataclass(frozen=True)
class BM25Params:
    k1: float = 1.2
    b: float = 0.75


def idf(n_chunks: int, df: int) -> float:
    return math.log(1.0 + (n_chunks - df + 0.5) / (df + 0.5))


def score_postings(
    query_terms: list[str],
    stats: CollectionStats,
    postings: Mapping[str, Mapping[str, int]],
    params: BM25Params = BM25Params(),
) -> dict[str, float]:
    """chunk_id -> BM25 score for every chunk that contains a query term."""
    if stats.chunks == 0:
        return {}
    k1, b = params.k1, params.b
    avgdl = stats.avgdl or 1.0
    scores: dict[str, float] = {}
    for term, qtf in Counter(query_terms).items():
        plist = postings.get(term)
        if not plist:
            continue
        weight = qtf * idf(stats.chunks, len(plist)) * (k1 + 1.0)
        norm_a = k1 * (1.0 - b)
        norm_b = k1 * b / avgdl
        get = scores.get
        for chunk_id, packed in plist.items():
            tf = packed & TF_MASK
            dl = packed >> TF_BITS
            scores[chunk_id] = get(chunk_id, 0.0) + weight * tf / (tf + norm_a + norm_b * dl)
    return scores
