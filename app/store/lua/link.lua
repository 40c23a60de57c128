-- Link a session to a conversation (NEW / REPLY_EXISTING, docs/delivery.md). A user message (a platform webhook) also moves
-- the session to reactive_assistance, whether or not the link changes.
-- A webhook's delivery id is recorded here, with the link it causes, so a redelivery is
-- either applied or reported as a duplicate, never lost between the two.
-- A replayed /sessions/link request (its field in the session's seen hash) changes nothing.
-- KEYS: state pre out due delivery seen
-- ARGV: now_ms member conversation_id event debounce_ms max_wait_ms session_ttl_s user_message
--       dedupe_ttl_s replay_field
local st, pre, out, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, member, conv, event = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local debounce, max_wait, session_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]

if KEYS[5] ~= '' and not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[9]) then
  return {'duplicate', '', -1}
end
if replayed(KEYS[6], ARGV[10], session_ttl) then
  return {'duplicate', redis.call('HGET', st, 'conv') or '', -1}
end

if ARGV[8] == '1' then
  redis.call('HSET', st, 'fsm', 'reactive_assistance', 'last_interaction_at', fmt(now / 1000))
  touch(st, now, session_ttl)
end
local current = redis.call('HGET', st, 'conv')
-- Repeating a link in place is a no-op, and a reply never moves a linked session.
if current == conv or (current and event == 'reply_existing') then
  return {'already_linked', current, -1}
end
redis.call('HSET', st, 'conv', conv, 'linked_at', fmt(now))
if redis.call('ZCARD', pre) > 0 then
  redis.call('HSET', st, 'flush', '1')
  redis.call('EXPIRE', pre, session_ttl)
end
touch(st, now, session_ttl)
local due = schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return {'linked', current or '', due or -1}
