-- A note failed. mode: retry (back off until retry_at), dead (move its actions into a dead
-- letter: first into the session's own dead hash, in this slot; the worker then files it in
-- the product's list and deletes it here), gone (the conversation no longer exists: unlink,
-- and return every queued action to the pre-link buffer so a new link flushes them).
-- Returns {1, due} or {0} when the lease was lost.
local st, pre, out = K.state, K.pre, K.out
local now, kind, mode = tonumber(A.now_ms), A.kind, A.mode
if redis.call('HGET', st, 'lease') ~= A.token then return {0} end
end_flight(st, true)
if mode == 'retry' then
  redis.call('HINCRBY', st, 'attempts', 1)
  redis.call('HSETNX', st, 'failing_since', fmt(now))
  redis.call('HSET', st, 'retry_at', A.retry_at_ms, 'last_error', A.error)
elseif mode == 'dead' then
  if kind == 'pre' then
    zrem_from(pre, ARGV, REST)
    if redis.call('ZCARD', pre) == 0 then redis.call('HDEL', st, 'flush') end
  elseif kind == 'out' then
    zrem_from(out, ARGV, REST)
  else
    redis.call('HDEL', st, 'summary')
  end
  redis.call('HSET', K.dead, A.letter_id, A.dead_letter_entry)
  redis.call('EXPIRE', K.dead, A.session_ttl_s)
  forget_delivery(st)
else
  if redis.call('EXISTS', out) == 1 then
    redis.call('ZUNIONSTORE', pre, 2, pre, out)
    redis.call('DEL', out)
  end
  redis.call('EXPIRE', pre, A.buffer_ttl_s)
  redis.call('HDEL', st, 'conversation', 'linked_at', 'flush', 'queued_since', 'queued_last')
  forget_delivery(st)
end
touch(st, now, A.session_ttl_s)
local due = schedule(K, A.member, now, tonumber(A.debounce_ms), tonumber(A.max_wait_ms))
return {1, due or -1}
