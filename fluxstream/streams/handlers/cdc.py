"""Debezium change events (the CDC topics) into the BM25 stage, truncations included."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from functools import partial
from typing import Any

from pydantic import ValidationError

from fluxstream.core import metrics
from fluxstream.indexer.fold import SourcedChange
from fluxstream.schemas.decoding import Rejected
from fluxstream.schemas.events import DocumentChange, SourcePosition
from fluxstream.streams import debezium
from fluxstream.streams.handlers.bm25 import BM25Writer
from fluxstream.streams.pipeline import Pipeline, Record, count_consumed, position


class CdcHandler:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.bm25 = BM25Writer(pipeline)

    async def __call__(self, records: Sequence[Record]) -> None:
        """A truncate first applies what precedes it, so it sees those documents."""
        p = self.pipeline
        pending: list[SourcedChange] = []
        sends: list[Awaitable[object]] = []
        count_consumed(records)
        for record in records:
            source = position(record)
            # Avro records' schemas come from the Schema Registry: its outages are retried like any other
            decoded = await p.until_done("schema_registry", partial(p.avro.decode, record.topic, record.key,
                                                                    record.value))
            parsed = decoded if isinstance(decoded, Rejected) else debezium.parse(
                record.topic, record.offset, source.timestamp_ms, *decoded, p.cdc, _headers(record))
            if parsed is None:
                metrics.EVENTS.labels(record.topic, "tombstone").inc()
            elif isinstance(parsed, debezium.TruncateEvent):
                await self.bm25.index(pending, records, sends)
                pending = await self._truncation(parsed, source)
                await self.bm25.index(pending, records, sends)
                pending = []
            else:
                item = parsed if isinstance(parsed, Rejected) else cdc_change(parsed, source,
                                                                              p.settings.max_text_bytes)
                if isinstance(item, Rejected):
                    sends.append(await p.reject(item, record))
                else:
                    pending.append(item)
        await self.bm25.index(pending, records, sends)
        await asyncio.gather(*sends)  # the broker has the batch's follow-up records

    async def _truncation(self, event: debezium.TruncateEvent, source: SourcePosition) -> list[SourcedChange]:
        """Deletes for every document of the truncated table in every target index, after raising the
        table's truncation floors there.

        Raising the floor first is what makes this exact with batches in flight: a write of that table
        at or below the floor is refused by the write script from then on, so a row an earlier batch
        writes late was either written before the floor rose (and is listed here) or is refused.
        """
        p = self.pipeline
        mapping = event.mapping
        collection, table = mapping.collection, mapping.name
        postings = p.resources.postings
        doc_ids: set[str] = set()
        for target in (await p.scope.targets([collection]))[collection]:
            await p.until_done("bm25", partial(postings.raise_truncation, target.index, table, event.version))
            doc_ids.update(await p.until_done("bm25", partial(postings.table_document_ids, target.index, table,
                                                              untagged=mapping.sole_source)))
        return [
            SourcedChange(DocumentChange(op="delete", doc_id=doc_id, collection=collection, version=event.version),
                          source, table=table)
            for doc_id in sorted(doc_ids)
        ]


def cdc_change(event: debezium.RowEvent, source: SourcePosition, max_text_bytes: int) -> SourcedChange | Rejected:
    """The BM25 stage's input for a parsed Debezium row event (placeholders blanked, the stage fills them)."""
    mapping = event.mapping
    title = text = ""
    metadata: dict[str, Any] = {}
    if event.row is not None:
        title, text, metadata = mapping.render({c: v for c, v in event.row.items() if c not in event.unavailable})
    try:
        change = DocumentChange(op=event.op, doc_id=event.doc_id, collection=mapping.collection,
                                version=event.version, title=title, text=text, metadata=metadata)
    except ValidationError as exc:
        return Rejected("schema_violation", str(exc)[:2000])
    size = len(title.encode()) + len(text.encode())
    if size > max_text_bytes:
        return Rejected("oversized", f"title+text is {size} bytes, limit {max_text_bytes}")
    return SourcedChange(change, source, event.row, event.unavailable, mapping.render, mapping.name,
                         event.previous_doc_id)


def _headers(record: Record) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs (Faust gives aiokafka's list, or a mapping)."""
    headers = getattr(record, "headers", None) or ()
    if isinstance(headers, Mapping):
        headers = headers.items()
    return [(k.decode() if isinstance(k, bytes) else str(k), v or b"") for k, v in headers]
