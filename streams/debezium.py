"""Debezium change events (JSON converter) -> document effects.

Accepted shapes, each with or without the ``{"schema", "payload"}`` wrapper:

* the full envelope: ``op`` c/u/r (upsert from ``after``), d (delete, id from ``before``
  or the key), t (truncate the table: its documents in the collection), with ``source.lsn``/``source.ts_ms``;
* the ``ExtractNewRecordState`` (unwrap) form: the row itself plus ``__deleted``,
  ``__op``, ``__lsn``, ``__source_ts_ms``/``__ts_ms``, ``__table`` fields;
* tombstones (null value, emitted after a delete): no effect.

A primary-key change arrives as a delete of the old key and a create of the new one,
so it needs no special case. Ordering position: ``source.lsn`` where the connector has
one (PostgreSQL), else ``ts_ms * 10**6 + offset % 10**6``. Columns holding the TOAST
placeholder ``__debezium_unavailable_value`` are reported as unavailable: the index
keeps their previously indexed value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streams.cdc_mapping import CdcMapping, TableMapping
from streams.decoding import Rejected

UNAVAILABLE = "__debezium_unavailable_value"
TS_OFFSET_SCALE = 1_000_000


@dataclass(frozen=True)
class RowEvent:
    op: Literal["upsert", "delete"]
    mapping: TableMapping
    doc_id: str
    version: int
    row: dict[str, Any] | None
    unavailable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TruncateEvent:
    mapping: TableMapping
    version: int


Parsed = RowEvent | TruncateEvent | Rejected | None  # None: a tombstone, nothing to do


def _unwrap(raw: bytes | None) -> Any:
    if raw is None:
        return None
    value = orjson.loads(raw)
    if isinstance(value, dict) and "payload" in value and set(value) <= {"schema", "payload"}:
        return value["payload"]
    return value


def position(lsn: Any, ts_ms: Any, offset: int) -> int:
    if lsn is not None:
        return int(lsn)
    if ts_ms is None:
        raise ValueError("event has neither source.lsn nor a ts_ms to order it by")
    return int(ts_ms) * TS_OFFSET_SCALE + offset % TS_OFFSET_SCALE


def parse(topic: str, offset: int, timestamp_ms: int | None, key: bytes | None, value: bytes | None,
          mapping: CdcMapping) -> Parsed:
    try:
        payload = _unwrap(value)
        key_fields = _unwrap(key)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", str(exc))
    if payload is None:
        return None
    if not isinstance(payload, dict):
        return Rejected("invalid_event", f"expected a JSON object, got {type(payload).__name__}")
    try:
        if "op" in payload and ("source" in payload or "before" in payload or "after" in payload):
            return _from_envelope(topic, offset, timestamp_ms, key_fields, payload, mapping)
        return _from_unwrapped(topic, offset, timestamp_ms, key_fields, payload, mapping)
    except (KeyError, ValueError, TypeError) as exc:
        return Rejected("invalid_cdc_event", f"{type(exc).__name__}: {exc}")


def _table_mapping(mapping: CdcMapping, topic: str, table: str | None) -> TableMapping:
    found = mapping.for_event(topic, table)
    if found is None:
        raise ValueError(f"no mapping for topic {topic!r} table {table!r}")
    return found


def _from_envelope(topic: str, offset: int, timestamp_ms: int | None, key: Any, payload: dict[str, Any],
                   mapping: CdcMapping) -> Parsed:
    source = payload.get("source") or {}
    table_map = _table_mapping(mapping, topic, source.get("table"))
    version = position(source.get("lsn"), source.get("ts_ms") or payload.get("ts_ms") or timestamp_ms, offset)
    op = payload["op"]
    if op == "t":
        return TruncateEvent(table_map, version)
    if op in ("c", "u", "r"):
        row = payload["after"]
        return _row_event("upsert", table_map, key, row, version)
    if op == "d":
        return _row_event("delete", table_map, key, payload.get("before") or {}, version)
    raise ValueError(f"unknown op {op!r}")


def _from_unwrapped(topic: str, offset: int, timestamp_ms: int | None, key: Any, row: dict[str, Any],
                    mapping: CdcMapping) -> Parsed:
    meta = {k: row[k] for k in row if k.startswith("__")}
    fields = {k: v for k, v in row.items() if not k.startswith("__")}
    table_map = _table_mapping(mapping, topic, meta.get("__table"))
    version = position(meta.get("__lsn"), meta.get("__source_ts_ms") or meta.get("__ts_ms") or timestamp_ms, offset)
    if meta.get("__op") == "t":
        return TruncateEvent(table_map, version)
    deleted = str(meta.get("__deleted", "false")).lower() == "true" or meta.get("__op") == "d"
    return _row_event("delete" if deleted else "upsert", table_map, key, fields, version)


def _row_event(op: Literal["upsert", "delete"], table_map: TableMapping, key: Any, row: dict[str, Any] | None,
               version: int) -> RowEvent:
    if not isinstance(row, dict):
        raise ValueError(f"{op} event has no row image")
    id_source = key if isinstance(key, dict) and all(c in key for c in table_map.id_columns) else row
    doc_id = table_map.doc_id(id_source)
    if op == "delete":
        return RowEvent("delete", table_map, doc_id, version, None)
    kept = {c: v for c, v in row.items() if c in table_map.columns}
    unavailable = frozenset(c for c, v in kept.items() if v == UNAVAILABLE)
    return RowEvent("upsert", table_map, doc_id, version, kept, unavailable)
