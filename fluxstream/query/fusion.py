"""Rank fusion of retriever result lists (each a ranked list of (id, score), best first).

* RRF:      fused(d) = sum_r 1 / (k + rank_r(d)), ranks from 1 (Cormack et al. 2009).
* Score fusions work on min-max normalised scores n_r(d) in [0, 1]; a retriever that did not
  return d gives n_r(d) = 0, and when all of a retriever's scores are equal they normalise to 1.
  - weighted: sum_r w_r * n_r(d)                          (CombSUM with weights)
  - product:  prod_r (EPS + n_r(d)) ** w_r                 (weighted geometric; both retrievers must agree)
  - max:      max_r w_r * n_r(d)                           (CombMAX: the most confident retriever wins)
  - harmonic: sum_r w_r / sum_r (w_r / (EPS + n_r(d)))      (weighted harmonic mean; punishes one weak score)
  EPS keeps a document found by one retriever only rankable instead of tied at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

Ranking = Sequence[tuple[str, float]]
EPS = 0.01
SCORE_FUSIONS = ("weighted", "product", "max", "harmonic")


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


Combiner = Callable[[Sequence[float], Sequence[float]], float]  # (normalised scores, weights) -> fused


def _weighted_sum(scores: Sequence[float], weights: Sequence[float]) -> float:
    return sum(w * s for s, w in zip(scores, weights, strict=True))


def _product(scores: Sequence[float], weights: Sequence[float]) -> float:
    return math.prod((EPS + s) ** w for s, w in zip(scores, weights, strict=True))


def _maximum(scores: Sequence[float], weights: Sequence[float]) -> float:
    return max(w * s for s, w in zip(scores, weights, strict=True))


def _harmonic(scores: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    return total / sum(w / (EPS + s) for s, w in zip(scores, weights, strict=True)) if total > 0 else 0.0


COMBINERS: dict[str, Combiner] = {"weighted": _weighted_sum, "product": _product, "max": _maximum,
                                  "harmonic": _harmonic}


def score_fusion(method: str, rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[tuple[str, float]]:
    """One of SCORE_FUSIONS over the normalised scores of every retriever."""
    combine = COMBINERS[method]
    names = list(rankings)
    normalised = [min_max(rankings[name]) for name in names]
    w = [weights.get(name, 0.0) for name in names]
    items = {item for norm in normalised for item in norm}
    return _sorted({item: combine([norm.get(item, 0.0) for norm in normalised], w) for item in items})


def weighted(rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[tuple[str, float]]:
    return score_fusion("weighted", rankings, weights)


def _sorted(fused: dict[str, float]) -> list[tuple[str, float]]:
    # Ties broken by id so results are deterministic across runs.
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
