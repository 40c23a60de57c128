-- Shared by every script (prepended by app/store/scripts.py). Times are epoch ms.
-- Session state hash fields: conv (linked conversation), flush ("1": at-link flush pending),
-- qf/ql (first/last arrival of queued post-link actions), lease/lease_until/lk/ff (the note in
-- flight: token, expiry, kind, qf at claim), did (delivery id kept across retries), att/fail0/
-- retry_at/err (retry bookkeeping), summary, seq, uid, email, created/updated (epoch seconds).
local unpack = unpack or table.unpack

local function num(v)
  if v then return tonumber(v) end
  return nil
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function session_keys(member)
  local p = 'cb:{' .. member .. '}:'
  return p .. 'state', p .. 'pre', p .. 'out', p
end

-- Sorted-set add/remove in chunks: Lua's unpack has a stack limit.
local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 500 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 499, #pairs)))
  end
end

local function zrem_from(key, list, from)
  for i = from, #list, 500 do
    redis.call('ZREM', key, unpack(list, i, math.min(i + 499, #list)))
  end
end

-- Close the note in flight. With restore, its actions count as queued since their first
-- arrival again (the note was not delivered).
local function end_flight(st, restore)
  local f = redis.call('HMGET', st, 'lk', 'ff', 'qf')
  if restore and f[1] == 'out' and f[2] then
    local qf = num(f[3])
    if not qf or tonumber(f[2]) < qf then redis.call('HSET', st, 'qf', f[2]) end
  end
  redis.call('HDEL', st, 'lease', 'lease_until', 'lk', 'ff')
end

-- When the session's next note is due, or nil when it has nothing to post.
-- The at-link flush goes first, then queued actions (debounced, bounded by max wait),
-- then a held summary.
local function next_due(st, pre, out, now, debounce, max_wait)
  local s = redis.call('HMGET', st, 'conv', 'flush', 'qf', 'ql', 'retry_at', 'summary')
  if not s[1] then return nil end
  local due = nil
  if s[2] == '1' and redis.call('ZCARD', pre) > 0 then
    due = now
  elseif redis.call('ZCARD', out) > 0 then
    due = math.min((num(s[4]) or now) + debounce, (num(s[3]) or now) + max_wait)
  elseif s[6] then
    due = now
  end
  local retry_at = num(s[5])
  if due and retry_at and retry_at > due then due = retry_at end
  return due
end

-- Put the session in the due queue or take it out. A session with a note in flight stays
-- scored at its lease expiry; the ack reschedules it.
local function schedule(st, pre, out, due_key, member, now, debounce, max_wait)
  local lease_until = num(redis.call('HGET', st, 'lease_until'))
  if lease_until and lease_until > now then return lease_until end
  local due = next_due(st, pre, out, now, debounce, max_wait)
  if due then
    redis.call('ZADD', due_key, fmt(due), member)
  else
    redis.call('ZREM', due_key, member)
  end
  return due
end

-- Replay protection: records a request's field in the session's ``seen`` hash; true when the
-- request was applied before (then the caller changes nothing). '' means no record is kept.
local function replayed(seen, field, ttl_s)
  if field == '' then return false end
  if redis.call('HSETNX', seen, field, '') == 0 then return true end
  redis.call('EXPIRE', seen, ttl_s)
  return false
end

local function touch(st, now, ttl_s)
  redis.call('HSETNX', st, 'created', fmt(now / 1000))
  redis.call('HSET', st, 'updated', fmt(now / 1000))
  redis.call('EXPIRE', st, ttl_s)
end

-- Session FSM, times in epoch seconds. Timeouts are applied whenever the state is
-- read or changed, so no timer is needed: proactive/reactive fall back to thinking
-- interaction_timeout after the last interaction, and a cooldown starts at that moment.
local function fsm_normalize(st, now_s, timeout_s, cooldown_s)
  local f = redis.call('HMGET', st, 'fsm', 'last_interaction_at')
  local state = f[1] or 'thinking'
  if state ~= 'thinking' then
    local last = num(f[2]) or now_s
    if now_s - last >= timeout_s then
      redis.call('HSET', st, 'fsm', 'thinking', 'cooldown_until', fmt(last + timeout_s + cooldown_s))
      state = 'thinking'
    end
  end
  return state
end

-- May a proactive message start now? Returns allowed, reason (the v2_* reasons).
local function proactive_gate(st, now_s, timeout_s, cooldown_s)
  local state = fsm_normalize(st, now_s, timeout_s, cooldown_s)
  if state ~= 'thinking' then return false, 'v2_state_' .. state end
  local cooldown_until = num(redis.call('HGET', st, 'cooldown_until'))
  if cooldown_until and cooldown_until > now_s then return false, 'v2_cooldown_active' end
  return true, 'ok'
end

-- A note's delivery: its id (kept across retries, the platform's idempotency key), its kind,
-- the session's action counter when it was first tried (its retries carry exactly the actions
-- queued up to then), and its retry bookkeeping.
local function forget_delivery(st)
  redis.call('HDEL', st, 'did', 'dk', 'pin', 'att', 'fail0', 'retry_at', 'err')
end
