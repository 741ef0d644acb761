"""The vector-change log: what the vector stage wrote, per index, for validating cache entries.

The stream ``fx:{c}:vlog`` (``core.keyspace.vector_log``) holds one record per document the
vector stage wrote: ``doc`` (its id) and ``emb`` (its chunks' float32 embeddings, concatenated).
The worker appends *before and after* the PostgreSQL commit (``indexer.vector_stage``), so a
reader that sees the rows has always been able to see a log record of them. A vector search
notes the log's head before its k-NN query (``Retrieval.vector_log_position``); a cache hit
reads the records since then and checks them against the validity rules (``validity``).
The head counts entries ever added, so a reader notices when trimming dropped records it needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from fluxstream.core import keyspace
from fluxstream.indexer.vector_stage import VectorChange

MAXLEN = 20_000  # records kept per index (approximately): entries older than that are refused, not trusted
DOC_FIELD, EMBEDDINGS_FIELD = "doc", "emb"


class VectorLog:
    def __init__(self, redis: aioredis.Redis, maxlen: int = MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen

    async def head(self, collection: str) -> str:
        """The log position: ``<last id>/<entries ever added>`` (the count detects trimming later)."""
        try:
            info = await self.redis.execute_command("XINFO", "STREAM", keyspace.vector_log(collection))
        except ResponseError:  # no stream yet: nothing was ever logged
            return "0-0/0"
        last_id, added = _log_info(info)
        return f"{last_id}/{added}"

    async def record(self, changes: Sequence[VectorChange]) -> None:
        """Append each change to its index's log, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for change in changes:
                pipe.xadd(keyspace.vector_log(change.collection),
                          {DOC_FIELD: change.doc_id, EMBEDDINGS_FIELD: change.embeddings},
                          maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    async def changes_since(self, collection: str, position: str) -> list[tuple[str, bytes]] | None:
        """(doc_id, embeddings) logged after ``position`` (from ``head``); None if trimmed away since."""
        log_id, added = position.split("/")
        key = keyspace.vector_log(collection)
        async with self.redis.pipeline(transaction=True) as pipe:  # one snapshot: the count must match
            pipe.xrange(key, min=f"({log_id}")
            pipe.execute_command("XINFO", "STREAM", key)
            changes, info = await pipe.execute(raise_on_error=False)
        if isinstance(info, Exception):  # no stream yet: nothing was ever logged
            return []
        _, added_now = _log_info(info)
        if added_now - int(added) > len(changes):
            return None
        return [(f[DOC_FIELD.encode()].decode(), f[EMBEDDINGS_FIELD.encode()]) for _, f in changes]


def _log_info(info: dict[Any, Any]) -> tuple[str, int]:
    """(last id, entries ever added) from XINFO STREAM (redis-py parses it into a dict)."""
    fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
    return fields["last-generated-id"].decode(), int(fields["entries-added"])
