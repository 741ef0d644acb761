"""The vector stage against real PostgreSQL + pgvector with the real local embedder.

The embedder is wrapped only to record which texts it was asked to embed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from fluxstream.core.settings import Settings
from fluxstream.indexer.chunking import content_hash
from fluxstream.indexer.embedders.base import Embedder, EmbeddingError
from fluxstream.indexer.embedders.factory import embedder_from_settings
from fluxstream.indexer.vector_stage import VectorStage
from fluxstream.indexer.vector_store import VectorDocument, VectorStore
from fluxstream.schemas.events import EmbedChunk, EmbedJob, SourcePosition


class RecordingEmbedder:
    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return await self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder(stack: Settings) -> RecordingEmbedder:
    return RecordingEmbedder(embedder_from_settings(stack))


@pytest.fixture
async def vector_store(stack: Settings, embedder: RecordingEmbedder) -> AsyncIterator[VectorStore]:
    store = await VectorStore.connect(stack.database_url, dimensions=embedder.dimensions,
                                      model_id=embedder.model_id)
    yield store
    await store.close()


def job(collection: str, doc_id: str, version: int, texts: list[str], op: str = "upsert",
        metadata: dict | None = None) -> EmbedJob:
    return EmbedJob(op=op, doc_id=doc_id, collection=collection, version=version, metadata=metadata or {},
                    chunks=[EmbedChunk(chunk_id=f"{doc_id}#{i}", chunk_no=i, text=t, content_hash=content_hash(t))
                            for i, t in enumerate(texts)],
                    source=SourcePosition(topic="t", partition=0, offset=version))


async def test_unchanged_text_is_not_re_embedded(vector_store: VectorStore, embedder: RecordingEmbedder,
                                                 collection: str) -> None:
    stage = VectorStage(vector_store, embedder)
    embedder.calls.clear()
    first = await stage.apply([job(collection, "d", 1, ["the first chunk", "the second chunk"])])
    assert first.applied == 1 and first.embedded == 2
    # Edit only the second chunk and the metadata: one text embedded, one reused.
    second = await stage.apply([job(collection, "d", 2, ["the first chunk", "an edited chunk"], metadata={"x": 1})])
    assert second.embedded == 1 and second.reused == 1
    assert embedder.calls[-1] == ["an edited chunk"]
    # Another document with already-known text embeds nothing at all.
    calls_before = len(embedder.calls)
    third = await stage.apply([job(collection, "e", 1, ["the first chunk"])])
    assert third.embedded == 0 and len(embedder.calls) == calls_before
    assert await vector_store.document_hashes(collection, "d") == {
        "d#0": content_hash("the first chunk"), "d#1": content_hash("an edited chunk")}
    hits = await vector_store.search(collection, (await embedder.inner.embed(["edited"]))[0], limit=5,
                                     filters={"x": 1})
    assert {h.chunk_id for h in hits} == {"d#0", "d#1"}


async def test_versions_skip_stale_jobs_and_deletes_remove_rows(vector_store: VectorStore,
                                                                embedder: RecordingEmbedder, collection: str) -> None:
    stage = VectorStage(vector_store, embedder)
    await stage.apply([job(collection, "d", 5, ["five"])])
    stale = await stage.apply([job(collection, "d", 4, ["four"])])
    assert stale.applied == 0 and stale.skipped == 1
    assert await vector_store.document_hashes(collection, "d") == {"d#0": content_hash("five")}
    # In one batch, only the highest version per document is applied, whatever the order of the jobs
    # (the BM25 stage's overlapping batches can announce a later version first).
    reordered = await stage.apply([job(collection, "d", 7, ["seven"]), job(collection, "d", 6, ["six"])])
    assert reordered.applied == 1 and reordered.skipped == 1
    assert await vector_store.document_hashes(collection, "d") == {"d#0": content_hash("seven")}
    both = await stage.apply([job(collection, "d", 8, ["eight"]), job(collection, "d", 9, [], op="delete")])
    assert both.applied == 1 and both.skipped == 1
    assert await vector_store.document_hashes(collection, "d") == {}
    late = await stage.apply([job(collection, "d", 8, ["eight"])])
    assert late.applied == 0  # the tombstone version keeps a late upsert out
    assert await vector_store.applied_versions([(collection, "d")]) == {(collection, "d"): 9}


async def test_a_write_of_many_documents_keeps_each_ones_outcome(
        vector_store: VectorStore,
        embedder: RecordingEmbedder, collection: str) -> None:
    """One set-based write: per document its own version check, and only its own stale chunks removed."""
    stage = VectorStage(vector_store, embedder)
    await stage.apply([job(collection, "long", 1, ["one", "two", "three"]), job(collection, "kept", 3, ["kept"])])
    mixed = await stage.apply([job(collection, "long", 2, ["one"]), job(collection, "kept", 2, ["older"]),
                               job(collection, "new", 1, ["new"])])
    assert (mixed.applied, mixed.skipped) == (2, 1)
    assert await vector_store.document_hashes(collection, "long") == {"long#0": content_hash("one")}
    assert await vector_store.document_hashes(collection, "kept") == {"kept#0": content_hash("kept")}
    assert await vector_store.document_hashes(collection, "new") == {"new#0": content_hash("new")}
    with pytest.raises(ValueError, match="once"):
        await vector_store.replace_documents([VectorDocument(collection, "x", 1, True, []),
                                              VectorDocument(collection, "x", 2, True, [])])


async def test_stored_vectors_are_the_embedders_bit_for_bit(vector_store: VectorStore,
                                                              embedder: RecordingEmbedder, collection: str) -> None:
    """Vectors travel in pgvector's binary form: nothing is lost on the way to PostgreSQL."""
    texts = ["binary vectors", "a second chunk of text"]
    await VectorStage(vector_store, embedder).apply([job(collection, "v", 1, texts)])
    stored = await vector_store.embeddings_of(collection, ["v#0", "v#1"])
    expected = await embedder.inner.embed(texts)
    assert stored["v#0"].dtype == np.float32
    assert np.array_equal(stored["v#0"], expected[0]) and np.array_equal(stored["v#1"], expected[1])


class PoisonEmbedder(RecordingEmbedder):
    """Refuses texts containing POISON the way a provider refuses bad input (HTTP 400)."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("POISON" in t for t in texts):
            raise EmbeddingError("input rejected by provider", permanent=True, status_code=400)
        return await super().embed(texts)


async def test_permanently_failing_document_is_isolated(vector_store: VectorStore, embedder: RecordingEmbedder,
                                                        collection: str) -> None:
    stage = VectorStage(vector_store, PoisonEmbedder(embedder.inner))
    outcome = await stage.apply([job(collection, "ok1", 1, ["fine text one"]),
                                 job(collection, "bad", 1, ["this is POISON"]),
                                 job(collection, "ok2", 1, ["fine text two"])])
    assert [j.doc_id for j, _ in outcome.failed] == ["bad"]
    assert "permanently" in outcome.failed[0][1]
    assert outcome.applied == 2
    assert await vector_store.applied_versions([(collection, d) for d in ("ok1", "bad", "ok2")]) == {
        (collection, "ok1"): 1, (collection, "ok2"): 1}


async def test_a_batch_in_parts_writes_every_part(vector_store: VectorStore, embedder: RecordingEmbedder,
                                                  collection: str) -> None:
    """Parts are embedded while the previous part is written; the result equals one whole-batch apply."""
    stage = VectorStage(vector_store, PoisonEmbedder(embedder.inner), part_size=2)
    jobs = [job(collection, f"p{i}", 1, [f"part text number {i}", f"second chunk {i}"]) for i in range(7)]
    jobs[5] = job(collection, "p5", 1, ["a POISON chunk"])  # fails alone, in the third part
    outcome = await stage.apply(jobs)
    assert outcome.applied == 6 and [j.doc_id for j, _ in outcome.failed] == ["p5"]
    assert sorted(u.doc_id for u in outcome.index_updates) == [f"p{i}" for i in range(7) if i != 5]
    stored = await vector_store.applied_versions([(collection, f"p{i}") for i in range(7)])
    assert stored == {(collection, f"p{i}"): 1 for i in range(7) if i != 5}
    for i in (0, 6):
        assert await vector_store.document_hashes(collection, f"p{i}") == {
            f"p{i}#0": content_hash(f"part text number {i}"), f"p{i}#1": content_hash(f"second chunk {i}")}
