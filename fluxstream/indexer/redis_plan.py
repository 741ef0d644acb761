"""Compare-and-set write plans for Redis: check hash fields, then apply many writes, atomically.

One Lua script (``core/lua/apply_plan.lua``, which documents the plan's encoding) serves every
atomic multi-key write fluxstream makes (postings batches, cache entries). All keys are declared
(Redis Cluster requires it) and callers keep them in one hash slot with a ``{collection}`` tag.
Arguments are sent as strings (Lua would print large numbers, such as versions and LSNs, in
exponent form), except posting values, which stay below 2**32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from fluxstream.core import lua


class Plan:
    """Accumulates declared keys, field checks and write ops for one script call."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._key_no: dict[str, int] = {}
        self.checks: list[list[Any]] = []
        self.ops: list[list[Any]] = []

    def key(self, key: str) -> int:
        number = self._key_no.get(key)
        if number is None:
            self.keys.append(key)
            number = self._key_no[key] = len(self.keys)
        return number

    def check(self, key: str, field: str, expected: str | int | None) -> None:
        """Refuse the whole plan unless HGET key field equals ``expected`` (None: field absent)."""
        self.checks.append([self.key(key), field, "" if expected is None else str(expected)])

    def check_below(self, key: str, field: str, bound: int) -> None:
        """Refuse the whole plan if HGET key field holds an integer at or above ``bound`` (a floor)."""
        self.checks.append([self.key(key), field, str(bound), "<"])

    def pending(self, zset: str, hash_key: str, doc_id: str, offset: int, clear_at: int,
                only_if: int | None = None) -> None:
        """Add the vector-pending entry ``offset:clear_at`` of ``doc_id`` (format: indexer.positions);
        with ``only_if``, only while the document has an entry that clears at ``only_if``."""
        self.ops.append(["PENDING*", self.key(zset), self.key(hash_key), doc_id, str(offset), str(clear_at),
                         "" if only_if is None else str(only_if)])

    def op(self, cmd: str, key: str, *args: Any) -> None:
        self.ops.append([cmd, self.key(key), *map(str, args)])

    def set_field_on_keys(self, field: str, keys: Iterable[str], values: Iterable[int]) -> None:
        """HSET key field value for many keys (one chunk's postings): the hot path of indexing."""
        key = self.key
        op: list[Any] = ["HSET*", field]
        for k, v in zip(keys, values, strict=True):
            op += (key(k), v)
        self.ops.append(op)

    def delete_field_on_keys(self, field: str, keys: Iterable[str]) -> None:
        """HDEL key field for many keys (a replaced chunk's postings)."""
        key = self.key
        self.ops.append(["HDEL*", field, *(key(k) for k in keys)])

    def stamp_fields(self, key: str, seq_key: str, seq_field: str, fields: Iterable[str]) -> None:
        """Bump field ``seq_field`` of hash ``seq_key`` and set every field of ``key`` to the new value."""
        self.ops.append(["HSTAMP*", self.key(key), self.key(seq_key), seq_field, *fields])

    def encoded(self) -> bytes:
        return orjson.dumps({"checks": self.checks, "ops": self.ops})


class PlanRunner:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = lua.register(redis, "apply_plan")

    async def run(self, plan: Plan) -> str | None:
        """Apply ``plan``; returns None on success, else the key whose check failed (nothing written)."""
        if not plan.ops:
            return None
        ok, key = await self._script(keys=plan.keys, args=[plan.encoded()])
        if int(ok):
            return None
        return key.decode() if isinstance(key, bytes) else str(key)


class HashFieldRaiser:
    """HSET key field value only if value is larger than the stored number: monotonic watermarks."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = lua.register(redis, "raise_field")

    async def __call__(self, key: str, field: str, value: int) -> None:
        await self._script(keys=[key], args=[field, str(value)])
