"""Every error the HTTP app answers, as an ``ErrorResponse`` body with its status and headers.

Clients branch on ``error`` without parsing messages; which status a refusal gets is decided here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluxstream.query.auth import AuthError, RateLimited
from fluxstream.query.errors import STORE_DOWN, collection_not_found, unavailable
from fluxstream.query.search import CollectionNotFound
from fluxstream.schemas.api import ErrorResponse


class NotReady(Exception):
    """A request that arrived before the services were open (the server normally holds them back)."""


def error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
          headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def refusal(problem: ErrorResponse) -> JSONResponse:
    """An error a search function returned (rather than raised), with its HTTP status."""
    down = problem.error == "unavailable"
    status = 503 if down else 404 if problem.error == "collection_not_found" else 409
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=status,
                        headers={"Retry-After": "1"} if down else None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route lets out to its status and ``ErrorResponse`` body."""

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error(exc.status, exc.code, exc.message, headers=headers)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return error(429, "rate_limited", f"too many requests; retry in {exc.wait:.1f} s",
                     headers={"Retry-After": str(max(1, math.ceil(exc.wait)))})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return error(422, "invalid_request", "the request body or parameters are invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code,
                                                                                          "http_error")
        return error(exc.status_code, code, str(exc.detail), headers=exc.headers)  # 405: Allow

    async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
        body = unavailable(exc)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "1"})

    for down in STORE_DOWN:
        app.add_exception_handler(down, dependency_down)

    @app.exception_handler(CollectionNotFound)
    async def missing_collection(request: Request, exc: CollectionNotFound) -> JSONResponse:
        """Batch and answer routes: the collection as asked (``CollectionNotFound`` carries the target's)."""
        return refusal(collection_not_found(exc.collection))

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return error(503, "unavailable", "the service is starting; retry later", headers={"Retry-After": "1"})
