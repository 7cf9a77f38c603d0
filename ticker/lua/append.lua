-- Shared by every script that appends an event to a channel's log.
-- KEYS[1] log stream, KEYS[2] briefs hash (id -> current brief JSON), KEYS[3] meta hash,
-- KEYS[4] the doorbell stream (ticker:bell).
--
-- Retention trims the log exactly (oldest first, at most 1000 entries per call) so that
-- the meta field 'floor' always holds the newest removed ID: a client whose cursor is at
-- or after the floor can be resumed exactly; one before it cannot (never partially).

local function forget(log, briefs, meta, entries)
  local last = nil
  for _, entry in ipairs(entries) do
    local id, fields = entry[1], entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' and fields[i + 1] == 'brief' then
        redis.call('HDEL', briefs, id)
      end
    end
    last = id
  end
  if last then
    local dash = string.find(last, '-', 1, true)
    local ms, seq = string.sub(last, 1, dash - 1), tonumber(string.sub(last, dash + 1))
    redis.call('XTRIM', log, 'MINID', ms .. '-' .. string.format('%.0f', seq + 1))
    redis.call('HSET', meta, 'floor', last)
  end
end

local function trim(log, briefs, meta, maxlen, maxage_ms)
  local excess = redis.call('XLEN', log) - maxlen
  if excess > 0 then
    forget(log, briefs, meta, redis.call('XRANGE', log, '-', '+', 'COUNT', math.min(excess, 1000)))
  end
  if maxage_ms > 0 then
    local t = redis.call('TIME')
    local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - maxage_ms
    if cutoff > 0 then
      forget(log, briefs, meta,
        redis.call('XRANGE', log, '-', string.format('%.0f', cutoff - 1), 'COUNT', 1000))
    end
  end
end

-- Each entry carries its log's epoch ('p'), so that a reader following the log sees at
-- once when the log it knew was lost and a new one began.
-- Every append also rings the doorbell: one entry 'c' <channel> on the bell stream, which
-- every process's reader blocks on (one key, whatever the number of channels it follows),
-- in the same script, so that no event is ever in a log without its bell entry.
local function append(log, briefs, meta, epoch, fields, bell, channel, bell_maxlen)
  local current = redis.call('HGET', meta, 'epoch')
  if not current then
    current = epoch
    redis.call('HSET', meta, 'epoch', current)
  end
  table.insert(fields, 'p')
  table.insert(fields, current)
  local id = redis.call('XADD', log, '*', unpack(fields))
  redis.call('HSET', meta, 'last', id)
  redis.call('XADD', bell, 'MAXLEN', '~', bell_maxlen, '*', 'c', channel)
  return id
end
