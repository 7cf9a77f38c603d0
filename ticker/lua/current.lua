-- The first read of a correction or retraction on one server: count the write against its
-- API key's rate, then read the brief it changes, in one step.
-- KEYS[1] the channel's briefs hash, KEYS[2] the key's rate counter.
-- ARGV[1] brief id, ARGV[2] the limit, ARGV[3] the counter's TTL.
-- Returns {-1, count} past the rate (nothing counted), {1, brief JSON}, or {1} when the
-- brief is not retained.
local over = over_rate(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
if over then return {-1, over} end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return {1} end
return {1, current}
