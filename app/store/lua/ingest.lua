-- Store one session's batch: dedupe, identity index, late link, pre-link window or outbox.
-- KEYS: state pre out seen due id_user id_email pending_user pending_email
-- ARGV: now_ms member session_id user_id email conversation_id window_s cap debounce_ms
--       max_wait_ms session_ttl_s buffer_ttl_s identity_ttl_s replay_field,
--       then (hash score payload)*
local st, pre, out, seen, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, member, sid = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local uid, email, target = ARGV[4], ARGV[5], ARGV[6]
local window, cap = tonumber(ARGV[7]), tonumber(ARGV[8])
local debounce, max_wait = tonumber(ARGV[9]), tonumber(ARGV[10])
local session_ttl, buffer_ttl, identity_ttl = ARGV[11], ARGV[12], ARGV[13]

local first_action = 15
if replayed(seen, ARGV[14], session_ttl) then
  return {0, (#ARGV - first_action + 1) / 3, redis.call('HGET', st, 'conv') or '', 'replay', 0, 0, -1}
end

local fresh, duplicates = {}, 0
for i = first_action, #ARGV, 3 do
  -- A hash, not a set: small hashes are listpack-encoded, so an idle session stays small.
  if redis.call('HSETNX', seen, ARGV[i], '') == 1 then
    fresh[#fresh + 1] = i
  else
    duplicates = duplicates + 1
  end
end
redis.call('EXPIRE', seen, session_ttl)

if uid ~= '' then
  redis.call('SET', KEYS[6], sid, 'EX', identity_ttl)
  redis.call('HSET', st, 'uid', uid)
end
if email ~= '' then
  redis.call('SET', KEYS[7], sid, 'EX', identity_ttl)
  redis.call('HSET', st, 'email', email)
end

-- A batch links an unlinked session when it names a conversation, or when a webhook for
-- this user arrived before any session was known (pending identity).
local conv = redis.call('HGET', st, 'conv')
local event = ''
if not conv then
  if target == '' and uid ~= '' then target = redis.call('GET', KEYS[8]) or '' end
  if target == '' and email ~= '' then target = redis.call('GET', KEYS[9]) or '' end
  if target ~= '' then
    if uid ~= '' then redis.call('DEL', KEYS[8]) end
    if email ~= '' then redis.call('DEL', KEYS[9]) end
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
