"""The worker's Faust app: the agents of ``streams.agents`` plus health, readiness and metrics pages.

Agents read raw bytes (decoding is ours, so malformed records can be dead-lettered with their
original bytes) in batches (``streams.batching``), acked only once their handler made them durable.
Shared resources open once, on first use by any agent; a failure waiting cannot fix (a schema
mismatch, a setting the database refuses) stops the worker with one line instead of looping.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NoReturn

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from fluxstream.core import metrics
from fluxstream.core.kafka import cluster_id, faust_credentials
from fluxstream.core.logging import get_logger, logging_config
from fluxstream.core.retry import RetryPolicy, is_transient, retrying
from fluxstream.core.settings import Settings, SettingsError
from fluxstream.core.topic_range import group_offsets
from fluxstream.indexer.generations.retirement import Retirement
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.streams.agents import Agent, agent_table
from fluxstream.streams.batching import BatchHealth, Retries, handle_batches
from fluxstream.streams.pipeline import PRODUCER_MAX_REQUEST_BYTES, Pipeline, Resources

log = get_logger("fluxstream.worker")

GC_GEN0_THRESHOLD = 50_000
STARTUP_RETRIES = RetryPolicy(None, 1.0, 1.0)
"""Dependencies still starting (a worker started with its stack): tried again about every second."""


def load_cdc_mapping(settings: Settings) -> CdcMapping:
    mapping = CdcMapping.from_settings(settings)
    if mapping.needs_registry and not settings.schema_registry_url:
        raise SettingsError([f"{settings.cdc_config}: a source has format = \"avro\": set "
                             "FLUXSTREAM_SCHEMA_REGISTRY_URL (the Schema Registry its schemas are in)"])
    return mapping


def kafka_broker_url(bootstrap: str) -> str:
    """Faust wants ``kafka://host:port`` URLs separated by ``;``."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


class WorkerFailed(Exception):
    """The worker is stopping after a permanent failure (``WorkerState.fail``): agents return quietly."""


class WorkerState:
    """Opens shared resources once, on first use by any agent; stops the worker on a permanent failure."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._pipeline: Pipeline | None = None
        self._lock = asyncio.Lock()
        self.health = BatchHealth()
        self.failure: str | None = None

    async def pipeline(self) -> Pipeline:
        """The shared pipeline; raises ``WorkerFailed`` once it cannot be opened."""
        async with self._lock:
            if self.failure is not None:
                raise WorkerFailed(self.failure)
            if self._pipeline is None:
                try:
                    self._pipeline = await retrying(self._open, STARTUP_RETRIES, on_retry=lambda exc, _: log.warning(
                        "resources_unavailable", error=repr(exc)))
                except Exception as exc:  # transient ones were waited out: this one will not go away
                    await self.fail(exc)
                gc.freeze()  # start-up objects live as long as the worker: keep them out of every collection
                # Each document allocates hundreds of short-lived objects, freed by reference counting;
                # at Python's default (a collection every 700 net allocations) the cyclic collector
                # ran hundreds of times a second: worker CPU per document 6-9 % lower with this.
                gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
                metrics.READY.set(1)
        return self._pipeline

    async def _open(self) -> Pipeline:
        """Resources and the Kafka cluster's id; all or nothing (the caller retries while a dependency starts)."""
        s = self.settings
        resources = await Resources.open(s, s.redis_url, s.database_url)
        try:
            pipeline = Pipeline(s, resources, self.publish, load_cdc_mapping(s))
            cluster = await cluster_id(s)
            if cluster and await pipeline.positions.adopt_cluster(cluster):
                # Another broker's offsets (a restarted memory-only dev broker): a position on this one
                # must wait for this worker, not be satisfied by what the old broker's worker applied.
                log.warning("applied_positions_reset", cluster=cluster, reason="the Kafka cluster changed")
        except BaseException:
            await resources.close()
            raise
        return pipeline

    async def fail(self, exc: BaseException) -> NoReturn:
        """Stop the worker: ``exc`` is permanent (``retry.classify``), so retrying would only hide it.

        The worker shuts down as on SIGTERM (unacked batches are redelivered), then ``run_worker``
        exits with status 1 and one line naming the cause. Raises ``WorkerFailed``: the caller returns
        (Faust's shutdown waits for agents to return, it does not cancel one that is not reading).
        """
        if self.failure is None:
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            log.error("worker_failed", error=self.failure)
            os.kill(os.getpid(), signal.SIGTERM)
        raise WorkerFailed(self.failure) from exc

    async def publish(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> Awaitable[Any]:
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


def add_batch_agent(app: faust.App, state: WorkerState, agent: Agent) -> None:
    """A Faust agent for a row of the agent table: raw records in batches, acked only once applied
    (and recorded); a failure that batching cannot absorb stops the worker (``WorkerState.fail``)."""
    if agent.in_flight < 1:
        raise ValueError("in_flight must be at least 1")

    async def run(stream: faust.StreamT) -> None:
        try:
            pipeline = await state.pipeline()
            retries = Retries(agent.name, state.health, pipeline.dead_letter_unhandled)
            batches = stream.noack_take(agent.batch_max, within=agent.batch_within)  # type: ignore[attr-defined]
            try:
                await handle_batches(stream, batches, agent.handler(pipeline),
                                     agent.record(pipeline) if agent.record else None, agent.in_flight, retries)
            except Exception as exc:  # not absorbed by batching: not a record's fault, not an outage
                await state.fail(exc)
        except WorkerFailed:
            return  # stopping; the failure was said once

    app.agent(app.topic(*agent.topics, value_serializer="raw", key_serializer="raw"), name=agent.name)(run)


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
    cdc = load_cdc_mapping(settings)
    for agent in agent_table(settings, cdc):
        add_batch_agent(app, state, agent)

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
        try:
            pipeline = await state.pipeline()
        except WorkerFailed:
            return
        try:
            dropped = await Retirement(pipeline.resources.postings, pipeline.resources.vectors).collect_garbage()
            metrics.GENERATIONS_DROPPED.inc(len(dropped))
        except Exception as exc:
            if not is_transient(exc):
                raise
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

    @app.on_after_configured.connect  # type: ignore[arg-type]
    def _configured(app: faust.App, **kwargs: Any) -> None:  # pragma: no cover - faust hook
        log.info("worker_configured", app_id=settings.app_id)

    app.fluxstream_state = state  # type: ignore[attr-defined]
    return app


def run_worker(app: faust.App, settings: Settings) -> None:
    """Run the worker until it is stopped; after a permanent failure (``WorkerState.fail``) the process
    exits with status 1 and one line naming the cause."""
    worker = faust.Worker(app, loglevel=settings.log_level.upper(),
                          logging_config=logging_config(settings.log_format, settings.log_level))
    state: WorkerState = app.fluxstream_state  # type: ignore[attr-defined]
    try:
        worker.execute_from_commandline()
    finally:
        if state.failure is not None:
            raise SystemExit(f"fluxstream worker: {state.failure}")
