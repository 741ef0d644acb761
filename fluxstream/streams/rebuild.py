"""`fluxstream rebuild`: build generation N+1 of a collection while N serves, then switch.

1. Register N+1 as *building*. From then on the workers send every live change of the
   collection to N and N+1 (``streams.scopes.LiveScope``).
2. Replay history into N+1 only: event-log files, then each source topic from its start
   (or ``--from-offset``/``--from-time``) up to the end offsets read after step 1. Every
   change a worker applied before it saw step 1 lies below those ends, so N+1 misses
   nothing; changes applied twice meet the versioned apply, which keeps the newest.
3. Wait until the vector stage has handled every embed job published so far.
4. Switch the alias to N+1 (one atomic HSET) and mark N retiring; the workers' garbage
   collector drops N after the grace period.

Any failure marks N+1 *failed*: writers stop feeding it, N keeps serving, and
`fluxstream rebuild COLLECTION --abort` removes it (``abort``). A generation built with
``switch=False`` keeps being fed live changes until ``promote`` switches to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord

from fluxstream.core.kafka import new_producer
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.core.topic_range import TopicRange, group_offsets, read_range
from fluxstream.indexer.generations import GenerationRegistry, IndexTarget
from fluxstream.indexer.generations.retirement import Dropped, Retirement
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.streams.eventlog import BadLine, LogRecord, read_log
from fluxstream.streams.handlers.cdc import CdcHandler
from fluxstream.streams.handlers.changes import ChangesHandler
from fluxstream.streams.pipeline import Pipeline, Resources
from fluxstream.streams.scopes import RebuildScope

log = get_logger("fluxstream.rebuild")

BATCH = 500


@dataclass(frozen=True)
class ReplayedRecord:
    """A record read from a topic window or a log file, shaped like the ones the agents get."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None  # seconds

    @classmethod
    def from_kafka(cls, rec: ConsumerRecord) -> ReplayedRecord:
        return cls(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.timestamp / 1000)

    @classmethod
    def from_log(cls, rec: LogRecord, default_topic: str) -> ReplayedRecord:
        """Hand-written logs may lack positions: the line number stands in for the offset."""
        return cls(rec.topic or default_topic, rec.partition if rec.partition is not None else -1,
                   rec.offset if rec.offset is not None else rec.line_no, rec.key, rec.value,
                   rec.timestamp / 1000 if rec.timestamp is not None else None)


@dataclass
class RebuildPlan:
    collection: str
    logs: list[str] = field(default_factory=list)
    topics: list[str] | None = None  # None: the documents topic and every CDC topic mapped to the collection
    partitions: list[int] | None = None
    start: int | None = None
    start_ms: int | None = None
    replay_topics: bool = True  # False: logs only (live changes still reach the new generation)
    grace_seconds: float = 300.0
    switch: bool = True
    vectors_timeout: float = 1800.0


@dataclass
class RebuildReport:
    collection: str
    generation: int
    index: str
    records: int = 0
    rejected: int = 0
    switched: bool = False
    seconds: float = 0.0
    bad_lines: list[str] = field(default_factory=list)


class _Meter:
    """Counts replayed records and reports progress to the registry about once a second."""

    def __init__(self, registry: GenerationRegistry, collection: str, generation: int) -> None:
        self.registry, self.collection, self.generation = registry, collection, generation
        self.started = time.time()
        self.records = 0
        self.phase = "replaying"
        self._last = 0.0

    async def report(self, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        rate = self.records / max(now - self.started, 1e-9)
        await self.registry.report(self.collection, self.generation, {
            "phase": self.phase, "records": self.records, "rate": round(rate, 1), "started_at": self.started,
        })


def source_topics(settings: Settings, cdc: CdcMapping, collection: str) -> list[str]:
    return [settings.documents_topic, *sorted({t for s in cdc.sources if s.collection == collection for t in s.topics})]


async def _log_batches(paths: Sequence[str], default_topic: str,
                       report: RebuildReport) -> AsyncIterator[list[ReplayedRecord]]:
    batch: list[ReplayedRecord] = []
    for path in paths:
        for item in read_log(path):
            if isinstance(item, BadLine):
                report.bad_lines.append(f"{path}: {item}")
                continue
            record = ReplayedRecord.from_log(item, default_topic)
            if batch and (record.topic != batch[-1].topic or len(batch) >= BATCH):
                yield batch
                batch = []
            batch.append(record)
    if batch:
        yield batch


async def rebuild(settings: Settings, plan: RebuildPlan, cdc: CdcMapping | None = None) -> RebuildReport:
    """Run ``plan``; raises (after marking the new generation failed) if anything goes wrong."""
    cdc = cdc or CdcMapping()
    resources = await Resources.open(settings, settings.redis_url, settings.database_url)
    registry = GenerationRegistry(resources.redis)
    producer = new_producer(settings)
    await producer.start()
    generation = await registry.begin(plan.collection, {"phase": "starting", "started_at": time.time()})
    target = IndexTarget(plan.collection, generation)
    report = RebuildReport(plan.collection, generation, target.index)
    meter = _Meter(registry, plan.collection, generation)
    log.info("rebuild_started", collection=plan.collection, generation=generation)

    async def publish(topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> Awaitable[object]:
        return await producer.send(topic, key=key, value=value, headers=headers)

    pipeline = Pipeline(settings, resources, publish, cdc, RebuildScope(target))
    started = time.monotonic()
    try:
        handlers = _handlers(pipeline, cdc)
        async for batch in _log_batches(plan.logs, settings.documents_topic, report):
            await _apply(handlers, batch, meter)
        if plan.replay_topics:
            for topic in plan.topics or source_topics(settings, cdc, plan.collection):
                window = TopicRange(topic, plan.partitions, start=plan.start, start_ms=plan.start_ms)
                async for records in read_range(settings, window):
                    for i in range(0, len(records), BATCH):
                        await _apply(handlers, [ReplayedRecord.from_kafka(r) for r in records[i:i + BATCH]], meter)
        await producer.flush()
        meter.phase = "embedding"
        await meter.report(force=True)
        await _wait_for_vector_stage(settings, plan.vectors_timeout, meter)
        report.records, report.rejected = meter.records, pipeline.rejected
        if plan.switch:
            meter.phase = "switching"
            await meter.report(force=True)
            report.switched = await registry.switch(plan.collection, generation, plan.grace_seconds)
            if not report.switched:
                raise RuntimeError(f"generation {generation} was aborted before the switch")
        else:
            meter.phase = "ready"
            await meter.report(force=True)
        log.info("rebuild_finished", collection=plan.collection, generation=generation, records=meter.records,
                 switched=report.switched)
    except BaseException as exc:
        await registry.fail(plan.collection, generation, repr(exc))
        log.error("rebuild_failed", collection=plan.collection, generation=generation, error=repr(exc))
        raise
    finally:
        await producer.stop()
        await resources.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report


Handler = Callable[[Sequence[Any]], Awaitable[None]]


def _handlers(pipeline: Pipeline, cdc: CdcMapping) -> Callable[[str], Handler]:
    cdc_topics = set(cdc.topics)
    changes, cdc_changes = ChangesHandler(pipeline), CdcHandler(pipeline)
    return lambda topic: cdc_changes if topic in cdc_topics else changes


async def _apply(handlers: Callable[[str], Handler], batch: list[ReplayedRecord], meter: _Meter) -> None:
    await handlers(batch[0].topic)(batch)
    meter.records += len(batch)
    await meter.report()


async def _wait_for_vector_stage(settings: Settings, timeout: float, meter: _Meter) -> None:
    """Until the workers' embed agent has committed past every embed job published so far."""
    _, ends = (await group_offsets(settings, settings.embed_jobs_topic))[settings.embed_jobs_topic]
    deadline = time.monotonic() + timeout
    while True:
        committed, _ = (await group_offsets(settings, settings.embed_jobs_topic))[settings.embed_jobs_topic]
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the vector stage did not catch up within {timeout:.0f} s (are workers running?)")
        await meter.report()
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Promotion:
    generation: int | None  # the generation that was ready to switch to; None: none was
    switched: bool  # False with a generation: it stopped being the building one meanwhile (aborted, raced)


async def promote(settings: Settings, collection: str, grace_seconds: float | None = None) -> Promotion:
    """Switch to a generation built with ``switch=False`` (it has been fed live changes since); the old
    one retires after ``grace_seconds`` (default ``FLUXSTREAM_REBUILD_GRACE_SECONDS``)."""
    redis = aioredis.from_url(settings.redis_url)
    try:
        registry = GenerationRegistry(redis)
        state = await registry.get(collection)
        if state.building is None or state.state != "building" or state.progress.get("phase") != "ready":
            return Promotion(None, False)
        grace = grace_seconds if grace_seconds is not None else settings.rebuild_grace_seconds
        return Promotion(state.building, await registry.switch(collection, state.building, grace))
    finally:
        await redis.aclose()


async def abort(settings: Settings, collection: str) -> Dropped | None:
    """Drop the building (or failed) generation of ``collection``; None when there is none."""
    resources = await Resources.open(settings, settings.redis_url, settings.database_url)
    try:
        return await Retirement(resources.postings, resources.vectors).abort(collection)
    finally:
        await resources.close()
