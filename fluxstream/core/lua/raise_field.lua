-- HSET KEYS[1] ARGV[1] ARGV[2] only if ARGV[2] is larger than the stored number: a monotonic watermark.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
