"""Read-your-writes for queries: wait until the index has applied a request's ``min_position``.

A client that produced a change passes its position (``SourcePosition``) as ``min_position``; the
search waits, up to its ``wait_timeout_ms`` (capped by FLUXSTREAM_MAX_POSITION_WAIT_MS), until the
stages its mode reads have applied it (``indexer.positions``), or answers ``position_not_reached``
with where the index stands. Positions are tied to the Kafka cluster this service reaches
(``learn_cluster``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fluxstream.core import metrics
from fluxstream.core.kafka import cluster_id
from fluxstream.core.logging import get_logger
from fluxstream.core.retry import RetryPolicy, retrying
from fluxstream.core.settings import Settings
from fluxstream.indexer.generations import IndexTarget
from fluxstream.indexer.positions import Positions
from fluxstream.schemas.api import ErrorResponse, RetrievalRequest
from fluxstream.schemas.events import SourcePosition

log = get_logger("fluxstream.query")


async def wait_for_position(positions: Positions, token: SourcePosition, target: IndexTarget, *, vectors: bool,
                            timeout: float) -> bool:
    """Poll until the stages a search reads (BM25, and the vectors unless ``vectors`` is false) have
    applied ``token`` in ``target`` (or time runs out).

    The deadline is checked between reads, never by cancelling one: redis-py 8.1's asyncio client can
    lose a cancellation that lands inside a command (the request then polled on for 81 s in a fuzz run).
    """
    deadline = time.monotonic() + timeout
    while not await positions.reached(target.index, token, vectors=vectors):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def current_position(positions: Positions, token: SourcePosition, target: IndexTarget) -> dict[str, Any]:
    """Where ``target`` stands on ``token``'s partition (the details of ``position_not_reached``)."""
    return {"topic": token.topic, "partition": token.partition,
            "bm25_applied_offset": await positions.bm25_offset(token.topic, token.partition),
            "oldest_pending_vectors_offset": await positions.oldest_pending(target.index, token.topic,
                                                                            token.partition)}


async def position_problem(positions: Positions, settings: Settings, req: RetrievalRequest,
                           target: IndexTarget) -> ErrorResponse | None:
    """None once ``req.min_position`` is applied in ``target`` (or absent); the error if not within the timeout."""
    token = req.min_position
    if token is None:
        return None
    asked = req.wait_timeout_ms if req.wait_timeout_ms is not None else settings.min_position_timeout_ms
    timeout_ms = min(asked, settings.max_position_wait_ms)
    if await wait_for_position(positions, token, target, vectors=req.mode != "bm25", timeout=timeout_ms / 1000):
        return None
    metrics.SEARCHES.labels(req.mode, "position_not_reached").inc()
    message = f"the index has not applied {token.model_dump()} within {timeout_ms} ms"
    return ErrorResponse(error="position_not_reached", message=message,
                         details=[await current_position(positions, token, target)])


async def learn_cluster(settings: Settings, positions: Positions) -> None:
    """Tie read-your-writes checks to the Kafka cluster this service's clients reach (indexer.positions):
    until it answers (Kafka not reachable yet, retried: HTTP search goes on meanwhile), applied offsets
    are taken as recorded; a permanent failure is logged and leaves them so."""
    try:
        cluster = await retrying(lambda: cluster_id(settings), RetryPolicy(None, 0.5, settings.retry_max_backoff),
                                 on_retry=lambda exc, pause: log.debug("kafka_cluster_unknown", error=repr(exc),
                                                                       retry_in_s=round(pause, 2)))
    except Exception as exc:
        log.error("kafka_cluster_failed", error=f"{type(exc).__name__}: {exc}")
        return
    positions.cluster = cluster or None
    log.info("kafka_cluster", cluster=positions.cluster)
