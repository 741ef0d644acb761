"""Compare-and-set write plans for Redis: check hash fields, then apply many writes, atomically.

One Lua script serves every atomic multi-key write fluxstream makes (postings batches, cache
entries). All keys are declared (Redis Cluster requires it) and callers keep them in one hash
slot with a ``{collection}`` tag. Arguments are sent as strings (Lua would print large numbers,
such as versions and LSNs, in exponent form), except posting values, which stay below 2**32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

# ARGV[1]: {"checks": [check...], "ops": [op...]}, a check being one of
#   [key_no, field, expected or ""]             HGET key field must equal expected ("" = absent)
#   [key_no, field, bound, "<"]                 HGET key field must be absent or an integer below bound
# and an op one of
#   [cmd, key_no, args...]                      one command (cmd in `allowed`)
#   ["HSET*", field, key_no, value, key_no, value...]   HSET key field value, for many keys
#   ["HDEL*", field, key_no, key_no...]                 HDEL key field, for many keys
#   ["HSTAMP*", key_no, seq_key_no, field, field...]    seq = HINCRBY seq_key seq 1, then
#                                                       HSET key field seq ... in a few big commands
#   ["PENDING*", zset_no, hash_no, doc_id, offset, clear_at, only_if]
#                                               a vector-pending entry (see indexer.positions)
# The starred forms carry one chunk's postings (or a write's changed terms) in one small table,
# not one table per posting: the decode and dispatch they save is most of the script's time.
_SCRIPT = """
local function below(a, b)  -- decimal integer strings (b without sign): a < b, exactly at any size
  if string.sub(a, 1, 1) == '-' then return true end
  if #a ~= #b then return #a < #b end
  return a < b
end
local plan = cjson.decode(ARGV[1])
for _, check in ipairs(plan.checks) do
  local current = redis.call('HGET', KEYS[check[1]], check[2])
  if check[4] == '<' then
    if current and not below(current, check[3]) then return {0, KEYS[check[1]]} end
  else
    if current == false then current = '' end
    if current ~= check[3] then
      return {0, KEYS[check[1]]}
    end
  end
end
local allowed = {HSET=1, HDEL=1, DEL=1, HINCRBY=1, SADD=1, SET=1, EXPIRE=1, ZADD=1, XADD=1}
local call = redis.call
for _, op in ipairs(plan.ops) do
  local cmd = op[1]
  if cmd == 'HSET*' then
    local field = op[2]
    for i = 3, #op, 2 do call('HSET', KEYS[op[i]], field, op[i + 1]) end
  elseif cmd == 'HDEL*' then
    local field = op[2]
    for i = 3, #op do call('HDEL', KEYS[op[i]], field) end
  elseif cmd == 'HSTAMP*' then
    local key, seq = KEYS[op[2]], call('HINCRBY', KEYS[op[3]], 'seq', 1)
    local args = {}
    for i = 4, #op do args[#args + 1] = op[i]; args[#args + 1] = seq end
    for i = 1, #args, 1000 do call('HSET', key, unpack(args, i, math.min(i + 999, #args))) end
  elseif cmd == 'PENDING*' then
    local zset, hash, doc, entry, only_if = KEYS[op[2]], KEYS[op[3]], op[4], op[5] .. ':' .. op[6], op[7]
    local entries = call('HGET', hash, doc)
    if not entries then  -- none, or a score written before entries were kept: it clears at itself
      local score = call('ZSCORE', zset, doc)
      entries = score and string.format('%d:%d ', tonumber(score), tonumber(score)) or ''
    end
    local wanted = only_if == ''
    for clear_at in string.gmatch(entries, '%d+:(%d+) ') do wanted = wanted or clear_at == only_if end
    if wanted and not string.find(' ' .. entries, ' ' .. entry .. ' ', 1, true) then
      entries = entries .. entry .. ' '
      local low
      for o in string.gmatch(entries, '(%d+):%d+ ') do
        o = tonumber(o)
        if low == nil or o < low then low = o end
      end
      call('HSET', hash, doc, entries)
      call('ZADD', zset, low, doc)
    end
  elseif allowed[cmd] == nil then
    return redis.error_reply('unsupported op ' .. tostring(cmd))
  else
    call(cmd, KEYS[op[2]], unpack(op, 3))
  end
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

    def stamp_fields(self, key: str, seq_key: str, fields: Iterable[str]) -> None:
        """Bump the ``seq`` field of hash ``seq_key`` and set every field of ``key`` to the new value."""
        self.ops.append(["HSTAMP*", self.key(key), self.key(seq_key), *fields])

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
