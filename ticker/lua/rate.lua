-- Shared by every script that counts a write against its API key's rate (ticker.ratelimit):
-- a fixed window, one counter per key and window. Returns nil when the write may go on (it
-- is counted), else the count already reached: then nothing is counted and the caller
-- writes nothing.
local function over_rate(counter, limit, ttl)
  local count = tonumber(redis.call('GET', counter) or '0')
  if count >= limit then return count end
  if redis.call('INCR', counter) == 1 then redis.call('EXPIRE', counter, ttl) end
  return nil
end
