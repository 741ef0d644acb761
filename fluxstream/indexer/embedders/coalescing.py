"""Query-side embedding: concurrent calls coalesced into one batch, recent texts remembered.

The query service embeds one short text per request. Run one by one, eight concurrent requests
queue behind each other on the CPU; run as one batch, the packed forward pass costs little more
than a single query (bench/latency.py measures it). While a batch runs, new requests collect for
the next one, so an idle service adds no waiting. Repeated query texts (dashboards, retries,
the semantic cache's own lookups) come from a small LRU without touching the model.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from fluxstream.indexer.embedders.base import Embedder, as_text_list, model_input


class CoalescingEmbedder:
    def __init__(self, embedder: Embedder, *, max_batch: int = 64, remember: int = 10_000) -> None:
        self.inner = embedder
        self.model_id = embedder.model_id
        self.dimensions = embedder.dimensions
        self.max_batch = max_batch
        self.remember = remember
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._draining: asyncio.Task[None] | None = None

    def model_input(self, text: str) -> bytes:
        """The wrapped model's input for ``text`` (coalescing changes when it embeds, not what)."""
        return model_input(self.inner, text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = as_text_list(texts)
        if not items:
            return np.empty((0, self.dimensions), dtype=np.float32)
        if len(items) > self.max_batch:  # a batch request: no point in coalescing it further
            return await self.inner.embed(items)
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[np.ndarray]] = []
        for text in items:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            known = self._recent.get(text)
            if known is not None:
                self._recent.move_to_end(text)
                future.set_result(known)
            else:
                self._pending.append((text, future))
            waiting.append(future)
        if self._pending and self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return np.stack(await asyncio.gather(*waiting))

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                texts = list(dict.fromkeys(text for text, _ in batch))
                try:
                    vectors = await self.inner.embed(texts)
                except Exception as exc:  # every caller of this batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                by_text = dict(zip(texts, vectors, strict=True))
                for text, vector in by_text.items():
                    self._recent[text] = vector
                while len(self._recent) > self.remember:
                    self._recent.popitem(last=False)
                for text, future in batch:
                    if not future.done():
                        future.set_result(by_text[text])
        finally:
            self._draining = None
