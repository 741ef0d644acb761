"""RRF and weighted fusion on known rankings, computed by hand."""

from __future__ import annotations

import pytest

from fluxstream.query.fusion import min_max, rrf, weighted

BM25 = [("a", 12.0), ("b", 8.0), ("c", 2.0)]
VECTOR = [("c", 0.9), ("a", 0.7), ("d", 0.5)]


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = dict(rrf({"bm25": BM25, "vector": VECTOR}, k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [item for item, _ in rrf({"bm25": BM25, "vector": VECTOR}, k=60)] == ["a", "c", "b", "d"]


def test_rrf_k_changes_the_balance() -> None:
    # With a tiny k rank 1 dominates the sum; the formula is the same.
    fused = dict(rrf({"bm25": BM25, "vector": VECTOR}, k=1))
    assert fused["a"] == pytest.approx(1 / 2 + 1 / 3)
    assert fused["c"] == pytest.approx(1 / 4 + 1 / 2)


def test_min_max() -> None:
    assert min_max(BM25) == {"a": 1.0, "b": 0.6, "c": 0.0}
    assert min_max([("x", 3.0), ("y", 3.0)]) == {"x": 1.0, "y": 1.0}
    assert min_max([]) == {}


def test_weighted_fusion() -> None:
    fused = dict(weighted({"bm25": BM25, "vector": VECTOR}, {"bm25": 0.3, "vector": 0.7}))
    # vector min-max: c = 1.0, a = 0.5, d = 0.0
    assert fused["a"] == pytest.approx(0.3 * 1.0 + 0.7 * 0.5)
    assert fused["b"] == pytest.approx(0.3 * 0.6)
    assert fused["c"] == pytest.approx(0.3 * 0.0 + 0.7 * 1.0)
    assert fused["d"] == pytest.approx(0.0)
    order = [item for item, _ in weighted({"bm25": BM25, "vector": VECTOR}, {"bm25": 0.3, "vector": 0.7})]
    assert order == ["c", "a", "b", "d"]


def test_ties_are_deterministic() -> None:
    fused = rrf({"x": [("b", 1.0)], "y": [("a", 1.0)]}, k=60)
    assert [item for item, _ in fused] == ["a", "b"]


def test_score_fusions_by_hand() -> None:
    from fluxstream.query.fusion import EPS, score_fusion

    runs = {"bm25": BM25, "vector": VECTOR}  # normalised: bm25 a=1 b=.6 c=0; vector c=1 a=.5 d=0
    weights = {"bm25": 0.3, "vector": 0.7}
    product = dict(score_fusion("product", runs, weights))
    assert product["a"] == pytest.approx((EPS + 1.0) ** 0.3 * (EPS + 0.5) ** 0.7)
    assert product["b"] == pytest.approx((EPS + 0.6) ** 0.3 * EPS ** 0.7)
    maximum = dict(score_fusion("max", runs, weights))
    assert maximum["a"] == pytest.approx(max(0.3 * 1.0, 0.7 * 0.5))
    assert maximum["c"] == pytest.approx(0.7)
    harmonic = dict(score_fusion("harmonic", runs, weights))
    assert harmonic["a"] == pytest.approx(1.0 / (0.3 / (EPS + 1.0) + 0.7 / (EPS + 0.5)))
    # Agreement matters for product and harmonic: "a" (found by both) beats "b" (bm25 only).
    assert [i for i, _ in score_fusion("product", runs, weights)][:2] == ["a", "c"]
    assert product["a"] > product["b"] and harmonic["a"] > harmonic["b"]


def test_auto_strategy_reads_the_query_shape() -> None:
    from fluxstream.indexer.tokenizer import Tokenizer
    from fluxstream.query.strategy import AutoStrategy

    auto, tokenizer = AutoStrategy(), Tokenizer()
    assert auto.choose("hnsw recall", tokenizer, (0.5, 0.5)) == ("sparse-first", {"bm25": 0.7, "vector": 0.3})
    assert auto.choose("how do vector databases find similar embeddings", tokenizer, (0.5, 0.5))[0] == "vector-first"
    assert auto.choose("dielectric constant of liquids microwave", tokenizer, (0.4, 0.6)) == (
        "balanced", {"bm25": 0.4, "vector": 0.6})
