"""What every handler of the worker shares, independent of Faust: resources, scope, retries, dead letters.

Contract with the agents: a handler (``streams.handlers``) returns only once every effect of the
batch is durable (Redis/Postgres written, follow-up events delivered to Kafka). It never raises for
a dependency outage: ``until_done`` retries it under the one retry policy and reports not-ready
meanwhile, because the agent acks (and Faust later commits) the batch as soon as the handler
returns. A permanent failure is raised for the agent to isolate (``streams.batching``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import redis.asyncio as aioredis

from fluxstream.core import metrics
from fluxstream.core.logging import get_logger
from fluxstream.core.retry import RetryPolicy, retrying
from fluxstream.core.settings import Settings
from fluxstream.indexer.embedders.base import Embedder, close_embedder
from fluxstream.indexer.generations import GenerationRegistry
from fluxstream.indexer.positions import ChangeAt, Positions
from fluxstream.indexer.postings import PostingsStore
from fluxstream.indexer.vector_store import VectorStore
from fluxstream.indexer.wiring import build_tokenizer, check_dependencies, open_embedder, open_redis
from fluxstream.schemas.cdc_mapping import CdcMapping
from fluxstream.schemas.decoding import DeadLetters, Rejected, decode_change
from fluxstream.schemas.events import DocumentChange, IndexUpdate, SourcePosition
from fluxstream.streams.schema_registry import SchemaRegistry
from fluxstream.streams.scopes import LiveScope, WriteScope
from fluxstream.streams.wire_format import AvroDecoder

log = get_logger("fluxstream.pipeline")

T = TypeVar("T")
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")
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
        """Open all or nothing: what opened before a failure is closed again (the caller may retry)."""
        embedder = await open_embedder(settings, child_process=settings.embed_in_child_process)
        redis = open_redis(redis_url)
        try:
            wait_aof = await _aof_enabled(redis)
            vectors = await VectorStore.connect(
                database_url, dimensions=embedder.dimensions, model_id=embedder.model_id,
                hnsw=settings.hnsw()[0],
            )
        except BaseException:
            await redis.aclose()
            await close_embedder(embedder)
            raise
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
    """The context the handlers run in: stores, write scope, positions, retries and dead letters."""

    def __init__(self, settings: Settings, resources: Resources, publish: Publisher,
                 cdc: CdcMapping | None = None, scope: WriteScope | None = None) -> None:
        self.settings = settings
        self.scope = scope or LiveScope(GenerationRegistry(resources.redis))
        self.cdc = cdc or CdcMapping()
        self.avro = AvroDecoder(self.cdc, SchemaRegistry.from_settings(settings),
                                readers=settings.schema_registry_cache_size)
        self.resources = resources
        self.publish = publish
        self.tokenizer = build_tokenizer(settings)
        self.positions = Positions(resources.redis)
        # Outside the live scope (a rebuild replaying history) the worker already dead-lettered the record once.
        self.dead_letters = DeadLetters(publish, settings.dead_letters_topic,
                                        min(settings.dead_letter_max_bytes, PRODUCER_MAX_REQUEST_BYTES),
                                        publishing=self.scope.live)
        self.retries = RetryPolicy(None, 0.1, settings.retry_max_backoff)
        self.ready = True

    @property
    def rejected(self) -> int:
        """Records refused (dead-lettered when live)."""
        return self.dead_letters.rejected

    async def reject(self, rejected: Rejected, record: Record) -> Awaitable[object]:
        """Queue ``record``'s dead letter (resolves once the broker has it)."""
        return await self.dead_letters.reject(rejected, position(record), record.key, record.value)

    async def announce(self, update: IndexUpdate) -> Awaitable[object]:
        return await self.publish(self.settings.index_updates_topic, update.doc_id.encode(), update.to_json())

    async def until_done(self, stage: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry ``attempt`` through outages (Redis, Postgres, embedding provider), not ready meanwhile."""

        def note(exc: BaseException, pause: float) -> None:
            self.ready = False
            metrics.READY.set(0)
            metrics.STAGE_RETRIES.labels(stage).inc()
            log.warning("stage_retry", stage=stage, error=repr(exc), retry_in=round(pause, 2))

        result = await retrying(attempt, self.retries, on_retry=note)
        if not self.ready:
            log.info("stage_recovered", stage=stage)
        self.ready = True
        metrics.READY.set(1)
        return result

    async def apply_isolating(
        self, stage: str, items: list[Item], apply: Callable[[list[Item]], Awaitable[Outcome]]
    ) -> tuple[list[Outcome], list[tuple[Item, str]]]:
        """Apply the whole batch; if it fails for a permanent reason, apply item by item.

        An item that fails on its own is returned as a failure (to be dead-lettered) so
        one poisonous event never blocks its partition nor kills the worker.
        """
        if not items:
            return [], []
        try:
            return [await self.until_done(stage, lambda: apply(items))], []
        except Exception:
            log.exception("batch_failed_isolating", stage=stage, size=len(items))
        outcomes: list[Outcome] = []
        failures: list[tuple[Item, str]] = []
        for item in items:
            try:
                outcomes.append(await self.until_done(stage, partial(apply, [item])))
            except Exception as exc:
                failures.append((item, f"{type(exc).__name__}: {exc}"))
        return outcomes, failures

    async def dead_letter_unhandled(self, record: Record, error: str) -> None:
        """The last resort for a record whose handler keeps failing on it alone (see
        streams.batching.until_handled): dead-lettered, so it no longer holds its partition. A change
        may have been written before it failed (publishing its follow-ups): no embed job will clear its
        pending mark, so it is cleared here."""
        await (await self.reject(Rejected("handler_failed", error[:2000]), record))
        change = decode_change(record.value, self.settings.max_text_bytes) \
            if record.topic == self.settings.documents_topic else None
        if isinstance(change, DocumentChange):
            targets = await self.until_done("bm25", lambda: self.scope.targets([change.collection]))
            source = position(record)
            handled = [ChangeAt(target.index, change.doc_id, source) for target in targets[change.collection]]
            await self.until_done("bm25", lambda: self.positions.clear_documents(handled))


def count_consumed(records: Sequence[Record]) -> None:
    for topic, count in Counter(r.topic for r in records).items():
        metrics.EVENTS.labels(topic, "consumed").inc(count)


def position(record: Record) -> SourcePosition:
    """Where ``record`` was read; built without validation (the broker's values are well-formed)."""
    timestamp_ms = int(record.timestamp * 1000) if record.timestamp else None
    return SourcePosition.trusted(topic=record.topic, partition=record.partition, offset=record.offset,
                                  timestamp_ms=timestamp_ms)
