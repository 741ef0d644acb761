"""The ``fluxstream`` command: dev stack, worker, query service, topic admin, publishing, search."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fluxstream.logging import configure_logging, get_logger
from fluxstream.settings import Settings, describe, markdown_reference

if TYPE_CHECKING:
    from streams.rebuild import RebuildPlan
    from streams.topic_range import TopicRange

log = get_logger("fluxstream.cli")

DEMO_COLLECTION = "demo"
DEMO_QUERY = "how do vector databases find similar embeddings"


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "state_dir", None):
        settings = replace(settings, state_dir=args.state_dir)
    return settings


# ---------------------------------------------------------------- dev
def cmd_dev(args: argparse.Namespace) -> int:
    """Start the embedded stack (or use configured URLs), run worker + query service until signalled."""
    from fluxstream.stack import Stack

    base = _settings(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        print(f"\nfluxstream: received {signal.Signals(signum).name}, shutting down...", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(base, workers=args.workers)
    print(f"fluxstream: starting the stack under {Path(base.state_dir).resolve()} ...", flush=True)
    try:
        settings = stack.start()
        origin = {True: "embedded", False: "external"}
        started = stack.services.started if stack.services else []
        print("fluxstream: services", flush=True)
        print(f"  kafka     {settings.kafka_url}  ({origin['kafka' in started]})", flush=True)
        print(f"  redis     {settings.redis_url}  ({origin['redis' in started]})", flush=True)
        print(f"  postgres  {settings.database_url}  ({origin['postgres' in started]})", flush=True)
        print(f"  query     http://127.0.0.1:{settings.http_port}  (OpenAPI: /docs)", flush=True)
        if settings.worker_web_port:
            print(f"  worker    http://127.0.0.1:{settings.worker_web_port}/readyz  (metrics: /metrics)",
                  flush=True)
        print(f"  logs      {settings.state_dir}/*.log", flush=True)
        if args.demo:
            run_demo(settings)
        print("fluxstream: running; press Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            for name, proc in (stack.apps.procs.items() if stack.apps else []):
                if proc.poll() is not None:
                    print(f"fluxstream: {name} exited with {proc.returncode}; stopping", flush=True)
                    stop.set()
    finally:
        stack.stop()
        print("fluxstream: stopped.", flush=True)
    return 0


def sample_documents() -> list[dict[str, object]]:
    raw = resources.files("fluxstream").joinpath("sample/corpus.ndjson").read_bytes()
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def run_demo(settings: Settings) -> None:
    """Index the bundled sample corpus through Kafka and answer one query over HTTP."""
    import httpx

    from fluxstream.client import publish_documents

    docs = sample_documents()
    for doc in docs:
        doc.setdefault("collection", DEMO_COLLECTION)
    asyncio.run(publish_documents(settings, docs))
    print(f"fluxstream: published {len(docs)} sample documents to {settings.documents_topic}", flush=True)
    url = f"http://127.0.0.1:{settings.http_port}/v1/search"
    body = {"query": DEMO_QUERY, "collection": DEMO_COLLECTION, "k": 3, "mode": "hybrid"}
    deadline = time.monotonic() + 120
    while True:
        hits = httpx.post(url, json=body, timeout=10).json()["hits"]
        if (hits and all(h["vector"] is not None for h in hits[:1])) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    print(f"fluxstream: query {DEMO_QUERY!r} -> {len(hits)} hits", flush=True)
    for rank, hit in enumerate(hits, start=1):
        print(f"  {rank}. [{hit['doc_id']}] {hit['title']}  score={hit['score']:.4f}", flush=True)
    print(f"fluxstream: try it:  curl -s -X POST {url} -H 'content-type: application/json' "
          f"-d '{orjson.dumps(body).decode()}'", flush=True)


# ---------------------------------------------------------------- processes
def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from fluxstream.logging import logging_config
    from streams.app import build_app

    settings = _settings(args)
    _require(settings, "kafka_url", "redis_url", "database_url")
    _use_uvloop()
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(),
                          logging_config=logging_config(settings.log_format, settings.log_level))
    worker.execute_from_commandline()
    return 0


def _use_uvloop() -> None:
    """The worker on uvloop (libuv) when installed: asyncio's own machinery was about a fifth of the
    worker's CPU in the BM25 path's profile (docs/benchmarks.md)."""
    try:
        import mode.loop

        mode.loop.use("uvloop")
    except ImportError:  # uvloop is not built for this platform (Windows): the default loop
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fluxstream.logging import logging_config
    from query.service import create_app

    settings = _settings(args)
    _require(settings, "redis_url", "database_url")
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port,
                log_config=logging_config(settings.log_format, settings.log_level), access_log=False)
    return 0


def _require(settings: Settings, *names: str) -> None:
    missing = [f"FLUXSTREAM_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        sys.exit(f"fluxstream: set {', '.join(missing)} (or use `fluxstream dev` for an embedded stack)")


# ---------------------------------------------------------------- admin
def cmd_create_topics(args: argparse.Namespace) -> int:
    from streams.topics import create_topics

    settings = _settings(args)
    _require(settings, "kafka_url")
    created = asyncio.run(create_topics(settings))
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return 0


def _read_ndjson(path: str) -> Iterator[dict[str, object]]:
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    with stream:
        for line in stream:
            if line.strip():
                yield orjson.loads(line)


def cmd_publish(args: argparse.Namespace) -> int:
    from fluxstream.client import publish_documents

    settings = _settings(args)
    _require(settings, "kafka_url")
    docs = list(_read_ndjson(args.file))
    if args.collection:
        for doc in docs:
            doc["collection"] = args.collection
    positions = asyncio.run(publish_documents(settings, docs))
    print(f"published {len(positions)} change events to {settings.documents_topic}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import tempfile

    from streams.replay import export, replay

    settings = _settings(args)
    if not args.dry_run or args.from_topic:
        _require(settings, "kafka_url")
    if bool(args.files) == bool(args.from_topic):
        sys.exit("fluxstream replay: give log files, or --from-topic with a range (not both)")
    if args.into_generation:
        if args.dry_run:
            sys.exit("fluxstream replay: --dry-run validates files; it does not combine with --into-generation")
        return _rebuild(settings, _rebuild_plan(args, args.into_generation))
    with tempfile.TemporaryDirectory() as scratch:
        files = args.files
        if args.from_topic:  # a window of a topic: exported first, so it is validated like a file
            files = [f"{scratch}/range.ndjson"]
            asyncio.run(export(settings, _window(args, args.from_topic), files[0]))
        report = asyncio.run(replay(settings, files, topic=args.topic, rate=args.rate, dry_run=args.dry_run,
                                    collection=args.collection))
    for bad in report.bad:
        print(f"bad {bad}", file=sys.stderr)
    verb = "checked" if args.dry_run else "published"
    print(f"{verb} {report.published if not args.dry_run else report.records} records; {len(report.bad)} bad lines"
          + ("; nothing published" if report.bad and not args.dry_run else ""))
    return 1 if report.bad else 0


def _add_rebuild_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace", type=float, help="seconds the old generation is kept after the switch "
                        "(default $FLUXSTREAM_REBUILD_GRACE_SECONDS)")
    parser.add_argument("--no-switch", action="store_true", help="build and catch up, but keep serving the old one")


def _ms(text: str | None) -> int | None:
    """ISO timestamp -> epoch milliseconds (Kafka record time)."""
    from datetime import datetime

    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


def _window(args: argparse.Namespace, topic: str) -> TopicRange:
    from streams.topic_range import TopicRange

    return TopicRange(topic, args.partition, start=args.from_offset, end=args.to_offset,
                      start_ms=_ms(args.from_time), end_ms=_ms(args.to_time))


def _rebuild_plan(args: argparse.Namespace, collection: str) -> RebuildPlan:
    """A new generation must catch up with the live topic: windows have a start but no end."""
    from streams.rebuild import RebuildPlan

    if args.to_offset is not None or args.to_time is not None:
        sys.exit("a new generation replays up to the topic's end (it must catch up): --to-* does not apply")
    topics = [args.from_topic] if getattr(args, "from_topic", None) else None
    return RebuildPlan(collection, logs=list(args.files), topics=topics, partitions=args.partition,
                       start=args.from_offset, start_ms=_ms(args.from_time),
                       replay_topics=not (args.files and not topics and getattr(args, "logs_only", False)),
                       grace_seconds=args.grace if args.grace is not None else _settings(args).rebuild_grace_seconds,
                       switch=not args.no_switch)


def _rebuild(settings: Settings, plan: RebuildPlan) -> int:
    from streams.app import load_cdc_mapping
    from streams.rebuild import rebuild

    _require(settings, "kafka_url", "redis_url", "database_url")
    report = asyncio.run(rebuild(settings, plan, load_cdc_mapping(settings)))
    for bad in report.bad_lines:
        print(f"skipped bad line {bad}", file=sys.stderr)
    state = "serving now" if report.switched else "built, not switched (--no-switch)"
    print(f"{plan.collection}: generation {report.generation} ({report.index}) {state}; "
          f"{report.records} records replayed, {report.rejected} rejected, {report.seconds:.1f} s")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.abort:
        return _abort_rebuild(settings, args.collection)
    if args.promote:
        return _promote(settings, args.collection, args.grace)
    return _rebuild(settings, _rebuild_plan(args, args.collection))


def _promote(settings: Settings, collection: str, grace: float | None) -> int:
    """Switch to a generation built with --no-switch (it has been fed live changes since)."""
    import redis.asyncio as aioredis

    from indexer.generations import GenerationRegistry

    async def run() -> tuple[bool, str]:
        redis = aioredis.from_url(settings.redis_url)
        try:
            registry = GenerationRegistry(redis)
            state = await registry.get(collection)
            if state.building is None or state.state != "building" or state.progress.get("phase") != "ready":
                return False, f"{collection}: no generation is ready to switch to (see fluxstream status)"
            switched = await registry.switch(collection, state.building, grace if grace is not None
                                             else settings.rebuild_grace_seconds)
            return switched, f"{collection}: generation {state.building} serving now" if switched else "raced"
        finally:
            await redis.aclose()

    _require(settings, "redis_url")
    switched, message = asyncio.run(run())
    print(message, file=sys.stdout if switched else sys.stderr)
    return 0 if switched else 1


def _abort_rebuild(settings: Settings, collection: str) -> int:
    from indexer.retirement import Retirement
    from streams.pipeline import Resources

    async def run() -> str:
        resources = await Resources.open(settings, settings.redis_url, settings.database_url)
        try:
            dropped = await Retirement(resources.postings, resources.vectors).abort(collection)
        finally:
            await resources.close()
        if dropped is None:
            return f"{collection}: no generation is building"
        return f"{collection}: dropped {dropped.index} ({dropped.redis_keys} keys, {dropped.vector_rows} vectors)"

    _require(settings, "redis_url", "database_url")
    print(asyncio.run(run()))
    return 0


def _add_range_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition", type=int, action="append", help="repeatable; default: all")
    parser.add_argument("--from-offset", type=int)
    parser.add_argument("--to-offset", type=int, help="exclusive")
    parser.add_argument("--from-time", help="ISO timestamp, inclusive")
    parser.add_argument("--to-time", help="ISO timestamp, exclusive")


def cmd_export(args: argparse.Namespace) -> int:
    from streams.replay import export

    settings = _settings(args)
    _require(settings, "kafka_url")
    written = asyncio.run(export(settings, _window(args, args.topic or settings.documents_topic), args.out))
    print(f"exported {written} records to {args.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from streams.status import status

    settings = _settings(args)
    _require(settings, "kafka_url", "redis_url")
    report = asyncio.run(status(settings))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{'collection':24} {'gen':>4} {'documents':>10} {'chunks':>10} {'changes':>10}  building")
    for row in report["collections"]:
        building = row["building"]
        rebuilding = "-" if building is None else (
            f"g{building['generation']} {building['state']} {building.get('phase', '')} "
            f"{building.get('records', 0)} records, {building['documents']} documents")
        print(f"{row['collection']:24} {row['generation']:>4} {row['documents']:>10} {row['chunks']:>10} "
              f"{row['change_seq']:>10}  {rebuilding}")
    print(f"\n{'topic':32} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8} {'applied':>10}")
    for row in report["consumer_lag"]:
        applied = report["applied_positions"].get(f"{row['topic']}:{row['partition']}", "-")
        print(f"{row['topic']:32} {row['partition']:>9} {row['committed']:>10} {row['end']:>10} {row['lag']:>8} "
              f"{applied:>10}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    body = {"query": args.query, "collection": args.collection, "k": args.k, "mode": args.mode}
    resp = httpx.post(f"http://127.0.0.1:{settings.http_port}/v1/search", json=body, timeout=30)
    sys.stdout.write(orjson.dumps(resp.json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if resp.status_code == 200 else 1


def cmd_eval(args: argparse.Namespace) -> int:
    """Precision, recall, F1, MRR and nDCG@k of the running query service against judged queries."""
    import httpx

    from query.evaluation import evaluate, load_qrels, load_queries

    settings = _settings(args)
    qrels, queries = load_qrels(args.qrels), load_queries(args.queries)
    queries = {q: text for q, text in queries.items() if q in qrels}
    if not queries:
        sys.exit("fluxstream eval: no query has judgments in the qrels file")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    run: dict[str, list[str]] = {}
    url = args.url or f"http://127.0.0.1:{settings.http_port}"
    items = list(queries.items())
    for i in range(0, len(items), 100):  # the batch endpoint takes up to 100 searches
        body = {"requests": [{"query": text, "collection": args.collection, "k": args.depth, "mode": args.mode,
                              "cache": False} for _, text in items[i:i + 100]]}
        resp = httpx.post(f"{url}/v1/search/batch", json=body, headers=headers, timeout=300)
        if resp.status_code != 200:
            sys.exit(f"fluxstream eval: {resp.status_code} {resp.text[:500]}")
        for (qid, _), response in zip(items[i:i + 100], resp.json()["responses"], strict=True):
            run[qid] = [hit["doc_id"] for hit in response["hits"]]
    scores = evaluate(run, qrels, args.k, args.depth, queries)
    if args.json:
        sys.stdout.write(orjson.dumps({"queries": len(queries), **scores}, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"{len(queries)} queries, mode {args.mode}, collection {args.collection}")
        for name, value in scores.items():
            print(f"{name:12} {value:.4f}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.registry import ALL_MODELS, render, schema_path, write_all

    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    stale = [name for name in ALL_MODELS if schema_path(name).read_bytes() != render(name)]
    print("stale: " + ", ".join(stale) if stale else "schemas up to date")
    return 1 if stale else 0


def cmd_api_key(args: argparse.Namespace) -> int:
    """Print a new key (give it to the client) and its entry (append it to FLUXSTREAM_API_KEYS)."""
    from query.auth import new_key

    key, entry = new_key([s.strip() for s in args.scopes.split(",") if s.strip()])
    print(f"key:   {key}\nentry: {entry}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(markdown_reference())
        return 0
    for name, default, doc in describe():
        print(f"{name:38} {default:28} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxstream", description=__doc__)
    parser.add_argument("--state-dir", help="state directory (default $FLUXSTREAM_STATE_DIR or .fluxstream)")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the embedded stack with worker and query service")
    dev.add_argument("--demo", action="store_true", help="index the bundled sample corpus and run a query")
    dev.add_argument("--workers", type=int, default=1, help="number of worker processes")
    dev.set_defaults(func=cmd_dev)
    sub.add_parser("worker", help="run a Faust indexing worker").set_defaults(func=cmd_worker)
    sub.add_parser("serve", help="run the HTTP query service").set_defaults(func=cmd_serve)
    sub.add_parser("create-topics", help="create fluxstream's topics").set_defaults(func=cmd_create_topics)
    pub = sub.add_parser("publish", help="publish DocumentChange events from NDJSON (- for stdin)")
    pub.add_argument("--file", default="-")
    pub.add_argument("--collection", help="override the collection of every event")
    pub.set_defaults(func=cmd_publish)
    rep = sub.add_parser("replay", help="publish event-log files (NDJSON, .gz), or a topic range, to topics")
    rep.add_argument("files", nargs="*")
    rep.add_argument("--from-topic", help="replay a range of this topic instead of files (see range options)")
    _add_range_options(rep)
    rep.add_argument("--topic", help="publish here instead of each record's original topic")
    rep.add_argument("--collection", help="rewrite native change events into this collection")
    rep.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    rep.add_argument("--dry-run", action="store_true", help="validate and count only; report bad lines")
    rep.set_defaults(func=cmd_replay)
    rep.add_argument("--into-generation", metavar="COLLECTION",
                     help="build a new generation of COLLECTION from these files/topic instead (see rebuild)")
    _add_rebuild_options(rep)
    reb = sub.add_parser("rebuild", help="build a new index generation of a collection and switch to it")
    reb.add_argument("collection")
    reb.add_argument("files", nargs="*", help="event-log files replayed first (an archive)")
    reb.add_argument("--from-topic", help="replay this topic (default: the documents topic and mapped CDC topics)")
    _add_range_options(reb)
    reb.add_argument("--logs-only", action="store_true", help="with files: do not replay the topics after them")
    reb.add_argument("--abort", action="store_true", help="drop the building (or failed) generation")
    reb.add_argument("--promote", action="store_true", help="switch to a generation built with --no-switch")
    _add_rebuild_options(reb)
    reb.set_defaults(func=cmd_rebuild)
    exp = sub.add_parser("export", help="write a topic range to an event-log file")
    exp.add_argument("--topic", help="default: the documents topic")
    exp.add_argument("--out", required=True, help="file (.gz compresses), - for stdout")
    _add_range_options(exp)
    exp.set_defaults(func=cmd_export)
    stat = sub.add_parser("status", help="collections (documents, chunks), applied positions, consumer lag")
    stat.add_argument("--json", action="store_true")
    stat.set_defaults(func=cmd_status)
    search = sub.add_parser("search", help="query the running query service")
    search.add_argument("query")
    search.add_argument("--collection", default="default")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--mode", default="hybrid", choices=["bm25", "vector", "hybrid"])
    search.set_defaults(func=cmd_search)
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
    schemas = sub.add_parser("schemas", help="check (default) or --write the JSON Schemas")
    schemas.add_argument("--write", action="store_true")
    schemas.set_defaults(func=cmd_schemas)
    keys = sub.add_parser("api-key", help="make an API key and its FLUXSTREAM_API_KEYS entry (only the hash is kept)")
    keys.add_argument("--scopes", default="search", help="comma-separated: search, admin")
    keys.set_defaults(func=cmd_api_key)
    config = sub.add_parser("config", help="list environment variables and defaults")
    config.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging("console" if args.command == "dev" else settings.log_format, settings.log_level)
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv itself
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
