"""Rank fusion of retriever result lists (each a ranked list of (id, score), best first).

* RRF:      fused(d) = sum_r 1 / (k + rank_r(d)), ranks from 1 (Cormack et al. 2009).
* Weighted: fused(d) = sum_r w_r * minmax_r(score_r(d)); a retriever that did not
  return d contributes 0. When all of a retriever's scores are equal they normalise to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Ranking = Sequence[tuple[str, float]]


def rrf(rankings: Mapping[str, Ranking], k: int = 60) -> list[tuple[str, float]]:
    fused: dict[str, float] = {}
    for ranking in rankings.values():
        for rank, (item, _score) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return _sorted(fused)


def min_max(ranking: Ranking) -> dict[str, float]:
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    low, high = min(scores), max(scores)
    span = high - low
    return {item: (score - low) / span if span > 0 else 1.0 for item, score in ranking}


def weighted(rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[tuple[str, float]]:
    fused: dict[str, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 0.0)
        for item, norm in min_max(ranking).items():
            fused[item] = fused.get(item, 0.0) + weight * norm
    return _sorted(fused)


def _sorted(fused: dict[str, float]) -> list[tuple[str, float]]:
    # Ties broken by id so results are deterministic across runs.
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
