-- The BM25 stage's handled offsets (indexer.positions). KEYS[1]: the applied-positions hash;
-- ARGV[1]: its cluster field, ARGV[2]: the cluster id ('' when unknown), then field, offset pairs.
-- Raises each field to its offset unless the hash belongs to another cluster (a worker still reading
-- an old broker): returns 0 then, 1 otherwise.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and stored and stored ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
