"""The Faust app: two agents (BM25 stage, vector stage) plus health, readiness and metrics pages.

Both agents read raw bytes (decoding is ours, so malformed records can be
dead-lettered with their original bytes) in batches with ``take_events``, which
acks a batch only after the loop body returns; the pipeline's handlers return
only when the batch's effects are durable, so Faust never commits an offset
whose effects could be lost.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import CONTENT_TYPE_LATEST

from fluxstream.core import metrics
from fluxstream.core.kafka import cluster_id, faust_credentials
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.indexer.retirement import Retirement
from fluxstream.streams.cdc_mapping import CdcMapping
from fluxstream.streams.pipeline import PRODUCER_MAX_REQUEST_BYTES, TRANSIENT_ERRORS, Pipeline, Resources
from fluxstream.streams.status import group_offsets

log = get_logger("fluxstream.worker")

SHUTDOWN_GRACE_SECONDS = 20.0  # below Kubernetes' default 30 s termination grace period
GC_GEN0_THRESHOLD = 50_000
NON_OUTAGE_ATTEMPTS = 3
"""Attempts at a batch failing for a reason other than an outage before it is split record by record."""


def load_cdc_mapping(settings: Settings) -> CdcMapping:
    return CdcMapping.load(settings.cdc_config) if settings.cdc_config else CdcMapping()


def kafka_broker_url(bootstrap: str) -> str:
    """Faust wants ``kafka://host:port`` URLs separated by ``;``."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


class WorkerState:
    """Opens shared resources once, on first use by either agent."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._pipeline: Pipeline | None = None
        self._lock = asyncio.Lock()
        self.health = BatchHealth()

    async def pipeline(self) -> Pipeline:
        async with self._lock:
            while self._pipeline is None:
                try:
                    resources = await Resources.open(
                        self.settings, self.settings.redis_url, self.settings.database_url
                    )
                except Exception as exc:  # dependencies still starting: keep trying, stay not-ready
                    log.warning("resources_unavailable", error=repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                pipeline = Pipeline(self.settings, resources, self.publish, load_cdc_mapping(self.settings))
                try:
                    cluster = await cluster_id(self.settings)
                except Exception as exc:  # the broker is still starting: keep trying, stay not-ready
                    log.warning("kafka_cluster_unknown", error=repr(exc))
                    await resources.close()
                    await asyncio.sleep(1.0)
                    continue
                if cluster and await pipeline.positions.adopt_cluster(cluster):
                    # Another broker's offsets (a restarted memory-only dev broker): a position on this one
                    # must wait for this worker, not be satisfied by what the old broker's worker applied.
                    log.warning("applied_positions_reset", cluster=cluster, reason="the Kafka cluster changed")
                self._pipeline = pipeline
                gc.freeze()  # start-up objects live as long as the worker: keep them out of every collection
                # Each document allocates hundreds of short-lived objects, freed by reference counting;
                # at Python's default (a collection every 700 net allocations) the cyclic collector
                # ran hundreds of times a second: worker CPU per document 6-9 % lower with this.
                gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
                metrics.READY.set(1)
        return self._pipeline

    async def publish(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        # Straight to the producer: sent now (not at ack time), and no Topic object per record.
        return await self.app.producer.send(topic, key, value, None, None, headers)

    async def readiness(self) -> dict[str, Any]:
        """Not ready while starting, while a dependency is down or a batch retries.

        A rebalance is reported, not counted: every member of the group rebalances whenever one joins
        or leaves, so counting it took all workers out at once on each rollout step and stalled it.
        """
        if self._pipeline is None:
            return {"ready": False, "redis": False, "postgres": False, "stages": "starting", "rebalancing": False}
        checks = await self._pipeline.resources.ping()
        rebalancing = bool(getattr(self.app, "rebalancing", False))
        stuck = self.health.stuck()
        ready = all(checks.values()) and self._pipeline.ready and not stuck
        metrics.READY.set(int(ready))
        return {"ready": ready, **checks, "stages": "ok" if self._pipeline.ready else "retrying",
                "rebalancing": rebalancing, "batches_retrying": stuck}

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.resources.close()


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
    for a reason other than an outage (it dead-letters it); None retries until the batch succeeds."""

    agent: str = "agent"
    health: BatchHealth = field(default_factory=BatchHealth)
    give_up: Callable[[Any, str], Awaitable[None]] | None = None


def is_outage(exc: BaseException) -> bool:
    """An outage to wait out (Kafka, Redis, PostgreSQL unreachable), not a fault of the records themselves.

    Faust wraps a producer's Kafka error in its own, with the original as the cause.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KafkaError):
            return bool(seen.retriable) or isinstance(seen, KafkaTimeoutError)
        if isinstance(seen, TRANSIENT_ERRORS):
            return True
        seen = seen.__cause__
    return False


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

    Batches overlap (see ``add_batch_agent``), so ``record`` (the BM25 stage's handled positions,
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
    outage (Kafka down) is waited out; any other failure is one record's fault until shown otherwise:
    after ``NON_OUTAGE_ATTEMPTS`` the batch is handled record by record, and a record that still fails
    goes to ``retries.give_up``, so one record never holds its partition for good.
    """
    retries = retries or Retries()
    delay = 0.2
    faults = 0
    waiting = False
    try:
        while True:
            try:
                await handler(messages)
                return
            except Exception as exc:
                faults += 0 if is_outage(exc) else 1
                if faults >= NON_OUTAGE_ATTEMPTS and retries.give_up is not None:
                    log.error("batch_isolating", agent=retries.agent, error=repr(exc), size=len(messages))
                    await _isolate(handler, messages, retries, f"{type(exc).__name__}: {exc}")
                    return
                if not waiting:
                    waiting = True
                    retries.health.enter(retries.agent)
                metrics.STAGE_RETRIES.labels("publish").inc()
                log.exception("batch_retry", agent=retries.agent, error=repr(exc), size=len(messages),
                              retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
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


def limit_fetch_wait(max_wait_ms: int) -> None:
    """Cap the worker consumer's fetch wait (Faust hard-codes 1500 ms).

    A broker may hold a fetch until the wait expires when only some partitions have
    data, which puts up to 1.5 s on every hop (documents -> embed-jobs -> vectors).
    Process-wide on purpose: a worker process runs exactly one Faust app.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread, "_fluxstream_original_create", None)
    if original is None:
        original = AIOKafkaConsumerThread._create_worker_consumer
        AIOKafkaConsumerThread._fluxstream_original_create = original  # type: ignore[attr-defined]

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def add_batch_agent(app: faust.App, state: WorkerState, name: str, topics: list[str], batch: tuple[int, float],
                    handler: Callable[[Pipeline], Handler],
                    record: Callable[[Pipeline], Handler] | None = None, in_flight: int = 2) -> None:
    """An agent reading raw records in batches of ``batch`` = (max size, max wait) and acking them
    only after ``handler(pipeline)`` has applied them (and ``record(pipeline)`` recorded them);
    ``in_flight`` batches at once (see ``handle_batches``)."""
    if in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    max_size, within = batch

    async def agent(stream: faust.StreamT) -> None:
        pipeline = await state.pipeline()
        retries = Retries(name, state.health, pipeline.dead_letter_unhandled)
        await handle_batches(stream, stream.noack_take(max_size, within=within), handler(pipeline),
                             record(pipeline) if record is not None else None, in_flight, retries)

    app.agent(app.topic(*topics, value_serializer="raw", key_serializer="raw"), name=name)(agent)


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


def build_app(settings: Settings) -> faust.App:
    limit_fetch_wait(settings.fetch_max_wait_ms)
    datadir = Path(settings.state_dir) / f"faust-{settings.app_id}"
    datadir.mkdir(parents=True, exist_ok=True)  # a fresh container or pod has no state directory yet
    app = faust.App(
        settings.app_id,
        broker=kafka_broker_url(settings.kafka_url),
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(settings.session_timeout / 10, 0.5),
        broker_commit_interval=1.0,
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        # Follow-up records (an embed job carries its chunk texts) are ~1-2 KB: at Kafka's 16 KB default
        # a busy batch went out as dozens of small produce batches per partition.
        producer_max_batch_size=1024 * 1024,
        consumer_auto_offset_reset="earliest",
        # On stop, commit what is acknowledged instead of waiting for every fetched record to be: records
        # buffered for an agent that is stopping would hold the shutdown forever. Unacked ones are redelivered.
        stream_wait_empty=False,
        web_enabled=settings.worker_web_port != 0,
        web_port=settings.worker_web_port or 6066,
        web_bind=settings.http_host,
        web_in_thread=False,
    )
    state = WorkerState(app, settings)
    batch = (settings.batch_max, settings.batch_within)
    stages = {s.strip() for s in settings.worker_stages.split(",") if s.strip()}
    unknown = stages - {"bm25", "vectors", "cache", "enrich"}
    if unknown:
        raise ValueError(f"FLUXSTREAM_WORKER_STAGES: unknown stage(s) {sorted(unknown)}")
    cdc = load_cdc_mapping(settings)
    if "bm25" in stages:
        add_batch_agent(app, state, "index-documents", [settings.documents_topic], batch,
                        lambda p: p.handle_changes, lambda p: p.record_handled, settings.batches_in_flight)
        if cdc.topics:
            add_batch_agent(app, state, "index-cdc", cdc.topics, batch, lambda p: p.handle_cdc,
                            lambda p: p.record_handled, settings.batches_in_flight)
    if "vectors" in stages:
        add_batch_agent(app, state, "embed-chunks", [settings.embed_jobs_topic],
                        (settings.embed_batch_max, settings.embed_batch_within), lambda p: p.handle_embed_jobs)
    if "enrich" in stages:
        add_batch_agent(app, state, "enrich-chunks", [settings.index_updates_topic], batch,
                        lambda p: p.handle_enrichment)
    if "cache" in stages and settings.cache_enabled:
        add_batch_agent(app, state, "invalidate-cache", [settings.index_updates_topic], batch,
                        lambda p: p.handle_index_updates)

    @app.timer(interval=15.0)
    async def report_lag() -> None:
        """Consumer lag per partition of every topic this worker group reads (take max() across workers)."""
        topics = [settings.documents_topic, settings.embed_jobs_topic, *cdc.topics]
        try:
            for topic, (committed, ends) in (await group_offsets(settings, *topics)).items():
                for partition, end in ends.items():
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, end - committed[partition]))
        except Exception as exc:  # Kafka unreachable: the lag is unknown, not zero
            log.warning("lag_report_failed", error=repr(exc))

    @app.timer(interval=settings.gc_interval_seconds)
    async def collect_garbage() -> None:
        """Every worker sweeps (idempotent): retired generations past their grace period, orphans."""
        pipeline = await state.pipeline()
        try:
            dropped = await Retirement(pipeline.resources.postings, pipeline.resources.vectors).collect_garbage()
            metrics.GENERATIONS_DROPPED.inc(len(dropped))
        except TRANSIENT_ERRORS as exc:
            log.warning("garbage_collection_deferred", error=repr(exc))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        body = await state.readiness()
        return web.json(body, status=200 if body["ready"] else 503)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; Prometheus' exposition type without it.
        return web.bytes(metrics.exposition(metrics.WORKER),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.on_after_configured.connect
    def _configured(app: faust.App, **kwargs: Any) -> None:  # pragma: no cover - faust hook
        log.info("worker_configured", app_id=settings.app_id)

    app.fluxstream_state = state  # type: ignore[attr-defined]
    return app
