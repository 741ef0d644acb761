"""`fluxstream publish`: NDJSON change events to the documents topic, all lines checked before any is sent."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from fluxstream.cli.common import Subparsers, load_settings, require
from fluxstream.core.logging import redact

MAX_BAD_LINES_SHOWN = 20


def register(sub: Subparsers) -> None:
    pub = sub.add_parser("publish", help="publish DocumentChange events from NDJSON (- for stdin)")
    pub.add_argument("--file", default="-", help="NDJSON, one change event per line (.gz read as gzip; - stdin)")
    pub.add_argument("--collection", help="override the collection of every event")
    pub.add_argument("--require-version", action="store_true",
                     help="a line without version is bad (default: the current time in ms)")
    pub.set_defaults(func=cmd_publish)


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

    from fluxstream.streams.eventlog import BadLine
    from fluxstream.streams.replay import Progress, publish_documents_file, read_documents

    settings = load_settings(args)
    require(settings, "kafka_url")
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
        try:
            last = asyncio.run(publish_documents_file(settings, path, meter, **options))
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
