-- Store one session's batch: dedupe, identity index, late link, pre-link window or outbox.
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
-- The tail (from REST): (digest score payload) per action.
local st, pre, out, seen, due_key = K.state, K.pre, K.out, K.seen, K.due
local now, member, sid = tonumber(A.now_ms), A.member, A.session_id
local uid, email, target = A.user_id, A.email, A.conversation_id
local window, cap = tonumber(A.window_s), tonumber(A.cap)
local debounce, max_wait = tonumber(A.debounce_ms), tonumber(A.max_wait_ms)
local session_ttl, buffer_ttl, identity_ttl = A.session_ttl_s, A.buffer_ttl_s, A.identity_ttl_s

if replayed(seen, A.replay_field, session_ttl) then
  return {0, (#ARGV - REST + 1) / 3, redis.call('HGET', st, 'conv') or '', 'replay', 0, 0, -1}
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

if uid ~= '' then
  redis.call('SET', K.id_user, sid, 'EX', identity_ttl)
  redis.call('HSET', st, 'uid', uid)
end
if email ~= '' then
  redis.call('SET', K.id_email, sid, 'EX', identity_ttl)
  redis.call('HSET', st, 'email', email)
end

-- A batch links an unlinked session when it names a conversation, or when a webhook for
-- this user arrived before any session was known (pending identity).
local conv = redis.call('HGET', st, 'conv')
local event = ''
if not conv then
  if target == '' and uid ~= '' then target = redis.call('GET', K.pending_user) or '' end
  if target == '' and email ~= '' then target = redis.call('GET', K.pending_email) or '' end
  if target ~= '' then
    if uid ~= '' then redis.call('DEL', K.pending_user) end
    if email ~= '' then redis.call('DEL', K.pending_email) end
    redis.call('HSET', st, 'conv', target, 'linked_at', fmt(now))
    conv, event = target, 'new'
  end
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
    redis.call('HSET', st, 'ql', fmt(now))
    redis.call('HSETNX', st, 'qf', fmt(now))
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
local due = schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return {#fresh, duplicates, conv or '', event, dropped_window, dropped_cap, due or -1}
