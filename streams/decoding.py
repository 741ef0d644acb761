"""Turning raw Kafka records into validated events, or into dead letters with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.events import DeadLetter, DocumentChange, SourcePosition

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
