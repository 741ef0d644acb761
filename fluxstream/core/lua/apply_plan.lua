-- A compare-and-set write plan (indexer.redis_plan.Plan): check hash fields, then apply every write,
-- atomically. KEYS: every key the plan touches (declared, as Redis Cluster requires; one hash slot).
-- ARGV[1]: {"checks": [check...], "ops": [op...]}, a check being one of
--   [key_no, field, expected or ""]             HGET key field must equal expected ("" = absent)
--   [key_no, field, bound, "<"]                 HGET key field must be absent or an integer below bound
-- and an op one of
--   [cmd, key_no, args...]                      one command (cmd in `allowed`)
--   ["HSET*", field, key_no, value, key_no, value...]   HSET key field value, for many keys
--   ["HDEL*", field, key_no, key_no...]                 HDEL key field, for many keys
--   ["HSTAMP*", key_no, seq_key_no, seq_field, field, field...]
--                                               seq = HINCRBY seq_key seq_field 1, then
--                                               HSET key field seq ... in a few big commands
--   ["PENDING*", zset_no, hash_no, doc_id, offset, clear_at, only_if]
--                                               a vector-pending entry (see indexer.positions)
-- The starred forms carry one chunk's postings (or a write's changed terms) in one small table,
-- not one table per posting: the decode and dispatch they save is most of the script's time.
-- Returns {1, ''} when applied, {0, key} when the check on key failed (nothing written).
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
    local key, seq = KEYS[op[2]], call('HINCRBY', KEYS[op[3]], op[4], 1)
    local args = {}
    for i = 5, #op do args[#args + 1] = op[i]; args[#args + 1] = seq end
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
