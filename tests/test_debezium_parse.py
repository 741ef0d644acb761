"""Debezium shapes real Debezium cannot produce here, parsed without servers: MySQL's envelope (no LSN),
composite keys, keyless deletes and malformed input. PostgreSQL's shapes are tested on records real
Debezium emitted (tests/test_debezium_golden.py)."""

from __future__ import annotations

import orjson
import pytest

from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.decoding import Rejected
from fluxstream.streams import debezium
from tests.debezium_fixtures import envelope, mysql_source, pg_source, record

MAPPING = CdcMapping.from_dict({"sources": [
    {"topics": ["pg.public.articles"], "collection": "articles", "id_columns": ["id"], "title": "{title}",
     "text": "{summary}\n\n{body}", "metadata": ["author"]},
    {"topics": ["mysql.shop.products"], "collection": "products", "id_columns": ["shop", "sku"],
     "title": "{name}", "text": "{description}"},
]})
ROW = {"id": 7, "title": "T", "summary": "S", "body": "B", "author": "ann", "internal": "x"}


def parse(key: bytes | None, value: bytes | None, topic: str = "pg.public.articles", offset: int = 0):
    return debezium.parse(topic, offset, 1_763_800_000_999, key, value, MAPPING)


def test_delete_without_key_uses_before_image() -> None:
    event = parse(None, orjson.dumps(envelope("d", pg_source(1, "articles"), before={"id": 9, "title": "x"})))
    assert isinstance(event, debezium.RowEvent) and event.doc_id == "9"


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
