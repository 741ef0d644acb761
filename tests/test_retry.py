"""The one retry policy (fluxstream.core.retry): what is transient, how long it is retried."""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx
import openai
import psycopg
import pytest
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from psycopg_pool import PoolTimeout

from fluxstream.core.retry import Fault, RetryPolicy, classify, retrying
from fluxstream.indexer.embedders.base import EmbeddingError
from fluxstream.indexer.vector_store import SchemaMismatch


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://provider/v1/embeddings")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("refused", response=response, body=None)


@pytest.mark.parametrize("error", [
    KafkaConnectionError("no broker"), KafkaTimeoutError(),
    ProducerSendError("broker away"),  # cause set below
    redis.exceptions.ConnectionError("refused"), redis.exceptions.TimeoutError(),
    redis.exceptions.BusyLoadingError("loading"),
    psycopg.OperationalError("server closed the connection"), PoolTimeout("no connection in 30 s"),
    ConnectionRefusedError(), TimeoutError(), OSError("unreachable"),
    _status_error(429), _status_error(503), _status_error(408),
    openai.APIConnectionError(request=httpx.Request("POST", "http://provider")),
    EmbeddingError("provider down", permanent=False),
])
def test_outages_and_throttling_are_transient(error: Exception) -> None:
    if isinstance(error, ProducerSendError):
        error.__cause__ = KafkaConnectionError("no broker")
    assert classify(error) is Fault.TRANSIENT


@pytest.mark.parametrize("error", [
    ValueError("bad record"), KeyError("field"), MessageSizeTooLargeError(),
    SchemaMismatch("chunks.embedding has 64 dimensions, the embedder 384"),
    psycopg.errors.InvalidParameterValue("value 1000 out of bounds for option m"),
    redis.exceptions.AuthenticationError("invalid username-password pair"),
    redis.exceptions.ResponseError("ERR unknown command"),
    FileNotFoundError("/models/missing"), ssl.SSLCertVerificationError("self-signed certificate"),
    _status_error(400), _status_error(401),
    EmbeddingError("input too long", permanent=True),
])
def test_faults_of_input_configuration_or_code_are_permanent(error: Exception) -> None:
    assert classify(error) is Fault.PERMANENT


def test_a_wrapped_error_is_judged_by_its_cause() -> None:
    wrapped = ProducerSendError("send failed")
    wrapped.__cause__ = MessageSizeTooLargeError()
    assert classify(wrapped) is Fault.PERMANENT
    wrapped.__cause__ = KafkaTimeoutError()
    assert classify(wrapped) is Fault.TRANSIENT


def test_pauses_grow_to_the_ceiling_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(None, 0.1, 2.0)
    for retry, step in [(0, 0.1), (1, 0.2), (3, 0.8), (5, 2.0), (40, 2.0), (10_000, 2.0)]:
        pauses = {policy.pause(retry) for _ in range(50)}
        assert all(step / 2 <= p <= step for p in pauses), (retry, pauses)
        assert len(pauses) > 1  # jittered
    assert policy.pause(0, _status_error(429, {"Retry-After": "1.5"})) == 1.5
    assert policy.pause(0, _status_error(429, {"Retry-After": "60"})) == 2.0  # never past the ceiling


def test_transient_failures_are_retried_until_the_call_succeeds() -> None:
    attempts: list[int] = []
    told: list[tuple[str, float]] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise ConnectionRefusedError("not yet")
        return "done"

    result = asyncio.run(retrying(flaky, RetryPolicy(None, 0.001, 0.004),
                                  on_retry=lambda exc, pause: told.append((type(exc).__name__, pause))))
    assert result == "done" and len(attempts) == 4
    assert [name for name, _ in told] == ["ConnectionRefusedError"] * 3


def test_a_permanent_failure_surfaces_at_once() -> None:
    attempts: list[int] = []

    async def broken() -> None:
        attempts.append(1)
        raise SchemaMismatch("dimensions differ")

    with pytest.raises(SchemaMismatch):
        asyncio.run(retrying(broken, RetryPolicy(None, 0.001, 0.004)))
    assert len(attempts) == 1


def test_the_last_transient_error_is_raised_once_the_policy_or_the_deadline_is_spent() -> None:
    attempts: list[int] = []

    async def down() -> None:
        attempts.append(1)
        raise redis.exceptions.ConnectionError("down")

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(retrying(down, RetryPolicy(2, 0.001, 0.004)))
    assert len(attempts) == 3  # the first attempt and two retries

    attempts.clear()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(retrying(down, RetryPolicy(None, 0.05, 0.05), deadline=time.monotonic() + 0.3))
    assert 0.2 <= time.monotonic() - started < 0.4 and 5 <= len(attempts) <= 13  # no pause ends past it
