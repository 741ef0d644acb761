-- HMGET the fields ARGV of every key in KEYS, in one command (indexer.postings: hot reads of chunk and
-- document records, where a pipeline of one command per key costs the client more than the server).
local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end return out
