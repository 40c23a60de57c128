-- The platform confirmed a note: remove exactly what it carried and schedule what is left.
-- A confirmed summary replaces the session's earlier action notes: their ids are returned
-- (and forgotten) for the caller to redact.
-- Posted notes are kept as "<a|s>\31<conversation>\31<note id>" (a: actions, s: summary),
-- the latest notes_kept of them (0: none, for a platform that cannot redact).
-- Returns {1, replaced, due} or {0} when the lease was lost.
local st, pre, out, notes = K.state, K.pre, K.out, K.notes
local now, kind, note_id = tonumber(A.now_ms), A.kind, A.note_id
local session_ttl, notes_kept = A.session_ttl_s, tonumber(A.notes_kept)
-- Another process took the session over after our lease ran out: it owns the work now.
if redis.call('HGET', st, 'lease') ~= A.token then return {0} end
end_flight(st, false)
if kind == 'pre' then
  zrem_from(pre, ARGV, REST)
  if redis.call('ZCARD', pre) == 0 then redis.call('HDEL', st, 'flush') end
elseif kind == 'out' then
  zrem_from(out, ARGV, REST)
elseif redis.call('HGET', st, 'summary') == A.summary then
  redis.call('HDEL', st, 'summary')
end
forget_delivery(st)
local replaced = {}
if kind == 'summary' then
  for _, entry in ipairs(redis.call('LRANGE', notes, 0, -1)) do
    if string.sub(entry, 1, 2) == 'a\31' then
      replaced[#replaced + 1] = entry
      redis.call('LREM', notes, 1, entry)
    end
  end
end
if note_id ~= '' and notes_kept > 0 then
  local tag = 'a'
  if kind == 'summary' then tag = 's' end
  redis.call('RPUSH', notes, tag .. '\31' .. A.conversation_id .. '\31' .. note_id)
  redis.call('LTRIM', notes, -notes_kept, -1)
  redis.call('EXPIRE', notes, session_ttl)
end
if redis.call('ZCARD', out) > 0 then redis.call('HSETNX', st, 'queued_since', fmt(now)) end
touch(st, now, session_ttl)
local due = schedule(K, A.member, now, tonumber(A.debounce_ms), tonumber(A.max_wait_ms))
return {1, replaced, due or -1}
