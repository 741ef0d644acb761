-- Drop vector-pending entries that handled jobs clear (indexer.positions; entry format there).
-- KEYS: the pending sorted set, its entries hash; ARGV: mode, doc_id, offset, doc_id, offset, ...
-- mode "upto": drop entries clearing at or below the offset; "at": only those clearing exactly at it.
local function drops(clear_at, offset)
  if ARGV[1] == 'at' then return tonumber(clear_at) == offset end
  return tonumber(clear_at) <= offset
end
for i = 2, #ARGV, 2 do
  local doc, upto = ARGV[i], tonumber(ARGV[i + 1])
  local entries = redis.call('HGET', KEYS[2], doc)
  if not entries then  -- a score written before entries were kept: it clears at itself
    local score = redis.call('ZSCORE', KEYS[1], doc)
    if score and drops(score, upto) then redis.call('ZREM', KEYS[1], doc) end
  else
    local kept, low = '', nil
    for offset, clear_at in string.gmatch(entries, '(%d+):(%d+) ') do
      if not drops(clear_at, upto) then
        kept = kept .. offset .. ':' .. clear_at .. ' '
        if low == nil or tonumber(offset) < low then low = tonumber(offset) end
      end
    end
    if low == nil then
      redis.call('HDEL', KEYS[2], doc)
      redis.call('ZREM', KEYS[1], doc)
    elseif kept ~= entries then
      redis.call('HSET', KEYS[2], doc, kept)
      redis.call('ZADD', KEYS[1], low, doc)
    end
  end
end
return 1
