"""Reading a window of a topic: by offsets or record timestamps, per partition or all of them.

Shared by `fluxstream export` (window -> event-log file) and `fluxstream rebuild` (window ->
a new index generation). Each partition is read up to the end offset it had when reading
started; bounds are checked per record.

``end_offsets`` is the one place fluxstream learns where a partition ends (status, the lag
metric, the rebuild's catch-up wait and the readers here): some brokers (Tansu) answer
ListOffsets(latest) with the last record batch's base offset + 1, so one 10-record batch
reads as "end 1"; the high-water mark of a fetch is right on every broker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from fluxstream.core.kafka import new_admin, new_consumer
from fluxstream.core.settings import Settings

Offsets = tuple[dict[int, int], dict[int, int]]  # (committed by the worker group, end) per partition


@dataclass(frozen=True)
class TopicRange:
    topic: str
    partitions: list[int] | None = None  # None: every partition
    start: int | None = None  # first offset, inclusive
    end: int | None = None  # last offset, exclusive
    start_ms: int | None = None  # first record time, inclusive
    end_ms: int | None = None  # last record time, exclusive

    def wanted(self, record: ConsumerRecord) -> bool:
        return ((self.end is None or record.offset < self.end)
                and (self.start_ms is None or record.timestamp >= self.start_ms)
                and (self.end_ms is None or record.timestamp < self.end_ms))


async def read_range(settings: Settings, window: TopicRange) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of records in ``window``, each from one partition and in offset order."""
    consumer = new_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        available = sorted(consumer.partitions_for_topic(window.topic) or [])
        tps = [TopicPartition(window.topic, p) for p in (window.partitions if window.partitions is not None
                                                          else available)]
        if not tps:
            return
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        ends = await end_offsets(consumer, tps, firsts)
        begin = {tp: max(firsts[tp], window.start or 0) for tp in tps}
        if window.start_ms is not None:
            at = await _first_offsets_at(consumer, tps, window.start_ms, ends)
            begin = {tp: max(begin[tp], at[tp]) for tp in tps}
        for tp in tps:
            consumer.seek(tp, begin[tp])
        remaining = {tp for tp in tps if begin[tp] < ends[tp]}
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000)
            for records in fetched.values():
                batch = [r for r in records if window.wanted(r)]
                if batch:
                    yield batch
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                      firsts: dict[TopicPartition, int] | None = None,
                      timeout: float = 10.0) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (the next one to be written).

    ListOffsets(latest) first; for each non-empty partition, one fetch from just before it
    returns the high-water mark, which is what counts (see the module docstring). ``consumer``
    must not be subscribed (the partitions are assigned here); its positions are moved.
    """
    listed = await consumer.end_offsets(tps)
    firsts = firsts if firsts is not None else await consumer.beginning_offsets(tps)
    probe = [tp for tp in tps if listed[tp] > firsts[tp]]
    if not probe:
        return listed
    consumer.assign(sorted(set(probe) | set(consumer.assignment())))
    for tp in probe:
        consumer.seek(tp, max(listed[tp] - 1, firsts[tp]))
    deadline = time.monotonic() + timeout
    while any(consumer.highwater(tp) is None for tp in probe) and time.monotonic() < deadline:
        await consumer.getmany(*probe, timeout_ms=200)
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) if tp in probe else listed[tp] for tp in tps}


async def _first_offsets_at(consumer: AIOKafkaConsumer, tps: list[TopicPartition], ms: int,
                            ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """First offset with a timestamp >= ms per partition; the end offset when there is none.

    Kafka answers "none" with null; some brokers (Tansu) with offset 0 and timestamp -1.
    """
    found = await consumer.offsets_for_times(dict.fromkeys(tps, ms))
    return {tp: found[tp].offset if found[tp] is not None and found[tp].timestamp >= 0 else ends[tp] for tp in tps}


async def group_offsets(settings: Settings, *topics: str) -> dict[str, Offsets]:
    """Committed offset of the worker group and end offset per partition, for each topic (one connection).

    The one source of lag for `fluxstream status`, the worker's lag metric and the rebuild's catch-up
    wait; ends come from ``end_offsets`` (the fetch high-water mark, right on Tansu too).
    """
    admin = new_admin(settings)
    consumer = new_consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        ends = await end_offsets(consumer, tps) if tps else {}
        committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps) if tps else {}
    finally:
        await consumer.stop()
        await admin.close()
    done = {tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}
    return {t: ({tp.partition: done.get(tp, 0) for tp in tps if tp.topic == t},
                {tp.partition: ends[tp] for tp in tps if tp.topic == t}) for t in topics}
