-- Claim one session found due in its shard's queue: lease it and hand out what its next note
-- holds. Two workers may find the same session; only the first claims it (the score check).
-- A retried note is the same note: same delivery id, same kind, same actions (those queued up
-- to its first try); actions queued since then wait for the next note.
-- Dead letters left unfiled by a crash are handed out too, for the worker to file.
-- Returns {} when there is nothing to claim, else {kind, conversation, token, delivery id,
-- attempts, failing since, summary, actions, queued since, unfiled dead letters}; kind is ''
-- when only dead letters are handed out.
local st, pre, out = K.state, K.pre, K.out
local now, member, token = tonumber(A.now_ms), A.member, A.token
local max_actions = tonumber(A.max_note_actions)

local score = num(redis.call('ZSCORE', K.due, member))
if not score or score > now then return {} end
local unfiled = redis.call('HVALS', K.dead)
if redis.call('EXISTS', st) == 0 then
  if #unfiled == 0 then redis.call('ZREM', K.due, member) end
  return {'', '', '', '', '0', '', '', {}, fmt(now), unfiled}
end

-- The actions of a note: the earliest (by time) of those queued up to `upto`.
local function pinned(key, upto)
  local chosen = {}
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if tonumber(string.match(m, '^(%d+)|')) <= upto then
      chosen[#chosen + 1] = m
      if #chosen >= max_actions then break end
    end
  end
  return chosen
end

local function has_content(kind)
  if kind == 'pre' then return redis.call('ZCARD', pre) > 0 end
  if kind == 'out' then return redis.call('ZCARD', out) > 0 end
  return redis.call('HEXISTS', st, 'summary') == 1
end

-- A lease that ran out belongs to a process that died mid-note: take its work back.
end_flight(st, true)
local f = redis.call('HMGET', st, 'conversation', 'flush', 'summary', 'delivery_id',
  'delivery_kind', 'delivery_seq', 'attempts', 'failing_since', 'queued_since', 'linked_at',
  'seq', 'retry_at')
local conv, summary, did, dkind, dseq = f[1], f[3], f[4], f[5], f[6]
local attempts, failing_since, retry_at = f[7], f[8], num(f[12])

-- What to post is the scheduling rule's choice (next_note in _common.lua), except that a note
-- being retried keeps its kind. Its debounce has run out: the session was due.
local kind = nil
if conv and not (retry_at and retry_at > now) then
  if did and not has_content(dkind) then
    forget_delivery(st)
    did, attempts, failing_since = nil, nil, nil
  end
  if did then
    kind = dkind
  else
    kind = next_note(K, now, 0, 0)
    if kind == 'dead' then kind = nil end
  end
end

if not kind then
  redis.call('HDEL', st, 'flush')
  -- With letters to file the session stays due: the worker files them and claims again.
  if #unfiled > 0 then return {'', conv or '', '', '', '0', '', '', {}, fmt(now), unfiled} end
  -- Debounce cannot matter here: only a future retry_at can make the session due later.
  local due = next_due(K, now, 0, 0)
  if due and due > now then
    redis.call('ZADD', K.due, fmt(due), member)
  else
    redis.call('ZREM', K.due, member)
  end
  return {}
end

if not did then
  did, dseq = token, f[11] or '0'
  redis.call('HSET', st, 'delivery_id', did, 'delivery_kind', kind, 'delivery_seq', dseq)
end
local actions, queued_since = {}, fmt(now)
if kind == 'pre' then
  actions, queued_since = pinned(pre, tonumber(dseq)), f[10] or queued_since
elseif kind == 'out' then
  actions, queued_since = pinned(out, tonumber(dseq)), f[9] or queued_since
  -- Actions arriving from now on start the next note's max-wait clock.
  redis.call('HSET', st, 'lease_queued_since', queued_since)
  redis.call('HDEL', st, 'queued_since')
end
local lease_until = now + tonumber(A.lease_ms)
redis.call('HSET', st, 'lease', token, 'lease_until', fmt(lease_until), 'lease_kind', kind)
redis.call('ZADD', K.due, fmt(lease_until), member)
return {kind, conv, token, did, attempts or '0', failing_since or '', summary or '', actions,
  queued_since, unfiled}
