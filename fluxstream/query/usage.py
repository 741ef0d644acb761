"""Request log, feedback and statistics, kept in PostgreSQL (durable, queryable with SQL).

Every search and answer is logged (request id, collection, kind, mode, latency, results); rows
are buffered and written about once a second so logging never sits on the request path.
Feedback is written before ``POST /v1/feedback`` answers, so an acknowledged rating is never
lost. ``stats`` aggregates per collection over a time window.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from fluxstream.core.logging import get_logger
from fluxstream.schemas.api import FeedbackRequest

log = get_logger("fluxstream.usage")

_SCHEMA_LOCK = 0x666C7579
_DDL = [
    """CREATE TABLE IF NOT EXISTS fluxstream_requests (
        request_id text NOT NULL, collection text NOT NULL, kind text NOT NULL, mode text NOT NULL,
        latency_ms real NOT NULL, retrieved integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS fluxstream_requests_time ON fluxstream_requests (created_at)",
    "CREATE INDEX IF NOT EXISTS fluxstream_requests_id ON fluxstream_requests (request_id)",
    """CREATE TABLE IF NOT EXISTS fluxstream_feedback (
        id bigserial PRIMARY KEY, request_id text NOT NULL, collection text, score smallint NOT NULL,
        comment text NOT NULL DEFAULT '', created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS fluxstream_feedback_time ON fluxstream_feedback (created_at)",
]
_INSERT_REQUEST = ("INSERT INTO fluxstream_requests (request_id, collection, kind, mode, latency_ms, retrieved) "
                   "VALUES (%s, %s, %s, %s, %s, %s)")


class UsageStore:
    def __init__(self, pool: AsyncConnectionPool, flush_every: float = 1.0) -> None:
        self.pool = pool
        self.flush_every = flush_every
        self._buffer: list[tuple[str, str, str, str, float, int]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _DDL:
                await conn.execute(statement)
        self._flusher = asyncio.create_task(self._flush_loop(), name="usage-log")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    def record(self, request_id: str, collection: str, kind: str, mode: str, latency_ms: float,
               retrieved: int) -> None:
        self._buffer.append((request_id, collection, kind, mode, latency_ms, retrieved))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush()
            except Exception as exc:  # PostgreSQL down: keep the rows (bounded) and try again
                log.warning("usage_flush_failed", error=repr(exc), buffered=len(self._buffer))
                del self._buffer[:-100_000]

    async def flush(self) -> None:
        """Write the buffered rows; on PostgreSQL trouble keep them for the next try. A row PostgreSQL
        cannot hold (a NUL in a text) is dropped alone, logged: it would fail every retry of the batch."""
        rows, self._buffer = self._buffer, []
        if not rows:
            return
        try:
            async with self.pool.connection() as conn:
                try:
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.executemany(_INSERT_REQUEST, rows)
                except psycopg.DataError:
                    for row in rows:
                        try:
                            async with conn.transaction():
                                await conn.execute(_INSERT_REQUEST, row)
                        except psycopg.DataError as exc:
                            log.warning("usage_row_dropped", error=str(exc), request_id=repr(row[0])[:80])
        except Exception:
            self._buffer[:0] = rows
            raise

    async def feedback(self, item: FeedbackRequest) -> dict[str, Any]:
        """Store a rating durably; the collection is taken from the request log when not given."""
        await self.flush()
        async with self.pool.connection() as conn:
            collection = item.collection
            if collection is None:
                cur = await conn.execute("SELECT collection FROM fluxstream_requests WHERE request_id = %s LIMIT 1",
                                         (item.request_id,))
                row = await cur.fetchone()
                collection = row[0] if row else None
            cur = await conn.execute(
                "INSERT INTO fluxstream_feedback (request_id, collection, score, comment) VALUES (%s, %s, %s, %s) "
                "RETURNING id", (item.request_id, collection, item.score, item.comment))
            inserted = await cur.fetchone()
            assert inserted is not None  # INSERT ... RETURNING yields its row
            (feedback_id,) = inserted
        return {"id": feedback_id, "request_id": item.request_id, "collection": collection}

    async def stats(self, hours: float) -> list[dict[str, Any]]:
        """Per collection over the last ``hours``: queries, latency percentiles, results, feedback."""
        await self.flush()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """WITH r AS (
                       SELECT collection, count(*) AS queries,
                              count(*) FILTER (WHERE kind = 'answer') AS answers,
                              percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                              percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
                              percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99,
                              avg(retrieved) AS retrieved
                       FROM fluxstream_requests WHERE created_at > now() - make_interval(secs => %s)
                       GROUP BY collection),
                   f AS (
                       SELECT collection, count(*) AS feedback, count(*) FILTER (WHERE score > 0) AS positive,
                              count(*) FILTER (WHERE score < 0) AS negative
                       FROM fluxstream_feedback WHERE created_at > now() - make_interval(secs => %s)
                       GROUP BY collection)
                   SELECT coalesce(r.collection, f.collection), coalesce(r.queries, 0), coalesce(r.answers, 0),
                          r.p50, r.p95, r.p99, r.retrieved, coalesce(f.feedback, 0), coalesce(f.positive, 0),
                          coalesce(f.negative, 0)
                   FROM r FULL OUTER JOIN f ON r.collection = f.collection
                   ORDER BY 1""", (hours * 3600, hours * 3600))
            rows = await cur.fetchall()
        return [
            {"collection": c, "queries": q, "answers": a,
             "latency_ms": {"p50": _round(p50), "p95": _round(p95), "p99": _round(p99)},
             "avg_retrieved": _round(ret), "feedback": fb, "positive": pos, "negative": neg,
             "positive_rate": round(pos / fb, 4) if fb else None}
            for c, q, a, p50, p95, p99, ret, fb, pos, neg in rows
        ]


def _round(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None
