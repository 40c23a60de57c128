-- Replay one dead letter: take it off the list and queue its actions (or summary) again.
-- Atomic, so two operators replaying at once cannot queue an entry twice.
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
-- The tail (from REST): (score payload) per action.
local dead_key, due_key = K.dead_letters, K.due
local now, member, entry, summary = tonumber(A.now_ms), A.member, A.entry, A.summary
local debounce, max_wait = tonumber(A.debounce_ms), tonumber(A.max_wait_ms)
local session_ttl, buffer_ttl = A.session_ttl_s, A.buffer_ttl_s
if redis.call('LREM', dead_key, 1, entry) == 0 then return 0 end
local st, pre, out = session_keys(member)
if summary ~= '' then redis.call('HSETNX', st, 'summary', summary) end
local count = (#ARGV - REST + 1) / 2
if count > 0 then
  local conv = redis.call('HGET', st, 'conv')
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
    redis.call('HSET', st, 'ql', fmt(now))
    redis.call('HSETNX', st, 'qf', fmt(now))
    redis.call('EXPIRE', out, session_ttl)
  else
    redis.call('EXPIRE', pre, buffer_ttl)
  end
end
touch(st, now, session_ttl)
schedule(st, pre, out, due_key, member, now, debounce, max_wait)
return 1
