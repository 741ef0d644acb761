"""Prometheus metrics of the worker and the query service.

Conventions: counters end in ``_total``, durations are ``_seconds`` histograms, and every label
has a bounded set of values (topics and stages come from configuration, never from data).
Each process exports only its own metrics: the ``WORKER`` registry on the Faust web port
(``/metrics``), ``CDC`` on the cdc process's web port, ``QUERY`` on the query service's HTTP port (one
shared registry made the query service export every worker metric as a zero). prometheus_client's default
registry still holds them all. docs/operations.md lists the alerts built on them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FRESHNESS_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# --- worker ---
EVENTS = Counter("fluxstream_events_total", "Change events by topic and result "
                 "(consumed, applied, skipped = stale or duplicate, dead_lettered, tombstone)", ["topic", "result"])
EMBED_JOBS = Counter("fluxstream_embed_jobs_total", "Embed jobs by result", ["result"])
CDC_INCOMPLETE_COLUMNS = Counter("fluxstream_cdc_incomplete_columns_total",
                                 "CDC columns indexed without a value known to be current (unchanged TOAST "
                                 "column the index could not fill; see IndexUpdate.incomplete_columns)",
                                 ["collection"])
CHUNKS_EMBEDDED = Counter("fluxstream_chunks_embedded_total", "Chunks sent to the embedder")
CHUNKS_REUSED = Counter("fluxstream_chunks_reused_total", "Chunks whose stored embedding was reused")
STAGE_SECONDS = Histogram("fluxstream_stage_batch_seconds", "Batch apply time per stage", ["stage"],
                          buckets=LATENCY_BUCKETS)
STAGE_RETRIES = Counter("fluxstream_stage_retries_total", "Batch retries after a dependency failure", ["stage"])
SEARCHABLE_SECONDS = Histogram("fluxstream_event_to_searchable_seconds",
                               "From the change event's Kafka timestamp to its stage being applied", ["stage"],
                               buckets=FRESHNESS_BUCKETS)
EMBED_BATCH_SIZE = Histogram("fluxstream_embedding_batch_size", "Texts per embedding call",
                             buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024))
EMBED_SECONDS = Histogram("fluxstream_embedding_seconds", "Embedding call latency", buckets=LATENCY_BUCKETS)
CONSUMER_LAG = Gauge("fluxstream_consumer_lag", "End offset minus the worker group's committed offset",
                     ["topic", "partition"])
CACHE_INVALIDATIONS = Counter("fluxstream_cache_invalidations_total", "Cache entries deleted by index updates")
ENRICHED = Counter("fluxstream_enriched_chunks_total", "Chunk enrichments by result (written, stale, failed)",
                   ["result"])
BATCHES_RETRYING = Gauge("fluxstream_batches_retrying", "Batches an agent is retrying (its partitions wait): "
                         "the worker is not ready while any is", ["agent"])
GENERATIONS_DROPPED = Counter("fluxstream_generations_dropped_total", "Index generations garbage-collected")

# --- cdc (the `fluxstream cdc` process: Debezium's embedded engine) ---
CDC_RECORDS = Counter("fluxstream_cdc_records_captured_total", "Records the Debezium engine captured and the broker "
                      "acknowledged, by source table (schema.table) and op (c, u, d, r, t, tombstone, other)",
                      ["table", "op"])
CDC_LAST_LSN = Gauge("fluxstream_cdc_last_source_lsn", "Source position (PostgreSQL LSN) of the last captured record")
CDC_LAST_SOURCE_TIME = Gauge("fluxstream_cdc_last_source_timestamp_seconds",
                             "Source commit time (epoch seconds) of the last captured record")
CDC_LAST_CAPTURE_TIME = Gauge("fluxstream_cdc_last_capture_timestamp_seconds",
                              "When (epoch seconds) the last captured batch was acknowledged by the broker")
CDC_LAG_BYTES = Gauge("fluxstream_cdc_slot_lag_bytes", "pg_current_wal_lsn() minus the replication slot's "
                      "confirmed_flush_lsn: WAL the source keeps until capture confirms it (-1: slot missing)",
                      ["slot"])

# --- both ---
DEAD_LETTERS = Counter("fluxstream_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
READY = Gauge("fluxstream_ready", "1 when the process is ready (see /readyz and docs/operations.md)")
STORE_SECONDS = Histogram("fluxstream_store_call_seconds", "Redis and PostgreSQL call latency",
                          ["store", "operation"], buckets=LATENCY_BUCKETS)

# --- query service ---
SEARCHES = Counter("fluxstream_searches_total", "Search requests", ["mode", "status"])
SEARCH_SECONDS = Histogram("fluxstream_search_seconds", "Search latency", ["mode"], buckets=LATENCY_BUCKETS)
CACHE_LOOKUPS = Counter("fluxstream_cache_lookups_total", "Semantic-cache lookups by result "
                        "(exact, semantic, miss, bypass)", ["result"])
IN_FLIGHT = Gauge("fluxstream_http_requests_in_flight", "HTTP requests being served")
RATE_LIMITED = Counter("fluxstream_rate_limited_total", "Requests refused by the rate limit")


def _registry(*metrics: Counter | Gauge | Histogram) -> CollectorRegistry:
    """A process's registry: its metrics plus process CPU/memory, Python GC and version."""
    registry = CollectorRegistry()
    for metric in metrics:
        registry.register(metric)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


_BOTH = (DEAD_LETTERS, READY, STORE_SECONDS)
WORKER = _registry(EVENTS, EMBED_JOBS, CDC_INCOMPLETE_COLUMNS, CHUNKS_EMBEDDED, CHUNKS_REUSED, STAGE_SECONDS,
                   STAGE_RETRIES, SEARCHABLE_SECONDS, EMBED_BATCH_SIZE, EMBED_SECONDS, CONSUMER_LAG,
                   CACHE_INVALIDATIONS, ENRICHED, BATCHES_RETRYING, GENERATIONS_DROPPED, *_BOTH)
CDC = _registry(CDC_RECORDS, CDC_LAST_LSN, CDC_LAST_SOURCE_TIME, CDC_LAST_CAPTURE_TIME, CDC_LAG_BYTES)
QUERY = _registry(SEARCHES, SEARCH_SECONDS, CACHE_LOOKUPS, IN_FLIGHT, RATE_LIMITED, *_BOTH)


def exposition(registry: CollectorRegistry) -> bytes:
    """What a ``/metrics`` page serves for ``registry`` (Prometheus text format)."""
    return generate_latest(registry)

P = ParamSpec("P")
R = TypeVar("R")


def timed(store: str, operation: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async store call to observe its latency in ``fluxstream_store_call_seconds``."""
    histogram = STORE_SECONDS.labels(store, operation)

    def wrap(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(call)
        async def observed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return observed

    return wrap


def observe_freshness(stage: str, event_times: list[float | None], now: float | None = None) -> None:
    """Event timestamps (epoch seconds) -> the event-to-searchable histogram of ``stage``."""
    now = time.time() if now is None else now
    histogram = SEARCHABLE_SECONDS.labels(stage)
    for event_time in event_times:
        if event_time:
            histogram.observe(max(0.0, now - event_time))


