-- DEL KEYS[1] only while it still holds ARGV[1] (query.cache: a newer entry may own an exact key now).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0
