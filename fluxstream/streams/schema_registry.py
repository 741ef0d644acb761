"""A Confluent Schema Registry client: schemas by id, cached, with the errors sorted for the worker.

Only what decoding needs: ``GET /schemas/ids/{id}`` (the schema a framed record names). Schemas are
immutable per id, so a fetched one is kept (least recently used first out, ``cache_size`` ids) and
never asked for again. Credentials: ``user``/``password`` (HTTP basic), else the URL's userinfo
(``https://user:pw@registry:8081``); the password is never logged (``redact``).

Errors (``SchemaRegistryError.permanent`` says which kind, as ``core.retry.classify`` reads it):

* permanent, the record's fault: the registry answers that the schema does not exist (404 with
  Confluent's ``error_code`` 40403 or 40401), or its answer is not a schema. The caller dead-letters.
* transient, the registry's or the operator's: unreachable, timeout, 5xx, 429, refused credentials
  (401/403), any other 404 (a wrong URL path). Raised as ``SchemaRegistryUnavailable`` (an
  ``OSError``, like every other outage the worker waits out): the batch is retried and no offset is
  committed, so a fixed password or a registry back up resumes where it stopped, dead-lettering nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import orjson

from fluxstream.core.logging import redact
from fluxstream.core.settings import Settings

SCHEMA_NOT_FOUND_CODES = frozenset({40403, 40401})  # schema not found, subject not found (Confluent's codes)
ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"


class SchemaRegistryError(Exception):
    """A schema could not be had; ``permanent``: asking again will not help (dead-letter the record)."""

    permanent = True

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SchemaRegistryUnavailable(SchemaRegistryError, ConnectionError):
    """The registry cannot answer now (down, slow, 5xx, refused credentials): retry, commit nothing."""

    permanent = False


@dataclass(frozen=True)
class RegisteredSchema:
    id: int
    schema_type: str  # AVRO, PROTOBUF or JSON (the registry omits it for AVRO)
    text: str  # the schema as the registry stores it (Avro: JSON text)
    references: tuple[dict[str, Any], ...] = ()


class SchemaRegistry:
    """Fetches schemas by id from one registry, caching up to ``cache_size`` of them."""

    def __init__(self, url: str, *, user: str = "", password: str = "", timeout: float = 5.0,
                 cache_size: int = 1000, transport: httpx.AsyncBaseTransport | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"schema registry URL {redact(url)!r}: expected http(s)://host[:port][/path]")
        if not user and parts.username:
            user, password = unquote(parts.username), unquote(parts.password or "")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.cache_size = cache_size
        self._auth = httpx.BasicAuth(user, password) if user else None
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._cache: OrderedDict[int, RegisteredSchema] = OrderedDict()
        self._fetching: dict[int, asyncio.Future[RegisteredSchema]] = {}
        self.fetches = 0  # requests made (tests: the cache saves them)

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistry | None:
        """The registry ``FLUXSTREAM_SCHEMA_REGISTRY_URL`` names, or None when it is unset."""
        if not settings.schema_registry_url:
            return None
        return cls(settings.schema_registry_url, user=settings.schema_registry_user,
                   password=settings.schema_registry_password, timeout=settings.schema_registry_timeout,
                   cache_size=settings.schema_registry_cache_size)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(auth=self._auth, timeout=self._timeout, transport=self._transport,
                                             headers={"accept": ACCEPT}, follow_redirects=True)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def schema(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id``; one request per id while concurrent callers wait on it."""
        cached = self._cache.get(schema_id)
        if cached is not None:
            self._cache.move_to_end(schema_id)
            return cached
        pending = self._fetching.get(schema_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[RegisteredSchema] = asyncio.get_running_loop().create_future()
        self._fetching[schema_id] = future
        try:
            found = await self._fetch(schema_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._fetching[schema_id]
        future.set_result(found)
        self._cache[schema_id] = found
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    async def _fetch(self, schema_id: int) -> RegisteredSchema:
        where = f"{self.url}/schemas/ids/{schema_id}"
        self.fetches += 1
        try:
            response = await self._http().get(where)
        except httpx.TimeoutException as exc:
            raise SchemaRegistryUnavailable("schema_registry_timeout",
                                            f"schema {schema_id}: no answer from {where} within "
                                            f"{self._timeout:g}s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS: the network or the registry is down
            raise SchemaRegistryUnavailable("schema_registry_unreachable",
                                            f"schema {schema_id}: {where}: {type(exc).__name__}: {exc}") from None
        body = _json(response.content)
        if response.status_code == 200:
            return _registered(schema_id, body)
        code = body.get("error_code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else response.text[:200]
        detail = f"schema {schema_id}: {where} answered {response.status_code} {code or ''} {message or ''}".rstrip()
        if response.status_code == 404 and code in SCHEMA_NOT_FOUND_CODES:
            raise SchemaRegistryError("unknown_schema", detail)
        if response.status_code in (401, 403):
            raise SchemaRegistryUnavailable("schema_registry_auth", detail + " (check the registry credentials)")
        raise SchemaRegistryUnavailable("schema_registry_error", detail)


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _registered(schema_id: int, body: Any) -> RegisteredSchema:
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise SchemaRegistryError("invalid_schema", f"schema {schema_id}: the registry's answer has no schema text")
    references = body.get("references") or ()
    return RegisteredSchema(schema_id, str(body.get("schemaType") or "AVRO").upper(), body["schema"],
                            tuple(r for r in references if isinstance(r, dict)))
