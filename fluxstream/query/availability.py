"""Whether PostgreSQL answered lately, so searches skip it at once while it is down.

While it is unreachable, hybrid searches answer from BM25 alone and vector searches fail with
``StoreUnavailable`` (answered 503, see ``query.errors``) instead of each waiting for the pool's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from psycopg import OperationalError

from fluxstream.core.logging import get_logger
from fluxstream.indexer.vector_store import VectorStore

T = TypeVar("T")
POSTGRES_DOWN = OperationalError  # psycopg wraps socket errors in it; PoolTimeout is one too

log = get_logger("fluxstream.search")


class StoreUnavailable(Exception):
    """A backing store the request needs cannot be reached (the service answers 503)."""

    def __init__(self, store: str) -> None:
        super().__init__(f"{store} is unavailable")
        self.store = store


class Availability:
    """Whether PostgreSQL answered lately.

    After a connection failure, searches skip it at once instead of each waiting for the pool's
    timeout, while one background probe resets the pool and pings every ``interval`` seconds
    until it answers again.
    """

    def __init__(self, vectors: VectorStore, interval: float = 0.5) -> None:
        self.vectors = vectors
        self.interval = interval
        self.up = True
        self._probe: asyncio.Task[None] | None = None

    async def run(self, call: Awaitable[T]) -> T:
        """``call``'s result; ``StoreUnavailable`` at once while PostgreSQL is known down, or when ``call``
        finds it down (which starts the probe)."""
        if not self.up:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("postgres")
        try:
            return await call
        except POSTGRES_DOWN as exc:
            self.failed(exc)
            raise StoreUnavailable("postgres") from exc

    def failed(self, exc: BaseException) -> None:
        if self.up:
            log.warning("postgres_unavailable", error=repr(exc))
        self.up = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._until_up(), name="postgres-probe")

    async def _until_up(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.vectors.reset()
                await self.vectors.ping()
            except Exception:  # still down (any failure: the probe must never die)
                continue
            self.up = True
            log.info("postgres_available")
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
