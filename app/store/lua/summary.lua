-- Hold a session's latest summary; a linked session posts it after its queued action notes.
-- Returns the linked conversation, when the summary is due, and 1 for a replayed request.
local st, now = K.state, tonumber(A.now_ms)
if replayed(K.seen, A.replay_field, A.session_ttl_s) then
  return {redis.call('HGET', st, 'conversation') or '', -1, 1}
end
redis.call('HSET', st, 'summary', A.summary)
touch(st, now, A.session_ttl_s)
local due = schedule(K, A.member, now, tonumber(A.debounce_ms), tonumber(A.max_wait_ms))
return {redis.call('HGET', st, 'conversation') or '', due or -1, 0}
