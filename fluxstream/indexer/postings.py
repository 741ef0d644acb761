"""BM25 postings and statistics in plain Redis/Valkey data structures.

What the keys hold (``{c}`` is the collection, a Redis-Cluster hash tag, so one collection's keys
share a slot and one script may touch them all; every key is built by ``fluxstream.core.keyspace``):

``fx:{c}:meta``            hash  chunks (N), total_len (sum of chunk lengths), docs, seq (change counter)
``fx:{c}:p:<term>``        hash  chunk_id -> dl * 2**16 + tf   (df = HLEN)
``fx:{c}:doc:<doc_id>``    hash  version, deleted, title, metadata, chunks (JSON), source, updated_at,
                                 table (the CDC source the document comes from, "" for native events)
``fx:{c}:chunk:<chunk_id>`` hash doc_id, chunk_no, title, text, hash, metadata, version
``fx:{c}:pending:…``       vector-pending positions (see indexer.positions)
``fx:collections``         set   index names ever written (or being rebuilt): what "the collection exists"
                                 means to queries (an index emptied by deletes stays; a dropped one goes)

``meta`` also holds ``truncated:<table>``, the position of the last truncate of a CDC source table:
an upsert of that table at or below it is refused inside the write script itself, so a batch that
read the floor before a truncate raised it cannot bring a row back.

The retrieval unit is the chunk: N counts chunks and "document length" is a
chunk's length in terms. A query reads only ``meta`` and its own terms' posting
hashes. Writes go through one Lua script per collection per batch that first
checks every touched document still has the version the writer read
(compare-and-set) and then applies all changes: atomic, so no reader sees half
a document, and a stale writer (e.g. during a rebalance) is refused, not merged.
The same script records which positions wait for vectors (``PendingMark``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis

from fluxstream.core import keyspace, lua, metrics
from fluxstream.indexer.documents import TF_BITS, TF_MASK, ChunkState, DocRef, DocumentState, TableRef
from fluxstream.indexer.redis_plan import HashFieldRaiser, Plan, PlanRunner
from fluxstream.indexer.write_plan import CollectionWrite, DocumentDiff


class VersionConflict(Exception):
    """Another writer changed a document between our read and our write."""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk record as the query service reads it."""

    chunk_id: str
    doc_id: str
    chunk_no: int
    title: str
    text: str
    content_hash: str
    metadata: dict[str, Any]
    version: int


class ChunkFacts(NamedTuple):
    """What filters and stale-vector checks read of a chunk: its text's hash, metadata with enrichment."""

    content_hash: str
    metadata: dict[str, Any]


class ChunkEnrichment(NamedTuple):
    """Enrichment fields for a chunk, valid while its text still has ``content_hash``."""

    chunk_id: str
    content_hash: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class CollectionStats:
    chunks: int
    total_len: int
    docs: int

    @property
    def avgdl(self) -> float:
        return self.total_len / self.chunks if self.chunks else 0.0


class PostingsStore:
    """Reads and atomically rewrites document states; serves BM25 inputs to queries."""

    def __init__(self, redis: aioredis.Redis, *, wait_aof: bool = False) -> None:
        self.redis = redis
        self.wait_aof = wait_aof
        self._plans = PlanRunner(redis)
        self._raise = HashFieldRaiser(redis)
        self._hmget_many = lua.register(redis, "hmget_each")

    # ---- writer side ----
    @metrics.timed("redis", "read_documents")
    async def read_documents(self, refs: Sequence[DocRef]) -> dict[DocRef, DocumentState]:
        """Current states of (collection, doc_id) pairs, in one command (see ``_hmget_each``)."""
        rows = await self._hmget_each([keyspace.document(coll, doc_id) for coll, doc_id in refs], DOC_FIELDS)
        return {ref: _decode_document(ref, row) for ref, row in zip(refs, rows, strict=True)}

    @metrics.timed("redis", "write_documents")
    async def write_documents(self, writes: Sequence[CollectionWrite], *, updated_at: str) -> None:
        """Execute a write plan (``indexer.fold``): one compare-and-set script per collection.

        Raises VersionConflict when a document no longer holds the version the plan expects (its
        ``before``, or an ``expected`` state the new ones were derived from), or an upsert of a CDC
        table is at or below that table's truncation floor; the caller re-reads and folds again.
        Nothing of that collection's plan is written in that case.
        """
        if not writes:
            return
        written = [w.collection for w in writes if w.documents]
        if written:
            await self.redis.sadd(keyspace.COLLECTIONS, *written)
        for write in writes:
            conflict = await self._plans.run(self._encode(write, updated_at))
            if conflict is not None:
                raise VersionConflict(conflict)
        if self.wait_aof:
            await self.redis.execute_command("WAITAOF", 1, 0, 5000)

    def _encode(self, write: CollectionWrite, updated_at: str) -> Plan:
        """The script arguments of one collection's write (order: documents, marks, checks of the
        states it was derived from, statistics, term stamps)."""
        plan = Plan()
        collection = write.collection
        for document in write.documents:
            self._encode_document(plan, document, updated_at)
        for mark in write.marks:
            plan.pending(keyspace.pending_vectors(collection, mark.topic, mark.partition),
                         keyspace.pending_entries(collection, mark.topic, mark.partition),
                         mark.doc_id, mark.offset, mark.clear_at, mark.only_if)
        if not write.documents:  # marks only: no document written
            return plan
        for state in write.expected:
            plan.check(keyspace.document(collection, state.doc_id), "version", state.version)
        for name, delta in write.stats_delta.items():
            plan.op("HINCRBY", keyspace.meta(collection), name, delta)
        # What caches validate against (see query.cache): the collection's change counter, and per term
        # the counter's value after the last write that changed the term's postings (one HSET, not an
        # HINCRBY per term: the counter only grows, so a changed stamp means a changed term).
        plan.stamp_fields(keyspace.term_versions(collection), keyspace.meta(collection), SEQ_FIELD,
                          write.changed_terms)
        return plan

    def _encode_document(self, plan: Plan, document: DocumentDiff, updated_at: str) -> None:
        after = document.write.after
        coll = after.collection
        doc_key = keyspace.document(coll, after.doc_id)
        plan.check(doc_key, "version", document.expected_version)
        if document.floor_table is not None:
            plan.check_below(keyspace.meta(coll), truncation_field(document.floor_table), after.version or 0)
        postings = keyspace.posting(coll, "")
        for chunk in document.unposted:
            plan.delete_field_on_keys(chunk.chunk_id, [postings + term for term in chunk.tf])
        for chunk_id in document.dropped:
            plan.op("DEL", keyspace.chunk(coll, chunk_id))
        for chunk in document.posted:
            plan.op("HDEL", keyspace.chunk(coll, chunk.chunk_id), "enrich")  # described the old text
            high = chunk.dl << TF_BITS
            plan.set_field_on_keys(chunk.chunk_id, [postings + term for term in chunk.tf],
                                   [high | min(tf, TF_MASK) for tf in chunk.tf.values()])
        metadata = _json(after.metadata)
        for chunk in after.chunks:
            plan.op(
                "HSET", keyspace.chunk(coll, chunk.chunk_id),
                "doc_id", after.doc_id, "chunk_no", chunk.chunk_no, "title", after.title,
                "text", chunk.text, "hash", chunk.content_hash,
                "metadata", metadata, "version", after.version,
            )
        plan.op(
            "HSET", doc_key,
            "version", after.version, "deleted", int(after.deleted), "title", after.title,
            "metadata", metadata,
            "chunks", _json([c.to_json() for c in after.chunks]),
            "source", _json(after.source), "updated_at", updated_at,
            "row", _json(after.row), "table", after.table or "",
        )

    # ---- reader side ----
    async def raise_truncation(self, collection: str, table: str, position: int) -> None:
        """Record a truncate of ``table``: its changes at or below ``position`` can no longer create documents."""
        await self._raise(keyspace.meta(collection), truncation_field(table), position)

    async def truncations(self, refs: Iterable[TableRef]) -> dict[TableRef, int]:
        """The truncation floor of each (collection, table); -1 where the table was never truncated."""
        names = sorted(set(refs))
        async with self.redis.pipeline(transaction=False) as pipe:
            for collection, table in names:
                pipe.hget(keyspace.meta(collection), truncation_field(table))
            values = await pipe.execute()
        return {ref: int(v) if v is not None else -1 for ref, v in zip(names, values, strict=True)}

    async def change_seq(self, collection: str) -> int:
        """Bumped by every BM25 write and after every vector write of the collection."""
        value = await self.redis.hget(keyspace.meta(collection), SEQ_FIELD)
        return int(value) if value is not None else 0

    async def bump_seq(self, collections: Iterable[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for collection in set(collections):
                pipe.hincrby(keyspace.meta(collection), SEQ_FIELD, 1)
            await pipe.execute()

    async def collection_exists(self, collection: str) -> bool:
        return bool(await self.redis.sismember(keyspace.COLLECTIONS, collection))

    async def collections(self) -> list[str]:
        members = await self.redis.smembers(keyspace.COLLECTIONS)
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def stats_if_exists(self, collection: str) -> CollectionStats | None:
        """The collection's statistics, or None if there is no such collection; one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sismember(keyspace.COLLECTIONS, collection)
            pipe.hmget(keyspace.meta(collection), *STATS_FIELDS)
            exists, meta = await pipe.execute()
        return decode_stats(meta) if exists else None

    async def stats(self, collection: str) -> CollectionStats:
        return decode_stats(await self.redis.hmget(keyspace.meta(collection), *STATS_FIELDS))

    @metrics.timed("redis", "postings")
    async def postings(
        self, collection: str, terms: Sequence[str]
    ) -> tuple[CollectionStats, dict[str, dict[str, int]], dict[str, int]]:
        """Statistics, the posting lists of ``terms`` and their change stamps, in one MULTI snapshot."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keyspace.meta(collection), *STATS_FIELDS)
            pipe.hmget(keyspace.term_versions(collection), *terms)
            for term in terms:
                pipe.hgetall(keyspace.posting(collection, term))
            meta, versions, *lists = await pipe.execute()
        postings = {
            term: {chunk.decode(): int(value) for chunk, value in raw.items()}
            for term, raw in zip(terms, lists, strict=True)
        }
        return decode_stats(meta), postings, _counters(terms, versions)

    async def term_versions(self, collection: str, terms: Sequence[str]) -> dict[str, int]:
        if not terms:
            return {}
        return _counters(terms, await self.redis.hmget(keyspace.term_versions(collection), *terms))

    @metrics.timed("redis", "fetch_chunks")
    async def fetch_chunks(self, collection: str, chunk_ids: Sequence[str]) -> list[StoredChunk | None]:
        """Chunk records in the order asked; None for chunks that no longer exist."""
        rows = await self._hmget_each([keyspace.chunk(collection, c) for c in chunk_ids], CHUNK_FIELDS)
        return [decode_chunk(chunk_id, row) for chunk_id, row in zip(chunk_ids, rows, strict=True)]

    @metrics.timed("redis", "chunk_facts")
    async def chunk_facts(self, collection: str, chunk_ids: Sequence[str]) -> list[ChunkFacts | None]:
        """Per chunk, its facts; None where gone: for filters and stale checks."""
        rows = await self._hmget_each([keyspace.chunk(collection, c) for c in chunk_ids],
                                      ("hash", "metadata", "enrich"))
        return [ChunkFacts(h.decode(), _with_enrichment(m or b"{}", e)) if h is not None else None
                for h, m, e in rows]

    async def _hmget_each(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        """HMGET ``fields`` of every key, in one command: hot reads of queries (chunks) and of the writer
        (document records), where a pipeline of one command per key costs the client more than the
        server spends answering it."""
        if not keys:
            return []
        return await self._hmget_many(keys=list(keys), args=list(fields))

    async def document_frequencies(self, collection: str, terms: Sequence[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for term in terms:
                pipe.hlen(keyspace.posting(collection, term))
            counts = await pipe.execute()
        return dict(zip(terms, counts, strict=True))

    @metrics.timed("redis", "write_enrichment")
    async def write_enrichment(self, collection: str, items: Sequence[ChunkEnrichment]) -> int:
        """Store each enrichment whose chunk's text is still the hash it describes; returns how many."""
        written = 0
        for item in items:
            plan = Plan()
            plan.check(keyspace.chunk(collection, item.chunk_id), "hash", item.content_hash)
            plan.op("HSET", keyspace.chunk(collection, item.chunk_id), "enrich", _json(item.fields))
            written += await self._plans.run(plan) is None
        return written

    async def document_ids(self, collection: str) -> list[str]:
        """Every document id the collection has a record for (tombstones included)."""
        return await self.scan_suffixes(keyspace.document(collection, ""))

    async def table_document_ids(self, collection: str, table: str, *, untagged: bool) -> list[str]:
        """Ids of the documents (tombstones included) that come from CDC source ``table``, for its
        truncate; ``untagged``: also those with no source table (native events, or indexed before
        records named their table)."""
        ids = await self.document_ids(collection)
        found: list[str] = []
        for start in range(0, len(ids), 1000):
            page = ids[start : start + 1000]
            rows = await self._hmget_each([keyspace.document(collection, d) for d in page], ("table",))
            found += [d for d, (tag,) in zip(page, rows, strict=True)
                      if tag == table.encode() or (untagged and not tag)]
        return found

    async def scan_suffixes(self, prefix: str) -> list[str]:
        """What follows ``prefix`` in every key that starts with it."""
        return [key.decode()[len(prefix):]
                async for key in self.redis.scan_iter(match=keyspace.scan_pattern(prefix), count=1000)]

    async def drop_index(self, name: str) -> int:
        """Remove every key of index ``name`` (a collection generation); returns how many went."""
        await self.redis.srem(keyspace.COLLECTIONS, name)
        return await unlink_prefix(self.redis, keyspace.index_prefix(name))

    async def get_document(self, collection: str, doc_id: str) -> DocumentState:
        ref = DocRef(collection, doc_id)
        return (await self.read_documents([ref]))[ref]


DOC_FIELDS = ("version", "deleted", "title", "metadata", "chunks", "source", "row", "table")  # read by the writer
CHUNK_FIELDS = ("doc_id", "chunk_no", "title", "text", "hash", "metadata", "version", "enrich")


def decode_chunk(chunk_id: str, row: Sequence[bytes | None]) -> StoredChunk | None:
    """A chunk record from its ``CHUNK_FIELDS`` values (None when the chunk does not exist)."""
    if row[0] is None:
        return None
    doc_id, chunk_no, title, text, hsh, metadata, version = (v.decode() for v in row[:7])  # type: ignore[union-attr]
    return StoredChunk(chunk_id, doc_id, int(chunk_no), title, text, hsh, _with_enrichment(metadata, row[7]),
                       int(version))


def _with_enrichment(metadata: bytes | str, enrichment: bytes | None) -> dict[str, Any]:
    """A chunk's metadata plus its enrichment fields (``enrich_*``, see indexer.enrichment)."""
    merged = orjson.loads(metadata)
    if enrichment:
        merged.update(orjson.loads(enrichment))
    return merged


def truncation_field(table: str) -> str:
    """The ``meta`` field holding the truncation floor of CDC source ``table``."""
    return f"truncated:{table}"


def _json(value: Any) -> str:
    """Compact JSON text for hash fields (orjson; values that are not JSON types become strings)."""
    return orjson.dumps(value, default=str).decode()


async def unlink_prefix(redis: aioredis.Redis, prefix: str) -> int:
    """UNLINK every key starting with ``prefix``, a SCAN page at a time (never blocks the server)."""
    removed = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keyspace.scan_pattern(prefix), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += await redis.unlink(*batch)
            batch = []
    if batch:
        removed += await redis.unlink(*batch)
    return removed


def _counters(names: Sequence[str], values: Sequence[bytes | str | None]) -> dict[str, int]:
    return {name: int(v) if v is not None else 0 for name, v in zip(names, values, strict=True)}


STATS_FIELDS = ("chunks", "total_len", "docs")  # of the ``meta`` hash, in CollectionStats order
SEQ_FIELD = "seq"  # of the ``meta`` hash: the change counter cache entries validate against


def decode_stats(meta: Sequence[bytes | str | None]) -> CollectionStats:
    """Statistics from the ``STATS_FIELDS`` values (absent fields count 0)."""
    chunks, total_len, docs = (int(v) if v is not None else 0 for v in meta)
    return CollectionStats(chunks, total_len, docs)


def _decode_document(ref: DocRef, row: Sequence[bytes | None]) -> DocumentState:
    """A document record from its ``DOC_FIELDS`` values (all None: not indexed yet)."""
    collection, doc_id = ref
    version, deleted, title, metadata, chunks, source, source_row, table = row
    if version is None:
        return DocumentState(collection, doc_id)
    return DocumentState(
        collection=collection,
        doc_id=doc_id,
        version=int(version),
        deleted=deleted == b"1",
        title=title.decode() if title is not None else "",
        metadata=orjson.loads(metadata) if metadata is not None else {},
        chunks=[ChunkState.from_json(c) for c in orjson.loads(chunks)] if chunks is not None else [],
        source=orjson.loads(source) if source is not None else None,
        row=orjson.loads(source_row) if source_row is not None else None,
        table=table.decode() if table else None,
    )
