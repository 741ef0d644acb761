"""API keys with scopes, and per-client rate limits, for the query service (HTTP and topic requests).

Keys are configured as SHA-256 digests, never in clear (``FLUXSTREAM_API_KEYS``)::

    <sha256 hex of the key>:<scope>[+<scope>...][,<next entry>...]      e.g.  9f86d0...:search,2c26b4...:search+admin

``fluxstream api-key --scopes search,admin`` prints a new random key and its entry. Scopes:
``search`` (searches, documents) and ``admin`` (cache and index administration). With no keys
configured every request is allowed (the embedded dev stack). A request presents its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (topic requests: record header
``fluxstream-api-key``). Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from fluxstream.core import metrics
from fluxstream.core.settings import Settings, SettingsError
from fluxstream.schemas.api import ErrorResponse

SCOPES = frozenset({"search", "admin"})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(scopes: list[str]) -> tuple[str, str]:
    """(a fresh random key, its ``FLUXSTREAM_API_KEYS`` entry)."""
    unknown = set(scopes) - SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {sorted(SCOPES)}, got {scopes}")
    key = "fx_" + secrets.token_urlsafe(32)
    return key, f"{digest(key)}:{'+'.join(sorted(set(scopes)))}"


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's digest prefix (safe to log and to rate-limit by) and its scopes."""

    name: str
    scopes: frozenset[str]


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ApiKeys:
    entries: dict[str, frozenset[str]] = field(default_factory=dict)  # digest -> scopes

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        entries: dict[str, frozenset[str]] = {}
        for raw in (e.strip() for e in spec.split(",")):
            if not raw:
                continue
            hexdigest, _, scopes = raw.partition(":")
            names = frozenset(s for s in scopes.split("+") if s)
            if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest.lower()):
                raise SettingsError(["FLUXSTREAM_API_KEYS: each entry is <sha256 hex>:<scope>[+<scope>]"])
            if not names or names - SCOPES:
                raise SettingsError([f"FLUXSTREAM_API_KEYS: scopes must be among {sorted(SCOPES)}"])
            entries[hexdigest.lower()] = names
        return cls(entries)

    @classmethod
    def configured(cls, settings: Settings) -> ApiKeys:
        """The query service's keys. With ``require_api_keys`` an empty set is a start-up error (fail closed):
        a production deployment whose Secret lost its keys must not come up open."""
        keys = cls.parse(settings.api_keys)
        if settings.require_api_keys and not keys.enabled:
            raise SettingsError(["FLUXSTREAM_API_KEYS is empty and FLUXSTREAM_REQUIRE_API_KEYS=true: the query "
                                 "service does not start open; add a key (fluxstream api-key --scopes search)"])
        return keys

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def authenticate(self, key: str | None, scope: str) -> Principal:
        """The principal for ``key`` if it may use ``scope``; AuthError (401/403) otherwise."""
        if not self.enabled:
            return Principal("anonymous", SCOPES)
        if not key:
            raise AuthError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)")
        presented = digest(key)
        for known, scopes in self.entries.items():
            if hmac.compare_digest(known, presented):
                if scope not in scopes:
                    raise AuthError(403, "forbidden", f"this API key lacks the {scope!r} scope")
                return Principal(f"key:{known[:12]}", scopes)
        raise AuthError(401, "unauthorized", "unknown API key")


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


class RateLimiter:
    """Token bucket per principal (or client address): ``rate`` requests per second, ``burst`` at once.

    Per query-service replica: with N replicas behind a balancer a client gets up to N times the rate.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate, self.burst, self.max_clients = rate, max(burst, 1), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, client: str, cost: float = 1.0) -> float:
        """0 if allowed (and charged); otherwise the seconds until ``cost`` tokens are available."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._remember(client, (tokens - cost, now))
            return 0.0
        self._remember(client, (tokens, now))
        return (cost - tokens) / self.rate

    def _remember(self, client: str, state: tuple[float, float]) -> None:
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._buckets.pop(next(iter(self._buckets)))  # bounded memory: forget the oldest client
        self._buckets[client] = state


class RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:.2f} s")
        self.wait = wait


class Gatekeeper:
    """API-key scopes and per-client rate limits, shared by HTTP routes and topic requests."""

    def __init__(self, settings: Settings) -> None:
        self.keys = ApiKeys.configured(settings)
        self.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)

    def admit(self, key: str | None, scope: str, client: str, cost: int = 1) -> Principal:
        principal = self.keys.authenticate(key, scope)
        wait = self.limiter.check(principal.name if self.keys.enabled else client, cost)
        if wait > 0:
            metrics.RATE_LIMITED.inc()
            raise RateLimited(wait)
        return principal

    def for_topic(self, key: str | None, cost: int) -> ErrorResponse | None:
        try:
            self.admit(key, "search", "topic", cost)
        except AuthError as exc:
            return ErrorResponse(error=exc.code, message=exc.message)
        except RateLimited as exc:
            return ErrorResponse(error="rate_limited", message=f"too many requests; retry in {exc.wait:.1f} s")
        return None
