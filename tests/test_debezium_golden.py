"""Records real Debezium 3.6.3 emitted (tests/data/debezium), parsed and applied: TOAST placeholders in
every shape it uses, key changes of TOASTed rows, logical types with and without schemas."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from fluxstream.core.settings import Settings
from fluxstream.indexer.apply import BatchOutcome, BM25Stage, split_by_document
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.wiring import build_tokenizer
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.events import DocumentChange, SourcePosition
from fluxstream.streams import debezium
from fluxstream.streams.cdc_engine import ConnectRecord
from fluxstream.streams.handlers.cdc import cdc_change
from tests.debezium_records import TOASTED, VARIANTS, mapping, recorded

MAPPING = mapping()


def parse(record: ConnectRecord, cdc: CdcMapping = MAPPING, offset: int = 0) -> debezium.Parsed:
    return debezium.parse(record.topic, offset, None, record.key, record.value, cdc, record.headers)


def after(record: ConnectRecord) -> dict[str, Any]:
    """The row image of a recorded create/update (the unwrap SMT's value is the row itself)."""
    value = orjson.loads(record.value or b"null")
    value = value.get("payload", value)
    return value["after"] if "op" in value else value


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_recorded_record_parses(variant: str) -> None:
    steps = recorded(variant)
    assert len(steps) == 14 - (variant == "postgres-unwrap")  # the SMT drops truncates
    for step, records in steps.items():
        for record in records:
            parsed = parse(record)
            assert not isinstance(parsed, debezium.Rejected), (step, parsed)
            if record.value is None:
                assert parsed is None  # tombstone
    snapshot = [parse(r) for r in steps["snapshot"]]
    assert [(e.op, e.doc_id) for e in snapshot] == [("upsert", "1"), ("upsert", "2")]  # type: ignore[union-attr]
    if "truncate" in steps:
        assert isinstance(parse(steps["truncate"][0]), debezium.TruncateEvent)
    delete, tombstone = steps["delete"]
    assert tombstone.value is None and tombstone.key == delete.key
    assert (parse(delete).op, parse(delete).doc_id) == ("delete", "2")  # type: ignore[union-attr]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unchanged_toast_placeholder_in_every_shape(variant: str) -> None:
    """text, text[], int[], json, jsonb, hstore (json and map modes), bytea (base64 and hex modes)."""
    record = recorded(variant)["update_title_toasted"][0]
    event = parse(record)
    assert isinstance(event, debezium.RowEvent)
    assert event.unavailable == TOASTED
    shapes = after(record)
    assert shapes["tags"] == [debezium.UNAVAILABLE]  # issue 15 item 5: a one-item list
    assert shapes["scores"] == list(debezium.UNAVAILABLE.encode())  # int[]: the placeholder's bytes as numbers
    assert all(debezium.is_unavailable(shapes[c]) for c in TOASTED)
    # columns that were not TOASTed are real values
    assert not any(debezium.is_unavailable(v) for c, v in shapes.items() if c not in TOASTED)
    expected_blob = {"postgres-settings": debezium.UNAVAILABLE}.get(
        variant, base64.b64encode(debezium.UNAVAILABLE.encode()).decode())
    assert shapes["blob"] == expected_blob


def test_placeholder_shapes_are_not_confused_with_values() -> None:
    for value in ("", "__debezium", ["__debezium_unavailable_value", "x"], [95, 95], {"a": "b"}, 0, True, None,
                  1.5, ["a"], "X19kZWJleml1bQ=="):
        assert not debezium.is_unavailable(value), value


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_change_is_delete_tombstone_create_at_one_lsn(variant: str) -> None:
    delete, tombstone, create = recorded(variant)["pk_change_toasted"]
    d, c = parse(delete), parse(create)
    assert parse(tombstone) is None
    assert isinstance(d, debezium.RowEvent) and isinstance(c, debezium.RowEvent)
    assert (d.op, d.doc_id, c.op, c.doc_id) == ("delete", "3", "upsert", "30")
    assert d.version == c.version  # same LSN (and txId)
    assert c.previous_doc_id == "3"  # from Kafka Connect's __debezium.oldkey header
    assert c.unavailable == TOASTED  # REPLICA IDENTITY DEFAULT: no values for unchanged TOAST columns
    full = parse(recorded(variant)["full_pk_change_toasted"][2])
    assert isinstance(full, debezium.RowEvent) and full.unavailable == frozenset()  # REPLICA IDENTITY FULL
    assert full.row is not None and len(full.row["tags"]) == 700
    plain = parse(recorded(variant)["pk_change"][2])
    assert isinstance(plain, debezium.RowEvent) and plain.previous_doc_id == "4" and not plain.unavailable


def test_without_the_old_key_header_the_create_is_unlinked() -> None:
    create = recorded()["pk_change_toasted"][2]
    event = parse(ConnectRecord(create.topic, create.key, create.value))
    assert isinstance(event, debezium.RowEvent) and event.previous_doc_id is None


def test_multi_row_transaction_keeps_row_order_and_positions() -> None:
    records = recorded()["transaction"]
    events = [parse(r) for r in records]
    rows = [e for e in events if e is not None]
    assert [(e.op, e.doc_id) for e in rows] == [  # type: ignore[union-attr]
        ("upsert", "5"), ("upsert", "6"), ("upsert", "1"), ("delete", "40")]
    versions = [e.version for e in rows]  # type: ignore[union-attr]
    assert versions == sorted(versions) and len(set(versions)) == 4  # one LSN per row
    assert len({orjson.loads(r.value)["source"]["txId"] for r in records if r.value}) == 1


def test_logical_types_without_schemas_arrive_raw() -> None:
    row = after(recorded()["insert"][0])
    assert row["price"] == "BNI=" and row["amount"] == {"scale": 6, "value": "cEiGDa+7"}  # decimals as bytes
    assert row["updated"] == 1704164645654321 and row["day"] == 19724  # epoch microseconds, days
    assert row["created"] == "2024-01-02T03:04:05.123456Z" and row["data"] == '{"a": [1, 2]}'  # strings
    event = parse(recorded()["insert"][0])
    assert isinstance(event, debezium.RowEvent) and event.row is not None and event.row["price"] == "BNI="


def test_logical_types_are_converted_with_schemas() -> None:
    event = parse(recorded("postgres-schemas")["insert"][0])
    assert isinstance(event, debezium.RowEvent) and event.row is not None
    row = event.row
    assert (row["price"], row["amount"]) == ("12.34", "123456789.000123")
    assert (row["updated"], row["day"]) == ("2024-01-02T03:04:05.654321Z", "2024-01-02")
    assert row["created"] == "2024-01-02T03:04:05.123456Z" and row["data"] == '{"a": [1, 2]}'
    later = parse(recorded("postgres-schemas")["update_values"][0])
    assert isinstance(later, debezium.RowEvent) and later.row is not None
    assert (later.row["price"], later.row["amount"], later.row["day"]) == ("99.99", "-0.5", "2025-02-03")
    assert later.row["updated"] == "2025-02-03T04:05:06Z"


def test_connector_settings_make_types_readable_without_schemas() -> None:
    row = after(recorded("postgres-settings")["insert"][0])
    assert (row["price"], row["amount"]) == ("12.34", "123456789.000123")  # decimal.handling.mode=string
    assert row["updated"] == 1704164645654  # time.precision.mode=connect: epoch milliseconds
    assert row["attrs"] == {"k": "v"}  # hstore.handling.mode=map: an object...
    event = parse(recorded("postgres-settings")["insert"][0])
    assert isinstance(event, debezium.RowEvent) and event.row is not None
    assert event.mapping.render(event.row)[2]["attrs"] == '{"k":"v"}'  # ...kept as its JSON text


# --- applied through the BM25 stage (real Redis) ---------------------------------------------------------

def _changes(records: tuple[ConnectRecord, ...], cdc: CdcMapping, start: int = 0) -> list[SourcedChange]:
    out = []
    for n, record in enumerate(records, start=start):
        event = parse(record, cdc, n)
        if isinstance(event, debezium.RowEvent):
            item = cdc_change(event, SourcePosition(topic=record.topic, partition=0, offset=n), 10_000_000)
            assert isinstance(item, SourcedChange)
            out.append(item)
    return out


async def _apply(stage: BM25Stage, cdc: CdcMapping, *batches: tuple[ConnectRecord, ...]) -> list[BatchOutcome]:
    return [await stage.apply(_changes(batch, cdc, 100 * n)) for n, batch in enumerate(batches)]


@pytest.fixture
def stage(stack: Settings, redis_client: aioredis.Redis) -> BM25Stage:
    tokenizer = build_tokenizer(stack)
    return BM25Stage(PostingsStore(redis_client), DocumentBuilder(Chunker(tokenizer=tokenizer), tokenizer))


def _original() -> dict[str, Any]:
    return after(recorded()["insert_toasted"][0])


async def test_toasted_array_keeps_its_values_through_an_update(stage: BM25Stage, collection: str) -> None:
    cdc = mapping(collection)
    steps = recorded()
    await _apply(stage, cdc, steps["insert_toasted"], steps["update_title_toasted"])
    doc = await stage.store.get_document(collection, "3")
    original = _original()
    assert doc.title == "Gamma v2"
    assert doc.metadata["tags"] == original["tags"] and len(doc.metadata["tags"]) == 700  # not the placeholder
    assert doc.metadata["scores"] == original["scores"]
    assert doc.metadata["blob"] == original["blob"] and doc.metadata["attrs"] == original["attrs"]
    assert "debezium" not in orjson.dumps(doc.metadata).decode()
    first_word = original["body"].split()[0]
    assert any(first_word in c.tf for c in doc.chunks)


@pytest.mark.parametrize("batching", ["one-by-one", "one-batch"])
async def test_key_change_of_a_toasted_row_carries_the_old_values(stage: BM25Stage, collection: str,
                                                                  batching: str) -> None:
    """Issue 15 item 6: delete(3) + tombstone + create(30, placeholders) at one LSN."""
    cdc = mapping(collection)
    steps = recorded()
    records = steps["insert_toasted"] + steps["update_title_toasted"] + steps["pk_change_toasted"]
    batches = [(r,) for r in records] if batching == "one-by-one" else [records]
    outcomes = await _apply(stage, cdc, *batches)
    new, old = await stage.store.get_document(collection, "30"), await stage.store.get_document(collection, "3")
    assert old.deleted and new.live
    original = _original()
    assert new.title == "Gamma v2" and new.metadata["tags"] == original["tags"]
    assert sum(c.dl for c in new.chunks) >= 600  # the whole body, not the title alone
    update = [u for o in outcomes for u in o.index_updates if u.doc_id == "30"][-1]
    assert update.incomplete_columns == []


async def test_key_change_before_the_old_key_was_indexed_is_reported(stage: BM25Stage, collection: str) -> None:
    """No stored row for the old key: index what is known and flag the missing columns, never silently."""
    cdc = mapping(collection)
    outcome, = await _apply(stage, cdc, recorded()["pk_change_toasted"])
    new = await stage.store.get_document(collection, "30")
    assert new.live and new.title == "Gamma v2" and "tags" not in new.metadata
    update = next(u for u in outcome.index_updates if u.doc_id == "30")
    assert update.incomplete_columns == sorted(TOASTED)


async def test_key_change_overtaking_the_old_keys_delete_is_flagged(stage: BM25Stage, collection: str) -> None:
    """The create applied while the old key is still live (its delete lags in another partition): filled from
    the old key's latest indexed row, but reported, as that row may miss changes not applied yet."""
    cdc = mapping(collection)
    steps = recorded()
    delete, _, create = steps["pk_change_toasted"]
    outcomes = await _apply(stage, cdc, steps["insert_toasted"] + steps["update_title_toasted"], (create,), (delete,))
    new = await stage.store.get_document(collection, "30")
    assert new.metadata["tags"] == _original()["tags"]
    assert outcomes[1].index_updates[0].incomplete_columns == sorted(TOASTED)
    assert (await stage.store.get_document(collection, "3")).deleted


async def test_replica_identity_full_key_change_is_complete(stage: BM25Stage, collection: str) -> None:
    cdc = mapping("unused", full_collection=collection)
    steps = recorded()
    outcome, = await _apply(stage, cdc, steps["full_pk_change_toasted"])  # nothing of id 3 indexed before
    new = await stage.store.get_document(collection, "30")
    assert new.metadata["tags"] == _original()["tags"]
    assert outcome.index_updates[-1].incomplete_columns == []


def test_a_key_changes_create_is_applied_in_its_old_keys_group() -> None:
    """Concurrent groups share no document: the create reads the old key's document, so it joins that group."""
    def item(doc_id: str, previous: str | None = None) -> SourcedChange:
        change = DocumentChange(op="upsert", doc_id=doc_id, collection="c", version=1)
        return SourcedChange(change, SourcePosition(topic="t", partition=0, offset=0), previous_doc_id=previous)

    groups = split_by_document([item("a"), item("b"), item("c"), item("d"), item("x", previous="a")], 2)
    [with_a] = [[i.change.doc_id for i in g] for g in groups if any(i.change.doc_id == "a" for i in g)]
    assert "x" in with_a
