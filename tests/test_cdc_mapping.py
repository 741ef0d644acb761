"""CDC mapping: doc ids are namespaced per source table when several tables feed one collection
(issue 15, item 8), and stay plain for a collection with one source; parsed without servers."""

from __future__ import annotations

from typing import Any

import pytest

from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.events import DocumentChange
from fluxstream.streams import debezium
from tests.debezium_fixtures import envelope, pg_source, record


def source(topic: str, collection: str, **extra: Any) -> dict[str, Any]:
    return {"topics": [topic], "collection": collection, "id_columns": ["id"], "text": "{body}", **extra}


def doc_id(mapping: CdcMapping, topic: str, table: str, row_id: int) -> str:
    event = debezium.parse(topic, 0, None, *record({"id": row_id}, envelope(
        "c", pg_source(10, table), after={"id": row_id, "body": "b"})), mapping)
    assert isinstance(event, debezium.RowEvent), event
    return event.doc_id


def test_one_source_keeps_plain_ids() -> None:
    mapping = CdcMapping.from_dict({"sources": [source("pg.public.articles", "articles")]})
    [articles] = mapping.sources
    assert (articles.name, articles.id_prefix, articles.sole_source) == ("articles", "", True)
    assert doc_id(mapping, "pg.public.articles", "articles", 7) == "7"


def test_sources_sharing_a_collection_get_one_namespace_each() -> None:
    mapping = CdcMapping.from_dict({"sources": [
        source("pg.public.posts", "feed"), source("pg.public.comments", "feed"), source("pg.public.users", "people"),
    ]})
    assert doc_id(mapping, "pg.public.posts", "posts", 1) == "posts:1"
    assert doc_id(mapping, "pg.public.comments", "comments", 1) == "comments:1"
    assert doc_id(mapping, "pg.public.users", "users", 1) == "1"  # alone in its collection
    assert [s.sole_source for s in mapping.sources] == [False, False, True]


def test_namespace_is_configurable() -> None:
    mapping = CdcMapping.from_dict({"sources": [
        source("pg.public.posts", "feed", id_prefix="p-"),
        source("pg.archive.posts", "feed", name="archived_posts"),
        source("pg.public.users", "people", id_prefix="user/"),  # on for a single source too, when asked
    ]})
    assert doc_id(mapping, "pg.public.posts", "posts", 3) == "p-3"
    assert doc_id(mapping, "pg.archive.posts", "posts", 3) == "archived_posts:3"
    assert doc_id(mapping, "pg.public.users", "users", 3) == "user/3"
    assert [s.name for s in mapping.sources] == ["posts", "archived_posts", "users"]


def test_an_explicit_empty_prefix_turns_namespacing_off() -> None:
    mapping = CdcMapping.from_dict({"sources": [
        source("pg.public.posts", "feed", id_prefix=""), source("pg.public.comments", "feed", id_prefix="")]})
    assert doc_id(mapping, "pg.public.comments", "comments", 1) == "1"


@pytest.mark.parametrize("second", [
    source("pg.archive.posts", "feed"),  # same default name (the table) in one collection
    source("pg.public.comments", "feed", id_prefix="posts:"),
])
def test_sources_of_one_collection_cannot_share_a_name_or_a_prefix(second: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="share the"):
        CdcMapping.from_dict({"sources": [source("pg.public.posts", "feed"), second]})


def test_numbers_the_event_schema_cannot_carry_become_text() -> None:
    """A MySQL BIGINT UNSIGNED over 2^63-1 (or a double past that range) must not dead-letter its row."""
    mapping = CdcMapping.from_dict({"sources": [source("mysql.shop.items", "items",
                                                       metadata=["big", "small", "huge", "many"])]})
    [items] = mapping.sources
    row = {"id": 1, "body": "text", "big": 2**64 - 1, "small": -5, "huge": 1e300, "many": [1, 2**63, 2.5]}
    title, text, metadata = items.render(row)
    assert metadata == {"big": "18446744073709551615", "small": -5, "huge": "1e+300",
                        "many": [1, "9223372036854775808", 2.5]}
    change = DocumentChange(op="upsert", doc_id="1", collection="items", version=1, title=title, text=text,
                            metadata=metadata)
    assert change.metadata["big"] == "18446744073709551615"
