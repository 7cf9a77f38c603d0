-- Publish a brief, at most once per idempotency key, in one atomic step.
-- KEYS[1..5] as in append.lua; then, each only when its ARGV says so, in this order: the
-- idempotency record (ARGV[9] '1'), the channel set and the channel objects hash
-- (ARGV[10] '1'; on one server, where every key is at hand: on a Redis Cluster they are in
-- another slot, see admit.lua), the API key's rate counter (ARGV[11] the limit, '0' for
-- none; one server only too).
-- ARGV[1] brief JSON without its id, ARGV[2] request fingerprint, ARGV[3] idempotency
-- window (s), ARGV[4] max events, ARGV[5] max age (ms), ARGV[6] epoch for a new channel,
-- ARGV[7] the channel, ARGV[8] the doorbell's length (MAXLEN ~), ARGV[12] the counter's TTL,
-- ARGV[13] the brief's first version for its history (append.lua's record_first),
-- ARGV[14] '1' when a channel that was never created may be (auto_create_channels),
-- ARGV[15] the object it is created with (ticker.channels).
-- Returns {1, brief JSON} when published, {0, "fingerprint\nbrief JSON"} for a replay
-- (which is not counted), {-1, count} past the rate, {-2} for a channel that was never
-- created when it may not be (nothing written).
local log, briefs, meta, bell, history = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = 6
local idem, channels, objects
if ARGV[9] == '1' then idem = KEYS[n]; n = n + 1 end
if ARGV[10] == '1' then channels = KEYS[n]; objects = KEYS[n + 1]; n = n + 2 end
local limit = tonumber(ARGV[11])
if idem then
  local prior = redis.call('GET', idem)
  if prior then return {0, prior} end
end
-- A channel exists once published to (the set) or created (an object); one that is
-- neither is created here, or refused (before the rate: a refusal is not a write).
if channels and redis.call('SISMEMBER', channels, ARGV[7]) == 0
    and redis.call('HEXISTS', objects, ARGV[7]) == 0 then
  if ARGV[14] ~= '1' then return {-2, 0} end
  redis.call('HSET', objects, ARGV[7], ARGV[15])
end
if limit > 0 then
  local over = over_rate(KEYS[n], limit, tonumber(ARGV[12]))
  if over then return {-1, over} end
end
-- Before the channel's first event: a reader that loads the set knows every channel
-- that has one.
if channels then redis.call('SADD', channels, ARGV[7]) end
local body = ARGV[1]
local id = append(log, briefs, meta, ARGV[6], {'e', 'brief', 'd', body}, bell, ARGV[7], ARGV[8])
local full = '{"id":"' .. id .. '",' .. string.sub(body, 2)
redis.call('HSET', briefs, id, full)
record_first(history, id, ARGV[13])
trim(log, briefs, meta, history, tonumber(ARGV[4]), tonumber(ARGV[5]))
if idem then
  redis.call('SET', idem, ARGV[2] .. '\n' .. full, 'EX', tonumber(ARGV[3]))
end
return {1, full}
