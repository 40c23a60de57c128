-- Shared by every script (prepended by app/store/scripts.py). Times are epoch ms unless a
-- field says seconds. Every key arrives in KEYS, named by the script's layout (K.<name>);
-- no script builds a key.
--
-- The session state hash (K.state), documented for operators in docs/delivery.md:
--   conversation, linked_at        the linked conversation and when it was linked
--   flush                          "1": the pre-link buffer waits for its at-link flush note
--   queued_since, queued_last      first and last arrival of actions queued after the link
--   lease, lease_until, lease_kind the note in flight: its lease token, expiry and kind
--   lease_queued_since             queued_since when that note was claimed
--   delivery_id, delivery_kind     the note being delivered (kept across its retries)
--   delivery_seq                   the action counter at its first try (it carries actions up
--                                  to there)
--   attempts, failing_since, retry_at, last_error   its retry bookkeeping
--   summary                        the latest summary, held until posted
--   seq                            the session's action counter (arrival order)
--   user_id, email                 the contact, as the last batch named it
--   fsm, last_interaction_at, cooldown_until, proactive_trigger   the assistance state machine
--                                  (seconds)
--   created, updated               epoch seconds
local unpack = unpack or table.unpack

local function num(v)
  if v then return tonumber(v) end
  return nil
end

local function fmt(x)
  return string.format('%.17g', x)
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
  local f = redis.call('HMGET', st, 'lease_kind', 'lease_queued_since', 'queued_since')
  if restore and f[1] == 'out' and f[2] then
    local since = num(f[3])
    if not since or tonumber(f[2]) < since then redis.call('HSET', st, 'queued_since', f[2]) end
  end
  redis.call('HDEL', st, 'lease', 'lease_until', 'lease_kind', 'lease_queued_since')
end

-- The scheduling rule, in one place: what the session's next note is and when it is due, or
-- nil when it has nothing to post. A dead letter not yet filed comes first (the worker files
-- it); then the at-link flush; then queued actions (debounced, bounded by the max wait); then a
-- held summary. A note waiting for its retry is not due before retry_at.
-- Returns kind ('dead', 'pre', 'out', 'summary' or nil) and the due time.
local function next_note(k, now, debounce, max_wait)
  if redis.call('EXISTS', k.dead) == 1 then return 'dead', now end
  local s = redis.call('HMGET', k.state, 'conversation', 'flush', 'queued_since', 'queued_last',
    'retry_at', 'summary')
  if not s[1] then return nil, nil end
  local kind, due = nil, nil
  if s[2] == '1' and redis.call('ZCARD', k.pre) > 0 then
    kind, due = 'pre', now
  elseif redis.call('ZCARD', k.out) > 0 then
    kind = 'out'
    due = math.min((num(s[4]) or now) + debounce, (num(s[3]) or now) + max_wait)
  elseif s[6] then
    kind, due = 'summary', now
  end
  local retry_at = num(s[5])
  if due and retry_at and retry_at > due then due = retry_at end
  return kind, due
end

local function next_due(k, now, debounce, max_wait)
  local _, due = next_note(k, now, debounce, max_wait)
  return due
end

-- Put the session in its shard's due queue or take it out. A session with a note in flight
-- stays scored at its lease expiry; the ack reschedules it. Returns the due time or nil.
local function schedule(k, member, now, debounce, max_wait)
  local lease_until = num(redis.call('HGET', k.state, 'lease_until'))
  if lease_until and lease_until > now then return lease_until end
  local due = next_due(k, now, debounce, max_wait)
  if due then
    redis.call('ZADD', k.due, fmt(due), member)
  else
    redis.call('ZREM', k.due, member)
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

-- Link the session to a conversation (the pre-link buffer then waits for its flush note).
local function set_link(k, conv, now, ttl_s)
  redis.call('HSET', k.state, 'conversation', conv, 'linked_at', fmt(now))
  if redis.call('ZCARD', k.pre) > 0 then
    redis.call('HSET', k.state, 'flush', '1')
    redis.call('EXPIRE', k.pre, ttl_s)
  end
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

-- Forget the note being delivered: its id, kind, action counter and retry bookkeeping.
local function forget_delivery(st)
  redis.call('HDEL', st, 'delivery_id', 'delivery_kind', 'delivery_seq', 'attempts',
    'failing_since', 'retry_at', 'last_error')
end
