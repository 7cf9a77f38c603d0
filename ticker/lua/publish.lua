-- Publish a brief, at most once per idempotency key, in one atomic step.
-- KEYS[1..4] as in append.lua; KEYS[5] the idempotency key (absent without one).
-- ARGV[1] brief JSON without its id, ARGV[2] request fingerprint, ARGV[3] idempotency
-- window (s), ARGV[4] max events, ARGV[5] max age (ms), ARGV[6] epoch for a new channel,
-- ARGV[7] the channel, ARGV[8] the doorbell's length (MAXLEN ~).
-- Returns {1, brief JSON} when published, {0, "fingerprint\nbrief JSON"} for a replay.
local log, briefs, meta, bell, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if idem then
  local prior = redis.call('GET', idem)
  if prior then return {0, prior} end
end
local body = ARGV[1]
local id = append(log, briefs, meta, ARGV[6], {'e', 'brief', 'd', body}, bell, ARGV[7], ARGV[8])
local full = '{"id":"' .. id .. '",' .. string.sub(body, 2)
redis.call('HSET', briefs, id, full)
trim(log, briefs, meta, tonumber(ARGV[4]), tonumber(ARGV[5]))
if idem then
  redis.call('SET', idem, ARGV[2] .. '\n' .. full, 'EX', tonumber(ARGV[3]))
end
return {1, full}
