-- wrk script for B1 (bench/throughput.py): POST 10-action batches with the bearer token,
-- rotating over the linked sessions. Every action is new (its description carries the run
-- tag, the thread and the request number), so the service stores it instead of counting a
-- redelivery. The body is built per request, exactly as a sender would.
--   wrk -t1 -c32 -d15s -s bench/wrk_ingest.lua http://127.0.0.1:PORT \
--       -- /actions/<product> <token> <sessions> <session prefix> <run tag> [actions per batch]
-- done() prints one line "WRK_RESULT {json}" for the bench to read.

local path, headers, sessions, prefix, tag, actions_per_batch
local n = 0
local base_ts = os.time()
local thread_count = 0

local action_format = '{"description":"User clicked Export CSV button %s.%d.%d.%d on the'
  .. ' Reports page","timestamp_start":%.3f,"timestamp_end":%.3f,"index":%d,"type":"click",'
  .. '"title":"Reports - Acme","canonical_url":"https://app.acme.example/reports/:id",'
  .. '"raw_url":"https://app.acme.example/reports/%d?tab=summary"}'

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

function init(args)
  path = args[1]
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[2],
  }
  sessions = tonumber(args[3])
  prefix = args[4]
  tag = args[5]
  actions_per_batch = tonumber(args[6] or "10")
  tid = tid or 1
end

function request()
  n = n + 1
  local sid = prefix .. ((n + tid * 7919) % sessions)
  local ts = base_ts + n * 0.01
  local actions = {}
  for i = 1, actions_per_batch do
    local start = ts + i * 0.0005
    actions[i] = string.format(action_format, tag, tid, n, i, start, start + 0.25, i, n)
  end
  local body = '{"session_id":"' .. sid .. '","user_id":"user-' .. sid .. '","actions":['
    .. table.concat(actions, ",") .. ']}'
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"latency_p50_us":%d,"latency_p99_us":%d,"latency_mean_us":%.1f,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
