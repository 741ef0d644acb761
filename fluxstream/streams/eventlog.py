"""Event-log files: NDJSON (optionally gzip) of Kafka records, written by `fluxstream export`, read by
`fluxstream replay`.

One line per record::

    {"topic": "fluxstream.documents", "partition": 2, "offset": 41, "timestamp": 1763800000000,
     "key": "doc-7", "value": {"op": "upsert", "doc_id": "doc-7", ...}}

``key``/``value`` hold UTF-8 text / JSON; records that are not (binary keys, non-JSON values) use
``key_b64``/``value_b64`` instead, so any record round-trips. ``value: null`` is a tombstone.
Only ``value`` (or ``value_b64``) is required: hand-written logs of change events work too.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson


@dataclass(frozen=True)
class LogRecord:
    line_no: int
    key: bytes | None
    value: bytes | None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = None


class BadLine(ValueError):
    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason


def open_log(path: str | Path, mode: str = "rb") -> IO[bytes]:
    """Plain or gzip by the file's name; '-' is stdin/stdout."""
    import sys

    if str(path) == "-":
        return sys.stdin.buffer if "r" in mode else sys.stdout.buffer
    if str(path).endswith(".gz"):
        return gzip.open(path, mode)  # type: ignore[return-value]
    return open(path, mode)


def encode(record: LogRecord) -> bytes:
    line: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                            "timestamp": record.timestamp}
    line.update(_field("key", record.key, as_json=False))
    line.update(_field("value", record.value, as_json=True))
    return orjson.dumps(line) + b"\n"


def _field(name: str, data: bytes | None, *, as_json: bool) -> dict[str, Any]:
    if data is None:
        return {name: None}
    try:
        return {name: orjson.loads(data) if as_json else data.decode("utf-8")}
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return {f"{name}_b64": base64.b64encode(data).decode()}


def decode(line_no: int, line: bytes) -> LogRecord:
    value: bytes | None
    key: bytes | None
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadLine(line_no, f"not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not ({"value", "value_b64"} & raw.keys()):
        raise BadLine(line_no, "expected an object with 'value' (or 'value_b64')")
    if "value_b64" in raw:
        value = base64.b64decode(raw["value_b64"])
    else:
        value = None if raw["value"] is None else orjson.dumps(raw["value"])
    if "key_b64" in raw:
        key = base64.b64decode(raw["key_b64"])
    else:
        key = None if raw.get("key") is None else str(raw["key"]).encode()
    return LogRecord(line_no, key, value, raw.get("topic"), raw.get("partition"), raw.get("offset"),
                     raw.get("timestamp"))


def read_log(path: str | Path) -> Iterator[LogRecord | BadLine]:
    """Records in file order; a bad line is yielded as a BadLine (with its number), not raised."""
    with open_log(path) as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield decode(line_no, line)
            except BadLine as bad:
                yield bad
