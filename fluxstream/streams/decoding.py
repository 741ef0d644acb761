"""Turning raw Kafka records into validated events, or into dead letters with a reason."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from fluxstream.schemas.events import DeadLetter, DocumentChange, SourcePosition

Model = TypeVar("Model", bound=BaseModel)


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
