"""Confluent's wire format (Avro with a Schema Registry) into what Kafka's JsonConverter would have written.

A framed record is ``0x00`` + the schema id (4 bytes, big-endian) + the Avro binary body. It is
read with fastavro against the registered schema and turned into the JsonConverter's output for
the same Connect data: the payload (bytes as base64, float32 at its shortest decimal) and a
Connect schema (struct fields with their logical type names and parameters). ``debezium.parse``
then treats it exactly like JSON with ``schemas.enable=true``, so Avro and JSON records of the same
row give the same document (one conversion of logical types: ``debezium.convert``).

Logical types: Kafka Connect's AvroConverter keeps the Connect name of each type (``connect.name``:
``org.apache.kafka.connect.data.Decimal`` + ``scale``, ``io.debezium.time.MicroTimestamp``, ...);
Avro's own ``logicalType`` (decimal, timestamp-millis/micros, local-timestamp-*, date), written by
other producers, maps to the Connect type of the same meaning.

Per source (``format`` in the CDC mapping): ``auto`` (the default) reads a record starting with the
magic byte as Avro and anything else as JSON (JSON text never starts with 0x00); ``avro`` dead-letters
a record that is not framed; ``json`` never asks the registry.
"""

from __future__ import annotations

import base64
import io
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
import orjson

from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.decoding import Rejected
from fluxstream.streams.debezium import Decoded
from fluxstream.streams.schema_registry import RegisteredSchema, SchemaRegistry, SchemaRegistryError

MAGIC = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id

# Avro logical types (as other producers write them) -> the Connect type of the same meaning.
_AVRO_LOGICAL = {"timestamp-millis": "org.apache.kafka.connect.data.Timestamp",
                 "timestamp-micros": "io.debezium.time.MicroTimestamp",
                 "local-timestamp-millis": "io.debezium.time.Timestamp",
                 "local-timestamp-micros": "io.debezium.time.MicroTimestamp",
                 "date": "org.apache.kafka.connect.data.Date",
                 "decimal": "org.apache.kafka.connect.data.Decimal"}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def framed(raw: bytes | None) -> int | None:
    """The schema id of a Confluent-framed record, else None."""
    if raw is None or len(raw) < HEADER.size or raw[0] != MAGIC:
        return None
    return int(HEADER.unpack_from(raw)[1])


@dataclass(frozen=True)
class _Reader:
    """A registered Avro schema, ready to read bodies and to describe them as Connect schemas."""

    parsed: Any  # fastavro's parsed writer schema, logical types removed (converted by us, not fastavro)
    schema: Any  # the schema as registered (logical types kept)
    names: dict[str, Any]  # named types by full name (references are resolved through it)


class AvroDecoder:
    """Decodes CDC records' keys and values per their source's ``format``; schemas from ``registry``."""

    def __init__(self, mapping: CdcMapping, registry: SchemaRegistry | None, *, readers: int = 1000) -> None:
        self.mapping = mapping
        self.registry = registry
        self._readers: OrderedDict[int, _Reader | Rejected] = OrderedDict()
        self._max_readers = readers

    async def decode(self, topic: str, key: bytes | None,
                     value: bytes | None) -> tuple[bytes | Decoded | None, bytes | Decoded | None] | Rejected:
        """(key, value) ready for ``debezium.parse``, or why the record cannot be read (dead-letter it).

        Raises ``SchemaRegistryUnavailable`` while the registry cannot answer (retry the batch)."""
        fmt = self.mapping.format_of(topic)
        if fmt == "json":
            return key, value
        decoded_value = await self._one(value, fmt, "value")
        if isinstance(decoded_value, Rejected):
            return decoded_value
        if value is None:  # a tombstone: nothing to do, its key need not be read
            return None, None
        decoded_key = await self._one(key, fmt, "key")
        if isinstance(decoded_key, Rejected):
            return decoded_key
        return decoded_key, decoded_value

    async def _one(self, raw: bytes | None, fmt: str, part: str) -> bytes | Decoded | Rejected | None:
        schema_id = framed(raw)
        if raw is None or schema_id is None:
            if fmt == "avro" and raw is not None:
                return Rejected("not_avro", f"{part} does not start with the Confluent magic byte and a schema id "
                                            f"(source format avro): {raw[:16]!r}")
            return raw
        if self.registry is None:
            return Rejected("schema_registry_unset", f"{part} is Avro (schema id {schema_id}) but "
                                                     "FLUXSTREAM_SCHEMA_REGISTRY_URL is not set")
        reader = await self._reader(schema_id)
        if isinstance(reader, Rejected):
            return reader
        return _read(reader, raw, schema_id, part)

    async def _reader(self, schema_id: int) -> _Reader | Rejected:
        known = self._readers.get(schema_id)
        if known is not None:
            self._readers.move_to_end(schema_id)
            return known
        assert self.registry is not None
        try:
            registered = await self.registry.schema(schema_id)
        except SchemaRegistryError as exc:
            if not exc.permanent:
                raise
            return Rejected(exc.reason, exc.detail)  # not remembered: a schema registered later is found
        reader = _reader(registered)
        self._readers[schema_id] = reader
        while len(self._readers) > self._max_readers:
            self._readers.popitem(last=False)
        return reader


def _reader(registered: RegisteredSchema) -> _Reader | Rejected:
    if registered.schema_type != "AVRO":
        return Rejected("unsupported_schema_type", f"schema {registered.id} is {registered.schema_type}; "
                                                   "fluxstream reads Avro (and JSON without the registry)")
    try:
        schema = orjson.loads(registered.text)
        names: dict[str, Any] = {}
        _collect_names(schema, None, names)
        parsed = fastavro.parse_schema(_without_logical_types(schema))
    except Exception as exc:  # fastavro raises several kinds (SchemaParseException, KeyError, ...)
        return Rejected("invalid_schema", f"schema {registered.id}: {type(exc).__name__}: {exc}"[:2000])
    return _Reader(parsed, schema, names)


def _read(reader: _Reader, raw: bytes, schema_id: int, part: str) -> Decoded | Rejected:
    body = io.BytesIO(raw)
    body.seek(HEADER.size)
    try:
        value = fastavro.schemaless_reader(body, reader.parsed, None)
    except Exception as exc:  # a corrupt body can fail anywhere in the reader (EOF, bad union index, UTF-8, ...)
        return Rejected("invalid_avro", f"{part} does not decode with schema {schema_id}: {type(exc).__name__}: {exc}")
    if body.tell() != len(raw):
        return Rejected("invalid_avro", f"{part} has {len(raw) - body.tell()} bytes after its Avro body "
                                        f"(schema {schema_id})")
    try:
        return Decoded(_payload(value, reader.schema, reader.names, None), _connect(reader.schema, reader.names, None))
    except (KeyError, ValueError, TypeError) as exc:
        return Rejected("invalid_avro", f"{part} with schema {schema_id}: {type(exc).__name__}: {exc}")


def _without_logical_types(schema: Any) -> Any:
    """``schema`` without ``logicalType`` annotations: fastavro then returns the raw values."""
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if "fields" in schema:
        out["fields"] = [{**f, "type": _without_logical_types(f["type"])} for f in schema["fields"]]
    return out


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_names(schema: Any, namespace: str | None, names: dict[str, Any]) -> None:
    """Every named type (record, enum, fixed) by full name, in definition order."""
    if isinstance(schema, list):
        for branch in schema:
            _collect_names(branch, namespace, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed") and "name" in schema:
            full = _full_name(schema["name"], schema.get("namespace", namespace))
            names.setdefault(full, schema)
            namespace = full.rpartition(".")[0] or None
        for f in schema.get("fields") or ():
            _collect_names(f["type"], namespace, names)
        for nested in (schema.get("items"), schema.get("values")):
            if nested is not None:
                _collect_names(nested, namespace, names)
        if isinstance(kind, dict | list):
            _collect_names(kind, namespace, names)


def _resolve(schema: Any, names: Mapping[str, Any], namespace: str | None) -> Any:
    """A named reference (``"pg.public.articles.Value"``) as its definition; a ``{"type": {...}}``
    wrapper as what it wraps."""
    while True:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            schema = names.get(schema) or names[_full_name(schema, namespace)]
        elif isinstance(schema, dict) and isinstance(schema.get("type"), dict | list) and len(schema) == 1:
            schema = schema["type"]
        else:
            return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    kind = schema.get("type")
    return kind if isinstance(kind, str) else "union" if isinstance(kind, list) else _kind(kind)


def _branch(value: Any, union: list[Any], names: Mapping[str, Any], namespace: str | None) -> Any:
    """The union branch ``value`` was read with (Debezium writes ["null", T]; others pick by Python type)."""
    live = [b for b in union if _kind(_resolve(b, names, namespace)) != "null"]
    if len(live) == 1:
        return live[0]
    for branch in live:
        if isinstance(value, _PYTHON_TYPES.get(_kind(_resolve(branch, names, namespace)), ())):
            return branch
    return live[0]


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "boolean": bool, "int": int, "long": int, "float": float, "double": float, "bytes": bytes, "fixed": bytes,
    "string": str, "enum": str, "record": dict, "map": dict, "array": list}


def _payload(value: Any, schema: Any, names: Mapping[str, Any], namespace: str | None) -> Any:
    """``value`` (read with ``schema``) as the JsonConverter writes its Connect value."""
    if value is None:
        return None
    schema = _resolve(schema, names, namespace)
    kind = _kind(schema)
    if kind == "union":
        branches = schema if isinstance(schema, list) else schema["type"]
        return _payload(value, _branch(value, branches, names, namespace), names, namespace)
    if kind in ("record", "error"):
        inner = _full_name(schema["name"], schema.get("namespace", namespace)).rpartition(".")[0] or None
        return {f["name"]: _payload(value.get(f["name"]), f["type"], names, inner) for f in schema["fields"]}
    if kind == "array":
        return [_payload(v, schema["items"], names, namespace) for v in value]
    if kind == "map":
        return {k: _payload(v, schema["values"], names, namespace) for k, v in value.items()}
    if kind in ("bytes", "fixed"):
        return base64.b64encode(value).decode()  # JsonConverter writes bytes (decimals too) as base64
    if kind == "float":
        return float(str(np.float32(value)))  # a float32 at its shortest decimal, as Jackson writes it
    return value


def _connect(schema: Any, names: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    """The Connect schema (JsonConverter's form) of an Avro schema: struct fields, names, parameters."""
    schema = _resolve(schema, names, namespace)
    kind = _kind(schema)
    if kind == "union":
        branches = schema if isinstance(schema, list) else schema["type"]
        live = [b for b in branches if _kind(_resolve(b, names, namespace)) != "null"]
        inner = _connect(live[0], names, namespace) if len(live) == 1 else {"type": "union"}
        return {**inner, "optional": len(live) < len(branches)}
    if kind in ("record", "error"):
        full = _full_name(schema["name"], schema.get("namespace", namespace))
        inner_ns = full.rpartition(".")[0] or None
        return {"type": "struct", "name": schema.get("connect.name", full),
                "fields": [{**_connect(f["type"], names, inner_ns), "field": f["name"]} for f in schema["fields"]]}
    if kind == "array":
        return {"type": "array", "items": _connect(schema["items"], names, namespace)}
    if kind == "map":
        return {"type": "map", "values": _connect(schema["values"], names, namespace)}
    out: dict[str, Any] = {"type": kind}
    if not isinstance(schema, dict):
        return out
    name = schema.get("connect.name") or _AVRO_LOGICAL.get(schema.get("logicalType", ""))
    if name:
        out["name"] = name
    parameters = dict(schema.get("connect.parameters") or {})
    if schema.get("logicalType") == "decimal" and "scale" not in parameters:
        parameters["scale"] = str(schema.get("scale", 0))
    if parameters:
        out["parameters"] = parameters
    return out
