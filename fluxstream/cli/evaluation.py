"""`fluxstream eval`: retrieval quality of the running query service against judged queries."""

from __future__ import annotations

import argparse
import sys

import orjson

from fluxstream.cli.common import Subparsers, load_settings


def register(sub: Subparsers) -> None:
    ev = sub.add_parser("eval", help="precision, recall, F1, MRR, nDCG@k of the live service against qrels")
    ev.add_argument("qrels", help="TREC qrels: qid iteration docid relevance")
    ev.add_argument("queries", help="TREC topics or qid<TAB>text lines")
    ev.add_argument("--collection", default="default")
    ev.add_argument("--mode", default="hybrid", choices=["bm25", "vector", "hybrid"])
    ev.add_argument("--k", type=int, default=10, help="cut-off for P, R, F1, MRR and nDCG")
    ev.add_argument("--depth", type=int, default=100, help="results retrieved per query (recall depth)")
    ev.add_argument("--url", help="query service base URL (default: local FLUXSTREAM_HTTP_PORT)")
    ev.add_argument("--api-key")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Precision, recall, F1, MRR and nDCG@k of the running query service against judged queries."""
    from fluxstream.query.eval_client import BatchSearchFailed, ranked_run
    from fluxstream.query.evaluation import evaluate, load_qrels, load_queries

    settings = load_settings(args)
    qrels, queries = load_qrels(args.qrels), load_queries(args.queries)
    queries = {q: text for q, text in queries.items() if q in qrels}
    if not queries:
        sys.exit("fluxstream eval: no query has judgments in the qrels file")
    url = args.url or f"http://127.0.0.1:{settings.http_port}"
    try:
        run = ranked_run(url, queries, collection=args.collection, mode=args.mode, depth=args.depth,
                         api_key=args.api_key)
    except BatchSearchFailed as exc:
        sys.exit(f"fluxstream eval: {exc}")
    scores = evaluate(run, qrels, args.k, args.depth, queries)
    if args.json:
        sys.stdout.write(orjson.dumps({"queries": len(queries), **scores}, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"{len(queries)} queries, mode {args.mode}, collection {args.collection}")
        for name, value in scores.items():
            print(f"{name:12} {value:.4f}")
    return 0
