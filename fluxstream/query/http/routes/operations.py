"""Liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from fluxstream.core import metrics
from fluxstream.indexer.wiring import check_dependencies
from fluxstream.query.services import QueryServices

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: Redis is unreachable or the service is starting"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when searches can be answered: Redis reachable. PostgreSQL down leaves the service
    ready but degraded (BM25 and hybrid answer from BM25 alone, vector searches get 503)."""
    services: QueryServices | None = getattr(request.app.state, "services", None)  # None: still starting
    checks = {"redis": False, "postgres": False}
    if services is not None:
        checks = await check_dependencies(services.redis, services.vectors)
    ready = checks["redis"]
    metrics.READY.set(int(ready))
    degraded = [] if checks["postgres"] else ["vectors"]
    requests = getattr(request.app.state, "topic_requests", None)  # topic search: "connecting" does not make it unready
    topic_search = "off" if requests is None else requests.status
    return JSONResponse({"ready": ready, **checks, "degraded": degraded, "topic_search": topic_search},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus() -> Response:
    return Response(metrics.exposition(metrics.QUERY), media_type=CONTENT_TYPE_LATEST)
