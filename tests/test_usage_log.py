"""The request log (query.usage) against the session's real PostgreSQL."""

from __future__ import annotations

import uuid

from psycopg_pool import AsyncConnectionPool

from fluxstream.core.settings import Settings
from fluxstream.query.usage import UsageStore


async def test_a_request_log_row_postgres_cannot_hold_is_dropped_alone(stack: Settings) -> None:
    """The log is written in batches; one row with a NUL must not fail (and keep failing) the others."""
    run = uuid.uuid4().hex[:8]
    async with AsyncConnectionPool(stack.database_url, min_size=1, max_size=2, open=False) as pool:
        usage = UsageStore(pool)
        await usage.start()
        try:
            usage.record(f"bad\x00{run}", "c", "search", "bm25", 1.0, 0)
            usage.record(f"good-{run}", "c", "search", "bm25", 1.0, 0)
            await usage.flush()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT request_id FROM fluxstream_requests WHERE request_id LIKE %s",
                                         (f"%{run}",))
                assert [r[0] for r in await cur.fetchall()] == [f"good-{run}"]
            await usage.flush()  # nothing was kept back to fail again
        finally:
            await usage.stop()
