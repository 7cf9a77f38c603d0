-- Shared by every script that appends an event to a channel's log.
-- KEYS[1] log stream, KEYS[2] briefs hash (id -> current brief JSON), KEYS[3] meta hash,
-- KEYS[4] the doorbell stream (ticker:bell), KEYS[5] history hash (id -> the brief's
-- versions, ticker.history).
--
-- Retention trims the log exactly (oldest first, at most 1000 entries per call) so that
-- the meta field 'floor' always holds the newest removed ID: a client whose cursor is at
-- or after the floor can be resumed exactly; one before it cannot (never partially).

local function forget(log, briefs, meta, history, entries)
  local last = nil
  for _, entry in ipairs(entries) do
    local id, fields = entry[1], entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' and fields[i + 1] == 'brief' then
        redis.call('HDEL', briefs, id)
        redis.call('HDEL', history, id)  -- a brief's history goes with it
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

local function trim(log, briefs, meta, history, maxlen, maxage_ms)
  local excess = redis.call('XLEN', log) - maxlen
  if excess > 0 then
    forget(log, briefs, meta, history, redis.call('XRANGE', log, '-', '+', 'COUNT', math.min(excess, 1000)))
  end
  if maxage_ms > 0 then
    local t = redis.call('TIME')
    local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - maxage_ms
    if cutoff > 0 then
      forget(log, briefs, meta, history,
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

-- One version of a brief in its history (ticker.history): 'entry' is its JSON object
-- without the event ID, which is spliced in first ('{"event":"<id>",...'). A brief's
-- versions are one hash field, each version's JSON on a line of its own (JSON text
-- never holds a raw newline), oldest first.
local function version_line(event_id, entry)
  return '{"event":"' .. event_id .. '",' .. string.sub(entry, 2)
end

-- A published brief's first version: its history is new (no read needed).
local function record_first(history, brief_id, entry)
  redis.call('HSET', history, brief_id, version_line(brief_id, entry))
end

-- A later version. Past 'cap' versions the oldest but the first (the brief as
-- published) is dropped. A brief published before histories were kept gets one here.
local function record(history, brief_id, event_id, entry, cap)
  local line = version_line(event_id, entry)
  local past = redis.call('HGET', history, brief_id)
  if not past then
    redis.call('HSET', history, brief_id, line)
    return
  end
  local _, breaks = string.gsub(past, '\n', '')
  if breaks + 1 >= cap then
    local first = string.find(past, '\n', 1, true)
    local second = string.find(past, '\n', first + 1, true)
    if second then
      past = string.sub(past, 1, first) .. string.sub(past, second + 1)
    else
      past = string.sub(past, 1, first - 1)
    end
  end
  redis.call('HSET', history, brief_id, past .. '\n' .. line)
end
