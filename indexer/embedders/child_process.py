"""Runs the local embedder in a child process, so its forward passes never wait for the worker's GIL.

Why: in the indexing worker the NumPy forward pass shares one interpreter with the event loop and
Faust's consumer thread. It gives the GIL up around every BLAS call and must win it back after, while
its idle BLAS threads spin. Measured in the full-path benchmark: the same texts took 26 % longer to
embed inside the worker than alone, at 0.2 cores more (docs/benchmarks.md). A child process with its
own interpreter removes the contention; vectors come back pickled (98 KB for 64 texts, well under
a millisecond).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .base import EmbeddingError, as_text_list
from .minilm import LocalMiniLMEmbedder

__all__ = ["ChildProcessEmbedder"]

_child_embedder: LocalMiniLMEmbedder | None = None  # set in the child by _load


def _load(batch_size: int) -> None:
    global _child_embedder
    _child_embedder = LocalMiniLMEmbedder(batch_size=batch_size)
    _child_embedder.load()


def _embed(texts: list[str]) -> np.ndarray:
    assert _child_embedder is not None, "the pool initializer loads the model"
    return _child_embedder.embed_sync(texts)


class ChildProcessEmbedder:
    """The offline MiniLM embedder, computing in one child process (started on first use, restarted if it dies).

    ``spawn``, not ``fork``: the worker has threads (Faust's consumer, the embedder's pool), and a
    forked copy of a process with threads can inherit a held lock.
    """

    def __init__(self, *, batch_size: int = 32) -> None:
        described = LocalMiniLMEmbedder(batch_size=batch_size)  # reads config.json only: no weights here
        self.model_id = described.model_id
        self.dimensions = described.dimensions
        self.batch_size = batch_size
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_load, initargs=(self.batch_size,))
        return self._pool

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = as_text_list(texts)
        if not items:
            return np.empty((0, self.dimensions), dtype=np.float32)
        pool = self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _embed, items)
        except BrokenProcessPool as exc:  # killed (OOM, signal): a retry starts a new one
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise EmbeddingError(f"the embedding process died: {exc}", permanent=False) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
