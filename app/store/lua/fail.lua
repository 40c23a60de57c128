-- A note failed. mode: retry (back off until retry_at), dead (move its actions to the
-- dead-letter list), gone (the conversation no longer exists: unlink, and return every
-- queued action to the pre-link buffer so a new link flushes them).
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
local due_key, dead_key = K.due, K.dead_letters
local now, member, token, kind, mode = tonumber(A.now_ms), A.member, A.token, A.kind, A.mode
local debounce, max_wait = tonumber(A.debounce_ms), tonumber(A.max_wait_ms)
local st, pre, out = session_keys(member)
if redis.call('HGET', st, 'lease') ~= token then return 0 end
end_flight(st, true)
if mode == 'retry' then
  redis.call('HINCRBY', st, 'att', 1)
  redis.call('HSETNX', st, 'fail0', fmt(now))
  redis.call('HSET', st, 'retry_at', A.retry_at_ms, 'err', A.error)
elseif mode == 'dead' then
  if kind == 'pre' then
    zrem_from(pre, ARGV, REST)
    if redis.call('ZCARD', pre) == 0 then redis.call('HDEL', st, 'flush') end
  elseif kind == 'out' then
    zrem_from(out, ARGV, REST)
  else
    redis.call('HDEL', st, 'summary')
  end
  redis.call('LPUSH', dead_key, A.dead_letter_entry)
  redis.call('EXPIRE', dead_key, A.dead_letter_ttl_s)
  forget_delivery(st)
else
  if redis.call('EXISTS', out) == 1 then
    redis.call('ZUNIONSTORE', pre, 2, pre, out)
    redis.call('DEL', out)
  end
  redis.call('EXPIRE', pre, A.buffer_ttl_s)
  redis.call('HDEL', st, 'conv', 'linked_at', 'flush', 'qf', 'ql')
  forget_delivery(st)
end
touch(st, now, A.session_ttl_s)
schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return 1
