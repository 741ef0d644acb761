"""The vector stage: embed chunks of embed jobs and write them to pgvector.

Runs off the BM25 fast path (its own topic and agent), embeds in batches, and
embeds only text whose content hash has no stored embedding for this model.
A job at or below the document's applied vector version is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.indexer.documents import DocRef
from fluxstream.indexer.embedders.base import Embedder, EmbeddingError
from fluxstream.indexer.vector_store import VectorDocument, VectorRow, VectorStore
from fluxstream.schemas.events import EmbedJob, IndexUpdate, Stages


class FailedJob(NamedTuple):
    """A job whose embedding failed permanently: dead-lettered with ``reason``."""

    job: EmbedJob
    reason: str


class VectorChange(NamedTuple):
    """A document's vectors as written: its chunks' float32 embeddings, concatenated in chunk order."""

    collection: str
    doc_id: str
    embeddings: bytes


@dataclass
class VectorOutcome:
    index_updates: list[IndexUpdate] = field(default_factory=list)
    failed: list[FailedJob] = field(default_factory=list)
    applied: int = 0
    skipped: int = 0
    embedded: int = 0
    reused: int = 0


log = get_logger("fluxstream.vector_stage")

PART_SIZE = 64  # jobs embedded, then written, at a time: the embedder works on the next part meanwhile
ChangeLog = Callable[[list[VectorChange]], Awaitable[None]]


class VectorStage:
    def __init__(self, store: VectorStore, embedder: Embedder, change_log: ChangeLog | None = None,
                 part_size: int = PART_SIZE) -> None:
        """``change_log`` is told about every write before and after its commit (see query.cache):
        a reader that sees the rows has then always been able to see a log record of them.
        ``part_size``: jobs embedded (and then written, one transaction) at a time within a batch."""
        self.part_size = part_size
        self.store = store
        self.embedder = embedder
        self.change_log = change_log

    async def apply(self, jobs: list[EmbedJob]) -> VectorOutcome:
        outcome = VectorOutcome()
        latest: dict[DocRef, EmbedJob] = {}
        for job in jobs:  # the highest version per document wins; of equal ones (redeliveries), the last
            # (Jobs of one document can reach the topic out of version order: the BM25 stage keeps two
            # batches in flight, and a later batch may write and announce first.)
            ref = DocRef(job.collection, job.doc_id)
            if ref not in latest or job.version >= latest[ref].version:
                latest[ref] = job
        outcome.skipped += len(jobs) - len(latest)
        applied_versions = await self.store.applied_versions(list(latest))
        pending = []
        for ref, job in latest.items():
            if job.version <= applied_versions.get(ref, -1):
                outcome.skipped += 1
                if job.version == applied_versions.get(ref):
                    outcome.index_updates.append(_vectors_applied(job))  # redelivery: re-announce
                continue
            pending.append(job)
        # Embed part k+1 (in the embedder's thread) while part k is written, so the embedder and
        # pgvector's HNSW insertion (a Postgres process) use the cores at the same time, not in turns.
        writing: asyncio.Task[None] | None = None
        try:
            for start in range(0, len(pending), self.part_size):
                part = pending[start : start + self.part_size]
                vectors = await self._embeddings_for(part, outcome)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(self._write(part, vectors, outcome))
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():  # embedding failed: let the write finish first
                await asyncio.wait([writing])
                if not writing.cancelled() and writing.exception() is not None:
                    log.warning("vector_write_failed_after_embedding_failure", error=repr(writing.exception()))
        return outcome

    async def _write(self, jobs: list[EmbedJob], vectors: dict[str, np.ndarray], outcome: VectorOutcome) -> None:
        """Write the jobs whose every chunk has a vector (the others failed and are in ``outcome.failed``)."""
        ready = [job for job in jobs if all(c.content_hash in vectors for c in job.chunks)]
        documents = [
            VectorDocument(job.collection, job.doc_id, job.version, job.op == "delete",
                           [VectorRow(job.collection, c.chunk_id, job.doc_id, c.chunk_no, c.text, job.metadata,
                                      c.content_hash, vectors[c.content_hash], job.version) for c in job.chunks])
            for job in ready
        ]
        changes = [VectorChange(job.collection, job.doc_id,
                                b"".join(vectors[c.content_hash].tobytes() for c in job.chunks)) for job in ready]
        if self.change_log is not None and changes:
            await self.change_log(changes)
        results = await self.store.replace_documents(documents)
        if self.change_log is not None and changes:
            await self.change_log(changes)
        for job, applied in zip(ready, results, strict=True):
            if applied:
                outcome.applied += 1
                outcome.index_updates.append(_vectors_applied(job))
            else:
                outcome.skipped += 1

    async def _embed(self, texts: list[str]) -> np.ndarray:
        metrics.EMBED_BATCH_SIZE.observe(len(texts))
        started = time.perf_counter()
        try:
            return await self.embedder.embed(texts)
        finally:
            metrics.EMBED_SECONDS.observe(time.perf_counter() - started)

    async def _embeddings_for(self, jobs: list[EmbedJob], outcome: VectorOutcome) -> dict[str, np.ndarray]:
        """Stored embeddings for known hashes, fresh ones for the rest (one batched call).

        A permanent provider error on the batch is narrowed down to the jobs that cause
        it; those land in ``outcome.failed`` (dead letters) and the rest go on.
        """
        texts = {c.content_hash: c.text for job in jobs for c in job.chunks}
        vectors = await self.store.known_embeddings(list(texts))
        outcome.reused += sum(1 for job in jobs for c in job.chunks if c.content_hash in vectors)
        missing = [h for h in texts if h not in vectors]
        if not missing:
            return vectors
        try:
            fresh = await self._embed([texts[h] for h in missing])
        except EmbeddingError as exc:
            if not exc.permanent:
                raise
            return await self._embed_per_job(jobs, vectors, outcome)
        vectors.update(zip(missing, fresh, strict=True))
        outcome.embedded += len(missing)
        return vectors

    async def _embed_per_job(
        self, jobs: list[EmbedJob], vectors: dict[str, np.ndarray], outcome: VectorOutcome
    ) -> dict[str, np.ndarray]:
        for job in jobs:
            missing = list(dict.fromkeys(c.content_hash for c in job.chunks if c.content_hash not in vectors))
            if not missing:
                continue
            by_hash = {c.content_hash: c.text for c in job.chunks}
            try:
                fresh = await self._embed([by_hash[h] for h in missing])
            except EmbeddingError as exc:
                if not exc.permanent:
                    raise
                outcome.failed.append(FailedJob(job, f"embedding failed permanently: {exc}"))
                continue
            vectors.update(zip(missing, fresh, strict=True))
            outcome.embedded += len(missing)
        return vectors


def _vectors_applied(job: EmbedJob) -> IndexUpdate:
    return IndexUpdate(
        doc_id=job.doc_id,
        collection=job.collection,
        version=job.version,
        op=job.op,
        chunk_ids=[c.chunk_id for c in job.chunks],
        stages=Stages(bm25=True, vectors=True),
        source=job.source,
    )
