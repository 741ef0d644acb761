"""Compare-and-set write plans for Redis: check hash fields, then apply many writes, atomically.

One Lua script serves every atomic multi-key write fluxstream makes (postings batches, cache
entries). All keys are declared (Redis Cluster requires it) and callers keep them in one hash
slot with a ``{collection}`` tag. Every argument is sent as a string: Lua would print large
numbers (versions, LSNs) in exponent form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

# ARGV[1]: {"checks": [[key_no, field, expected or ""]...], "ops": [[cmd, key_no, args...]...]}
_SCRIPT = """
local plan = cjson.decode(ARGV[1])
for _, check in ipairs(plan.checks) do
  local current = redis.call('HGET', KEYS[check[1]], check[2])
  if current == false then current = '' end
  if current ~= check[3] then
    return {0, KEYS[check[1]]}
  end
end
local allowed = {HSET=1, HDEL=1, DEL=1, HINCRBY=1, SADD=1, SET=1, EXPIRE=1, ZADD=1, XADD=1}
for _, op in ipairs(plan.ops) do
  local cmd, key = op[1], KEYS[op[2]]
  if allowed[cmd] == nil then
    return redis.error_reply('unsupported op ' .. tostring(cmd))
  end
  redis.call(cmd, key, unpack(op, 3))
end
return {1, ''}
"""


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

    def op(self, cmd: str, key: str, *args: Any) -> None:
        self.ops.append([cmd, self.key(key), *map(str, args)])

    def hash_field_ops(self, cmd: str, field: str, keys: Iterable[str], values: Iterable[str] | None = None) -> None:
        """``cmd key field [value]`` for many keys at once (HSET/HDEL of one chunk's postings): the
        hot path of indexing, so one list comprehension instead of an ``op`` call per key."""
        key = self.key
        if values is None:
            self.ops.extend([cmd, key(k), field] for k in keys)
        else:
            self.ops.extend([cmd, key(k), field, v] for k, v in zip(keys, values, strict=True))

    def encoded(self) -> bytes:
        return orjson.dumps({"checks": self.checks, "ops": self.ops})


class PlanRunner:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(_SCRIPT)

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

    _SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(self._SCRIPT)

    async def __call__(self, key: str, field: str, value: int) -> None:
        await self._script(keys=[key], args=[field, str(value)])
