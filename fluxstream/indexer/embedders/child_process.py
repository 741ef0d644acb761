"""Runs the local embedder in child processes, one BLAS thread each, so the worker's GIL never slows it.

Why child processes: in the indexing worker the NumPy forward pass shared one interpreter with the
event loop and Faust's consumer thread. It gives the GIL up around every BLAS call and must win it
back after, while its idle BLAS threads spin: the same texts took 26 % longer to embed inside the
worker than alone (docs/benchmarks.md).

Why one BLAS thread per child, and as many children as cores: single-threaded forward passes side by
side embed about 30 % more passages per second than one pass spread over the same cores by OpenBLAS
(155-159 against 110-129 texts/s on 2 cores), because NumPy's element-wise work between the matrix
products runs on one core while the others wait at OpenBLAS's barrier. They also lose less when
another process (PostgreSQL, the broker) takes a core. Vectors come back pickled (98 KB for 64 texts).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from fluxstream.core.lifetime import die_with_parent

from .base import EmbeddingError, as_text_list
from .minilm import LocalMiniLMEmbedder

__all__ = ["ChildProcessEmbedder", "usable_cores"]

_child_embedder: LocalMiniLMEmbedder | None = None  # set in each child by _load


def _load(batch_size: int, parent_pid: int) -> None:
    from threadpoolctl import threadpool_limits

    global _child_embedder
    die_with_parent(parent_pid)  # a SIGKILLed worker must not leave its children behind
    threadpool_limits(1)  # for the life of the child: its share of a call is one core's work
    _child_embedder = LocalMiniLMEmbedder(batch_size=batch_size)
    _child_embedder.load()


def _embed(texts: list[str]) -> np.ndarray:
    assert _child_embedder is not None, "the pool initializer loads the model"
    return _child_embedder.embed_sync(texts)


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, narrowed by a cgroup CPU quota (a container's CPU
    limit, which affinity does not show), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us``/``cfs_period_us``); None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class ChildProcessEmbedder:
    """The offline MiniLM embedder computing in ``processes`` children (started on first use, restarted
    if one dies). Each call is split into one share per child, balanced by text length.

    ``spawn``, not ``fork``: the worker has threads (Faust's consumer, the event loop's pool), and a
    forked copy of a process with threads can inherit a held lock.
    """

    def __init__(self, *, batch_size: int = 32, processes: int = 0) -> None:
        described = LocalMiniLMEmbedder(batch_size=batch_size)  # reads config.json only: no weights here
        self.model_id = described.model_id
        self.dimensions = described.dimensions
        self.batch_size = batch_size
        self.processes = processes or usable_cores()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_load, initargs=(self.batch_size, os.getpid()))
        return self._pool

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = as_text_list(texts)
        out = np.empty((len(items), self.dimensions), dtype=np.float32)
        if not items:
            return out
        shares = _shares(items, self.processes)
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, _embed, [items[i] for i in share]) for share in shares))
        except BrokenProcessPool as exc:  # a child was killed (OOM, signal): a retry starts new ones
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise EmbeddingError(f"an embedding process died: {exc}", permanent=False) from exc
        for share, vectors in zip(shares, results, strict=True):
            out[share] = vectors
        return out

    async def aclose(self) -> None:
        """Stop the children (``close_embedder``)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def _shares(texts: list[str], count: int) -> list[list[int]]:
    """Indices of ``texts`` dealt into up to ``count`` shares of similar total length (longest first, round
    robin), so the children finish together; a call of few texts is not split below 8 texts a share."""
    count = max(1, min(count, len(texts) // 8))
    by_length = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [by_length[start::count] for start in range(count)]
