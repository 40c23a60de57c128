-- The platform confirmed a note: remove exactly what it carried and schedule what is left.
-- KEYS: due    ARGV: now_ms member token kind note_id debounce_ms max_wait_ms session_ttl_s
--                    notes_kept summary, then the note's action members
local due_key = KEYS[1]
local now, member, token, kind = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local note_id, debounce, max_wait = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local session_ttl, notes_kept = ARGV[8], tonumber(ARGV[9])
local st, pre, out, prefix = session_keys(member)
-- Another process took the session over after our lease ran out: it owns the work now.
if redis.call('HGET', st, 'lease') ~= token then return 0 end
end_flight(st, false)
if kind == 'pre' then
  zrem_from(pre, ARGV, 11)
  if redis.call('ZCARD', pre) == 0 then redis.call('HDEL', st, 'flush') end
elseif kind == 'out' then
  zrem_from(out, ARGV, 11)
elseif redis.call('HGET', st, 'summary') == ARGV[10] then
  redis.call('HDEL', st, 'summary')
end
redis.call('HDEL', st, 'did', 'att', 'fail0', 'retry_at', 'err')
if note_id ~= '' then
  local notes = prefix .. 'notes'
  redis.call('RPUSH', notes, note_id)
  redis.call('LTRIM', notes, -notes_kept, -1)
  redis.call('EXPIRE', notes, session_ttl)
end
if redis.call('ZCARD', out) > 0 then redis.call('HSETNX', st, 'qf', fmt(now)) end
touch(st, now, session_ttl)
schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return 1
