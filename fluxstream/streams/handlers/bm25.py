"""The BM25 stage's write, shared by the change and CDC handlers, and its record step (handled positions)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.indexer.apply import BatchOutcome, BM25Stage
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.generations import parse_index_name
from fluxstream.indexer.positions import ChangeAt
from fluxstream.schemas.decoding import Rejected
from fluxstream.streams.pipeline import Pipeline, Record, position

log = get_logger("fluxstream.pipeline")


class BM25Writer:
    """Applies decoded changes to every target index and queues what follows from them."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        settings, tokenizer = pipeline.settings, pipeline.tokenizer
        builder = DocumentBuilder(Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer), tokenizer)
        self.stage = BM25Stage(pipeline.resources.postings, builder)

    async def index(self, valid: list[SourcedChange], records: Sequence[Record],
                    sends: list[Awaitable[object]]) -> None:
        """Apply to every target index; queue dead letters, embed jobs and index updates on ``sends``."""
        p = self.pipeline
        targets = await p.until_done("bm25", lambda: p.scope.targets({s.change.collection for s in valid}))
        routed = [replace(s, target=target) for s in valid for target in targets[s.change.collection]]
        if not routed:
            return
        primary = {c: indexes[0] for c, indexes in targets.items() if indexes}

        async def announce(outcome: BatchOutcome) -> None:
            """A written group's metrics, embed jobs and index updates, sent at once (the group's write
            recorded which positions wait for these jobs: indexer.positions)."""
            applied_times: list[float | None] = []
            for item, applied in outcome.results:
                if primary.get(item.change.collection) == item.target:  # once per change, not per generation
                    metrics.EVENTS.labels(item.source.topic, "applied" if applied else "skipped").inc()
                    if applied and item.source.timestamp_ms:
                        applied_times.append(item.source.timestamp_ms / 1000)
            metrics.observe_freshness("bm25", applied_times)
            for update in outcome.index_updates:
                if update.incomplete_columns:  # indexed with what is known, never silently
                    metrics.CDC_INCOMPLETE_COLUMNS.labels(parse_index_name(update.collection)[0]).inc(
                        len(update.incomplete_columns))
                    log.warning("cdc_incomplete_columns", collection=update.collection, doc_id=update.doc_id,
                                version=update.version, columns=update.incomplete_columns)
            for job in outcome.embed_jobs:
                sends.append(await p.publish(p.settings.embed_jobs_topic, job.doc_id.encode(), job.to_json()))
            sends.extend([await p.announce(update) for update in outcome.index_updates])

        started = time.perf_counter()
        _, failures = await p.apply_isolating("bm25", routed, lambda items: self.stage.apply(items, announce))
        metrics.STAGE_SECONDS.labels("bm25").observe(time.perf_counter() - started)
        originals = {position(r): r for r in records} if failures else {}
        for item, error in dict((item.source, (item, error)) for item, error in failures).values():
            sends.append(await p.reject(Rejected("apply_failed", error), originals[item.source]))
        if failures:  # one failing after its write (publishing its embed job) leaves a pending mark
            handled = [ChangeAt(item.index, item.change.doc_id, item.source) for item, _ in failures]
            await p.until_done("bm25", lambda: p.positions.clear_documents(handled))


class RecordHandled:
    """The BM25 agents' record step: raise the stage's handled positions past a batch (read-your-writes
    tokens are checked against them); the agent makes sure every earlier batch is applied first."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, records: Sequence[Record]) -> None:
        p = self.pipeline
        if p.scope.live:
            await p.until_done("bm25", lambda: p.positions.record_handled(position(r) for r in records))

