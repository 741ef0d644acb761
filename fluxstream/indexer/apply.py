"""The BM25 stage: read what a batch's documents hold, fold the batch, write the plan, announce.

The decisions (which changes apply, each document's final state, which postings, records and
statistics change) are ``indexer.fold``'s, without I/O; this module does the reads, executes the
plan (one compare-and-set script per collection, ``indexer.postings``), retries on a conflict and
builds the follow-up events. Groups of whole documents are written concurrently.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fluxstream.indexer.documents import DocRef, DocumentState
from fluxstream.indexer.fold import (
    Before,
    ChangeResult,
    DocumentBuilder,
    SourcedChange,
    documents_to_read,
    fold,
    tables_to_read,
)
from fluxstream.indexer.postings import PostingsStore, VersionConflict
from fluxstream.schemas.events import (
    SCHEMA_VERSION,
    EmbedChunk,
    EmbedJob,
    IndexUpdate,
    SourcePosition,
    Stages,
    utc_now,
)


@dataclass
class BatchOutcome:
    """What a batch did: events to publish and counters for metrics."""

    index_updates: list[IndexUpdate] = field(default_factory=list)
    embed_jobs: list[EmbedJob] = field(default_factory=list)
    conflicts: int = 0
    results: list[ChangeResult] = field(default_factory=list)  # per change, in order

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
        return sum(1 for result in self.results if result.applied)

    @property
    def skipped(self) -> int:
        return len(self.results) - self.applied


GroupApplied = Callable[[BatchOutcome], Awaitable[None]]


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
        # Read to skip what a truncate removed; the write script checks the floors again, atomically.
        documents, truncations = await asyncio.gather(self.store.read_documents(documents_to_read(batch)),
                                                      self.store.truncations(tables_to_read(batch)))
        plan = fold(batch, Before(documents, truncations), self.builder)
        try:
            await self.store.write_documents(plan.writes, updated_at=datetime.now(UTC).isoformat())
        except VersionConflict:
            return None
        outcome = BatchOutcome(results=plan.results)
        # Built after the write, so ``applied_at`` is when the change became searchable.
        outcome.index_updates += [_index_update(a.state, a.source, vectors=False, previous=a.previous,
                                                incomplete=a.incomplete) for a in plan.announcements]
        outcome.embed_jobs.extend(_embed_job(e.state, e.source) for e in plan.to_embed)
        for again in plan.redelivered:
            await self._load_chunk_texts(again.state)
            outcome.embed_jobs.append(_embed_job(again.state, again.source))
            outcome.index_updates.append(_index_update(again.state, again.source, vectors=False))
        return outcome

    async def _load_chunk_texts(self, state: DocumentState) -> None:
        """Document records keep chunk term counts, not texts; texts live in the chunk records."""
        records = await self.store.fetch_chunks(state.collection, [c.chunk_id for c in state.chunks])
        for chunk, record in zip(state.chunks, records, strict=True):
            chunk.text = record.text if record is not None else ""


def split_by_document(batch: list[SourcedChange], group_size: int) -> list[list[SourcedChange]]:
    """Groups of about ``group_size`` documents each; a document's changes stay together and in order."""
    refs = list(dict.fromkeys(s.ref for s in batch))
    if len(refs) <= group_size:
        return [batch]
    group_of: dict[DocRef, int] = {}
    for item in batch:  # a key change's create joins its old key's group (it reads that document)
        ref = item.ref
        if ref not in group_of:
            previous = item.previous_ref
            group_of[ref] = group_of[previous] if previous in group_of else len(group_of) // group_size
    groups: list[list[SourcedChange]] = [[] for _ in range(max(group_of.values()) + 1)]
    for item in batch:
        groups[group_of[item.ref]].append(item)
    return groups


def _index_update(state: DocumentState, source: SourcePosition, *, vectors: bool,
                  previous: DocumentState | None = None, incomplete: list[str] | None = None) -> IndexUpdate:
    """``terms``: every index term the change removed or added, so caches can find the queries it touches;
    ``incomplete``: source columns indexed without their value (see ``indexer.fold.fill_source``).

    Wire form v1: ``collection`` carries the index name (``IndexTarget.index``: ``<collection>@g<N>``
    for a later generation), not the producer's collection; cache invalidation, enrichment and the
    vector stage read it as the index the update concerns."""
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
    """From validated state: constructed without validating again, like ``_index_update``.

    Wire form v1, as ``_index_update``: ``collection`` carries the index name the vector stage writes."""
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
