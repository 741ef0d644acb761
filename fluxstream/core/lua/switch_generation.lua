-- Switches serving to the building generation (indexer.generations), if it still is the one building.
-- KEYS[1]: the generation alias hash; ARGV[1]: the generation, ARGV[2]: when the old one may be dropped.
-- Returns 1 when switched, 0 otherwise.
if redis.call('HGET', KEYS[1], 'state') ~= 'building' or redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then
  return 0
end
local serving = redis.call('HGET', KEYS[1], 'serving') or '1'
redis.call('HSET', KEYS[1], 'serving', ARGV[1], 'retiring', serving, 'retire_after', ARGV[2], 'state', 'idle')
redis.call('HDEL', KEYS[1], 'building')
return 1
