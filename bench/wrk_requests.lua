-- The requests of scripts/bench --scenarios http (bench/http_bench.py), and what came back.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk_requests.lua [-H 'Name: value' ...] URL \
--       -- METHOD BODY IDEMPOTENCY_PREFIX [EXPECTED_STATUS]
--
-- METHOD: GET or POST; BODY: the request body ("" for none); IDEMPOTENCY_PREFIX: "" for
-- none, else every request gets its own "Idempotency-Key: PREFIX-t<thread>-<n>" (a publish
-- retried with a key already used is answered from the idempotency record, a cheaper path
-- than the one measured); EXPECTED_STATUS: the first answer with another status is kept
-- (its status and the start of its body) to say what went wrong. Headers that never change
-- come with wrk's -H.
--
-- Without a prefix the request is built once (wrk's static request); with one it is built
-- for every request, for ticker and for the bare baseline alike. Every answer's status is
-- counted (and the "Idempotent-Replayed" answers) so that the runner can refuse a window
-- whose answers were not the expected ones; at the end one line "wrk-json: {...}" gives
-- the counts, wrk's own totals and the latency percentiles (microseconds).

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

local function idempotent_request()
   counter = counter + 1
   wrk.headers["Idempotency-Key"] = prefix .. counter
   return wrk.format()
end

function init(args)
   statuses, replayed, counter, unexpected = {}, 0, 0, ""
   expected = tonumber(args[4] or "")
   wrk.method = args[1] or "GET"
   if args[2] and args[2] ~= "" then
      wrk.body = args[2]
   end
   if args[3] and args[3] ~= "" then
      prefix = args[3] .. "-t" .. thread_id .. "-"
      request = idempotent_request
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if expected and status ~= expected and unexpected == "" then
      unexpected = status .. " " .. string.sub(body or "", 1, 300)
   end
   if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
      replayed = replayed + 1
   end
end

function done(summary, latency, requests)
   local counts, replays, first_unexpected = {}, 0, ""
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + n
      end
      replays = replays + thread:get("replayed")
      if first_unexpected == "" then
         first_unexpected = thread:get("unexpected")
      end
   end
   local parts = {}
   for status, n in pairs(counts) do
      parts[#parts + 1] = string.format('"%d": %d', status, n)
   end
   local e = summary.errors
   io.write(string.format(
      'wrk-json: {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
      '"statuses": {%s}, "replayed": %d, "unexpected": "%s"}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, table.concat(parts, ", "), replays,
      json_text(first_unexpected)))
end

-- A JSON string's inside: quotes and backslashes escaped, control characters as spaces.
function json_text(s)
   local escaped = string.gsub(s, '[\\"]', '\\%0')
   return (string.gsub(escaped, '%c', ' '))
end
