-- A note failed. mode: retry (back off until retry_at), dead (move its actions to the
-- dead-letter list), gone (the conversation no longer exists: unlink, and return every
-- queued action to the pre-link buffer so a new link flushes them).
-- KEYS: due dead_letters
-- ARGV: now_ms member token kind mode retry_at_ms error debounce_ms max_wait_ms session_ttl_s
--       buffer_ttl_s dead_letter_entry dead_letter_ttl_s, then the note's action members
local due_key, dead_key = KEYS[1], KEYS[2]
local now, member, token, kind, mode = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local debounce, max_wait = tonumber(ARGV[8]), tonumber(ARGV[9])
local st, pre, out = session_keys(member)
if redis.call('HGET', st, 'lease') ~= token then return 0 end
end_flight(st, true)
if mode == 'retry' then
  redis.call('HINCRBY', st, 'att', 1)
  redis.call('HSETNX', st, 'fail0', fmt(now))
  redis.call('HSET', st, 'retry_at', ARGV[6], 'err', ARGV[7])
elseif mode == 'dead' then
  if kind == 'pre' then
    zrem_from(pre, ARGV, 14)
    if redis.call('ZCARD', pre) == 0 then redis.call('HDEL', st, 'flush') end
  elseif kind == 'out' then
    zrem_from(out, ARGV, 14)
  else
    redis.call('HDEL', st, 'summary')
  end
  redis.call('LPUSH', dead_key, ARGV[12])
  redis.call('EXPIRE', dead_key, ARGV[13])
  forget_delivery(st)
else
  if redis.call('EXISTS', out) == 1 then
    redis.call('ZUNIONSTORE', pre, 2, pre, out)
    redis.call('DEL', out)
  end
  redis.call('EXPIRE', pre, ARGV[11])
  redis.call('HDEL', st, 'conv', 'linked_at', 'flush', 'qf', 'ql')
  forget_delivery(st)
end
touch(st, now, ARGV[10])
schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return 1
