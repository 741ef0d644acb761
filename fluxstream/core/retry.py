"""The one retry policy: capped exponential backoff with jitter, for transient errors only.

``classify`` is the single rule for what is worth retrying: a dependency that is down, moving or
throttling (Kafka, Redis, PostgreSQL, the network, a provider's 408/409/429/5xx) is *transient*;
anything else (a bad record, a schema mismatch, a setting the server refuses, a bug) is *permanent*
and surfaces at once, since waiting cannot fix it. ``retrying`` runs a call under a ``RetryPolicy``
and raises the last error when it is permanent or the policy is spent; callers tell the two apart
with ``classify``.

Jitter (each pause between half and all of its step) keeps replicas that lost a dependency at the
same moment from reconnecting in lockstep.
"""

from __future__ import annotations

import asyncio
import enum
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import openai
import psycopg
import redis.exceptions
from aiokafka.errors import KafkaError, KafkaTimeoutError

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 429})
"""HTTP statuses (besides 5xx) a provider may answer differently on a later attempt."""
_CONFIGURATION_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                            ssl.SSLCertVerificationError)
"""OS errors that name a path or a certificate of the configuration, not the network: waiting cannot fix them."""


class Fault(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify(exc: BaseException) -> Fault:
    """Whether retrying ``exc`` may succeed. The first error along the ``__cause__`` chain with a
    verdict decides (Faust wraps a producer's Kafka error in its own); none at all is permanent."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _verdict(current)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return Fault.PERMANENT


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Fault.TRANSIENT


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUS or status >= 500


def _verdict(exc: BaseException) -> Fault | None:
    permanent = getattr(exc, "permanent", None)  # our own errors say it (EmbeddingError, ChatError)
    if isinstance(permanent, bool):
        return Fault.PERMANENT if permanent else Fault.TRANSIENT
    if isinstance(exc, KafkaError):
        return _either(bool(exc.retriable) or isinstance(exc, KafkaTimeoutError))
    if isinstance(exc, openai.APIStatusError):
        return _either(is_transient_status(exc.status_code))
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return Fault.TRANSIENT
    if isinstance(exc, openai.APIResponseValidationError):
        return Fault.PERMANENT
    if isinstance(exc, redis.exceptions.AuthenticationError):  # a wrong password does not fix itself
        return Fault.PERMANENT
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Fault.TRANSIENT
    if isinstance(exc, psycopg.OperationalError):  # includes psycopg_pool.PoolTimeout
        return Fault.TRANSIENT
    if isinstance(exc, _CONFIGURATION_OS_ERRORS):
        return Fault.PERMANENT
    if isinstance(exc, OSError):  # connection refused/reset, timeouts (asyncio's too), unreachable hosts
        return Fault.TRANSIENT
    return None


def _either(transient: bool) -> Fault:
    return Fault.TRANSIENT if transient else Fault.PERMANENT


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds a provider asked for in a numeric Retry-After header, if any."""
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("retry-after", ""))  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep at a transient failure: ``max_retries`` more attempts (None: until it
    succeeds or fails permanently), pausing ``backoff_base`` seconds, then twice as long each
    time up to ``backoff_max``."""

    max_retries: int | None = None
    backoff_base: float = 0.1
    backoff_max: float = 10.0

    def pause(self, retry: int, exc: BaseException | None = None) -> float:
        """The pause before retry number ``retry`` (0-based): between half and all of its step, at
        least what a Retry-After header asks, never more than ``backoff_max``."""
        step = min(self.backoff_max, self.backoff_base * 2 ** min(retry, 62))
        pause = max(random.uniform(step / 2, step), retry_after(exc) or 0.0)
        return min(pause, self.backoff_max)

    def spent(self, retries: int) -> bool:
        return self.max_retries is not None and retries >= self.max_retries


OnRetry = Callable[[BaseException, float], None]
"""Told of each transient failure about to be retried, with the pause before the next attempt."""


async def retrying(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy = RetryPolicy(), *,
                   on_retry: OnRetry | None = None, deadline: float | None = None) -> T:
    """``attempt()``'s result, retrying transient failures under ``policy``.

    Raises a permanent error at once, and the last transient one when the policy is spent or the
    next pause would end past ``deadline`` (``time.monotonic()`` seconds).
    """
    retries = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if classify(exc) is Fault.PERMANENT or policy.spent(retries):
                raise
            pause = policy.pause(retries, exc)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise
            if on_retry is not None:
                on_retry(exc, pause)
        await asyncio.sleep(pause)
        retries += 1
