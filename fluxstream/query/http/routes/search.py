"""``/v1/search`` and ``/v1/search/batch``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fluxstream.core import metrics
from fluxstream.query.auth import RateLimited
from fluxstream.query.http.dependencies import SearchKey, Services
from fluxstream.query.http.errors import refusal
from fluxstream.schemas.api import BatchSearchRequest, BatchSearchResponse, ErrorResponse, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/v1/search", response_model=SearchResponse,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
async def search(req: SearchRequest, request: Request, principal: SearchKey, services: Services) -> Any:
    started = time.perf_counter()
    result = await services.search(req)
    if isinstance(result, ErrorResponse):
        if result.error == "unavailable":  # position_not_reached is counted where it is found
            metrics.SEARCHES.labels(req.mode, "unavailable").inc()
        return refusal(result)
    elapsed = time.perf_counter() - started
    metrics.SEARCH_SECONDS.labels(req.mode).observe(elapsed)
    metrics.SEARCHES.labels(req.mode, "ok").inc()
    services.usage.record(request.state.request_id, req.collection, "search", req.mode, elapsed * 1000,
                          len(result.hits))
    # Serialised here, once: returning the model would have FastAPI validate it again against
    # response_model and encode it with the standard json module (about 0.8 ms per search).
    return Response(result.model_dump_json(), media_type="application/json")


@router.post("/v1/search/batch", response_model=BatchSearchResponse,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
async def search_batch(batch: BatchSearchRequest, principal: SearchKey, services: Services) -> Any:
    """Read-your-writes tokens are waited for first; then one embedding call serves every query."""
    if len(batch.requests) > 1 and (wait := services.gate.limiter.check(principal.name, len(batch.requests) - 1)):
        raise RateLimited(wait)  # a batch costs one token per search
    started = time.perf_counter()
    targets = [await services.target(req.collection) for req in batch.requests]
    # Positions are awaited together: the batch waits as long as its longest wait, not their sum.
    problems = await asyncio.gather(*(services.position_problem(req, target)
                                      for req, target in zip(batch.requests, targets, strict=True)))
    if (problem := next((p for p in problems if p is not None), None)) is not None:
        return refusal(problem)
    responses = await services.searcher.search_many(list(zip(batch.requests, targets, strict=True)))
    for req in batch.requests:
        metrics.SEARCHES.labels(req.mode, "ok").inc()
    strategies = [f"{r.mode}/{r.fusion}" if r.mode == "hybrid" else r.mode for r in batch.requests]
    return BatchSearchResponse(responses=responses, strategies=strategies,
                               timings_ms={"total": round((time.perf_counter() - started) * 1000, 3)})
