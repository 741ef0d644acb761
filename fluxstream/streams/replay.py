"""`fluxstream replay` and `fluxstream export`: event logs to topics and topic ranges to event logs.

Replay is safe to repeat: change events carry versions, so the index ends up identical however often
a log is replayed (see docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fluxstream.client import publish_changes, with_defaults
from fluxstream.core.kafka import new_producer
from fluxstream.core.settings import Settings
from fluxstream.core.topic_range import TopicRange, read_range
from fluxstream.schemas.decoding import Rejected, decode_change
from fluxstream.schemas.events import DocumentChange
from fluxstream.streams.eventlog import BadLine, LogRecord, encode, open_log, read_log


@dataclass
class ReplayReport:
    records: int = 0
    published: int = 0
    bad: list[BadLine] = field(default_factory=list)


class Progress:
    """One status line on stderr with count, rate and ETA (when the total is known)."""

    def __init__(self, label: str, total: int | None = None, every: float = 0.5, *, quiet_if_quick: bool = False
                 ) -> None:
        """``quiet_if_quick``: no final line either when the work ended before the first update."""
        self.label, self.total, self.every, self.quiet_if_quick = label, total, every, quiet_if_quick
        self.started = self.last = time.monotonic()
        self.shown = False
        self.done = 0

    def update(self, done: int, *, final: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        if final and self.quiet_if_quick and not self.shown:
            return
        self.last, self.shown = now, True
        rate = done / max(now - self.started, 1e-9)
        eta = f", ETA {(self.total - done) / rate:.0f}s" if self.total and rate > 0 and not final else ""
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {done}{of} records, {rate:.0f}/s{eta}   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def validate_change(line_no: int, value: bytes, settings: Settings) -> DocumentChange | BadLine:
    """The one check of a change event before it is produced (`replay`, `publish`): the worker's own
    decoding, so what passes here is not dead-lettered for its shape or size."""
    result = decode_change(value, settings.max_text_bytes)
    return BadLine(line_no, f"{result.reason}: {result.detail}") if isinstance(result, Rejected) else result


def check(record: LogRecord, topic: str, settings: Settings) -> BadLine | None:
    """Records for the documents topic must be valid DocumentChange events (tombstones excepted)."""
    if topic == settings.documents_topic and record.value is not None:
        result = validate_change(record.line_no, record.value, settings)
        if isinstance(result, BadLine):
            return result
    return None


def read_documents(path: str | Path, settings: Settings, *, collection: str | None = None,
                   require_version: bool = False) -> Iterator[DocumentChange | BadLine]:
    """`fluxstream publish`'s input: one change event per line (plain or .gz), streamed.

    ``op`` defaults to upsert and ``version`` to the current time in ms (``with_defaults``) unless
    ``require_version``; ``collection`` overrides every line's. Each line is checked by
    ``validate_change``; a bad one is yielded as a BadLine with its number.
    """
    with open_log(path) as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield BadLine(line_no, f"invalid_json: {exc}")
                continue
            if isinstance(doc, dict):
                if collection:
                    doc["collection"] = collection
                doc = with_defaults(doc, version=not require_version)
            yield validate_change(line_no, orjson.dumps(doc), settings)


async def publish_documents_file(settings: Settings, path: str | Path, meter: Progress, *,
                                 collection: str | None = None, require_version: bool = False
                                 ) -> dict[tuple[str, int], int]:
    """`fluxstream publish`'s send step (its lines checked before): every good line of ``path`` to the
    documents topic. Returns the offset of the last acknowledged event per (topic, partition), what a
    search's min_position waits for; ``meter.done`` counts the acknowledged ones (also if sending fails)."""
    last: dict[tuple[str, int], int] = {}
    lines = read_documents(path, settings, collection=collection, require_version=require_version)
    changes = (c for c in lines if not isinstance(c, BadLine))
    async for position in publish_changes(settings, changes):
        key = (position.topic, position.partition)
        last[key] = max(position.offset, last.get(key, -1))
        meter.update(meter.done + 1)
    return last


def retarget(record: LogRecord, collection: str | None) -> LogRecord:
    """Send native change events to another collection (backfill a new collection from an archive)."""
    if collection is None or record.value is None:
        return record
    event = orjson.loads(record.value)
    if isinstance(event, dict) and "doc_id" in event:
        event["collection"] = collection
    return LogRecord(record.line_no, record.key, orjson.dumps(event), record.topic, record.partition,
                     record.offset, record.timestamp)


async def replay(settings: Settings, paths: Iterable[str], *, topic: str | None = None, rate: float = 0.0,
                 dry_run: bool = False, collection: str | None = None, progress: bool = True) -> ReplayReport:
    """Validate every line first; publish only if all lines are good (or report the bad ones)."""
    report = ReplayReport()
    records: list[tuple[str, LogRecord]] = []
    for path in paths:
        for item in read_log(path):
            if isinstance(item, BadLine):
                report.bad.append(item)
                continue
            target = topic or item.topic or settings.documents_topic
            item = retarget(item, collection)
            problem = check(item, target, settings)
            if problem is not None:
                report.bad.append(problem)
            else:
                records.append((target, item))
    report.records = len(records) + len(report.bad)
    if dry_run or report.bad:
        return report
    meter = Progress("replay", len(records)) if progress else None
    producer = new_producer(settings)
    await producer.start()
    try:
        started = time.monotonic()
        pending = []
        for n, (target, item) in enumerate(records, start=1):
            pending.append(await producer.send(target, key=item.key, value=item.value))
            if rate > 0:  # pace to `rate` records per second overall
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            if meter:
                meter.update(n)
        for future in pending:
            await future
        report.published = len(records)
    finally:
        await producer.stop()
    if meter:
        meter.update(report.published, final=True)
    return report


async def replay_range(settings: Settings, window: TopicRange, *, topic: str | None = None, rate: float = 0.0,
                       dry_run: bool = False, collection: str | None = None) -> ReplayReport:
    """``replay`` of a window of a topic: exported to a scratch file first, so it is validated like a log file."""
    with tempfile.TemporaryDirectory() as scratch:
        path = f"{scratch}/range.ndjson"
        await export(settings, window, path)
        return await replay(settings, [path], topic=topic, rate=rate, dry_run=dry_run, collection=collection)


async def export(settings: Settings, window: TopicRange, out: str, *, progress: bool = True) -> int:
    """Write the records of ``window`` to the event-log file ``out``."""
    written = 0
    meter = Progress("export") if progress else None
    with open_log(out, "wb") as sink:
        async for batch in read_range(settings, window):
            for rec in batch:
                sink.write(encode(LogRecord(0, rec.key, rec.value, rec.topic, rec.partition, rec.offset,
                                            rec.timestamp)))
            written += len(batch)
            if meter:
                meter.update(written)
    if meter:
        meter.update(written, final=True)
    return written
