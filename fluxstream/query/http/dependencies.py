"""What routes declare they need: an API key of a scope (admitted by the ``Gatekeeper``), the services."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from fluxstream.query.api_docs import API_KEY, BEARER
from fluxstream.query.auth import Gatekeeper, Principal, key_from_headers
from fluxstream.query.http.errors import NotReady
from fluxstream.query.services import QueryServices


def _scoped(scope: str) -> Any:
    """A dependency admitting requests whose API key has ``scope`` (and is within its rate)."""

    async def admit(request: Request,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
                    x_api_key: Annotated[str | None, Security(API_KEY)] = None) -> Principal:
        # ``bearer`` declares the scheme for the OpenAPI document; the header itself is parsed by query.auth.
        gate: Gatekeeper = request.app.state.gate
        client = request.client.host if request.client else "unknown"
        principal = gate.admit(key_from_headers(request.headers.get("authorization"), x_api_key), scope, client)
        structlog.contextvars.bind_contextvars(principal=principal.name)
        return principal

    return Depends(admit)


async def _services(request: Request) -> QueryServices:
    """The services the app's start-up opened (``app.state.services`` exists only once they are)."""
    services: QueryServices | None = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady
    return services


SearchKey = Annotated[Principal, _scoped("search")]
AdminKey = Annotated[Principal, _scoped("admin")]
Services = Annotated[QueryServices, Depends(_services)]
