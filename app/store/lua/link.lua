-- Link a session to a conversation (NEW / REPLY_EXISTING, docs/delivery.md). A user message (a platform webhook) also moves
-- the session to reactive_assistance, whether or not the link changes.
-- A webhook's delivery id is recorded here, with the link it causes, so a redelivery is
-- either applied or reported as a duplicate, never lost between the two.
-- A replayed /sessions/link request (its field in the session's seen hash) changes nothing.
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
local st, pre, out, due_key = K.state, K.pre, K.out, K.due
local now, member, conv, event = tonumber(A.now_ms), A.member, A.conversation_id, A.event
local debounce, max_wait = tonumber(A.debounce_ms), tonumber(A.max_wait_ms)
local session_ttl = A.session_ttl_s

if K.delivery ~= '' and not redis.call('SET', K.delivery, '1', 'NX', 'EX', A.dedupe_ttl_s) then
  return {'duplicate', '', -1}
end
if replayed(K.seen, A.replay_field, session_ttl) then
  return {'duplicate', redis.call('HGET', st, 'conv') or '', -1}
end

if A.user_message == '1' then
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
