-- Store one session's batch: dedupe, record the contact, link when the batch names a
-- conversation, then the pre-link window or the outbox. The contact's identity index and a
-- pending conversation live in other slots: the store handles them in steps around this one.
-- The tail (from REST): (digest score payload) per action.
local st, pre, out, seen = K.state, K.pre, K.out, K.seen
local now, member = tonumber(A.now_ms), A.member
local uid, email, target = A.user_id, A.email, A.conversation_id
local window, cap = tonumber(A.window_s), tonumber(A.cap)
local debounce, max_wait = tonumber(A.debounce_ms), tonumber(A.max_wait_ms)
local session_ttl, buffer_ttl = A.session_ttl_s, A.buffer_ttl_s

if replayed(seen, A.replay_field, session_ttl) then
  return {0, (#ARGV - REST + 1) / 3, redis.call('HGET', st, 'conversation') or '', 'replay',
    0, 0, -1}
end

local fresh, duplicates = {}, 0
for i = REST, #ARGV, 3 do
  -- A hash, not a set: small hashes are listpack-encoded, so an idle session stays small.
  if redis.call('HSETNX', seen, ARGV[i], '') == 1 then
    fresh[#fresh + 1] = i
  else
    duplicates = duplicates + 1
  end
end
redis.call('EXPIRE', seen, session_ttl)
if uid ~= '' then redis.call('HSET', st, 'user_id', uid) end
if email ~= '' then redis.call('HSET', st, 'email', email) end

-- A batch that names a conversation links an unlinked session.
local conv = redis.call('HGET', st, 'conversation')
local event = ''
if not conv and target ~= '' then
  redis.call('HSET', st, 'conversation', target, 'linked_at', fmt(now))
  conv, event = target, 'new'
end

-- Actions that arrive with the link itself belong to the at-link flush.
local dest = pre
if conv and event == '' then dest = out end
local dropped_window, dropped_cap = 0, 0
if #fresh > 0 then
  local seq = redis.call('HINCRBY', st, 'seq', #fresh) - #fresh
  local pairs = {}
  for _, i in ipairs(fresh) do
    seq = seq + 1
    pairs[#pairs + 1] = ARGV[i + 1]
    pairs[#pairs + 1] = string.format('%d|', seq) .. ARGV[i + 2]
  end
  zadd_pairs(dest, pairs)
  if dest == pre then
    -- The window is measured on the actions' own clock: sender skew cannot empty it.
    local newest = tonumber(redis.call('ZRANGE', pre, -1, -1, 'WITHSCORES')[2])
    dropped_window = redis.call('ZREMRANGEBYSCORE', pre, '-inf', '(' .. fmt(newest - window))
    local size = redis.call('ZCARD', pre)
    if size > cap then
      dropped_cap = redis.call('ZREMRANGEBYRANK', pre, 0, size - cap - 1)
    end
  else
    redis.call('HSET', st, 'queued_last', fmt(now))
    redis.call('HSETNX', st, 'queued_since', fmt(now))
  end
end

if conv then
  if event == 'new' and redis.call('ZCARD', pre) > 0 then redis.call('HSET', st, 'flush', '1') end
  redis.call('EXPIRE', pre, session_ttl)
  redis.call('EXPIRE', out, session_ttl)
else
  redis.call('EXPIRE', pre, buffer_ttl)
end
touch(st, now, session_ttl)
local due = schedule(K, member, now, debounce, max_wait)
return {#fresh, duplicates, conv or '', event, dropped_window, dropped_cap, due or -1}
