"""Index updates (the index-updates topic) into enrichment: derived fields for chunks the BM25 stage wrote."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.indexer.chat import ChatError, ChatModel
from fluxstream.indexer.enrichment import enrich_document, llm_tags, prefixed
from fluxstream.indexer.postings import ChunkEnrichment
from fluxstream.schemas.decoding import decode
from fluxstream.schemas.events import IndexUpdate
from fluxstream.streams.pipeline import Pipeline, Record

log = get_logger("fluxstream.pipeline")


class EnrichmentHandler:
    """Enrich the chunks of documents the BM25 stage just wrote (the last update per document wins).

    Updates are the worker's own records: one that cannot be decoded is skipped, not dead-lettered (the
    cache agent reading the same topic dead-letters it once).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.chat = ChatModel.from_settings(pipeline.settings)

    async def __call__(self, records: Sequence[Record]) -> None:
        latest: dict[tuple[str, str], IndexUpdate] = {}
        for update in (decode(r.value, IndexUpdate) for r in records):
            if isinstance(update, IndexUpdate) and update.stages.bm25 and not update.stages.vectors:
                latest[(update.collection, update.doc_id)] = update
        for (index, _), update in latest.items():
            if update.op == "upsert" and update.chunk_ids:
                try:
                    await self.pipeline.until_done("enrich", partial(self._enrich, update))
                except Exception:  # never blocks the stage: this document stays unenriched
                    metrics.ENRICHED.labels("failed").inc()
                    log.exception("enrichment_failed", index=index, doc_id=update.doc_id)

    async def _enrich(self, update: IndexUpdate) -> None:
        store = self.pipeline.resources.postings
        chunks = [c for c in await store.fetch_chunks(update.collection, update.chunk_ids) if c is not None]
        if not chunks:
            return
        found = await enrich_document(store, self.pipeline.tokenizer, update.collection, chunks)
        if self.chat is not None:
            try:
                tags = await llm_tags(self.chat, "\n".join(c.text for c in chunks))
            except ChatError as exc:
                log.warning("enrichment_tags_failed", doc_id=update.doc_id, error=str(exc))
                tags = {}
            for fields in found.fields:
                fields.update(tags)
        written = await store.write_enrichment(update.collection, [
            ChunkEnrichment(c.chunk_id, c.content_hash, prefixed(f))
            for c, f in zip(found.chunks, found.fields, strict=True)])
        metrics.ENRICHED.labels("written").inc(written)
        metrics.ENRICHED.labels("stale").inc(len(chunks) - written)
