-- Correct or retract a brief: compare-and-set on its current JSON, then append the event.
-- KEYS[1..5] as in append.lua. ARGV[1] brief id, ARGV[2] the JSON the caller read,
-- ARGV[3] the new JSON, ARGV[4] event kind, ARGV[5] max events, ARGV[6] max age (ms),
-- ARGV[7] epoch, ARGV[8] the channel, ARGV[9] the doorbell's length (MAXLEN ~),
-- ARGV[10] the version for the brief's history (append.lua's record), ARGV[11] its cap.
-- Returns {1, event id}, {0} if the brief is gone, {-1} if it changed since the caller
-- read it (the caller reads again and retries).
local log, briefs, meta, bell, history = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local current = redis.call('HGET', briefs, ARGV[1])
if not current then return {0} end
if current ~= ARGV[2] then return {-1} end
local eid = append(log, briefs, meta, ARGV[7], {'e', ARGV[4], 'b', ARGV[1], 'd', ARGV[3]},
  bell, ARGV[8], ARGV[9])
redis.call('HSET', briefs, ARGV[1], ARGV[3])
record(history, ARGV[1], eid, ARGV[10], tonumber(ARGV[11]))
trim(log, briefs, meta, history, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {1, eid}
