"""Embed jobs (the embed-jobs topic) into the vector stage: embeddings in pgvector, then index updates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from functools import partial

from fluxstream.core import metrics
from fluxstream.indexer.vector_stage import VectorChange, VectorStage
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.schemas.decoding import Rejected, decode
from fluxstream.schemas.events import EmbedJob
from fluxstream.streams.pipeline import Pipeline, Record, position


class EmbedJobsHandler:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        resources = pipeline.resources
        self.stage = VectorStage(resources.vectors, resources.embedder, self._log_vector_changes)
        self.decode = partial(decode, model=EmbedJob)

    async def __call__(self, records: Sequence[Record]) -> None:
        p = self.pipeline
        jobs: list[EmbedJob] = []
        sends: list[Awaitable[object]] = []
        for record in records:
            job = await p.dead_letters.take(record, position(record), self.decode, sends)
            if job is not None:
                jobs.append(job)
        accepted = await p.until_done("vectors", lambda: p.scope.accepts_vectors(j.collection for j in jobs))
        wanted = [job for job in jobs if accepted[job.collection]]
        metrics.EMBED_JOBS.labels("skipped").inc(len(jobs) - len(wanted))  # for a dropped generation
        started = time.perf_counter()
        outcomes, failures = await p.apply_isolating("vectors", wanted, self.stage.apply)
        metrics.STAGE_SECONDS.labels("vectors").observe(time.perf_counter() - started)
        failed = [(job, f"apply_failed: {error}") for job, error in failures]
        for outcome in outcomes:
            metrics.observe_freshness("vectors", [u.source.timestamp_ms / 1000 for u in outcome.index_updates
                                                  if u.source.timestamp_ms])
            metrics.EMBED_JOBS.labels("applied").inc(outcome.applied)
            metrics.EMBED_JOBS.labels("skipped").inc(outcome.skipped)
            metrics.CHUNKS_EMBEDDED.inc(outcome.embedded)
            metrics.CHUNKS_REUSED.inc(outcome.reused)
            failed += outcome.failed
            sends += [await p.announce(update) for update in outcome.index_updates]
        metrics.EMBED_JOBS.labels("failed").inc(len(failed))
        for job, reason in failed:
            sends.append(await p.dead_letters.reject(Rejected("embedding_failed", reason), job.source,
                                                     job.doc_id.encode(), job.to_json()))
        await asyncio.gather(*sends)
        await p.until_done("vectors", lambda: p.positions.clear_pending(jobs))

    async def _log_vector_changes(self, changes: list[VectorChange]) -> None:
        """The vector stage's change log, which cache entries are validated against."""
        resources = self.pipeline.resources
        await VectorLog(resources.redis).record(changes)
        await resources.postings.bump_seq({change.collection for change in changes})
