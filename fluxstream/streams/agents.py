"""The worker's agents, in one table: which topics each reads, in what batches, with which handler.

``FLUXSTREAM_WORKER_STAGES`` picks rows (bm25, vectors, enrich, cache); ``streams.app`` turns each
row into a Faust agent (``add_batch_agent``) over the batching of ``streams.batching``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fluxstream.core.settings import Settings
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.streams.handlers.bm25 import RecordHandled
from fluxstream.streams.handlers.cdc import CdcHandler
from fluxstream.streams.handlers.changes import ChangesHandler
from fluxstream.streams.handlers.embed_jobs import EmbedJobsHandler
from fluxstream.streams.handlers.enrichment import EnrichmentHandler
from fluxstream.streams.handlers.index_updates import IndexUpdatesHandler
from fluxstream.streams.pipeline import Pipeline

STAGES = ("bm25", "vectors", "cache", "enrich")

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]
HandlerFactory = Callable[[Pipeline], BatchHandler]


@dataclass(frozen=True)
class Agent:
    """One agent: ``handler(pipeline)`` applies each batch of at most ``batch_max`` records (waiting up to
    ``batch_within`` seconds to fill it); ``record(pipeline)`` then records it, in batch order;
    ``in_flight`` batches overlap."""

    name: str
    topics: tuple[str, ...]
    batch_max: int
    batch_within: float
    handler: HandlerFactory
    record: HandlerFactory | None = None
    in_flight: int = 2


def worker_stages(settings: Settings) -> set[str]:
    stages = {s.strip() for s in settings.worker_stages.split(",") if s.strip()}
    unknown = stages - set(STAGES)
    if unknown:
        raise ValueError(f"FLUXSTREAM_WORKER_STAGES: unknown stage(s) {sorted(unknown)}")
    return stages


def agent_table(settings: Settings, cdc: CdcMapping) -> list[Agent]:
    """The agents this worker runs, for its stages."""
    s = settings
    stages = worker_stages(s)
    table: list[Agent] = []
    if "bm25" in stages:
        table.append(Agent("index-documents", (s.documents_topic,), s.batch_max, s.batch_within, ChangesHandler,
                           RecordHandled, s.batches_in_flight))
        if cdc.topics:
            table.append(Agent("index-cdc", tuple(cdc.topics), s.batch_max, s.batch_within, CdcHandler,
                               RecordHandled, s.batches_in_flight))
    if "vectors" in stages:
        table.append(Agent("embed-chunks", (s.embed_jobs_topic,), s.embed_batch_max, s.embed_batch_within,
                           EmbedJobsHandler))
    if "enrich" in stages:
        table.append(Agent("enrich-chunks", (s.index_updates_topic,), s.batch_max, s.batch_within,
                           EnrichmentHandler))
    if "cache" in stages and s.cache_enabled:
        table.append(Agent("invalidate-cache", (s.index_updates_topic,), s.batch_max, s.batch_within,
                           IndexUpdatesHandler))
    return table
