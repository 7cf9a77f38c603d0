-- On a Redis Cluster, right before a write script: count the write against its API key's
-- rate and, for a publish, list its channel (creating its object if it was never created),
-- in the {ticker} slot (the write script runs in the channel's partition's slot and cannot
-- touch these keys).
-- KEYS[1] the key's rate counter, KEYS[2] the channel set and KEYS[3] the channel objects
-- hash (a publish only).
-- ARGV[1] the limit ('0': no key to count against), ARGV[2] the counter's TTL, ARGV[3] the
-- channel, ARGV[4] '1' when a channel that was never created may be (auto_create_channels),
-- ARGV[5] the object it is created with.
-- Returns {-1, count} past the rate, {-2} for a channel that was never created when it may
-- not be (nothing counted, the channel not listed), else {1}.
local limit = tonumber(ARGV[1])
if KEYS[2] and redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0
    and redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 then
  if ARGV[4] ~= '1' then return {-2} end
  if limit > 0 then
    local over = over_rate(KEYS[1], limit, tonumber(ARGV[2]))
    if over then return {-1, over} end
  end
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
  redis.call('SADD', KEYS[2], ARGV[3])
  return {1}
end
if limit > 0 then
  local over = over_rate(KEYS[1], limit, tonumber(ARGV[2]))
  if over then return {-1, over} end
end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[3]) end
return {1}
