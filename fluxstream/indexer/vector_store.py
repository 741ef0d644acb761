"""Chunk embeddings in PostgreSQL + pgvector: one row per chunk, HNSW cosine index.

``fluxstream_vector_versions`` records the version the vector stage applied per
document (tombstones included), so replays never regress a document's vectors.
Embeddings are looked up by content hash and model before anything is embedded:
unchanged text (in this document or any other) is never embedded twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection, OperationalError
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from fluxstream.core import metrics
from fluxstream.core.hnsw import DEFAULT_HNSW, HNSWParams
from fluxstream.indexer.documents import DocRef

CHUNKS_TABLE = "fluxstream_chunks"
VERSIONS_TABLE = "fluxstream_vector_versions"
_SCHEMA_LOCK = 0x666C7578  # advisory lock id: concurrent workers create the schema once
RECONNECT_MAX_DELAY = 1.0  # seconds between the pool's attempts to reconnect after an outage
T = TypeVar("T")


@dataclass(frozen=True)
class VectorRow:
    collection: str
    chunk_id: str
    doc_id: str
    chunk_no: int
    text: str
    metadata: dict[str, Any]
    content_hash: str
    embedding: np.ndarray
    version: int


@dataclass(frozen=True, slots=True)
class VectorDocument:
    """One document's vector rows, replacing what the table holds for it if ``version`` is newer."""

    collection: str
    doc_id: str
    version: int
    deleted: bool
    rows: Sequence[VectorRow]

    @property
    def ref(self) -> DocRef:
        return DocRef(self.collection, self.doc_id)


@dataclass(frozen=True)
class VectorHit:
    chunk_id: str
    doc_id: str
    content_hash: str
    score: float


def _as_array(value: Any) -> np.ndarray:
    """pgvector's loader gives a ``Vector`` (newer) or an ndarray (older); callers want float32."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


class SchemaMismatch(RuntimeError):
    """The table was created for another embedding size: rebuild, or point at another database."""


async def _configure(conn: AsyncConnection) -> None:
    await register_vector_async(conn)


class _CappedBackoff(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY)


class ReconnectingPool(AsyncConnectionPool):
    """psycopg's pool, retrying lost connections at most ``RECONNECT_MAX_DELAY`` apart.

    The stock pool doubles its delay up to the reconnect timeout (5 minutes): after a 150 s outage
    its next attempt could come a minute later, and the process stayed unavailable that long.
    """

    async def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        await super()._add_connection(attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing)


class VectorStore:
    """Owns the pgvector schema, chunk-row writes and k-NN search."""

    def __init__(self, pool: AsyncConnectionPool, *, dimensions: int, model_id: str,
                 hnsw: HNSWParams = DEFAULT_HNSW) -> None:
        self.pool = pool
        self.dimensions = dimensions
        self.model_id = model_id
        self.hnsw = hnsw
        self._checking: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, url: str, *, dimensions: int, model_id: str, hnsw: HNSWParams = DEFAULT_HNSW,
                      min_size: int = 1, max_size: int = 8, pool_timeout: float = 30.0) -> VectorStore:
        """Open a pool (the extension must exist before vector types can be registered).

        ``pool_timeout``: the longest a call waits for a connection, then ``PoolTimeout`` (an
        ``OperationalError``). The query service keeps it short to answer fast while PostgreSQL is
        down; the worker keeps psycopg's 30 s, so a busy pool is not taken for an outage.
        """
        async with await AsyncConnection.connect(url, autocommit=True) as conn, conn.transaction():
            # IF NOT EXISTS still races between processes starting together; the lock serialises them.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        pool = ReconnectingPool(url, min_size=min_size, max_size=max_size, configure=_configure, open=False,
                                timeout=pool_timeout)
        await pool.open(wait=True, timeout=30)
        store = cls(pool, dimensions=dimensions, model_id=model_id, hnsw=hnsw)
        await store.ensure_schema()
        return store

    async def close(self) -> None:
        await self.pool.close()

    async def reset(self) -> None:
        """Test the idle pooled connections and replace the dead ones (after a restart of PostgreSQL every
        one of them is); concurrent callers share one check."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self.pool.check())
        await asyncio.shield(self._checking)

    async def _read(self, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run an idempotent read; if its pooled connection turns out dead, reset the pool and run it once more."""
        for attempt in (1, 2):
            broken = False
            try:
                async with self.pool.connection() as conn:
                    try:
                        return await query(conn)
                    except OperationalError:
                        broken = conn.broken
                        raise
            except OperationalError:
                if not broken or attempt == 2:
                    raise
            await self.reset()
        raise AssertionError("unreachable")

    async def ensure_schema(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {CHUNKS_TABLE} (
                    collection text NOT NULL, chunk_id text NOT NULL, doc_id text NOT NULL,
                    chunk_no integer NOT NULL, text text NOT NULL,
                    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb, content_hash text NOT NULL,
                    model text NOT NULL, embedding vector({self.dimensions}) NOT NULL,
                    version bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (collection, chunk_id))"""
            )
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {CHUNKS_TABLE}_doc ON {CHUNKS_TABLE} (collection, doc_id)")
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {CHUNKS_TABLE}_hash ON {CHUNKS_TABLE} (content_hash, model)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {CHUNKS_TABLE}_hnsw ON {CHUNKS_TABLE} USING hnsw "
                f"(embedding vector_cosine_ops) WITH (m = {int(self.hnsw.m)}, "
                f"ef_construction = {int(self.hnsw.ef_construction)})"
            )
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
                    collection text NOT NULL, doc_id text NOT NULL, version bigint NOT NULL,
                    deleted boolean NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (collection, doc_id))"""
            )
            cur = await conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'",
                (CHUNKS_TABLE,),
            )
            column = await cur.fetchone()
            assert column is not None  # the table was created above, so its column exists
            (typmod,) = column
        if typmod != self.dimensions:
            raise SchemaMismatch(
                f"{CHUNKS_TABLE}.embedding has {typmod} dimensions but the embedder gives {self.dimensions}"
            )

    @metrics.timed("postgres", "applied_versions")
    async def applied_versions(self, refs: Sequence[DocRef]) -> dict[DocRef, int]:
        if not refs:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT v.collection, v.doc_id, v.version FROM {VERSIONS_TABLE} v "
                "JOIN unnest(%s::text[], %s::text[]) AS r(collection, doc_id) USING (collection, doc_id)",
                ([collection for collection, _ in refs], [doc_id for _, doc_id in refs]),
            )
            return {DocRef(c, d): v for c, d, v in await cur.fetchall()}

    @metrics.timed("postgres", "known_embeddings")
    async def known_embeddings(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings already stored for these content hashes with the current model."""
        if not hashes:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT DISTINCT ON (content_hash) content_hash, embedding FROM {CHUNKS_TABLE} "
                "WHERE content_hash = ANY(%s) AND model = %s",
                (list(hashes), self.model_id),
            )
            return {h: _as_array(e) for h, e in await cur.fetchall()}

    @metrics.timed("postgres", "replace_documents")
    async def replace_documents(self, documents: Sequence[VectorDocument]) -> list[bool]:
        """Replace each document's rows in one transaction.

        Returns, per document, whether it was applied; a document whose stored
        version is already at or above ``version`` is left alone. Set-based: three
        statements for the whole list (versions, stale chunks, new rows), not three per
        document, so a part of 64 documents is three round trips.
        """
        refs = [doc.ref for doc in documents]
        if len(set(refs)) != len(refs):
            raise ValueError("replace_documents takes each document once")
        if not documents:
            return []
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                f"""INSERT INTO {VERSIONS_TABLE} AS v (collection, doc_id, version, deleted)
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::boolean[])
                    ON CONFLICT (collection, doc_id) DO UPDATE
                    SET version = EXCLUDED.version, deleted = EXCLUDED.deleted, updated_at = now()
                    WHERE v.version < EXCLUDED.version
                    RETURNING collection, doc_id""",
                ([doc.collection for doc in documents], [doc.doc_id for doc in documents],
                 [doc.version for doc in documents], [doc.deleted for doc in documents]),
            )
            won = {DocRef(c, d) for c, d in await cur.fetchall()}
            applied = [doc for doc, ref in zip(documents, refs, strict=True) if ref in won]
            if applied:
                rows = [row for doc in applied for row in doc.rows]
                await cur.execute(
                    f"""DELETE FROM {CHUNKS_TABLE} c USING unnest(%s::text[], %s::text[]) AS d(collection, doc_id)
                        WHERE c.collection = d.collection AND c.doc_id = d.doc_id
                        AND (c.collection, c.chunk_id) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
                    ([doc.collection for doc in applied], [doc.doc_id for doc in applied],
                     [r.collection for r in rows], [r.chunk_id for r in rows]),
                )
                if rows:
                    # %b: vectors in pgvector's binary form. The text form formats every float with
                    # str() in Python, which was a third of the worker's CPU on the indexing path.
                    await cur.execute(
                        f"""INSERT INTO {CHUNKS_TABLE} (collection, chunk_id, doc_id, chunk_no, text, metadata,
                                content_hash, model, embedding, version)
                            SELECT c, i, d, n, t, m, h, %s, e, v FROM unnest(%s::text[], %s::text[], %s::text[],
                                %s::int[], %s::text[], %s::jsonb[], %s::text[], %b::vector[], %s::bigint[])
                                AS r(c, i, d, n, t, m, h, e, v)
                            ON CONFLICT (collection, chunk_id) DO UPDATE SET
                                doc_id = EXCLUDED.doc_id, chunk_no = EXCLUDED.chunk_no, text = EXCLUDED.text,
                                metadata = EXCLUDED.metadata, content_hash = EXCLUDED.content_hash,
                                model = EXCLUDED.model, embedding = EXCLUDED.embedding,
                                version = EXCLUDED.version, updated_at = now()""",
                        (self.model_id, [r.collection for r in rows], [r.chunk_id for r in rows],
                         [r.doc_id for r in rows], [r.chunk_no for r in rows], [r.text for r in rows],
                         [Jsonb(r.metadata) for r in rows], [r.content_hash for r in rows],
                         [r.embedding for r in rows], [r.version for r in rows]),
                    )
        return [ref in won for ref in refs]

    @metrics.timed("postgres", "search")
    async def search(
        self, collection: str, query: np.ndarray, *, limit: int, filters: dict[str, Any] | None = None,
        ef_search: int = 100,
    ) -> list[VectorHit]:
        """Approximate k-NN by cosine; the scan continues through the HNSW graph until ``limit`` rows match."""
        where = "collection = %s"
        params: list[Any] = [collection]
        for key, value in (filters or {}).items():
            # Same rule as query.filters.matches: equal, or a list that contains the value.
            where += " AND (metadata @> %s OR metadata @> %s)"
            params += [Jsonb({key: value}), Jsonb({key: [value]})]

        async def knn(conn: AsyncConnection) -> list[Any]:
            async with conn.transaction():
                # The graph holds every collection (and generation): without iterative scan, a k-NN over a
                # crowded graph would stop at ef_search candidates and drop those of other collections.
                # Both settings in one statement: one round trip.
                await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}; "
                                   "SET LOCAL hnsw.iterative_scan = relaxed_order")
                cur = await conn.execute(
                    f"SELECT chunk_id, doc_id, content_hash, 1 - (embedding <=> %b) AS score FROM {CHUNKS_TABLE} "
                    f"WHERE {where} ORDER BY embedding <=> %b LIMIT %s",
                    (query, *params, query, limit),
                )
                return await cur.fetchall()

        rows = await self._read(knn)
        hits = [VectorHit(c, d, h, float(s)) for c, d, h, s in rows]
        hits.sort(key=lambda h: -h.score)  # relaxed_order may return slightly out of order
        return hits

    async def embeddings_of(self, collection: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not chunk_ids:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT chunk_id, embedding FROM {CHUNKS_TABLE} WHERE collection = %s AND chunk_id = ANY(%s)",
                (collection, list(chunk_ids)),
            )
            return {c: _as_array(e) for c, e in await cur.fetchall()}

    async def document_hashes(self, collection: str, doc_id: str) -> dict[str, str]:
        """chunk_id -> content hash of the vectors stored for a document."""

        async def hashes(conn: AsyncConnection) -> dict[str, str]:
            cur = await conn.execute(
                f"SELECT chunk_id, content_hash FROM {CHUNKS_TABLE} WHERE collection = %s AND doc_id = %s",
                (collection, doc_id),
            )
            return dict(await cur.fetchall())

        return await self._read(hashes)

    async def drop_index(self, name: str) -> int:
        """Remove every row of index ``name`` (a collection generation); returns the chunk rows removed."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(f"DELETE FROM {CHUNKS_TABLE} WHERE collection = %s", (name,))
            await conn.execute(f"DELETE FROM {VERSIONS_TABLE} WHERE collection = %s", (name,))
            return cur.rowcount

    async def count(self, name: str) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {CHUNKS_TABLE} WHERE collection = %s", (name,))
            counted = await cur.fetchone()
            assert counted is not None  # count(*) always yields one row
            return int(counted[0])

    async def ping(self) -> None:
        async def select_1(conn: AsyncConnection) -> None:
            await conn.execute("SELECT 1")

        await self._read(select_1)
