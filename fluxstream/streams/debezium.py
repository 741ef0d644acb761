"""Debezium change events (JSON converter, or Avro decoded by ``streams.wire_format``) -> document effects.

Accepted shapes, each with or without the ``{"schema", "payload"}`` wrapper:

* the full envelope: ``op`` c/u/r (upsert from ``after``), d (delete, id from ``before``
  or the key), t (truncate the table: its documents in the collection), with ``source.lsn``/``source.ts_ms``;
* the ``ExtractNewRecordState`` (unwrap) form: the row itself plus ``__deleted``,
  ``__op``, ``__lsn``, ``__source_ts_ms``/``__ts_ms``, ``__table`` fields;
* tombstones (null value, emitted after a delete): no effect.

A primary-key change arrives as a delete of the old key (+ tombstone) and a create of the new
one at the same LSN; Kafka Connect keeps Debezium's ``__debezium.oldkey`` header on the create,
which names the document whose stored row fills the create's TOAST placeholders (see
``RowEvent.previous_doc_id``). Ordering position: ``source.lsn`` where the connector has one
(PostgreSQL), else ``ts_ms * 10**6 + offset % 10**6``.

Columns holding the TOAST placeholder (``__debezium_unavailable_value``, in every shape real
Debezium 3.6 sends it: see ``is_unavailable``) are reported as unavailable: the index keeps their
previously indexed value. With ``schemas.enable=true`` the column schemas convert Debezium's
logical types to readable values (``convert``): decimals to decimal strings, epoch timestamps and
dates to ISO 8601.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson

from fluxstream.schemas.cdc_mapping import CdcMapping, TableMapping
from fluxstream.schemas.decoding import Rejected

UNAVAILABLE = "__debezium_unavailable_value"
TS_OFFSET_SCALE = 1_000_000
OLD_KEY_HEADER = "__debezium.oldkey"

_UNAVAILABLE_BYTES = UNAVAILABLE.encode()
UNAVAILABLE_SHAPES: tuple[Any, ...] = (
    UNAVAILABLE,  # text, varchar, json/jsonb (as strings), bytea with binary.handling.mode=hex
    [UNAVAILABLE],  # text[] and other string arrays
    list(_UNAVAILABLE_BYTES),  # int[] and other numeric arrays: the placeholder's bytes as numbers
    base64.b64encode(_UNAVAILABLE_BYTES).decode(),  # bytea (binary.handling.mode=bytes, the default)
    base64.urlsafe_b64encode(_UNAVAILABLE_BYTES).decode(),  # bytea with binary.handling.mode=base64-url-safe
    _UNAVAILABLE_BYTES.hex(),
    {UNAVAILABLE: UNAVAILABLE},  # hstore with hstore.handling.mode=map
    f'{{"{UNAVAILABLE}":"{UNAVAILABLE}"}}',  # hstore with hstore.handling.mode=json (the default)
)
"""The unchanged-TOAST placeholder as real Debezium 3.6 sends it per column type (tests/data/debezium)."""


def is_unavailable(value: Any) -> bool:
    """Whether ``value`` is Debezium's placeholder for an unchanged TOASTed column."""
    return value is not None and not isinstance(value, bool | int | float) and value in UNAVAILABLE_SHAPES


@dataclass(frozen=True)
class RowEvent:
    op: Literal["upsert", "delete"]
    mapping: TableMapping
    doc_id: str
    version: int
    row: dict[str, Any] | None
    unavailable: frozenset[str] = frozenset()
    previous_doc_id: str | None = None
    """A key change's create: the old key's document (from the ``__debezium.oldkey`` header)."""


@dataclass(frozen=True)
class TruncateEvent:
    mapping: TableMapping
    version: int


Parsed = RowEvent | TruncateEvent | Rejected | None  # None: a tombstone, nothing to do


@dataclass(frozen=True)
class Decoded:
    """A key or value read from a binary format (Avro: ``streams.wire_format``), in the form the JSON
    converter with ``schemas.enable=true`` gives: its payload and its Connect schema."""

    payload: Any
    schema: dict[str, Any] | None = None


def _unwrap(raw: bytes | Decoded | None) -> tuple[Any, dict[str, Any] | None]:
    """(payload, its Connect schema or None) of JSON converter output, with or without schemas."""
    if raw is None:
        return None, None
    if isinstance(raw, Decoded):
        return raw.payload, raw.schema
    value = orjson.loads(raw)
    if isinstance(value, dict) and "payload" in value and set(value) <= {"schema", "payload"}:
        schema = value.get("schema")
        return value["payload"], schema if isinstance(schema, dict) else None
    return value, None


def position(lsn: Any, ts_ms: Any, offset: int) -> int:
    if lsn is not None:
        return int(lsn)
    if ts_ms is None:
        raise ValueError("event has neither source.lsn nor a ts_ms to order it by")
    return int(ts_ms) * TS_OFFSET_SCALE + offset % TS_OFFSET_SCALE


def parse(topic: str, offset: int, timestamp_ms: int | None, key: bytes | Decoded | None,
          value: bytes | Decoded | None, mapping: CdcMapping,
          headers: Sequence[tuple[str, bytes]] | None = None) -> Parsed:
    """The effect of one CDC record: JSON converter bytes, or a key/value already decoded from Avro."""
    try:
        payload, schema = _unwrap(value)
        key_fields, _ = _unwrap(key)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", str(exc))
    if payload is None:
        return None
    if not isinstance(payload, dict):
        return Rejected("invalid_event", f"expected a JSON object, got {type(payload).__name__}")
    try:
        if "op" in payload and ("source" in payload or "before" in payload or "after" in payload):
            event = _from_envelope(topic, offset, timestamp_ms, key_fields, payload, mapping, _row_schema(schema))
        else:
            event = _from_unwrapped(topic, offset, timestamp_ms, key_fields, payload, mapping, _fields(schema))
        if isinstance(event, RowEvent) and event.op == "upsert" and headers:
            event = _with_old_key(event, headers)
    except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
        return Rejected("invalid_cdc_event", f"{type(exc).__name__}: {exc}")
    return event


def _with_old_key(event: RowEvent, headers: Sequence[tuple[str, bytes]]) -> RowEvent:
    """A key change's create names the old key in a header (Kafka Connect's header converters write
    it as JSON, with or without a schema wrapper); an unreadable header only loses the link."""
    for name, raw in headers:
        if name == OLD_KEY_HEADER and raw:
            try:
                old_key, _ = _unwrap(raw)
                if isinstance(old_key, dict):
                    old_id = event.mapping.doc_id(old_key)
                    if old_id != event.doc_id:
                        return RowEvent(event.op, event.mapping, event.doc_id, event.version, event.row,
                                        event.unavailable, old_id)
            except (orjson.JSONDecodeError, KeyError):
                pass
    return event


def _fields(schema: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Column name -> Connect field schema, of a struct schema."""
    if not schema:
        return {}
    return {f["field"]: f for f in schema.get("fields") or () if isinstance(f, dict) and "field" in f}


def _row_schema(envelope_schema: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The envelope's row schema (of ``after``, which ``before`` shares)."""
    fields = _fields(envelope_schema)
    return _fields(fields.get("after") or fields.get("before"))


def convert(value: Any, field: dict[str, Any] | None) -> Any:
    """``value`` as its Connect/Debezium logical type means it (schemas.enable=true), else unchanged.

    Decimals (``org.apache.kafka.connect.data.Decimal``: base64 big-endian two's complement with a
    ``scale`` parameter; ``io.debezium.data.VariableScaleDecimal``: ``{scale, value}``) become decimal
    strings; epoch timestamps (``io.debezium.time.Timestamp`` ms, ``MicroTimestamp`` us,
    ``NanoTimestamp`` ns, Connect's ``Timestamp`` ms) ISO 8601 UTC strings; dates (days) ISO dates.
    Strings (``ZonedTimestamp``, ``io.debezium.data.Json``) stay as sent.
    """
    if value is None or not field:
        return value
    name = field.get("name")
    if name == "org.apache.kafka.connect.data.Decimal" and isinstance(value, str):
        scale = int((field.get("parameters") or {}).get("scale", 0))
        return _decimal(value, scale)
    if name == "io.debezium.data.VariableScaleDecimal" and isinstance(value, dict):
        return _decimal(value["value"], int(value["scale"]))
    if isinstance(value, int) and not isinstance(value, bool):
        divisor = _EPOCH_UNITS.get(name or "")
        if divisor is not None:
            seconds, fraction = divmod(value, divisor)
            moment = _EPOCH + timedelta(seconds=seconds, microseconds=fraction * 1_000_000 // divisor)
            return moment.isoformat().replace("+00:00", "Z")
        if name in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
            return (date(1970, 1, 1) + timedelta(days=value)).isoformat()
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_UNITS = {"io.debezium.time.Timestamp": 1_000, "org.apache.kafka.connect.data.Timestamp": 1_000,
                "io.debezium.time.MicroTimestamp": 1_000_000, "io.debezium.time.NanoTimestamp": 1_000_000_000}


def _decimal(encoded: str, scale: int) -> str:
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return str(Decimal(unscaled).scaleb(-scale))


def _table_mapping(mapping: CdcMapping, topic: str, table: str | None) -> TableMapping:
    found = mapping.for_event(topic, table)
    if found is None:
        raise ValueError(f"no mapping for topic {topic!r} table {table!r}")
    return found


def _from_envelope(topic: str, offset: int, timestamp_ms: int | None, key: Any, payload: dict[str, Any],
                   mapping: CdcMapping, schema: dict[str, dict[str, Any]]) -> Parsed:
    source = payload.get("source") or {}
    table_map = _table_mapping(mapping, topic, source.get("table"))
    version = position(source.get("lsn"), source.get("ts_ms") or payload.get("ts_ms") or timestamp_ms, offset)
    op = payload["op"]
    if op == "t":
        return TruncateEvent(table_map, version)
    if op in ("c", "u", "r"):
        row = payload["after"]
        return _row_event("upsert", table_map, key, row, version, schema)
    if op == "d":
        return _row_event("delete", table_map, key, payload.get("before") or {}, version, schema)
    raise ValueError(f"unknown op {op!r}")


def _from_unwrapped(topic: str, offset: int, timestamp_ms: int | None, key: Any, row: dict[str, Any],
                    mapping: CdcMapping, schema: dict[str, dict[str, Any]]) -> Parsed:
    meta = {k: row[k] for k in row if k.startswith("__")}
    fields = {k: v for k, v in row.items() if not k.startswith("__")}
    table_map = _table_mapping(mapping, topic, meta.get("__table"))
    version = position(meta.get("__lsn"), meta.get("__source_ts_ms") or meta.get("__ts_ms") or timestamp_ms, offset)
    if meta.get("__op") == "t":
        return TruncateEvent(table_map, version)
    deleted = str(meta.get("__deleted", "false")).lower() == "true" or meta.get("__op") == "d"
    return _row_event("delete" if deleted else "upsert", table_map, key, fields, version, schema)


def _row_event(op: Literal["upsert", "delete"], table_map: TableMapping, key: Any, row: dict[str, Any] | None,
               version: int, schema: dict[str, dict[str, Any]]) -> RowEvent:
    if not isinstance(row, dict):
        raise ValueError(f"{op} event has no row image")
    id_source = key if isinstance(key, dict) and all(c in key for c in table_map.id_columns) else row
    doc_id = table_map.doc_id(id_source)
    if op == "delete":
        return RowEvent("delete", table_map, doc_id, version, None)
    kept = {c: v for c, v in row.items() if c in table_map.columns}
    unavailable = frozenset(c for c, v in kept.items() if is_unavailable(v))
    converted = {c: v if c in unavailable else convert(v, schema.get(c)) for c, v in kept.items()}
    return RowEvent("upsert", table_map, doc_id, version, converted, unavailable)
