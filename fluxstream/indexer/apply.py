"""The BM25 stage: fold a batch of change events into document states and write them.

Versioned and idempotent: a change whose version is at or below the applied
version of its document is skipped, deletes leave a tombstone version, so
duplicates, replays and late events never regress a document. Within a batch,
several changes to one document are folded in order and only the final state is
written (one atomic script per collection) and embedded.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fluxstream.indexer.chunking import Chunker, make_chunk_id
from fluxstream.indexer.postings import (
    MAX_CHUNK_TERMS,
    ChunkState,
    DocumentState,
    PendingMark,
    PostingsStore,
    VersionConflict,
)
from fluxstream.indexer.tokenizer import Tokenizer
from fluxstream.schemas.events import (
    SCHEMA_VERSION,
    DocumentChange,
    EmbedChunk,
    EmbedJob,
    IndexUpdate,
    SourcePosition,
    Stages,
    utc_now,
)

Renderer = Callable[[Mapping[str, Any]], tuple[str, str, dict[str, Any]]]


@dataclass(frozen=True)
class SourcedChange:
    """A change plus where it was read; CDC changes also carry their source row and table.

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

    @property
    def previous_ref(self) -> tuple[str, str] | None:
        return (self.change.collection, self.previous_doc_id) if self.previous_doc_id is not None else None


@dataclass
class BatchOutcome:
    """What a batch did: events to publish and counters for metrics."""

    index_updates: list[IndexUpdate] = field(default_factory=list)
    embed_jobs: list[EmbedJob] = field(default_factory=list)
    conflicts: int = 0
    results: list[tuple[SourcedChange, bool]] = field(default_factory=list)  # (change, applied?) per document in order

    @classmethod
    def merged(cls, outcomes: list[BatchOutcome]) -> BatchOutcome:
        merged = cls()
        for outcome in outcomes:
            merged.index_updates += outcome.index_updates
            merged.embed_jobs += outcome.embed_jobs
            merged.conflicts += outcome.conflicts
            merged.results += outcome.results
        return merged

    @property
    def applied(self) -> int:
        return sum(1 for _, applied in self.results if applied)

    @property
    def skipped(self) -> int:
        return len(self.results) - self.applied


GroupApplied = Callable[[BatchOutcome], Awaitable[None]]


@dataclass(frozen=True)
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


class BM25Stage:
    """Applies change batches to Redis; pure planning plus one write per collection."""

    def __init__(self, store: PostingsStore, builder: DocumentBuilder, *, max_conflict_retries: int = 50,
                 group_size: int = 64):
        self.store = store
        self.builder = builder
        self.max_conflict_retries = max_conflict_retries
        self.group_size = group_size

    async def apply(self, batch: list[SourcedChange], on_applied: GroupApplied | None = None) -> BatchOutcome:
        """Apply ``batch`` (in partition order), in concurrent groups of whole documents.

        Groups share no document, so each is read, planned and written (one script) on its own;
        while Redis runs one group's script the next group is tokenized and planned, which keeps
        the worker from idling on the write. Each group re-reads and re-plans on its own conflict.
        ``on_applied`` gets each group's outcome as soon as it is written (the caller publishes its
        follow-up events then, while later groups are still being written).
        """

        async def apply_group(group: list[SourcedChange]) -> BatchOutcome:
            outcome = await self._apply_group(group)
            if on_applied is not None:
                await on_applied(outcome)
            return outcome

        groups = split_by_document(batch, self.group_size)
        if len(groups) == 1:
            return await apply_group(batch)
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [tasks.create_task(apply_group(group)) for group in groups]
        except ExceptionGroup as failed:  # callers classify errors (transient or not): pass the first one on
            raise failed.exceptions[0] from None
        return BatchOutcome.merged([task.result() for task in running])

    async def _apply_group(self, batch: list[SourcedChange]) -> BatchOutcome:
        conflicts = 0
        while True:
            outcome = await self._try_apply(batch)
            if outcome is not None:
                outcome.conflicts = conflicts
                return outcome
            conflicts += 1
            if conflicts > self.max_conflict_retries:
                raise VersionConflict(f"batch kept conflicting after {conflicts} attempts")
            # Another writer (a rebalance's old owner, or a rebuild filling the same generation) won the
            # race: a jittered pause keeps the two from colliding again at once.
            await asyncio.sleep(random.uniform(0, min(0.002 * conflicts, 0.05)))

    async def _try_apply(self, batch: list[SourcedChange]) -> BatchOutcome | None:
        refs = list(dict.fromkeys((s.change.collection, s.change.doc_id) for s in batch))
        # Old keys of key changes: read (their rows fill the new key's TOAST placeholders), checked, not written.
        partners = list(dict.fromkeys(p for s in batch if (p := s.previous_ref) is not None and p not in refs))
        # Read to skip what a truncate removed; the write script checks the floors again, atomically.
        before, truncated = await asyncio.gather(
            self.store.read_documents(refs + partners),
            self.store.truncations((s.change.collection, s.table) for s in batch if s.table is not None))
        current = dict(before)
        outcome = BatchOutcome()
        latest_source: dict[tuple[str, str], SourcePosition] = {}
        touched: set[tuple[str, str]] = set()
        redelivered: dict[tuple[str, str], SourcePosition] = {}
        announced: list[tuple[DocumentState, SourcePosition, DocumentState, list[str]]] = []
        # (state, source, previous state, columns whose value is unknown)
        for item in batch:
            change = item.change
            ref = (change.collection, change.doc_id)
            state = current[ref]
            if change.op == "upsert" and item.table is not None and \
                    change.version <= truncated[(change.collection, item.table)]:
                outcome.results.append((item, False))  # older than a truncate: must not come back
                continue
            if state.version is not None and change.version <= state.version:
                outcome.results.append((item, False))
                if change.version == state.version and ref not in touched:
                    # A redelivery of the applied version: re-emit its embed job and index update,
                    # because a crash may have hit between the Redis write and their delivery.
                    redelivered[ref] = item.source
                continue
            current[ref], missing = self._next_state(item, state, current)
            touched.add(ref)
            latest_source[ref] = item.source
            outcome.results.append((item, True))
            announced.append((current[ref], item.source, state, missing))
        writes = [(before[ref], current[ref]) for ref in refs if ref in touched]
        marks = pending_marks(batch, before, latest_source, redelivered)
        try:
            await self.store.write_documents(writes, updated_at=datetime.now(UTC).isoformat(), marks=marks,
                                             unchanged=[before[p] for p in partners])
        except VersionConflict:
            return None
        # Built after the write, so ``applied_at`` is when the change became searchable.
        outcome.index_updates += [_index_update(state, source, vectors=False, previous=previous, incomplete=missing)
                                  for state, source, previous, missing in announced]
        outcome.embed_jobs.extend(_embed_job(current[ref], latest_source[ref]) for ref in refs if ref in touched)
        for ref, source in redelivered.items():
            if ref not in touched:
                await self._load_chunk_texts(current[ref])
                outcome.embed_jobs.append(_embed_job(current[ref], source))
                outcome.index_updates.append(_index_update(current[ref], source, vectors=False))
        return outcome

    async def _load_chunk_texts(self, state: DocumentState) -> None:
        """Document records keep chunk term counts, not texts; texts live in the chunk records."""
        records = await self.store.fetch_chunks(state.collection, [c.chunk_id for c in state.chunks])
        for chunk, record in zip(state.chunks, records, strict=True):
            chunk.text = record.text if record is not None else ""

    def _next_state(self, item: SourcedChange, state: DocumentState,
                    current: Mapping[tuple[str, str], DocumentState]) -> tuple[DocumentState, list[str]]:
        """The document's next state, and the columns whose value it could not know (see ``_fill_source``)."""
        change = item.change
        src = item.source.model_dump()
        if change.op == "delete":  # the tombstone keeps the row: a key change's create fills from it
            return DocumentState(change.collection, change.doc_id, change.version, deleted=True, source=src,
                                 table=item.table, row=state.row if state.live else None), []
        row = item.row
        missing: list[str] = []
        if row is not None and item.unavailable and item.render is not None:
            previous, exact = _fill_source(item, state, current)
            known = {col: previous[col] for col in item.unavailable if col in previous}
            missing = sorted(item.unavailable - known.keys() if exact else item.unavailable)
            # Unknown columns stay out of the stored row, so later placeholders report them again.
            row = {**{c: v for c, v in row.items() if c not in item.unavailable}, **known}
            title, text, metadata = item.render(row)
            change = change.model_copy(update={"title": title, "text": text, "metadata": metadata})
        return DocumentState(
            collection=change.collection,
            doc_id=change.doc_id,
            version=change.version,
            title=change.title,
            metadata=dict(change.metadata),
            chunks=self.builder.chunks(change, state),
            source=src,
            row=row,
            table=item.table,
        ), missing


def _fill_source(item: SourcedChange, state: DocumentState,
                 current: Mapping[tuple[str, str], DocumentState]) -> tuple[dict[str, Any], bool]:
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


def pending_marks(batch: list[SourcedChange], before: Mapping[tuple[str, str], DocumentState],
                  jobs: Mapping[tuple[str, str], SourcePosition],
                  redelivered: Mapping[tuple[str, str], SourcePosition]) -> list[PendingMark]:
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
    lowest: dict[tuple[str, str, str, int], int] = {}
    for item in batch:  # the lowest offset per document and partition
        key = (item.change.collection, item.change.doc_id, item.source.topic, item.source.partition)
        lowest[key] = min(lowest.get(key, item.source.offset), item.source.offset)
    marks = []
    for (collection, doc_id, topic, partition), offset in lowest.items():
        ref = (collection, doc_id)
        job = jobs.get(ref) or redelivered.get(ref)
        if job is not None:
            if (job.topic, job.partition) == (topic, partition):  # a document's changes share a partition
                marks.append(PendingMark(collection, topic, partition, doc_id, min(offset, job.offset), job.offset))
            continue
        written = before[ref].source
        if written and (written.get("topic"), written.get("partition")) == (topic, partition) \
                and offset < written["offset"]:
            marks.append(PendingMark(collection, topic, partition, doc_id, offset, written["offset"],
                                     only_if=written["offset"]))
    return marks


def split_by_document(batch: list[SourcedChange], group_size: int) -> list[list[SourcedChange]]:
    """Groups of about ``group_size`` documents each; a document's changes stay together and in order."""
    refs = list(dict.fromkeys((s.change.collection, s.change.doc_id) for s in batch))
    if len(refs) <= group_size:
        return [batch]
    group_of: dict[tuple[str, str], int] = {}
    for item in batch:  # a key change's create joins its old key's group (it reads that document)
        ref = (item.change.collection, item.change.doc_id)
        if ref not in group_of:
            previous = item.previous_ref
            group_of[ref] = group_of[previous] if previous in group_of else len(group_of) // group_size
    groups: list[list[SourcedChange]] = [[] for _ in range(max(group_of.values()) + 1)]
    for item in batch:
        groups[group_of[(item.change.collection, item.change.doc_id)]].append(item)
    return groups


def _index_update(state: DocumentState, source: SourcePosition, *, vectors: bool,
                  previous: DocumentState | None = None, incomplete: list[str] | None = None) -> IndexUpdate:
    """``terms``: every index term the change removed or added, so caches can find the queries it touches;
    ``incomplete``: source columns indexed without their value (see ``_fill_source``)."""
    terms = {t for c in state.chunks for t in c.tf} | {t for c in (previous.chunks if previous else []) for t in c.tf}
    # Built from validated state, so constructed without validating again (it showed in the worker's profile).
    return IndexUpdate.trusted(
        schema_version=SCHEMA_VERSION,
        doc_id=state.doc_id,
        collection=state.collection,
        version=state.version or 0,
        op="delete" if state.deleted else "upsert",
        chunk_ids=[c.chunk_id for c in state.chunks],
        stages=Stages.trusted(bm25=True, vectors=vectors),
        source=source,
        terms=sorted(terms),
        incomplete_columns=incomplete or [],
        applied_at=utc_now(),
    )


def _embed_job(state: DocumentState, source: SourcePosition) -> EmbedJob:
    """From validated state: constructed without validating again, like ``_index_update``."""
    return EmbedJob.trusted(
        schema_version=SCHEMA_VERSION,
        op="delete" if state.deleted else "upsert",
        doc_id=state.doc_id,
        collection=state.collection,
        version=state.version or 0,
        metadata=state.metadata,
        chunks=[EmbedChunk.trusted(chunk_id=c.chunk_id, chunk_no=c.chunk_no, text=c.text, content_hash=c.content_hash)
                for c in state.chunks],
        source=source,
    )
