-- Link a session to a conversation (NEW / REPLY_EXISTING, docs/delivery.md). A user message
-- (a platform webhook) also moves the session to reactive_assistance, whether or not the link
-- changes. The request's record (a webhook's delivery id, or a /sessions/link replay field)
-- is kept in the session's seen hash with the link it causes, so a redelivery is either
-- applied or reported as a duplicate, never lost between the two.
local st = K.state
local now, conv, event = tonumber(A.now_ms), A.conversation_id, A.event
local session_ttl = A.session_ttl_s

if replayed(K.seen, A.replay_field, session_ttl) then
  return {'duplicate', redis.call('HGET', st, 'conversation') or '', -1}
end
if A.user_message == '1' then
  redis.call('HSET', st, 'fsm', 'reactive_assistance', 'last_interaction_at', fmt(now / 1000))
  touch(st, now, session_ttl)
end
local current = redis.call('HGET', st, 'conversation')
-- Repeating a link in place is a no-op, and a reply never moves a linked session.
if current == conv or (current and event == 'reply_existing') then
  return {'already_linked', current, -1}
end
set_link(K, conv, now, session_ttl)
touch(st, now, session_ttl)
local due = schedule(K, A.member, now, tonumber(A.debounce_ms), tonumber(A.max_wait_ms))
return {'linked', current or '', due or -1}
