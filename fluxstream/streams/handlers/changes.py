"""Native ``DocumentChange`` events (the documents topic) into the BM25 stage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from functools import partial

from fluxstream.indexer.fold import SourcedChange
from fluxstream.schemas.decoding import decode_change
from fluxstream.streams.handlers.bm25 import BM25Writer
from fluxstream.streams.pipeline import Pipeline, Record, count_consumed, position


class ChangesHandler:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.bm25 = BM25Writer(pipeline)
        self.decode = partial(decode_change, max_text_bytes=pipeline.settings.max_text_bytes)

    async def __call__(self, records: Sequence[Record]) -> None:
        valid: list[SourcedChange] = []
        sends: list[Awaitable[object]] = []
        count_consumed(records)
        for record in records:
            source = position(record)
            change = await self.pipeline.dead_letters.take(record, source, self.decode, sends)
            if change is not None:
                valid.append(SourcedChange(change, source))
        await self.bm25.index(valid, records, sends)
        await asyncio.gather(*sends)  # the broker has the batch's follow-up records
