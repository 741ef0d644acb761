"""What the Faust agents do with a batch of records, independent of Faust itself.

Contract with the agents: ``handle_*`` returns only once every effect of the batch
is durable (Redis/Postgres written, follow-up events delivered to Kafka). It never
raises for a dependency outage: it retries with capped backoff and reports
not-ready meanwhile, because the agent acks (and Faust later commits) the batch as
soon as the handler returns or raises.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis
from psycopg import OperationalError as PgOperationalError
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.core.settings import Settings
from fluxstream.indexer.apply import BatchOutcome, BM25Stage
from fluxstream.indexer.chat import ChatError, ChatModel
from fluxstream.indexer.chunking import Chunker
from fluxstream.indexer.embedders.base import Embedder, EmbeddingError, close_embedder
from fluxstream.indexer.enrichment import enrich_document, llm_tags, prefixed
from fluxstream.indexer.fold import DocumentBuilder, SourcedChange
from fluxstream.indexer.generations import GenerationRegistry, parse_index_name
from fluxstream.indexer.positions import ChangeAt, Positions
from fluxstream.indexer.postings import ChunkEnrichment, PostingsStore
from fluxstream.indexer.vector_stage import VectorChange, VectorStage
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.query.cache.invalidation import CacheInvalidator
from fluxstream.query.cache.store import SemanticCache
from fluxstream.query.cache.vector_log import VectorLog
from fluxstream.schemas.events import DocumentChange, EmbedJob, IndexUpdate, SourcePosition
from fluxstream.streams import debezium
from fluxstream.streams.cdc_mapping import CdcMapping
from fluxstream.streams.decoding import Rejected, dead_letter_record, decode, decode_change
from fluxstream.streams.scopes import LiveScope, WriteScope
from fluxstream.wiring import build_tokenizer, check_dependencies, open_embedder, open_redis

log = get_logger("fluxstream.pipeline")

T = TypeVar("T")
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, PgOperationalError, PoolTimeout, OSError,
                    asyncio.TimeoutError)
PRODUCER_MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""The worker producer's largest request; a dead letter is cut below it and below the dead-letter limit."""


class Record(Protocol):
    """The parts of a Kafka record the pipeline needs (Faust's ``Message`` has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None  # seconds, as Faust gives it


class Publisher(Protocol):
    """Sends a record and returns an awaitable that resolves once the broker has it."""

    async def __call__(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> Awaitable[object]: ...


@dataclass
class Resources:
    redis: aioredis.Redis
    postings: PostingsStore
    vectors: VectorStore
    embedder: Embedder

    @classmethod
    async def open(cls, settings: Settings, redis_url: str, database_url: str) -> Resources:
        embedder = await open_embedder(settings, child_process=settings.embed_in_child_process)
        redis = open_redis(redis_url)
        wait_aof = await _aof_enabled(redis)
        vectors = await VectorStore.connect(
            database_url, dimensions=embedder.dimensions, model_id=embedder.model_id,
            hnsw=settings.hnsw()[0],
        )
        return cls(redis, PostingsStore(redis, wait_aof=wait_aof), vectors, embedder)

    async def close(self) -> None:
        await self.vectors.close()
        await self.redis.aclose()
        await close_embedder(self.embedder)

    async def ping(self) -> dict[str, bool]:
        return await check_dependencies(self.redis, self.vectors)


async def _aof_enabled(redis: aioredis.Redis) -> bool:
    """With AOF on, WAITAOF makes a write durable before its offset is committed."""
    try:
        config = await redis.config_get("appendonly")
    except Exception:  # managed Redis may forbid CONFIG; durability is then the provider's
        return False
    return config.get("appendonly") == "yes"


class Pipeline:
    """Handles batches for the two agents: change events (BM25 stage) and embed jobs (vector stage)."""

    def __init__(self, settings: Settings, resources: Resources, publish: Publisher,
                 cdc: CdcMapping | None = None, scope: WriteScope | None = None) -> None:
        self.settings = settings
        self.scope = scope or LiveScope(GenerationRegistry(resources.redis))
        self.rejected = 0  # records refused (dead-lettered when live)
        self.cdc = cdc or CdcMapping()
        self.resources = resources
        self.publish = publish
        tokenizer = self.tokenizer = build_tokenizer(settings)
        self.chat = ChatModel.from_settings(settings)
        builder = DocumentBuilder(Chunker(settings.chunk_size, settings.chunk_overlap, tokenizer), tokenizer)
        self.bm25 = BM25Stage(resources.postings, builder)
        self.vector_stage = VectorStage(resources.vectors, resources.embedder, self._log_vector_changes)
        self.positions = Positions(resources.redis)
        self.invalidator = CacheInvalidator(
            SemanticCache(resources.redis, resources.postings, resources.embedder.dimensions), resources.vectors)
        self.ready = True

    async def handle_changes(self, records: Sequence[Record]) -> None:
        """Native DocumentChange events."""
        valid: list[SourcedChange] = []
        sends: list[Awaitable[object]] = []
        _count_consumed(records)
        for record in records:
            source = _position(record)
            result = decode_change(record.value, self.settings.max_text_bytes)
            if isinstance(result, Rejected):
                sends.append(await self._dead_letter(result, source, record.key, record.value))
            else:
                valid.append(SourcedChange(result, source))
        await self._index(valid, records, sends)
        await asyncio.gather(*sends)  # the broker has the batch's follow-up records

    async def handle_cdc(self, records: Sequence[Record]) -> None:
        """Debezium events; a truncate first applies what precedes it, so it sees those documents."""
        pending: list[SourcedChange] = []
        sends: list[Awaitable[object]] = []
        _count_consumed(records)
        for record in records:
            source = _position(record)
            timestamp_ms = int(record.timestamp * 1000) if record.timestamp else None
            parsed = debezium.parse(record.topic, record.offset, timestamp_ms, record.key, record.value, self.cdc,
                                    _headers(record))
            if parsed is None:
                metrics.EVENTS.labels(record.topic, "tombstone").inc()
            elif isinstance(parsed, Rejected):
                sends.append(await self._dead_letter(parsed, source, record.key, record.value))
            elif isinstance(parsed, debezium.TruncateEvent):
                await self._index(pending, records, sends)
                pending = await self._truncation(parsed, source)
                await self._index(pending, records, sends)
                pending = []
            else:
                item = cdc_change(parsed, source, self.settings.max_text_bytes)
                if isinstance(item, Rejected):
                    sends.append(await self._dead_letter(item, source, record.key, record.value))
                else:
                    pending.append(item)
        await self._index(pending, records, sends)
        await asyncio.gather(*sends)  # the broker has the batch's follow-up records

    async def record_handled(self, records: Sequence[Record]) -> None:
        """Raise the BM25 stage's handled positions past ``records`` (read-your-writes tokens are
        checked against them); the caller makes sure every earlier batch is applied first."""
        if self.scope.live:
            await self._until_done("bm25", lambda: self.positions.record_handled(_position(r) for r in records))

    async def _truncation(self, event: debezium.TruncateEvent, source: SourcePosition) -> list[SourcedChange]:
        """Deletes for every document of the truncated table in every target index, after raising the
        table's truncation floors there.

        Raising the floor first is what makes this exact with batches in flight: a write of that table
        at or below the floor is refused by the write script from then on, so a row an earlier batch
        writes late was either written before the floor rose (and is listed here) or is refused.
        """
        mapping = event.mapping
        collection, table = mapping.collection, mapping.name
        postings = self.resources.postings
        doc_ids: set[str] = set()
        for index in (await self.scope.targets([collection]))[collection]:
            await self._until_done("bm25", lambda index=index: postings.raise_truncation(index, table, event.version))
            doc_ids.update(await self._until_done("bm25", lambda index=index: postings.table_document_ids(
                index, table, untagged=mapping.sole_source)))
        return [
            SourcedChange(DocumentChange(op="delete", doc_id=doc_id, collection=collection, version=event.version),
                          source, table=table)
            for doc_id in sorted(doc_ids)
        ]

    async def _index(self, valid: list[SourcedChange], records: Sequence[Record],
                     sends: list[Awaitable[object]]) -> None:
        """Apply to every target index; queue dead letters, embed jobs and index updates on ``sends``."""
        targets = await self._until_done("bm25", lambda: self.scope.targets({s.change.collection for s in valid}))
        routed = [_routed(s, index) for s in valid for index in targets[s.change.collection]]
        if not routed:
            return
        primary = {c: indexes[0] for c, indexes in targets.items() if indexes}

        async def announce(outcome: BatchOutcome) -> None:
            """A written group's metrics, embed jobs and index updates, sent at once (the group's write
            recorded which positions wait for these jobs: indexer.positions)."""
            applied_times = []
            for item, applied in outcome.results:
                if primary.get(parse_index_name(item.change.collection)[0]) == item.change.collection:  # once
                    metrics.EVENTS.labels(item.source.topic, "applied" if applied else "skipped").inc()
                    if applied and item.source.timestamp_ms:
                        applied_times.append(item.source.timestamp_ms / 1000)
            metrics.observe_freshness("bm25", applied_times)
            for update in outcome.index_updates:
                if update.incomplete_columns:  # indexed with what is known, never silently
                    metrics.CDC_INCOMPLETE_COLUMNS.labels(parse_index_name(update.collection)[0]).inc(
                        len(update.incomplete_columns))
                    log.warning("cdc_incomplete_columns", collection=update.collection, doc_id=update.doc_id,
                                version=update.version, columns=update.incomplete_columns)
            for job in outcome.embed_jobs:
                sends.append(await self.publish(self.settings.embed_jobs_topic, job.doc_id.encode(), job.to_json()))
            sends.extend([await self._announce(update) for update in outcome.index_updates])

        started = time.perf_counter()
        _, failures = await self._apply_isolating("bm25", routed, lambda items: self.bm25.apply(items, announce))
        metrics.STAGE_SECONDS.labels("bm25").observe(time.perf_counter() - started)
        originals = {_position(r): r for r in records} if failures else {}
        for item, error in dict((item.source, (item, error)) for item, error in failures).values():
            original = originals[item.source]
            sends.append(await self._dead_letter(Rejected("apply_failed", error), item.source,
                                                 original.key, original.value))
        if failures:  # one failing after its write (publishing its embed job) leaves a pending mark
            handled = [ChangeAt(item.change.collection, item.change.doc_id, item.source) for item, _ in failures]
            await self._until_done("bm25", lambda: self.positions.clear_documents(handled))

    async def handle_embed_jobs(self, records: Sequence[Record]) -> None:
        jobs: list[EmbedJob] = []
        sends: list[Awaitable[object]] = []
        for record in records:
            result = decode(record.value, EmbedJob)
            if isinstance(result, Rejected):
                sends.append(await self._dead_letter(result, _position(record), record.key, record.value))
            else:
                jobs.append(result)
        accepted = await self._until_done("vectors", lambda: self.scope.accepts_vectors(j.collection for j in jobs))
        wanted = [job for job in jobs if accepted[job.collection]]
        metrics.EMBED_JOBS.labels("skipped").inc(len(jobs) - len(wanted))  # for a dropped generation
        started = time.perf_counter()
        outcomes, failures = await self._apply_isolating("vectors", wanted, self.vector_stage.apply)
        metrics.STAGE_SECONDS.labels("vectors").observe(time.perf_counter() - started)
        failed = [(job, f"apply_failed: {error}") for job, error in failures]
        for outcome in outcomes:
            metrics.observe_freshness("vectors", [u.source.timestamp_ms / 1000 for u in outcome.index_updates
                                                  if u.source.timestamp_ms])
            metrics.EMBED_JOBS.labels("applied").inc(outcome.applied)
            metrics.EMBED_JOBS.labels("skipped").inc(outcome.skipped)
            metrics.CHUNKS_EMBEDDED.inc(outcome.embedded)
            metrics.CHUNKS_REUSED.inc(outcome.reused)
            failed += outcome.failed
            sends += [await self._announce(update) for update in outcome.index_updates]
        metrics.EMBED_JOBS.labels("failed").inc(len(failed))
        for job, reason in failed:
            sends.append(await self._dead_letter(Rejected("embedding_failed", reason), job.source,
                                                 job.doc_id.encode(), job.to_json()))
        await asyncio.gather(*sends)
        await self._until_done("vectors", lambda: self.positions.clear_pending(jobs))

    async def _log_vector_changes(self, changes: list[VectorChange]) -> None:
        """The vector stage's change log, which cache entries are validated against."""
        await VectorLog(self.resources.redis).record(changes)
        await self.resources.postings.bump_seq({change.collection for change in changes})

    async def handle_enrichment(self, records: Sequence[Record]) -> None:
        """Enrich the chunks of documents the BM25 stage just wrote (the last update per document wins)."""
        latest: dict[tuple[str, str], IndexUpdate] = {}
        for update in (decode(r.value, IndexUpdate) for r in records):
            if isinstance(update, IndexUpdate) and update.stages.bm25 and not update.stages.vectors:
                latest[(update.collection, update.doc_id)] = update
        for (index, _), update in latest.items():
            if update.op == "upsert" and update.chunk_ids:
                try:
                    await self._until_done("enrich", lambda u=update: self._enrich(u))
                except Exception:  # never blocks the stage: this document stays unenriched
                    metrics.ENRICHED.labels("failed").inc()
                    log.exception("enrichment_failed", index=index, doc_id=update.doc_id)

    async def _enrich(self, update: IndexUpdate) -> None:
        store = self.resources.postings
        chunks = [c for c in await store.fetch_chunks(update.collection, update.chunk_ids) if c is not None]
        if not chunks:
            return
        found = await enrich_document(store, self.tokenizer, update.collection, chunks)
        if self.chat is not None:
            try:
                tags = await llm_tags(self.chat, "\n".join(c.text for c in chunks))
            except ChatError as exc:
                log.warning("enrichment_tags_failed", doc_id=update.doc_id, error=str(exc))
                tags = {}
            for fields in found.fields:
                fields.update(tags)
        written = await store.write_enrichment(update.collection, [
            ChunkEnrichment(c.chunk_id, c.content_hash, prefixed(f))
            for c, f in zip(found.chunks, found.fields, strict=True)])
        metrics.ENRICHED.labels("written").inc(written)
        metrics.ENRICHED.labels("stale").inc(len(chunks) - written)

    async def handle_index_updates(self, records: Sequence[Record]) -> None:
        """Keep the semantic cache exact: delete entries the applied changes could affect.

        An update that cannot be decoded or handled is dead-lettered and its collection's cache is
        cleared: without knowing what the change touched, no entry of it can be trusted.
        """
        updates: list[tuple[IndexUpdate, Record]] = []
        sends: list[Awaitable[object]] = []
        doubtful: set[str] = set()
        for record in records:
            update = decode(record.value, IndexUpdate)
            if isinstance(update, IndexUpdate):
                updates.append((update, record))
                continue
            sends.append(await self._dead_letter(update, _position(record), record.key, record.value))
            doubtful.update(_named_collection(record.value))
        outcomes, failures = await self._apply_isolating(
            "cache", updates, lambda items: self.invalidator.handle([update for update, _ in items]))
        for (update, record), error in failures:
            doubtful.add(update.collection)
            sends.append(await self._dead_letter(Rejected("invalidation_failed", error), _position(record),
                                                 record.key, record.value))
        for collection in sorted(doubtful):
            outcomes.append(await self._until_done("cache", lambda c=collection: self.invalidator.clear(c)))
        metrics.CACHE_INVALIDATIONS.inc(sum(outcomes))
        await asyncio.gather(*sends)

    async def _announce(self, update: IndexUpdate) -> Awaitable[object]:
        return await self.publish(self.settings.index_updates_topic, update.doc_id.encode(), update.to_json())

    async def _apply_isolating(
        self, stage: str, items: list[Item], apply: Callable[[list[Item]], Awaitable[Outcome]]
    ) -> tuple[list[Outcome], list[tuple[Item, str]]]:
        """Apply the whole batch; if it fails for a non-transient reason, apply item by item.

        An item that fails on its own is returned as a failure (to be dead-lettered) so
        one poisonous event never blocks its partition nor kills the worker.
        """
        if not items:
            return [], []
        try:
            return [await self._until_done(stage, lambda: apply(items))], []
        except Exception:
            log.exception("batch_failed_isolating", stage=stage, size=len(items))
        outcomes: list[Outcome] = []
        failures: list[tuple[Item, str]] = []
        for item in items:
            try:
                outcomes.append(await self._until_done(stage, lambda item=item: apply([item])))
            except Exception as exc:
                failures.append((item, f"{type(exc).__name__}: {exc}"))
        return outcomes, failures

    async def _dead_letter(
        self, rejected: Rejected, source: SourcePosition, key: bytes | None, value: bytes | None
    ) -> Awaitable[object]:
        metrics.EVENTS.labels(source.topic, "dead_lettered").inc()
        return await self._send_dead_letter(rejected, source, key, value)

    async def dead_letter_unhandled(self, record: Record, error: str) -> None:
        """The last resort for a record whose handler keeps failing on it alone (see streams.app.until_handled):
        dead-lettered, so it no longer holds its partition. A change may have been written before it
        failed (publishing its follow-ups): no embed job will clear its pending mark, so it is cleared here."""
        source = _position(record)
        await (await self._dead_letter(Rejected("handler_failed", error[:2000]), source, record.key, record.value))
        change = decode_change(record.value, self.settings.max_text_bytes) \
            if record.topic == self.settings.documents_topic else None
        if isinstance(change, DocumentChange):
            targets = await self._until_done("bm25", lambda: self.scope.targets([change.collection]))
            handled = [ChangeAt(index, change.doc_id, source) for index in targets[change.collection]]
            await self._until_done("bm25", lambda: self.positions.clear_documents(handled))

    async def _send_dead_letter(
        self, rejected: Rejected, source: SourcePosition, key: bytes | None, value: bytes | None
    ) -> Awaitable[object]:
        """Original key and bytes as the record, the reason in headers (see schemas.events.DeadLetter).

        Outside the live scope (a rebuild replaying history) the worker already dead-lettered the
        record once: it is only counted.
        """
        self.rejected += 1
        if not self.scope.live:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        log.warning("dead_letter", reason=rejected.reason, detail=rejected.detail[:500], **source.model_dump())
        metrics.DEAD_LETTERS.labels(rejected.reason).inc()
        limit = min(self.settings.dead_letter_max_bytes, PRODUCER_MAX_REQUEST_BYTES)
        key, value, headers = dead_letter_record(rejected, source, key, value, limit)
        return await self.publish(self.settings.dead_letters_topic, key, value, headers)

    async def _until_done(self, stage: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry ``attempt`` through outages (Redis, Postgres, embedding provider) with capped backoff."""
        delay = 0.1
        while True:
            try:
                result = await attempt()
            except (*TRANSIENT_ERRORS, EmbeddingError) as exc:
                if isinstance(exc, EmbeddingError) and exc.permanent:
                    raise
                self.ready = False
                metrics.READY.set(0)
                metrics.STAGE_RETRIES.labels(stage).inc()
                log.warning("stage_retry", stage=stage, error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.settings.retry_max_backoff)
                continue
            if not self.ready:
                log.info("stage_recovered", stage=stage)
            self.ready = True
            metrics.READY.set(1)
            return result


def _routed(item: SourcedChange, index: str) -> SourcedChange:
    """``item`` addressed to index generation ``index`` (itself when that is its collection's name)."""
    if index == item.change.collection:
        return item
    return replace(item, change=item.change.model_copy(update={"collection": index}))


def _named_collection(raw: bytes | None) -> list[str]:
    """The collection a record names, if it is a JSON object naming one."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return []
    collection = value.get("collection") if isinstance(value, dict) else None
    return [collection] if isinstance(collection, str) else []


def _count_consumed(records: Sequence[Record]) -> None:
    for topic, count in Counter(r.topic for r in records).items():
        metrics.EVENTS.labels(topic, "consumed").inc(count)


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


def _position(record: Record) -> SourcePosition:
    """Where ``record`` was read; built without validation (the broker's values are well-formed)."""
    timestamp_ms = int(record.timestamp * 1000) if record.timestamp else None
    return SourcePosition.trusted(topic=record.topic, partition=record.partition, offset=record.offset,
                                  timestamp_ms=timestamp_ms)
