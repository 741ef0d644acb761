"""Building shared components from settings, so the worker and the query service agree exactly.

The tokenizer and the embedder must be identical on both sides (same terms, same
vector space); building them in one place guarantees it. In the indexer layer, below both the
query service and the worker, beside the parts it builds.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from fluxstream.core.redis_packing import with_c_packing
from fluxstream.core.settings import Settings
from fluxstream.indexer.embedders.base import Embedder
from fluxstream.indexer.embedders.factory import embedder_from_settings
from fluxstream.indexer.tokenizer import Tokenizer, parse_stopwords
from fluxstream.indexer.vector_store import VectorStore


def build_tokenizer(settings: Settings) -> Tokenizer:
    return Tokenizer(parse_stopwords(settings.stopwords), settings.stemmer.strip().lower())


async def open_embedder(settings: Settings, *, child_process: bool = False) -> Embedder:
    """The configured embedder with a known vector size (the pgvector column needs it up front).

    ``child_process``: the local model computes in child processes (the indexing worker's choice, see
    indexer.embedders.child_process); the query service keeps it in-process, where a query costs less.
    """
    embedder = embedder_from_settings(settings, child_process=child_process)
    if not embedder.dimensions:
        await embedder.probe_dimensions()  # type: ignore[attr-defined]  # OpenAI-compatible without a size set
    return embedder


def open_redis(url: str) -> aioredis.Redis:
    """A client whose commands run once more, on a fresh connection, when their pooled connection is dead.

    ``from_url`` clients do not retry at all: after a Redis restart every pooled connection failed
    its next command once (4 of 8 parallel searches answered 503 while ``/readyz`` said ready).
    Only connection errors are retried, never timeouts: a slow command is not sent twice.
    """
    retry = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    return with_c_packing(aioredis.from_url(url, health_check_interval=10, socket_timeout=10,
                                            socket_connect_timeout=5, retry=retry))


async def check_dependencies(redis: aioredis.Redis, vectors: VectorStore) -> dict[str, bool]:
    """Ping Redis and PostgreSQL (2 s each) for readiness endpoints."""
    status = {}
    for name, check in (("redis", redis.ping), ("postgres", vectors.ping)):
        try:
            await asyncio.wait_for(check(), timeout=2)
            status[name] = True
        except Exception:
            status[name] = False
    return status
