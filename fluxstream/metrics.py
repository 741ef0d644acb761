"""Prometheus metrics shared by the worker and the query service (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("fluxstream_change_events_total", "Change events by result", ["result"])
EMBED_JOBS = Counter("fluxstream_embed_jobs_total", "Embed jobs by result", ["result"])
CHUNKS_EMBEDDED = Counter("fluxstream_chunks_embedded_total", "Chunks sent to the embedder")
CHUNKS_REUSED = Counter("fluxstream_chunks_reused_total", "Chunks whose stored embedding was reused")
DEAD_LETTERS = Counter("fluxstream_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
STAGE_SECONDS = Histogram("fluxstream_stage_seconds", "Batch apply time per stage", ["stage"])
STAGE_RETRIES = Counter("fluxstream_stage_retries_total", "Batch retries after a dependency failure", ["stage"])
READY = Gauge("fluxstream_ready", "1 when the process can reach all its dependencies")
SEARCHES = Counter("fluxstream_searches_total", "Search requests", ["mode", "status"])
SEARCH_SECONDS = Histogram("fluxstream_search_seconds", "Search latency", ["mode"],
                           buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
CACHE_INVALIDATIONS = Counter("fluxstream_cache_invalidations_total", "Cache entries deleted by index updates")
IN_FLIGHT = Gauge("fluxstream_http_requests_in_flight", "HTTP requests being served")
RATE_LIMITED = Counter("fluxstream_rate_limited_total", "Requests refused by the rate limit")
