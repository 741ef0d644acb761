"""`fluxstream replay` and `fluxstream export`: event logs to topics and topic ranges to event logs.

Replay is safe to repeat: change events carry versions, so the index ends up identical however often
a log is replayed (see docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from fluxstream.kafka import new_producer
from fluxstream.settings import Settings
from streams.decoding import Rejected, decode_change
from streams.eventlog import BadLine, LogRecord, encode, open_log, read_log
from streams.topic_range import TopicRange, read_range


@dataclass
class ReplayReport:
    records: int = 0
    published: int = 0
    bad: list[BadLine] = field(default_factory=list)


class Progress:
    """One status line on stderr with count, rate and ETA (when the total is known)."""

    def __init__(self, label: str, total: int | None = None, every: float = 0.5) -> None:
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.monotonic()

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = f", ETA {(self.total - done) / rate:.0f}s" if self.total and rate > 0 and not final else ""
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {done}{of} records, {rate:.0f}/s{eta}   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def check(record: LogRecord, topic: str, settings: Settings) -> BadLine | None:
    """Records for the documents topic must be valid DocumentChange events (tombstones excepted)."""
    if topic == settings.documents_topic and record.value is not None:
        result = decode_change(record.value, settings.max_text_bytes)
        if isinstance(result, Rejected):
            return BadLine(record.line_no, f"{result.reason}: {result.detail}")
    return None


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
