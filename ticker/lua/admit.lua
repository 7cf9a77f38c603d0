-- On a Redis Cluster, right before a write script: count the write against its API key's
-- rate and, for a publish, list its channel, in the {ticker} slot (the write script runs in
-- the channel's partition's slot and cannot touch these keys).
-- KEYS[1] the key's rate counter, KEYS[2] the channel set (a publish only).
-- ARGV[1] the limit, ARGV[2] the counter's TTL, ARGV[3] the channel.
-- Returns {-1, count} past the rate (nothing counted, the channel not listed), else {1}.
local over = over_rate(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if over then return {-1, over} end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[3]) end
return {1}
