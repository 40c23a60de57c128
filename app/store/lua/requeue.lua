-- Queue a dead letter's actions (or summary) in its session again. The letter's id is recorded
-- in the session's seen hash with the effect, so replaying the same letter twice (two
-- operators, or a retry after a crash before the letter left the product's list) queues it
-- once. The store removes the letter from the product's list after this step.
-- The tail (from REST): (score payload) per action. Returns {1 or 0 (already requeued), due}.
local st, pre, out = K.state, K.pre, K.out
local now, summary = tonumber(A.now_ms), A.summary
local session_ttl, buffer_ttl = A.session_ttl_s, A.buffer_ttl_s
if replayed(K.seen, A.replay_field, session_ttl) then return {0, -1} end
if summary ~= '' then redis.call('HSETNX', st, 'summary', summary) end
local count = (#ARGV - REST + 1) / 2
if count > 0 then
  local conv = redis.call('HGET', st, 'conversation')
  local dest = pre
  if conv then dest = out end
  local seq = redis.call('HINCRBY', st, 'seq', count) - count
  local pairs = {}
  for i = REST, #ARGV, 2 do
    seq = seq + 1
    pairs[#pairs + 1] = ARGV[i]
    pairs[#pairs + 1] = string.format('%d|', seq) .. ARGV[i + 1]
  end
  zadd_pairs(dest, pairs)
  if conv then
    redis.call('HSET', st, 'queued_last', fmt(now))
    redis.call('HSETNX', st, 'queued_since', fmt(now))
    redis.call('EXPIRE', out, session_ttl)
  else
    redis.call('EXPIRE', pre, buffer_ttl)
  end
end
touch(st, now, session_ttl)
local due = schedule(K, A.member, now, tonumber(A.debounce_ms), tonumber(A.max_wait_ms))
return {1, due or -1}
