-- Starts a rebuild (indexer.generations) unless one is running or failed; the new generation is one past
-- any in use. KEYS[1]: the collection's generation alias hash; ARGV[1]: the initial progress (JSON).
-- Returns the new generation, or -1 when refused.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'building' or state == 'failed' then return -1 end
local serving = tonumber(redis.call('HGET', KEYS[1], 'serving') or '1')
local retiring = tonumber(redis.call('HGET', KEYS[1], 'retiring') or '0')
local highest = tonumber(redis.call('HGET', KEYS[1], 'highest') or '1')
local next_gen = math.max(serving, retiring, highest) + 1
redis.call('HSET', KEYS[1], 'serving', serving, 'building', next_gen, 'state', 'building', 'highest', next_gen,
           'progress', ARGV[1])
return next_gen
