"""`fluxstream search`: one query to a running query service, its answer as JSON (errors in one line)."""

from __future__ import annotations

import argparse
import sys

import orjson

from fluxstream.cli.common import Subparsers, load_settings


def register(sub: Subparsers) -> None:
    search = sub.add_parser("search", help="query the running query service")
    search.add_argument("query")
    search.add_argument("--collection", default="default")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--mode", default="hybrid", choices=["bm25", "vector", "hybrid"])
    search.add_argument("--url", help="query service base URL (default: local FLUXSTREAM_HTTP_PORT)")
    search.add_argument("--api-key")
    search.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    import httpx

    settings = load_settings(args)
    body = {"query": args.query, "collection": args.collection, "k": args.k, "mode": args.mode}
    url = (args.url or f"http://127.0.0.1:{settings.http_port}").rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        resp = httpx.post(f"{url}/v1/search", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        sys.exit(f"fluxstream search: no answer from {url} ({exc}); is `fluxstream dev` or `fluxstream serve` "
                 "running? (--url to ask another)")
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if resp.status_code != 200:  # the service's error in one line (e.g. collection_not_found), exit 1
        if isinstance(answer, dict) and "error" in answer:
            print(f"fluxstream search: {answer['error']}: {answer.get('message', '')} ({url} answered "
                  f"{resp.status_code})", file=sys.stderr)
        else:
            print(f"fluxstream search: {url} answered {resp.status_code}: {resp.text[:500]}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n" if answer is not None
                     else resp.text + "\n")
    return 0
