"""Calls to OpenAI-compatible providers (embeddings, chat) with one retry policy.

The openai client's own retries are disabled (``max_retries=0``) so that this loop decides what
is transient (connection errors, timeouts, 408/409/429/5xx: back off with full jitter, at least
what Retry-After asks, and retry) and what is permanent (other 4xx, malformed responses: fail at
once), and so callers see one error type of their own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import openai

T = TypeVar("T")
_TRANSIENT_STATUS = frozenset({408, 409, 429})

# (message, permanent, HTTP status or None) -> the caller's exception
ErrorFactory = Callable[[str, bool, int | None], Exception]


def is_transient_status(status: int) -> bool:
    return status in _TRANSIENT_STATUS or status >= 500


def retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds asked for by a numeric Retry-After header, if any."""
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 20.0

    def backoff(self, attempt: int, hint: float | None) -> float:
        delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        if hint is not None:
            delay = max(delay, hint)
        return min(delay, self.backoff_max)


async def call_with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, fail: ErrorFactory) -> T:
    attempt = 0
    while True:
        try:
            return await call()
        except openai.APIStatusError as exc:
            if not is_transient_status(exc.status_code):
                raise fail(f"HTTP {exc.status_code}: {exc.message}", True, exc.status_code) from exc
            error: Exception = exc
            hint = retry_after(exc)
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            error, hint = exc, None
        except openai.APIResponseValidationError as exc:
            raise fail(f"malformed response: {exc}", True, None) from exc
        if attempt >= policy.max_retries:
            raise fail(f"giving up after {attempt + 1} attempts: {error}", False,
                       getattr(error, "status_code", None)) from error
        await asyncio.sleep(policy.backoff(attempt, hint))
        attempt += 1
