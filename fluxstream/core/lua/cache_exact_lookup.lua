-- An exact cache hit in one round trip (query.cache): the entry the exact key names, its query terms'
-- current change stamps, the collection's statistics the replay scores with, the current records of
-- the chunks the entry answered with (usually the answer again, so the replay needs no fetch), all one
-- snapshot; and the entry's LRU touch. The entry, stamp, meta and chunk keys are read by name (not
-- declared): they share the collection's hash tag with KEYS[1], so they live in the same slot.
-- KEYS: the exact key, the LRU sorted set.
-- ARGV: entry key prefix, term-versions key, now, meta key, chunk key prefix, n, then n meta fields
-- (the statistics, then the change counter: indexer.postings names them), then the chunk record fields.
local id = redis.call('GET', KEYS[1])
if not id then return false end
local fields = redis.call('HMGET', ARGV[1] .. id, 'query', 'retrieval', 'embedding', 'threshold', 'terms', 'hits')
if not fields[2] then return false end
local stamps = {}
if fields[5] then
  local terms = cjson.decode(fields[5])
  if #terms > 0 then stamps = redis.call('HMGET', ARGV[2], unpack(terms)) end
end
redis.call('ZADD', KEYS[2], ARGV[3], id)
local n = tonumber(ARGV[6])
local meta = redis.call('HMGET', ARGV[4], unpack(ARGV, 7, 6 + n))
local records = {}
if fields[6] then
  for i, chunk_id in ipairs(cjson.decode(fields[6])) do
    records[i] = redis.call('HMGET', ARGV[5] .. chunk_id, unpack(ARGV, 7 + n))
  end
end
return {id, fields[1], fields[2], fields[3] or '', fields[4] or '', stamps, meta, fields[6] or '[]', records}
