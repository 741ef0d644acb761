"""The plan of one write of the BM25 stage: what replacing documents changes in the index.

Per index (a collection generation, named by ``DocumentState.collection``; one compare-and-set
script each, executed by ``indexer.postings``): per document the postings to remove and add and the
chunk records to drop and write, what the write expects to find, the vector-pending marks, the
statistics deltas and the terms whose postings changed. Pure:
``indexer.fold`` computes plans, ``indexer.postings`` encodes and runs them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from fluxstream.indexer.documents import ChunkState, DocumentState, DocumentWrite, PendingMark


@dataclass(frozen=True, slots=True)
class DocumentDiff:
    """What replacing ``write.before`` by ``write.after`` changes in Redis."""

    write: DocumentWrite
    unposted: list[ChunkState]  # old chunks whose postings go (removed, or their text changed)
    dropped: list[str]  # ids of old chunks whose records go
    posted: list[ChunkState]  # new chunks whose postings are written and whose enrichment goes (new or changed)

    @property
    def expected_version(self) -> int | None:
        """The version the document record must still hold (None: absent)."""
        return self.write.before.version

    @property
    def floor_table(self) -> str | None:
        """The CDC table whose truncation floor the new version must stay above (upserts of CDC rows)."""
        after = self.write.after
        return after.table if after.table is not None and not after.deleted else None


@dataclass(frozen=True, slots=True)
class CollectionWrite:
    """One collection's part of a write: one compare-and-set script, all or nothing."""

    collection: str
    documents: list[DocumentDiff] = field(default_factory=list)
    marks: list[PendingMark] = field(default_factory=list)
    expected: list[DocumentState] = field(default_factory=list)  # read, not written: checked unchanged
    stats_delta: dict[str, int] = field(default_factory=dict)  # chunks/total_len/docs, nonzero only
    changed_terms: list[str] = field(default_factory=list)  # sorted: their postings changed


def plan_writes(writes: Iterable[DocumentWrite], marks: Iterable[PendingMark] = (),
                expected: Iterable[DocumentState] = ()) -> list[CollectionWrite]:
    """Group document replacements and marks by collection, with what each replacement changes.

    ``expected``: states the new ones were derived from without being written (a key change's old
    key); checked unchanged in collections that write documents.
    """
    plans: dict[str, CollectionWrite] = {}
    terms: dict[str, set[str]] = {}
    deltas: dict[str, Counter[str]] = {}
    for write in writes:
        collection = write.after.collection
        plan = plans.get(collection)
        if plan is None:
            plan = plans[collection] = CollectionWrite(collection)
        plan.documents.append(diff(write, terms.setdefault(collection, set())))
        deltas.setdefault(collection, Counter()).update(stats_delta(write))
    for mark in marks:
        plan = plans.get(mark.collection)
        if plan is None:
            plan = plans[mark.collection] = CollectionWrite(mark.collection)
        plan.marks.append(mark)
    for state in expected:
        if state.collection in deltas:
            plans[state.collection].expected.append(state)
    for collection, delta in deltas.items():  # one HINCRBY per statistic, not per document
        plans[collection].stats_delta.update((name, value) for name, value in delta.items() if value)
        plans[collection].changed_terms.extend(sorted(terms[collection]))
    return list(plans.values())


def diff(write: DocumentWrite, changed_terms: set[str]) -> DocumentDiff:
    """Which postings and chunk records replacing a document changes; adds the terms whose postings
    change to ``changed_terms``. A chunk keeps its postings while its id and text stay."""
    old = {c.chunk_id: c for c in write.before.chunks}
    new = {c.chunk_id: c for c in write.after.chunks}
    unposted, dropped, posted = [], [], []
    for chunk_id, chunk in old.items():
        replacement = new.get(chunk_id)
        if replacement is None or replacement.content_hash != chunk.content_hash:
            unposted.append(chunk)
            changed_terms.update(chunk.tf)
        if replacement is None:
            dropped.append(chunk_id)
    for chunk_id, chunk in new.items():
        previous = old.get(chunk_id)
        if previous is None or previous.content_hash != chunk.content_hash:
            posted.append(chunk)
            changed_terms.update(chunk.tf)
    return DocumentDiff(write, unposted, dropped, posted)


def stats_delta(write: DocumentWrite) -> dict[str, int]:
    """What replacing ``before`` by ``after`` adds to the collection's BM25 statistics."""
    before, after = write.before, write.after
    return {"chunks": len(after.chunks) - len(before.chunks),
            "total_len": sum(c.dl for c in after.chunks) - sum(c.dl for c in before.chunks),
            "docs": int(after.live) - int(before.live)}
