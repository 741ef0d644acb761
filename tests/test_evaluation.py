"""query.evaluation against pytrec_eval (trec_eval's definitions) on random runs, plus hand-checked cases."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from fluxstream.query.evaluation import average_precision, evaluate, ndcg_at, per_query, reciprocal_rank_at


def _random_case(rng: random.Random) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, list[str]] = {}
    for q in range(25):
        docs = [f"d{i}" for i in range(60)]
        judged = rng.sample(docs, rng.randint(1, 15))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if not any(qrels[f"q{q}"].values()):
            qrels[f"q{q}"][judged[0]] = 1
        run[f"q{q}"] = rng.sample(docs, rng.randint(0, 40))
    return qrels, run


def test_metrics_match_pytrec_eval() -> None:
    qrels, run = _random_case(random.Random(7))
    # trec_eval sorts by score: give strictly decreasing scores in our rank order.
    trec_run = {q: {d: float(100 - i) for i, d in enumerate(ranked)} for q, ranked in run.items()}
    expected = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map", "recall.100", "recip_rank", "P.10",
                                                      "recall.10"}).evaluate(trec_run)
    ours = per_query(run, qrels, k=10, recall_depth=100)
    compared = 0
    for q, scores in expected.items():
        assert ours[q]["ndcg@10"] == pytest.approx(scores["ndcg_cut_10"], abs=1e-9)
        assert ours[q]["map"] == pytest.approx(scores["map"], abs=1e-9)
        assert ours[q]["recall@100"] == pytest.approx(scores["recall_100"], abs=1e-9)
        assert ours[q]["p@10"] == pytest.approx(scores["P_10"], abs=1e-9)
        assert ours[q]["recall@10"] == pytest.approx(scores["recall_10"], abs=1e-9)
        first = next((i for i, d in enumerate(run[q]) if qrels[q].get(d, 0) > 0), None)
        # trec_eval's recip_rank has no cut-off; ours is MRR@10.
        assert ours[q]["mrr@10"] == pytest.approx(scores["recip_rank"] if first is not None and first < 10 else 0.0)
        compared += 1
    assert compared > 10


def test_hand_checked_values() -> None:
    judged = {"a": 1, "c": 1, "x": 1}
    ranked = ["a", "b", "c"]
    assert average_precision(ranked, judged) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert reciprocal_rank_at(["b", "a"], judged, 10) == 0.5
    assert reciprocal_rank_at(["b", "a"], judged, 1) == 0.0
    dcg = 1 + 1 / 2  # ranks 1 and 3: 1/log2(2) + 1/log2(4)
    idcg = 1 + 1 / 1.584962500721156 + 1 / 2
    assert ndcg_at(ranked, judged, 10) == pytest.approx(dcg / idcg)
    means = evaluate({"q": ranked}, {"q": judged, "empty-run": {"a": 1}})
    assert means["map"] == pytest.approx(average_precision(ranked, judged) / 2)
