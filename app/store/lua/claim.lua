-- Claim due sessions under a lease and hand out what their next note holds.
-- KEYS: due    ARGV: now_ms limit lease_ms token_prefix max_note_actions
local due_key = KEYS[1]
local now, limit, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local token_prefix, max_actions = ARGV[4], tonumber(ARGV[5])
local claims = {}
local members = redis.call('ZRANGEBYSCORE', due_key, '-inf', fmt(now), 'LIMIT', 0, limit)
for n, member in ipairs(members) do
  local st, pre, out = session_keys(member)
  if redis.call('EXISTS', st) == 0 then
    redis.call('ZREM', due_key, member)
  else
    -- A lease that ran out belongs to a process that died mid-note: take its work back.
    end_flight(st, true)
    local s = redis.call('HMGET', st, 'conv', 'flush', 'summary', 'did', 'att', 'fail0', 'qf',
      'linked_at')
    local kind, actions, queued_at = nil, {}, fmt(now)
    if s[1] then
      if s[2] == '1' and redis.call('ZCARD', pre) > 0 then
        kind, actions = 'pre', redis.call('ZRANGE', pre, 0, max_actions - 1)
        queued_at = s[8] or queued_at
      elseif redis.call('ZCARD', out) > 0 then
        kind, actions = 'out', redis.call('ZRANGE', out, 0, max_actions - 1)
        queued_at = s[7] or queued_at
        -- Actions arriving from now on start the next note's max-wait clock.
        redis.call('HSET', st, 'ff', queued_at)
        redis.call('HDEL', st, 'qf')
      elseif s[3] then
        kind = 'summary'
      end
    end
    if kind then
      local token = token_prefix .. n
      local did = s[4] or token
      redis.call('HSET', st, 'lease', token, 'lease_until', fmt(now + lease_ms), 'lk', kind,
        'did', did)
      redis.call('ZADD', due_key, fmt(now + lease_ms), member)
      claims[#claims + 1] = {member, kind, s[1], token, did, s[5] or '0', s[6] or '',
        s[3] or '', actions, queued_at}
    else
      redis.call('HDEL', st, 'flush')
      redis.call('ZREM', due_key, member)
    end
  end
end
return claims
