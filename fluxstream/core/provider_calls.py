"""Calls to OpenAI-compatible providers (embeddings, chat) under the one retry policy.

The openai client's own retries are disabled (``max_retries=0``) so that ``fluxstream.core.retry``
decides what is transient (connection errors, timeouts, 408/409/429/5xx: back off with jitter, at
least what Retry-After asks, and retry) and what is permanent (other 4xx, malformed responses: fail
at once); this module only turns the provider's errors into the caller's own exception type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import openai

from fluxstream.core.retry import RetryPolicy, is_transient, retrying

T = TypeVar("T")

# (message, permanent, HTTP status or None) -> the caller's exception
ErrorFactory = Callable[[str, bool, int | None], Exception]


def provider_policy(max_retries: int, backoff_base: float = 0.5, backoff_max: float = 20.0) -> RetryPolicy:
    """A provider call's policy: a bounded number of retries, pauses up to 20 s (providers throttle for long)."""
    return RetryPolicy(max_retries, backoff_base, backoff_max)


async def call_with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, fail: ErrorFactory) -> T:
    try:
        return await retrying(call, policy)
    except openai.APIStatusError as exc:
        error: openai.OpenAIError = exc
        status: int | None = exc.status_code
        message = f"HTTP {exc.status_code}: {exc.message}"
    except openai.APIResponseValidationError as exc:
        raise fail(f"malformed response: {exc}", True, None) from exc
    except openai.APIConnectionError as exc:  # includes APITimeoutError
        error, status, message = exc, None, str(exc)
    if not is_transient(error):
        raise fail(message, True, status) from error
    attempts = (policy.max_retries or 0) + 1
    raise fail(f"giving up after {attempts} attempts: {error}", False, status) from error
