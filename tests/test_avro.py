"""Avro with a Schema Registry: records real Debezium 3.6.3 wrote through Confluent's AvroConverter
(tests/data/debezium/postgres-avro.*, schemas registered in tests/schema_registry_server.py) decode to
exactly what the JSON converter gives for the same rows, and the registry client sorts every error
into retry (the registry's fault) or dead letter (the record's)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.decoding import Rejected
from fluxstream.streams import debezium
from fluxstream.streams.cdc_engine import ConnectRecord
from fluxstream.streams.schema_registry import SchemaRegistry, SchemaRegistryError, SchemaRegistryUnavailable
from fluxstream.streams.wire_format import AvroDecoder, framed
from tests.debezium_records import FIXTURES, mapping, recorded
from tests.schema_registry_server import RegistryState, schema_registry

AVRO = "postgres-avro"
REGISTRY = orjson.loads((FIXTURES / f"{AVRO}.registry.json").read_bytes())


@pytest.fixture
def registry() -> Iterator[tuple[str, RegistryState]]:
    """A registry holding the schemas the recorded Avro records name."""
    with schema_registry(RegistryState.load(REGISTRY)) as served:
        yield served


def decoder(url: str | None, cdc: CdcMapping | None = None, **options: Any) -> AvroDecoder:
    return AvroDecoder(cdc or mapping(), SchemaRegistry(url, **options) if url else None)


async def parse(avro: AvroDecoder, record: ConnectRecord) -> debezium.Parsed:
    decoded = await avro.decode(record.topic, record.key, record.value)
    if isinstance(decoded, Rejected):
        return decoded
    return debezium.parse(record.topic, 0, 1_000, *decoded, avro.mapping, record.headers)


def comparable(parsed: debezium.Parsed) -> Any:
    """What a parsed event does, without its position (the LSNs of two captures differ)."""
    if isinstance(parsed, debezium.RowEvent):
        return (parsed.op, parsed.mapping.collection, parsed.doc_id, parsed.row, parsed.unavailable,
                parsed.previous_doc_id)
    if isinstance(parsed, debezium.TruncateEvent):
        return ("truncate", parsed.mapping.collection)
    return parsed


async def test_avro_records_give_what_the_json_converter_gives(registry: tuple[str, RegistryState]) -> None:
    """Every step of the capture (snapshot, inserts with decimals, timestamps, dates, TOASTed rows,
    updates with placeholders, key changes, deletes and tombstones, a transaction, truncate): the
    Avro records and the JSON-with-schemas records of the same rows parse to the same effects."""
    avro, json_steps = decoder(registry[0]), recorded("postgres-schemas")
    avro_steps = recorded(AVRO)
    assert list(avro_steps) == list(json_steps) and len(avro_steps) == 14
    for step, records in avro_steps.items():
        assert all(framed(r.value) is not None for r in records if r.value is not None)
        got = [comparable(await parse(avro, r)) for r in records]
        expected = [comparable(debezium.parse(r.topic, 0, None, r.key, r.value, avro.mapping, r.headers))
                    for r in json_steps[step]]
        assert got == expected, step
        assert not any(isinstance(g, Rejected) for g in got), step


async def test_logical_types_from_avro(registry: tuple[str, RegistryState]) -> None:
    avro = decoder(registry[0])
    event = await parse(avro, recorded(AVRO)["insert"][0])
    assert isinstance(event, debezium.RowEvent) and event.row is not None
    row = event.row
    assert (row["price"], row["amount"]) == ("12.34", "123456789.000123")  # Decimal, VariableScaleDecimal
    assert (row["updated"], row["day"]) == ("2024-01-02T03:04:05.654321Z", "2024-01-02")  # MicroTimestamp, Date
    assert row["created"] == "2024-01-02T03:04:05.123456Z" and row["rating"] == 2.5
    assert row["blob"] == "AQI=" and row["tags"] == ["x", "y"]  # bytes as the JSON converter's base64
    later = await parse(avro, recorded(AVRO)["update_values"][0])
    assert isinstance(later, debezium.RowEvent) and later.row is not None
    assert (later.row["price"], later.row["amount"], later.row["updated"]) == ("99.99", "-0.5", "2025-02-03T04:05:06Z")
    toasted = await parse(avro, recorded(AVRO)["update_title_toasted"][0])
    assert isinstance(toasted, debezium.RowEvent)
    assert toasted.unavailable == {"body", "tags", "scores", "data", "doc", "attrs", "blob"}


def _schema(fields: list[dict[str, Any]], name: str = "Row") -> str:
    return orjson.dumps({"type": "record", "name": name, "namespace": "other", "fields": fields}).decode()


def _frame(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + body


async def test_avro_logical_types_of_other_producers() -> None:
    """Avro's own logicalType annotations (no Connect names) convert as their Connect equivalents."""
    import io
    from datetime import UTC, date, datetime
    from decimal import Decimal

    import fastavro

    fields = [{"name": "id", "type": "int"},
              {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}},
              {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
              {"name": "at_us", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
              {"name": "day", "type": {"type": "int", "logicalType": "date"}},
              {"name": "ratio", "type": "float"}]
    state = RegistryState()
    schema_id = state.register("other.value", _schema(fields))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(orjson.loads(_schema(fields))), {
        "id": 7, "price": Decimal("-12.345"), "at": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "at_us": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "day": date(2024, 2, 29), "ratio": 0.1})
    cdc = CdcMapping.from_dict({"sources": [{"topics": ["other"], "collection": "c", "id_columns": ["id"],
                                             "metadata": ["price", "at", "at_us", "day", "ratio"]}]})
    with schema_registry(state) as (url, _):
        event = await parse(decoder(url, cdc), ConnectRecord("other", None, _frame(schema_id, body.getvalue())))
    assert isinstance(event, debezium.RowEvent) and event.doc_id == "7"
    assert event.row == {"id": 7, "price": "-12.345", "at": "2024-01-02T03:04:05.678000Z",
                         "at_us": "2024-01-02T03:04:05.678901Z", "day": "2024-02-29", "ratio": 0.1}


async def test_schemas_are_fetched_once_per_id_and_the_cache_is_bounded(registry: tuple[str, RegistryState]) -> None:
    url, state = registry
    client = SchemaRegistry(url, cache_size=2)
    await asyncio.gather(*[client.schema(1) for _ in range(5)])  # concurrent callers share one request
    await client.schema(1)
    assert client.fetches == 1
    await client.schema(2)
    await client.schema(3)  # evicts 1, the least recently used
    await client.schema(1)
    assert client.fetches == 4 and len(state.requests) == 4
    avro = decoder(url)
    for record in recorded(AVRO)["snapshot"] * 3:
        await avro.decode(record.topic, record.key, record.value)
    assert avro.registry is not None and avro.registry.fetches == 2  # the key's and the value's schema


async def test_unknown_schema_id_is_the_records_fault(registry: tuple[str, RegistryState]) -> None:
    url, state = registry
    with pytest.raises(SchemaRegistryError) as raised:
        await SchemaRegistry(url).schema(99)
    assert raised.value.permanent and raised.value.reason == "unknown_schema" and "40403" in raised.value.detail
    record = recorded(AVRO)["insert"][0]
    state.forget.add(2)  # the value schema deleted from the registry
    rejected = await decoder(url).decode(record.topic, record.key, record.value)
    assert isinstance(rejected, Rejected) and rejected.reason == "unknown_schema" and "schema 2" in rejected.detail
    state.forget.clear()
    assert not isinstance(await parse(decoder(url), record), Rejected)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 404])
async def test_registry_errors_are_retried_not_dead_lettered(registry: tuple[str, RegistryState], status: int) -> None:
    """5xx, throttling and a 404 that is not Confluent's "schema not found" (a wrong path, a proxy):
    an outage (an OSError, retried by the worker without committing), and the next attempt succeeds."""
    url, state = registry
    avro = decoder(url)
    record = recorded(AVRO)["insert"][0]
    state.failures = [status]
    with pytest.raises(SchemaRegistryUnavailable) as raised:
        await avro.decode(record.topic, record.key, record.value)
    assert not raised.value.permanent and isinstance(raised.value, OSError) and str(status) in raised.value.detail
    assert isinstance(await parse(avro, record), debezium.RowEvent)


async def test_a_slow_registry_times_out_as_an_outage(registry: tuple[str, RegistryState]) -> None:
    url, state = registry
    state.delay = 0.5
    with pytest.raises(SchemaRegistryUnavailable) as raised:
        await SchemaRegistry(url, timeout=0.1).schema(1)
    assert raised.value.reason == "schema_registry_timeout"
    state.delay = 0
    assert (await SchemaRegistry(url, timeout=0.1).schema(1)).schema_type == "AVRO"


async def test_an_unreachable_registry_is_an_outage() -> None:
    with schema_registry() as (url, _):
        pass  # stopped: nothing listens there any more
    with pytest.raises(SchemaRegistryUnavailable) as raised:
        await SchemaRegistry(url, timeout=1).schema(1)
    assert raised.value.reason == "schema_registry_unreachable"


async def test_credentials_from_settings_or_the_url(registry: tuple[str, RegistryState]) -> None:
    """Refused credentials are the operator's to fix, not the records' fault: retried, never dead-lettered."""
    url, state = registry
    state.credentials = ("fluxstream", "s3cret:pw")
    for wrong in (SchemaRegistry(url), SchemaRegistry(url, user="fluxstream", password="nope")):
        with pytest.raises(SchemaRegistryUnavailable) as raised:
            await wrong.schema(1)
        assert raised.value.reason == "schema_registry_auth" and "401" in raised.value.detail
    assert (await SchemaRegistry(url, user="fluxstream", password="s3cret:pw").schema(1)).id == 1
    with_userinfo = url.replace("http://", "http://fluxstream:s3cret%3Apw@")
    client = SchemaRegistry(with_userinfo)
    assert (await client.schema(1)).id == 1 and "s3cret" not in client.url


async def test_corrupt_records_are_dead_lettered(registry: tuple[str, RegistryState]) -> None:
    url, _ = registry
    avro = decoder(url)
    record = recorded(AVRO)["insert"][0]
    assert record.value is not None
    for broken, why in ((record.value[:40], "does not decode"), (record.value + b"\x00\x01", "bytes after"),
                        (record.value[:5] + b"\xff" * 30, "does not decode")):
        rejected = await avro.decode(record.topic, record.key, broken)
        assert isinstance(rejected, Rejected) and rejected.reason == "invalid_avro" and why in rejected.detail


async def test_formats_per_source(registry: tuple[str, RegistryState]) -> None:
    url, state = registry
    avro_record, json_record = recorded(AVRO)["insert"][0], recorded("postgres-schemas")["insert"][0]

    def cdc(fmt: str) -> CdcMapping:
        return CdcMapping.from_dict({"sources": [{"topics": ["pg.public.articles"], "collection": "c",
                                                  "id_columns": ["id"], "text": "{body}", "format": fmt}]})

    auto = decoder(url, cdc("auto"))  # both kinds on one topic
    assert isinstance(await parse(auto, avro_record), debezium.RowEvent)
    assert isinstance(await parse(auto, json_record), debezium.RowEvent)
    strict = await decoder(url, cdc("avro")).decode(json_record.topic, json_record.key, json_record.value)
    assert isinstance(strict, Rejected) and strict.reason == "not_avro"
    requests = len(state.requests)
    as_json = await parse(decoder(url, cdc("json")), avro_record)
    assert isinstance(as_json, Rejected) and as_json.reason == "invalid_json" and len(state.requests) == requests
    unset = await decoder(None, cdc("auto")).decode(avro_record.topic, avro_record.key, avro_record.value)
    assert isinstance(unset, Rejected) and unset.reason == "schema_registry_unset"
    with pytest.raises(ValueError, match="format 'xml'"):
        cdc("xml")


async def test_a_protobuf_schema_is_refused_clearly(registry: tuple[str, RegistryState]) -> None:
    url, state = registry
    schema_id = state.register("p-value", 'syntax = "proto3"; message Row { int32 id = 1; }', "PROTOBUF")
    rejected = await decoder(url).decode("pg.public.articles", None, _frame(schema_id, b"\x00\x08\x01"))
    assert isinstance(rejected, Rejected) and rejected.reason == "unsupported_schema_type"


def test_test_registry_speaks_the_confluent_subset() -> None:
    """The REST subset Kafka Connect's AvroConverter and fluxstream use (the capture registered through it)."""
    import httpx

    assert REGISTRY["subjects"]["pg.public.articles-value"] == [2]
    schema = '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}'
    with schema_registry() as (url, _), httpx.Client(base_url=url) as http:
        first = http.post("/subjects/s-value/versions", json={"schema": schema}).json()["id"]
        assert http.post("/subjects/t-value/versions", json={"schema": schema}).json()["id"] == first
        assert http.get("/subjects").json() == ["s-value", "t-value"]
        assert http.get("/subjects/s-value/versions").json() == [1]
        latest = http.get("/subjects/s-value/versions/latest").json()
        assert (latest["id"], latest["version"], latest["schema"]) == (first, 1, schema)
        assert http.post("/subjects/s-value", json={"schema": schema}).json()["id"] == first
        assert http.post("/subjects/s-value", json={"schema": '"int"'}).json()["error_code"] == 40403
        assert http.get(f"/schemas/ids/{first}").json() == {"schema": schema}
        assert http.get("/schemas/ids/42").status_code == 404
        assert http.post("/compatibility/subjects/s-value/versions/latest",
                         json={"schema": schema}).json() == {"is_compatible": True}
        assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}


def test_settings_and_startup_checks(tmp_path: Any) -> None:
    from fluxstream.core.settings import Settings, SettingsError
    from fluxstream.streams.app import load_cdc_mapping

    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"FLUXSTREAM_SCHEMA_REGISTRY_URL": "registry:8081"})
    assert raised.value.problems == ["FLUXSTREAM_SCHEMA_REGISTRY_URL='registry:8081': expected an http:// or "
                                     "https:// URL, or empty"]
    config = tmp_path / "cdc.toml"
    config.write_text('[[sources]]\ntopics = ["t"]\ncollection = "c"\nid_columns = ["id"]\nformat = "avro"\n')
    with pytest.raises(SettingsError, match="set FLUXSTREAM_SCHEMA_REGISTRY_URL"):
        load_cdc_mapping(Settings(cdc_config=str(config)))
    assert load_cdc_mapping(Settings(cdc_config=str(config), schema_registry_url="http://r:8081")).format_of("t") \
        == "avro"
    with pytest.raises(ValueError, match="formats 'avro' and 'json'"):
        CdcMapping.from_dict({"sources": [{"topics": ["t"], "collection": c, "id_columns": ["id"], "format": f}
                                          for c, f in (("a", "avro"), ("b", "json"))]})


def test_cdc_command_avro_options(tmp_path: Any) -> None:
    """--format avro needs a registry (one line, status 2); the registry's password is never printed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "FLUXSTREAM_STATE_DIR": str(tmp_path), "FLUXSTREAM_KAFKA_URL": "127.0.0.1:1",
           "FLUXSTREAM_SCHEMA_REGISTRY_URL": ""}
    command = [sys.executable, "-m", "fluxstream.cli", "cdc", "--source", "postgresql://u@127.0.0.1:1/db",
               "--tables", "public.notes", "--format", "avro"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "fluxstream: cdc: --format avro needs --schema-registry-url (or " \
                                 "FLUXSTREAM_SCHEMA_REGISTRY_URL)"
    run = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env={**env, "PATH": "", "JAVA_HOME": "", "FLUXSTREAM_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1",
                              "FLUXSTREAM_SCHEMA_REGISTRY_USER": "dbz",
                              "FLUXSTREAM_SCHEMA_REGISTRY_PASSWORD": "Reg-Pw-9"})
    assert run.returncode == 1 and "as Avro (schemas in http://dbz:***@127.0.0.1:1)" in run.stderr
    assert "Reg-Pw-9" not in run.stderr + run.stdout and "Traceback" not in run.stderr


def test_engine_properties_for_the_avro_converter() -> None:
    from fluxstream.streams.cdc_engine import AVRO_CONVERTER, postgres_properties

    props = postgres_properties("postgresql://u@h/db", ["public.t"], topic_prefix="p", offsets_file="o",
                                schema_registry_url="https://dbz:p%40ss@registry:8081/sr")
    for prefix in ("key.converter", "value.converter"):
        assert props[prefix] == AVRO_CONVERTER
        assert props[f"{prefix}.schema.registry.url"] == "https://registry:8081/sr"
        assert props[f"{prefix}.basic.auth.credentials.source"] == "USER_INFO"
        assert props[f"{prefix}.basic.auth.user.info"] == "dbz:p@ss"
    assert "key.converter" not in postgres_properties("postgresql://u@h/db", ["public.t"], topic_prefix="p",
                                                      offsets_file="o")
