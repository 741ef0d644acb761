"""The query service's FastAPI app: start-up and shutdown, middleware, error mapping, routers.

The services (models, store connections, cache, usage log) are opened by the lifespan, once, and
put on ``app.state.services``; the Kafka request server answers topic requests with the same object.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from fluxstream import __version__
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.query.api_docs import TAGS, install_docs
from fluxstream.query.auth import Gatekeeper
from fluxstream.query.http.errors import install_error_handlers
from fluxstream.query.http.middleware import BodyLimit, RequestObserver
from fluxstream.query.http.routes import admin, answer, documents, operations, search
from fluxstream.query.kafka_requests import SearchRequestServer
from fluxstream.query.read_your_writes import learn_cluster
from fluxstream.query.services import QueryServices
from fluxstream.schemas.api import ErrorResponse

log = get_logger("fluxstream.query")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
    429: {"model": ErrorResponse}, 503: {"model": ErrorResponse, "description": "a backing store is unreachable"},
}


def create_app(settings: Settings) -> FastAPI:
    gate = Gatekeeper(settings)  # a key configuration mistake stops the service here, before start-up

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await QueryServices.open(settings, gate)
        app.state.services = services
        # Everything loaded so far (model weights' wrappers, schemas, routes) lives as long as the process:
        # out of the collector's sight, a search's short-lived objects no longer make it rescan them.
        gc.freeze()
        requests = SearchRequestServer(settings, services) if settings.kafka_url else None
        app.state.topic_requests = requests
        if requests is not None:
            await requests.start()  # connects in the background: HTTP search does not wait for Kafka
        learning = asyncio.create_task(learn_cluster(settings, services.positions)) if settings.kafka_url else None
        log.info("query_service_ready", port=settings.http_port, topic_requests=requests is not None)
        yield
        if learning is not None:
            learning.cancel()
            await asyncio.gather(learning, return_exceptions=True)
        if requests is not None:
            await requests.stop()
        await services.close()

    app = FastAPI(title="fluxstream query service", version=__version__, lifespan=lifespan, openapi_tags=TAGS,
                  docs_url=None, redoc_url=None,  # query.api_docs serves /docs without a CDN
                  responses=ERROR_RESPONSES)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.state.gate = gate
    install_docs(app)
    app.add_middleware(RequestObserver)
    install_error_handlers(app)
    for area in (search, answer, admin, documents, operations):
        app.include_router(area.router)
    return app
