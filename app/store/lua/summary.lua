-- Hold a session's latest summary; a linked session posts it after its queued action notes.
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
-- Returns the linked conversation, when the summary is due, and 1 for a replayed request.
local st, pre, out, due_key, seen = K.state, K.pre, K.out, K.due, K.seen
local now, member = tonumber(A.now_ms), A.member
if replayed(seen, A.replay_field, A.session_ttl_s) then
  return {redis.call('HGET', st, 'conv') or '', -1, 1}
end
redis.call('HSET', st, 'summary', A.summary)
touch(st, now, A.session_ttl_s)
local due = schedule(st, pre, out, due_key, member, now, tonumber(A.debounce_ms),
  tonumber(A.max_wait_ms))
return {redis.call('HGET', st, 'conv') or '', due or -1, 0}
