"""The BM25 stage's pure core: ``fold(batch, before) -> plan``, no I/O.

Given a batch of sourced changes (in partition order) and what the index held before it (documents
and truncation floors, as ``indexer.apply`` read them), decide which changes apply, fold several
changes of one document into its final state, and compute the plan of the write: per index (the
``IndexTarget`` each change is routed to, ``SourcedChange.index``) the
postings to remove and add, the chunk and document records, the statistics deltas, the changed
terms, what the write expects to find (compare-and-set) and the vector-pending marks; and the
follow-up events (index updates, embed jobs, redeliveries). ``indexer.postings`` executes a plan in
one atomic script per index; a conflict there means ``before`` is stale: read and fold again.

Versioned and idempotent: a change whose version is at or below the applied version of its document
is skipped, deletes leave a tombstone version, so duplicates, replays and late events never regress
a document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fluxstream.indexer.chunking import Chunker, make_chunk_id
from fluxstream.indexer.documents import (
    MAX_CHUNK_TERMS,
    ChunkState,
    DocRef,
    DocumentState,
    DocumentWrite,
    PendingMark,
    TableRef,
)
from fluxstream.indexer.generations import IndexTarget
from fluxstream.indexer.tokenizer import Tokenizer
from fluxstream.indexer.write_plan import CollectionWrite, plan_writes
from fluxstream.schemas.events import DocumentChange, SourcePosition

Renderer = Callable[[Mapping[str, Any]], tuple[str, str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class SourcedChange:
    """A change plus where it was read and the index it is written to; CDC changes also carry their
    source row and table.

    ``target``: the index generation this copy of the change goes to (the worker writes one copy per
    live generation, ``streams.scopes``); None means generation 1 of the change's collection. The
    change keeps the collection its producer sent; everything written (documents, postings, marks)
    lives under ``index``.

    ``row``/``render`` let the stage rebuild title, text and metadata after filling
    ``unavailable`` columns (Debezium's unchanged-TOAST placeholder) from the row the
    index holds, which may be the result of an earlier change in the same batch. ``table``
    names the CDC source (``TableMapping.name``): its truncation floor applies to the change. For
    a primary-key change's create, ``previous_doc_id`` names the old key's document, whose row
    (kept on its tombstone) is the source instead.
    """

    change: DocumentChange
    source: SourcePosition
    row: dict[str, Any] | None = None
    unavailable: frozenset[str] = frozenset()
    render: Renderer | None = None
    table: str | None = None
    previous_doc_id: str | None = None
    target: IndexTarget | None = None

    @property
    def index(self) -> str:
        """The physical index the change is written to."""
        return self.target.index if self.target is not None else self.change.collection

    @property
    def ref(self) -> DocRef:
        return DocRef(self.index, self.change.doc_id)

    @property
    def previous_ref(self) -> DocRef | None:
        return DocRef(self.index, self.previous_doc_id) if self.previous_doc_id is not None else None

    @property
    def table_ref(self) -> TableRef | None:
        return TableRef(self.index, self.table) if self.table is not None else None


@dataclass(frozen=True, slots=True)
class DocumentBuilder:
    """Turns a change into the chunk states the index will hold."""

    chunker: Chunker
    tokenizer: Tokenizer

    def chunks(self, change: DocumentChange, previous: DocumentState) -> list[ChunkState]:
        reusable = {c.content_hash: c for c in previous.chunks}
        states = []
        for chunk in self.chunker.split(change.title, change.text):
            old = reusable.get(chunk.content_hash)
            tf = old.tf if old is not None else dict(Counter(self.tokenizer.tokenize(chunk.text)))
            dl = sum(tf.values())
            if dl > MAX_CHUNK_TERMS:
                raise ValueError(f"chunk has {dl} terms, more than {MAX_CHUNK_TERMS}; lower chunk_size")
            states.append(
                ChunkState(make_chunk_id(change.doc_id, chunk.chunk_no), chunk.chunk_no, chunk.content_hash,
                           dl, tf, chunk.text)
            )
        return states


@dataclass(frozen=True, slots=True)
class Before:
    """What the index held when the batch was read: every document of ``documents_to_read`` (absent
    ones with version None) and the truncation floor of every table of ``tables_to_read`` (-1: none)."""

    documents: Mapping[DocRef, DocumentState]
    truncations: Mapping[TableRef, int] = field(default_factory=dict)


class ChangeResult(NamedTuple):
    """Whether one change of the batch was applied (else skipped: stale, redelivered or truncated)."""

    item: SourcedChange
    applied: bool


@dataclass(frozen=True, slots=True)
class Announcement:
    """An applied change's index update: the state it left, and what it replaced (for changed terms).

    ``incomplete``: source columns indexed without their value (see ``fill_source``)."""

    state: DocumentState
    source: SourcePosition
    previous: DocumentState | None = None
    incomplete: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ToEmbed:
    """An embed job to send: a document's final state, from the change at ``source``."""

    state: DocumentState
    source: SourcePosition


@dataclass(frozen=True, slots=True)
class FoldPlan:
    """Everything a batch writes and announces, in the order the stage emits it."""

    results: list[ChangeResult]  # per change, in batch order
    writes: list[CollectionWrite]  # per index, each one atomic script
    announcements: list[Announcement]  # per applied change, in batch order
    to_embed: list[ToEmbed]  # per written document, in first-seen order
    redelivered: list[ToEmbed]  # documents whose applied version came again: re-send job and update


def documents_to_read(batch: Sequence[SourcedChange]) -> list[DocRef]:
    """The documents ``fold`` needs in ``Before``: those changed, then the old keys of key changes."""
    refs = list(dict.fromkeys(s.ref for s in batch))
    return refs + partners_of(batch, refs)


def partners_of(batch: Sequence[SourcedChange], refs: Iterable[DocRef]) -> list[DocRef]:
    """Old keys of key changes not changed themselves: read (their rows fill the new key's TOAST
    placeholders) and checked unchanged by the write, not written."""
    changed = set(refs)
    return list(dict.fromkeys(p for s in batch if (p := s.previous_ref) is not None and p not in changed))


def tables_to_read(batch: Iterable[SourcedChange]) -> list[TableRef]:
    """The truncation floors ``fold`` needs in ``Before`` (the write script checks them again)."""
    return list(dict.fromkeys(t for s in batch if (t := s.table_ref) is not None))


def fold(batch: list[SourcedChange], before: Before, builder: DocumentBuilder) -> FoldPlan:
    """Fold ``batch`` (in partition order) onto ``before``; within the batch several changes to one
    document are folded in order and only the final state is written and embedded."""
    refs = list(dict.fromkeys(s.ref for s in batch))
    partners = partners_of(batch, refs)
    current = dict(before.documents)
    results: list[ChangeResult] = []
    latest_source: dict[DocRef, SourcePosition] = {}
    redelivered: dict[DocRef, SourcePosition] = {}
    announcements: list[Announcement] = []
    for item in batch:
        change = item.change
        ref = item.ref
        state = current[ref]
        table = item.table_ref
        if change.op == "upsert" and table is not None and change.version <= before.truncations[table]:
            results.append(ChangeResult(item, False))  # older than a truncate: must not come back
            continue
        if state.version is not None and change.version <= state.version:
            results.append(ChangeResult(item, False))
            if change.version == state.version and ref not in latest_source:
                # A redelivery of the applied version: re-emit its embed job and index update,
                # because a crash may have hit between the Redis write and their delivery.
                redelivered[ref] = item.source
            continue
        current[ref], missing = next_state(item, state, current, builder)
        latest_source[ref] = item.source
        results.append(ChangeResult(item, True))
        announcements.append(Announcement(current[ref], item.source, state, missing))
    writes = [DocumentWrite(before.documents[ref], current[ref]) for ref in refs if ref in latest_source]
    marks = pending_marks(batch, before.documents, latest_source, redelivered)
    return FoldPlan(
        results=results,
        writes=plan_writes(writes, marks, [before.documents[p] for p in partners]),
        announcements=announcements,
        to_embed=[ToEmbed(current[ref], latest_source[ref]) for ref in refs if ref in latest_source],
        redelivered=[ToEmbed(current[ref], source) for ref, source in redelivered.items()
                     if ref not in latest_source],
    )


def next_state(item: SourcedChange, state: DocumentState, current: Mapping[DocRef, DocumentState],
               builder: DocumentBuilder) -> tuple[DocumentState, list[str]]:
    """The document's next state, and the columns whose value it could not know (see ``fill_source``)."""
    change = item.change
    src = item.source.model_dump()
    if change.op == "delete":  # the tombstone keeps the row: a key change's create fills from it
        return DocumentState(item.index, change.doc_id, change.version, deleted=True, source=src,
                             table=item.table, row=state.row if state.live else None), []
    row = item.row
    missing: list[str] = []
    if row is not None and item.unavailable and item.render is not None:
        previous, exact = fill_source(item, state, current)
        known = {col: previous[col] for col in item.unavailable if col in previous}
        missing = sorted(item.unavailable - known.keys() if exact else item.unavailable)
        # Unknown columns stay out of the stored row, so later placeholders report them again.
        row = {**{c: v for c, v in row.items() if c not in item.unavailable}, **known}
        title, text, metadata = item.render(row)
        change = change.model_copy(update={"title": title, "text": text, "metadata": metadata})
    return DocumentState(
        collection=item.index,
        doc_id=change.doc_id,
        version=change.version,
        title=change.title,
        metadata=dict(change.metadata),
        chunks=builder.chunks(change, state),
        source=src,
        row=row,
        table=item.table,
    ), missing


def fill_source(item: SourcedChange, state: DocumentState,
                current: Mapping[DocRef, DocumentState]) -> tuple[dict[str, Any], bool]:
    """(row to fill TOAST placeholders from, whether its values are known to be current).

    The document's own live row is. For a key change's create (delete of the old key and create of
    the new one at one LSN) the old key's tombstone at that same position holds the row as it was
    just before the change: exact. If the old key is still live (its delete sits in a partition that
    lags), its row is the best known but may miss changes not applied yet: used, and reported.
    Anything else (no row, an older deletion, a newer version) gives no values: reported.
    """
    previous_ref = item.previous_ref
    if previous_ref is None:
        return (state.row or {}, True) if state.live else ({}, True)
    old = current[previous_ref]
    version = item.change.version
    if old.row is not None and old.version is not None:
        if old.deleted and old.version == version:
            return old.row, True
        if old.live and old.version < version:
            return old.row, False
    return {}, True


class _PartitionDoc(NamedTuple):
    index_name: str  # not ``index``: tuple has that method
    doc_id: str
    topic: str
    partition: int


def pending_marks(batch: list[SourcedChange], before: Mapping[DocRef, DocumentState],
                  jobs: Mapping[DocRef, SourcePosition],
                  redelivered: Mapping[DocRef, SourcePosition]) -> list[PendingMark]:
    """What read-your-writes must wait for (indexer.positions), written with the batch's documents.

    * A document written here: its changes in the batch, down to the lowest offset, are visible once
      the vector stage handled the job this write sends (at ``jobs[ref]``'s offset).
    * A redelivered document: its re-sent job clears its own offset.
    * A document whose changes were all skipped because the index holds a newer version: each is
      superseded by that version, visible once the job of the write that made it is handled
      (``before.source``); recorded only while that job is still pending, so a mark never waits
      for a job that was handled already. An offset above that write's needs nothing: the write's
      own entry already holds every position at or above it back.
    """
    lowest: dict[_PartitionDoc, int] = {}
    for item in batch:  # the lowest offset per document and partition
        key = _PartitionDoc(item.index, item.change.doc_id, item.source.topic, item.source.partition)
        lowest[key] = min(lowest.get(key, item.source.offset), item.source.offset)
    marks = []
    for (index, doc_id, topic, partition), offset in lowest.items():
        ref = DocRef(index, doc_id)
        job = jobs.get(ref) or redelivered.get(ref)
        if job is not None:
            if (job.topic, job.partition) == (topic, partition):  # a document's changes share a partition
                marks.append(PendingMark(index, topic, partition, doc_id, min(offset, job.offset), job.offset))
            continue
        written = before[ref].source
        if written and (written.get("topic"), written.get("partition")) == (topic, partition) \
                and offset < written["offset"]:
            marks.append(PendingMark(index, topic, partition, doc_id, offset, written["offset"],
                                     only_if=written["offset"]))
    return marks
