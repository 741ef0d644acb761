"""The committed JSON Schemas are exactly what the models generate, and events round-trip."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas.events import DocumentChange
from schemas.registry import ALL_MODELS, render, schema_path


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_committed_schema_is_current(name: str) -> None:
    assert schema_path(name).read_bytes() == render(name), "run: fluxstream schemas --write"


def test_document_change_roundtrip_and_rules() -> None:
    raw = {"op": "upsert", "doc_id": "d1", "collection": "c", "version": 3, "title": "T", "text": "x",
           "metadata": {"tags": ["a", "b"], "n": 1}, "occurred_at": "2026-01-02T03:04:05Z"}
    change = DocumentChange.model_validate(raw)
    assert DocumentChange.model_validate(orjson.loads(change.to_json())) == change
    schema = orjson.loads(schema_path("document-change").read_bytes())
    assert set(schema["required"]) == {"op", "doc_id", "version"}
    for bad in ({"op": "upsert", "doc_id": "", "version": 1}, {"op": "upsert", "doc_id": "x", "version": -1},
                {"op": "upsert", "doc_id": "x", "version": 1, "collection": "a b"}):
        with pytest.raises(ValidationError):
            DocumentChange.model_validate(bad)


def test_configuration_reference_is_current() -> None:
    from pathlib import Path

    from fluxstream.settings import markdown_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == markdown_reference(), "run: fluxstream config --markdown > docs/configuration.md"
