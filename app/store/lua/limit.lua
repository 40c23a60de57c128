-- A product's outbound note budget, shared by every process: GCRA over one key holding the
-- theoretical arrival time (TAT, ms) of the next note. `interval_ms` is 60000 / notes per
-- minute; up to `burst` notes may start at once after a quiet spell, then one per interval.
-- take > 0: start up to that many notes now; take < 0: give that many unused ones back.
-- Returns {granted, next_free_ms}: how many may start, and when the next one may.
local now, interval, burst = tonumber(A.now_ms), tonumber(A.interval_ms), tonumber(A.burst)
local take = tonumber(A.take)
local tat = num(redis.call('GET', K.limiter)) or now
if tat < now then tat = now end
local granted = 0
if take > 0 then
  -- A note may start while the TAT it leaves is at most burst intervals ahead of now. The
  -- epsilon keeps a float quotient like 2.9999999 from costing a whole note.
  local room = math.floor((now + burst * interval - tat) / interval + 1e-9)
  granted = math.max(0, math.min(take, room))
  tat = tat + granted * interval
elseif take < 0 then
  tat = math.max(now, tat + take * interval)
end
if take ~= 0 then
  -- The key matters only while the TAT is ahead of the clock.
  redis.call('SET', K.limiter, fmt(tat), 'PX', math.ceil(tat - now) + 1000)
end
local next_free = math.max(now, tat - (burst - 1) * interval)
return {granted, fmt(next_free)}
