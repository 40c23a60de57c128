-- Claim due sessions under a lease and hand out what their next note holds.
-- A retried note is the same note: same delivery id, same kind, same actions (those queued up to
-- its first try); actions queued since then wait for the next note.
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
local due_key = K.due
local now, limit, lease_ms = tonumber(A.now_ms), tonumber(A.limit), tonumber(A.lease_ms)
local token_prefix, max_actions = A.token_prefix, tonumber(A.max_note_actions)

-- The actions of a note: the earliest (by time) of those queued up to `pin`.
local function pinned(key, pin)
  local chosen = {}
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if tonumber(string.match(m, '^(%d+)|')) <= pin then
      chosen[#chosen + 1] = m
      if #chosen >= max_actions then break end
    end
  end
  return chosen
end

local function has_content(kind, st, pre, out)
  if kind == 'pre' or kind == 'out' then
    return redis.call('ZCARD', kind == 'pre' and pre or out) > 0
  end
  return redis.call('HEXISTS', st, 'summary') == 1
end

-- The at-link flush goes first, then queued actions, then a held summary; a note being
-- retried keeps its kind.
local function choose(st, pre, out, s)
  if s.did then
    if has_content(s.dk, st, pre, out) then return s.dk end
    forget_delivery(st)
    s.did, s.att, s.fail0 = nil, nil, nil
  end
  if s.flush == '1' and redis.call('ZCARD', pre) > 0 then return 'pre' end
  if redis.call('ZCARD', out) > 0 then return 'out' end
  if s.summary then return 'summary' end
  return nil
end

local claims = {}
local members = redis.call('ZRANGEBYSCORE', due_key, '-inf', fmt(now), 'LIMIT', 0, limit)
for n, member in ipairs(members) do
  local st, pre, out = session_keys(member)
  if redis.call('EXISTS', st) == 0 then
    redis.call('ZREM', due_key, member)
  else
    -- A lease that ran out belongs to a process that died mid-note: take its work back.
    end_flight(st, true)
    local f = redis.call('HMGET', st, 'conv', 'flush', 'summary', 'did', 'dk', 'pin', 'att',
      'fail0', 'qf', 'linked_at', 'seq')
    local s = {conv = f[1], flush = f[2], summary = f[3], did = f[4], dk = f[5], pin = f[6],
      att = f[7], fail0 = f[8]}
    local kind = s.conv and choose(st, pre, out, s) or nil
    if kind then
      local token = token_prefix .. n
      if not s.did then
        s.did, s.pin = token, f[11] or '0'
        redis.call('HSET', st, 'did', s.did, 'dk', kind, 'pin', s.pin)
      end
      local actions, queued_at = {}, fmt(now)
      if kind == 'pre' then
        actions, queued_at = pinned(pre, tonumber(s.pin)), f[10] or queued_at
      elseif kind == 'out' then
        actions, queued_at = pinned(out, tonumber(s.pin)), f[9] or queued_at
        -- Actions arriving from now on start the next note's max-wait clock.
        redis.call('HSET', st, 'ff', queued_at)
        redis.call('HDEL', st, 'qf')
      end
      redis.call('HSET', st, 'lease', token, 'lease_until', fmt(now + lease_ms), 'lk', kind)
      redis.call('ZADD', due_key, fmt(now + lease_ms), member)
      claims[#claims + 1] = {member, kind, s.conv, token, s.did, s.att or '0', s.fail0 or '',
        s.summary or '', actions, queued_at}
    else
      redis.call('HDEL', st, 'flush')
      redis.call('ZREM', due_key, member)
    end
  end
end
return claims
