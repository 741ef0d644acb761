"""The committed JSON Schemas are exactly what the models generate, and events round-trip."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from fluxstream.schemas.events import DocumentChange, EmbedChunk, EmbedJob, IndexUpdate, SourcePosition, Stages
from fluxstream.schemas.registry import ALL_MODELS, render, schema_path


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

    from fluxstream.core.settings import markdown_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == markdown_reference(), "run: fluxstream config --markdown > docs/configuration.md"


def test_trusted_events_equal_validated_ones_and_need_every_field() -> None:
    """``trusted`` (the worker's fast path for events it builds itself) gives what validation gives."""
    source = {"topic": "documents", "partition": 2, "offset": 41, "timestamp_ms": 1_700_000_000_000}
    update = {"schema_version": 1, "doc_id": "d1", "collection": "docs@g2", "version": 7, "op": "upsert",
              "chunk_ids": ["d1#0"], "stages": {"bm25": True, "vectors": False}, "source": source,
              "terms": ["alpha", "beta"], "incomplete_columns": [], "applied_at": "2026-11-30T08:00:00+00:00"}
    validated = IndexUpdate.model_validate(update)
    trusted = IndexUpdate.trusted(**{**update, "stages": Stages.trusted(**update["stages"]),
                                     "source": SourcePosition.trusted(**source),
                                     "applied_at": validated.applied_at})
    assert trusted == validated
    assert trusted.to_json() == validated.to_json()
    assert IndexUpdate.model_validate_json(trusted.to_json()) == validated
    assert trusted.model_copy(update={"collection": "docs"}).collection == "docs"
    job = {"schema_version": 1, "op": "upsert", "doc_id": "d1", "collection": "docs", "version": 7,
           "metadata": {"lang": "en"}, "source": source,
           "chunks": [{"chunk_id": "d1#0", "chunk_no": 0, "text": "hello", "content_hash": "h"}]}
    built = EmbedJob.trusted(**{**job, "source": SourcePosition.trusted(**source),
                                "chunks": [EmbedChunk.trusted(**c) for c in job["chunks"]]})
    assert built.to_json() == EmbedJob.model_validate(job).to_json()
    with pytest.raises(TypeError, match="exactly its fields"):
        SourcePosition.trusted(topic="documents", partition=2, offset=41)  # timestamp_ms left out
    with pytest.raises(TypeError, match="exactly its fields"):
        Stages.trusted(bm25=True, vectors=False, extra=1)
