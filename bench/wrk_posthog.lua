-- wrk script for B8 (bench/posthog_intake.py): POST PostHog events, one a request, as the HTTP
-- Webhook destination sends them. Lua cannot sign cheaply, so every request is signed
-- beforehand: the pool file holds one a line, "<webhook-id>\t<webhook-timestamp>\t
-- <webhook-signature>\t<body>". Thread k of n takes every n-th line from the k-th, and sends
-- each once; a thread that runs out starts its lines again and counts what it resends (a
-- resent event is a duplicate to the service, which would measure its dedupe path instead).
-- Loading the pool happens before wrk starts its clock; its CPU time (os.clock, the process's:
-- exact with one thread) is reported, so the bench can leave it out of wrk's CPU during the run.
--   wrk -t1 -c32 -d10s -s bench/wrk_posthog.lua http://127.0.0.1:PORT \
--       -- /posthog/<product> <pool file> <threads>
-- done() prints one line "WRK_RESULT {json}" for the bench to read.

local path, headers
local ids, stamps, signatures, bodies = {}, {}, {}, {}
local size = 0
local thread_count = 0
local threads = {}
n = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  local stride = tonumber(args[3] or "1")
  tid = tid or 1
  local started = os.clock()
  local line_no = 0
  for line in io.lines(args[2]) do
    if line_no % stride == tid - 1 then
      local id, stamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)$")
      if not body then
        error("malformed pool line " .. (line_no + 1) .. " in " .. args[2])
      end
      size = size + 1
      ids[size], stamps[size], signatures[size], bodies[size] = id, stamp, signature, body
    end
    line_no = line_no + 1
  end
  if size == 0 then
    error("no request for thread " .. tid .. " in " .. args[2])
  end
  pool_size = size
  load_cpu_s = os.clock() - started
  headers = {["Content-Type"] = "application/json"}
end

function request()
  n = n + 1
  local k = (n - 1) % size + 1
  headers["webhook-id"] = ids[k]
  headers["webhook-timestamp"] = stamps[k]
  headers["webhook-signature"] = signatures[k]
  return wrk.format("POST", path, headers, bodies[k])
end

function done(summary, latency, requests)
  local built, repeats, load_cpu_s = 0, 0, 0
  for _, thread in ipairs(threads) do
    local made, pooled = thread:get("n"), thread:get("pool_size")
    built = built + made
    repeats = repeats + math.max(0, made - pooled)
    load_cpu_s = load_cpu_s + thread:get("load_cpu_s")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"latency_p50_us":%d,"latency_p99_us":%d,"latency_mean_us":%.1f,"latency_max_us":%d,'
      .. '"requests_built":%d,"requests_repeated":%d,"pool_load_cpu_s":%.3f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    built, repeats, load_cpu_s))
end
