"""Every Debezium shape the CDC agent accepts, parsed without servers."""

from __future__ import annotations

import orjson
import pytest

from streams import debezium
from streams.cdc_mapping import CdcMapping
from streams.decoding import Rejected
from tests.debezium_fixtures import TOAST, envelope, mysql_source, pg_source, record, unwrapped

MAPPING = CdcMapping.from_dict({"sources": [
    {"topics": ["pg.public.articles"], "collection": "articles", "id_columns": ["id"], "title": "{title}",
     "text": "{summary}\n\n{body}", "metadata": ["author"]},
    {"topics": ["mysql.shop.products"], "collection": "products", "id_columns": ["shop", "sku"],
     "title": "{name}", "text": "{description}"},
]})
ROW = {"id": 7, "title": "T", "summary": "S", "body": "B", "author": "ann", "internal": "x"}


def parse(key: bytes | None, value: bytes | None, topic: str = "pg.public.articles", offset: int = 0):
    return debezium.parse(topic, offset, 1_763_800_000_999, key, value, MAPPING)


@pytest.mark.parametrize("with_schema", [False, True])
@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_upserts(op: str, with_schema: bool) -> None:
    snapshot = "true" if op == "r" else "false"
    key, value = record({"id": 7}, envelope(op, pg_source(4242, "articles", snapshot=snapshot), after=ROW),
                        with_schema=with_schema)
    event = parse(key, value)
    assert isinstance(event, debezium.RowEvent)
    assert (event.op, event.doc_id, event.version) == ("upsert", "7", 4242)
    assert event.row == {k: v for k, v in ROW.items() if k != "internal"}  # only mapped columns kept
    assert event.mapping.render(event.row) == ("T", "S\n\nB", {"author": "ann"})


@pytest.mark.parametrize("with_schema", [False, True])
def test_delete_and_tombstone(with_schema: bool) -> None:
    key, value = record({"id": 7}, envelope("d", pg_source(5000, "articles"), before={"id": 7}),
                        with_schema=with_schema)
    event = parse(key, value)
    assert isinstance(event, debezium.RowEvent)
    assert (event.op, event.doc_id, event.version, event.row) == ("delete", "7", 5000, None)
    tomb_key, tomb_value = record({"id": 7}, None, with_schema=with_schema)
    assert parse(tomb_key, tomb_value) is None


def test_delete_without_key_uses_before_image() -> None:
    event = parse(None, orjson.dumps(envelope("d", pg_source(1, "articles"), before={"id": 9, "title": "x"})))
    assert isinstance(event, debezium.RowEvent) and event.doc_id == "9"


def test_truncate() -> None:
    event = parse(None, orjson.dumps(envelope("t", pg_source(9000, "articles"))))
    assert isinstance(event, debezium.TruncateEvent)
    assert event.version == 9000 and event.mapping.collection == "articles"


def test_primary_key_change_is_delete_then_create() -> None:
    # Debezium emits: delete(old key), tombstone(old key), create(new key), all from one WAL record.
    source = pg_source(6000, "articles")
    events = [parse(*record({"id": 7}, envelope("d", source, before={"id": 7}))),
              parse(*record({"id": 7}, None)),
              parse(*record({"id": 8}, envelope("c", source, after=ROW | {"id": 8})))]
    assert [(e.op, e.doc_id) for e in events if e is not None] == [("delete", "7"), ("upsert", "8")]
    assert events[1] is None


def test_toast_placeholder_is_reported_unavailable() -> None:
    event = parse(*record({"id": 7}, envelope("u", pg_source(7000, "articles"), after=ROW | {"body": TOAST})))
    assert isinstance(event, debezium.RowEvent)
    assert event.unavailable == frozenset({"body"})


def test_unwrapped_form() -> None:
    upsert = parse(*record({"id": 7}, unwrapped(ROW, op="u", lsn=8000, table="articles")))
    assert isinstance(upsert, debezium.RowEvent)
    assert (upsert.op, upsert.version) == ("upsert", 8000)
    assert "__op" not in upsert.row and upsert.row["body"] == "B"
    deleted = parse(*record({"id": 7}, unwrapped({"id": 7}, op="d", lsn=8100, table="articles", deleted=True)))
    assert isinstance(deleted, debezium.RowEvent) and deleted.op == "delete" and deleted.version == 8100


def test_no_lsn_orders_by_ts_then_offset() -> None:
    row = {"shop": "eu", "sku": "A-1", "name": "Kettle", "description": "Boils water"}
    first = parse(*record({"shop": "eu", "sku": "A-1"}, envelope("c", mysql_source("products", 1000, 4), after=row)),
                  topic="mysql.shop.products", offset=41)
    second = parse(*record({"shop": "eu", "sku": "A-1"}, envelope("u", mysql_source("products", 1000, 9), after=row)),
                   topic="mysql.shop.products", offset=42)
    assert isinstance(first, debezium.RowEvent) and isinstance(second, debezium.RowEvent)
    assert first.doc_id == "eu|A-1"
    assert first.version == 1000 * 1_000_000 + 41 < second.version == 1000 * 1_000_000 + 42


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b'{"id": 1}', b"{nope", "invalid_json"),
        (b'{"id": 1}', b'"a string"', "invalid_event"),
        (b'{"id": 1}', orjson.dumps(envelope("x", pg_source(1, "articles"), after=ROW)), "invalid_cdc_event"),
        (None, orjson.dumps(envelope("c", pg_source(1, "articles"), after={"title": "no id"})), "invalid_cdc_event"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(key: bytes | None, value: bytes, reason: str) -> None:
    result = parse(key, value)
    assert isinstance(result, Rejected) and result.reason == reason


def test_unmapped_topic_is_rejected() -> None:
    result = parse(*record({"id": 1}, envelope("c", pg_source(1, "articles"), after=ROW)), topic="pg.public.other")
    assert isinstance(result, Rejected) and "no mapping" in result.detail
