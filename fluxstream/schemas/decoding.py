"""Turning raw Kafka records into validated events, or into dead letters with a reason (``DeadLetters``).

In the schemas layer: the worker, the topic-search server (query.kafka_requests) and replay all decode
and dead-letter with it, and it needs only the event models and the floor (metrics, retry).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.core.retry import RetryPolicy, is_transient, retrying
from fluxstream.schemas.events import DeadLetter, DocumentChange, SourcePosition

log = get_logger("fluxstream.dead_letters")

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class Rejected:
    reason: str  # short machine-readable code
    detail: str


def decode(raw: bytes | None, model: type[Model]) -> Model | Rejected:
    if raw is None:
        return Rejected("empty_value", "record has no value")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", str(exc))
    if not isinstance(payload, dict):
        return Rejected("invalid_event", f"expected a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:10])
        return Rejected("schema_violation", errors)


def decode_change(raw: bytes | None, max_text_bytes: int) -> DocumentChange | Rejected:
    """A DocumentChange, or why not (bad JSON, schema violation, oversized text)."""
    result = decode(raw, DocumentChange)
    if isinstance(result, DocumentChange):
        size = len(result.text.encode()) + len(result.title.encode())
        if size > max_text_bytes:
            return Rejected("oversized", f"title+text is {size} bytes, limit {max_text_bytes}")
    return result


def dead_letter(rejected: Rejected, source: SourcePosition) -> DeadLetter:
    return DeadLetter(reason=rejected.reason, detail=rejected.detail, source=source)


RECORD_OVERHEAD = 512
"""Bytes a record needs besides its key, value and headers (record and batch framing, generously)."""
MAX_DEAD_LETTER_KEY = 1024
"""A key longer than this is cut as well when a dead letter must shrink (keys are rarely long)."""


def dead_letter_record(rejected: Rejected, source: SourcePosition, key: bytes | None, value: bytes | None,
                       max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers of the dead letter of a record, together at most ``max_bytes``.

    A dead letter must always be publishable, or the record it stands for would be retried for
    good: a value that does not fit is cut, and the original's size and SHA-256 go in the
    headers (see schemas.events.DeadLetter).
    """
    letter = dead_letter(rejected, source)
    headers = letter.headers()
    if value is None or _size(key, value, headers) <= max_bytes:
        return key, value, headers
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY and _size(key, b"", headers) > max_bytes // 2:
        letter = letter.model_copy(update={"detail": f"(key cut from {len(key)} bytes) {letter.detail}"})
        key = key[:MAX_DEAD_LETTER_KEY]
    letter = letter.model_copy(update={"original_size": len(value),
                                       "original_sha256": hashlib.sha256(value).hexdigest()})
    headers = letter.headers()
    return key, value[:max(0, max_bytes - _size(key, b"", headers))], headers


def _size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return RECORD_OVERHEAD + len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)


Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[Awaitable[object]]]
"""Queues one record (topic, key, value, headers); the awaitable it returns resolves once the broker has it."""
Decoder = Callable[[bytes | None], T | Rejected]


class Raw(Protocol):
    """The parts of a consumed record a dead letter keeps (Faust's and aiokafka's records have them)."""

    key: bytes | None
    value: bytes | None


class DeadLetters:
    """The one place where a record that cannot be taken becomes a dead letter, for every consumer.

    The dead letter carries the original key and bytes (cut to ``max_bytes``, see ``dead_letter_record``)
    and the reason in headers. A transient send failure is retried under ``retry`` and then raised (the
    consumer does not commit past the record meanwhile); a dead letter the broker refuses for good (a
    lower broker limit) goes again with the payload cut away, its size and SHA-256 kept, and only if even
    that is refused is it given up, logged. With ``publishing`` off (a rebuild replaying records the live
    worker already dead-lettered) rejections are only counted.
    """

    def __init__(self, send: Send, topic: str, max_bytes: int, *, retry: RetryPolicy | None = None,
                 publishing: bool = True) -> None:
        self.send, self.topic, self.max_bytes, self.publishing = send, topic, max_bytes, publishing
        self.retry = retry or RetryPolicy(0)
        self.rejected = 0

    async def take(self, record: Raw, source: SourcePosition, decoder: Decoder[T],
                   sends: list[Awaitable[object]]) -> T | None:
        """``record`` decoded by ``decoder``, or None once its dead letter is queued on ``sends``."""
        result = decoder(record.value)
        if isinstance(result, Rejected):
            sends.append(await self.reject(result, source, record.key, record.value))
            return None
        return result

    async def reject(self, rejected: Rejected, source: SourcePosition, key: bytes | None,
                     value: bytes | None) -> Awaitable[object]:
        """Queue the dead letter of the record read at ``source``; the result resolves once the broker has it."""
        self.rejected += 1
        metrics.EVENTS.labels(source.topic, "dead_lettered").inc()
        if not self.publishing:
            return _done()
        log.warning("dead_letter", reason=rejected.reason, detail=rejected.detail[:500], **source.model_dump())
        metrics.DEAD_LETTERS.labels(rejected.reason).inc()
        first: Awaitable[object]
        try:
            first = await self.send(self.topic, *dead_letter_record(rejected, source, key, value, self.max_bytes))
        except Exception as exc:  # refused at once (too large for the producer, broker away): settled below
            first = asyncio.get_running_loop().create_future()
            first.set_exception(exc)
        return asyncio.ensure_future(self._delivered(first, rejected, source, key, value))

    async def _delivered(self, first: Awaitable[object], rejected: Rejected, source: SourcePosition,
                         key: bytes | None, value: bytes | None) -> None:
        limit = self.max_bytes
        pending: Awaitable[object] | None = first

        async def attempt() -> None:
            nonlocal pending
            if pending is None:  # a retry: queue it again
                pending = await self.send(self.topic, *dead_letter_record(rejected, source, key, value, limit))
            try:
                await pending
            finally:
                pending = None

        while True:
            try:
                await retrying(attempt, self.retry)
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                if limit == 0 or value is None:
                    log.error("dead_letter_lost", reason=rejected.reason, detail=rejected.detail[:300],
                              error=repr(exc), **source.model_dump())
                    return
                log.warning("dead_letter_refused", reason=rejected.reason, error=repr(exc), size=len(value))
                limit = 0


def _done() -> asyncio.Future[object]:
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done
