"""Batches of an agent: taken, applied (overlapping), retried, split around a poison record, acked in order.

An agent reads raw records in batches with ``noack_take``; a batch is acked only after its handler
returned, and handlers return only when the batch's effects are durable, so Faust never commits an
offset whose effects could be lost. Failures follow the one retry policy (``fluxstream.core.retry``):
an outage is waited out; any other failure is one record's fault until shown otherwise.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faust

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.core.retry import RetryPolicy, retrying

log = get_logger("fluxstream.worker")

SHUTDOWN_GRACE_SECONDS = 20.0  # below Kubernetes' default 30 s termination grace period
NON_OUTAGE_ATTEMPTS = 3
"""Attempts at a batch failing for a reason other than an outage before it is split record by record."""
BATCH_RETRIES = RetryPolicy(None, 0.2, 10.0)
"""A failing batch: retried until it applies (an outage) or its culprit is found (a record's fault)."""

Handler = Callable[[list[Any]], Awaitable[None]]


class BatchHealth:
    """Batches being retried, per agent: while any is, its partitions wait and the worker is not ready."""

    def __init__(self) -> None:
        self.retrying: Counter[str] = Counter()

    def enter(self, agent: str) -> None:
        self.retrying[agent] += 1
        metrics.BATCHES_RETRYING.labels(agent).set(self.retrying[agent])

    def leave(self, agent: str) -> None:
        self.retrying[agent] -= 1
        metrics.BATCHES_RETRYING.labels(agent).set(self.retrying[agent])

    def stuck(self) -> dict[str, int]:
        return {agent: count for agent, count in self.retrying.items() if count}


@dataclass(frozen=True)
class Retries:
    """How an agent retries a failing batch. ``give_up`` takes a record that keeps failing on its own
    for a reason other than an outage (it dead-letters it); with None, such a failure is raised."""

    agent: str = "agent"
    health: BatchHealth = field(default_factory=BatchHealth)
    give_up: Callable[[Any, str], Awaitable[None]] | None = None
    policy: RetryPolicy = BATCH_RETRIES


async def handle_then_ack(stream: faust.StreamT, events: Sequence[Any], work: asyncio.Future[None],
                          acked: asyncio.Future[None], previous_acked: asyncio.Future[None] | None) -> None:
    """Wait for ``work`` (the batch applied, see ``applied_in_order``) and for the previous batch's acks,
    then ack and resolve ``acked``: offsets are committed only for applied batches.

    Acks stay in batch order because Faust's commit logic does not survive out-of-order acks: with no
    earlier commit on a partition, it would commit past a lower offset that is not acked yet.
    ``noack_take`` never acks by itself, so a crash or cancellation mid-batch leaves the batch
    uncommitted and it is redelivered (harmless: applies are versioned).
    """
    waiting = [work] if previous_acked is None else [work, previous_acked]
    try:
        for future in waiting:
            await asyncio.shield(future)
    except asyncio.CancelledError:
        # Shutting down (SIGTERM, rebalance): finish the batch in hand and ack it, so the offsets
        # Faust commits on stop include it; a batch that cannot finish in time is redelivered.
        log.info("finishing_batch_before_stop", size=len(events))
        done, _ = await asyncio.wait(waiting, timeout=SHUTDOWN_GRACE_SECONDS)
        if all(f in done and not f.cancelled() and f.exception() is None for f in waiting):
            await _ack(stream, events, acked)
        else:
            acked.cancel()  # the batches after this one must not ack either
        raise
    await _ack(stream, events, acked)


async def _ack(stream: faust.StreamT, events: Sequence[Any], acked: asyncio.Future[None]) -> None:
    try:
        for event in events:
            await stream.ack(event)
    except BaseException as exc:
        acked.set_exception(exc)  # the next batch must not ack past this one
        raise
    acked.set_result(None)


async def applied_in_order(handler: Handler, messages: list[Any], previous: asyncio.Future[None] | None,
                           record: Handler | None, retries: Retries | None = None) -> None:
    """Apply a batch; once it and the batch before it are both applied, ``record`` it.

    Batches overlap (see ``handle_batches``), so ``record`` (the BM25 stage's handled positions,
    which read-your-writes tokens are checked against) must wait for the previous batch: it may
    only ever claim offsets that are applied. An abandoned previous batch (shutdown) abandons this one.
    """
    retries = retries or Retries()
    await until_handled(handler, messages, retries)
    if previous is not None:
        await previous
    if record is not None:
        await until_handled(record, messages, replace(retries, give_up=None))


async def until_handled(handler: Handler, messages: list[Any], retries: Retries | None = None) -> None:
    """Run ``handler`` until it succeeds, reporting the batch as retrying (not ready) meanwhile.

    Handlers absorb outages of their stores themselves; this covers failures they pass on. An
    outage (``retry.classify``: transient, e.g. Kafka down) is waited out; any other failure is one
    record's fault until shown otherwise: after ``NON_OUTAGE_ATTEMPTS`` the batch is handled record
    by record, and a record that still fails goes to ``retries.give_up``, so one record never holds
    its partition for good. With no ``give_up`` the failure is raised: waiting cannot fix it.
    """
    retries = retries or Retries()
    waiting = False

    def note(exc: BaseException, pause: float) -> None:
        nonlocal waiting
        if not waiting:
            waiting = True
            retries.health.enter(retries.agent)
        metrics.STAGE_RETRIES.labels("publish").inc()
        log.exception("batch_retry", agent=retries.agent, error=repr(exc), size=len(messages),
                      retry_in=round(pause, 2))

    try:
        for fault in range(NON_OUTAGE_ATTEMPTS):
            try:
                await retrying(lambda: handler(messages), retries.policy, on_retry=note)
                return
            except Exception as exc:
                if fault + 1 < NON_OUTAGE_ATTEMPTS:
                    pause = retries.policy.pause(fault)
                    note(exc, pause)
                    await asyncio.sleep(pause)
                elif retries.give_up is None:
                    raise
                else:
                    log.error("batch_isolating", agent=retries.agent, error=repr(exc), size=len(messages))
                    await _isolate(handler, messages, retries, f"{type(exc).__name__}: {exc}")
                    return
    finally:
        if waiting:
            retries.health.leave(retries.agent)


async def _isolate(handler: Handler, messages: list[Any], retries: Retries, error: str) -> None:
    """Handle ``messages`` one by one; hand a single one that keeps failing to ``give_up``."""
    assert retries.give_up is not None
    if len(messages) > 1:
        for message in messages:
            await until_handled(handler, [message], retries)
        return
    give_up = retries.give_up
    await until_handled(lambda batch: give_up(batch[0], error), messages, replace(retries, give_up=None))


async def handle_batches(stream: faust.StreamT, batches: AsyncIterator[Sequence[Any]], handle: Handler,
                         recorder: Handler | None, in_flight: int, retries: Retries | None = None) -> None:
    """Handle each batch of events (and ack it) with up to ``in_flight`` batches at once.

    The next batches are decoded, planned and written while earlier ones wait for Redis and for
    the broker to take their follow-up records (one at a time, the worker idled about a quarter
    of the time). Several smaller batches beat two large ones: a backlog then arrives as full
    batches, where taking the next batch right after a large one had drained the buffer gave a
    tiny one (docs/benchmarks.md, "Ingest throughput"). Overlapping batches are safe because applies are
    versioned compare-and-set writes: a document in several is applied in version order
    whichever write lands first; acks and recorded positions still follow batch order.
    """
    previous: asyncio.Future[None] | None = None  # the previous batch applied
    previous_acked: asyncio.Future[None] | None = None
    running: list[asyncio.Task[None]] = []
    try:
        async for events in batches:
            work = asyncio.ensure_future(applied_in_order(handle, [e.message for e in events], previous, recorder,
                                                          retries))
            acked = asyncio.get_running_loop().create_future()
            acking = asyncio.ensure_future(handle_then_ack(stream, events, work, acked, previous_acked))
            running.append(acking)
            previous, previous_acked = work, acked
            if len(running) == in_flight:  # at most ``in_flight`` batches at once
                await asyncio.shield(running[0])
                running.pop(0)  # only once finished: cancelled meanwhile, it is still finished below
        await asyncio.gather(*running)  # the stream ended: finish what was taken
    except asyncio.CancelledError:
        for acking in running:  # each finishes its batch (within the grace period) and acks it
            acking.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
