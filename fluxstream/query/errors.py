"""The query service's refusals as ``ErrorResponse`` values, shared by HTTP routes and topic requests.

Which HTTP status each gets is ``query.http.errors``' business; a topic reply carries the body alone.
"""

from __future__ import annotations

from psycopg import OperationalError
from redis.exceptions import RedisError

from fluxstream.core.logging import get_logger
from fluxstream.query.availability import StoreUnavailable
from fluxstream.schemas.api import ErrorResponse

log = get_logger("fluxstream.query")

STORE_DOWN = (StoreUnavailable, OperationalError, RedisError, OSError)  # answered 503 "unavailable"


def store_of(exc: Exception) -> str | None:
    """Which store a ``STORE_DOWN`` error is about (None: an OS-level error of unknown origin)."""
    if isinstance(exc, StoreUnavailable):
        return exc.store
    if isinstance(exc, RedisError):
        return "redis"
    return "postgres" if isinstance(exc, OperationalError) else None


def unavailable(exc: Exception) -> ErrorResponse:
    """The ``unavailable`` refusal of a ``STORE_DOWN`` error (logged: an outage is worth a line)."""
    store = store_of(exc)
    log.warning("dependency_unavailable", store=store, error=repr(exc))
    return ErrorResponse(error="unavailable", message=f"{store or 'a backing store'} is unavailable; retry later",
                         details=[{"store": store}] if store else None)


def collection_not_found(collection: str) -> ErrorResponse:
    return ErrorResponse(error="collection_not_found", message=(
        f"collection {collection!r} does not exist: no document was ever indexed into it "
        "(check the name; a collection is created by its first document)"), details=[{"collection": collection}])
