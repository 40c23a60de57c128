-- Hold a session's latest summary; a linked session posts it after its queued action notes.
-- KEYS: state pre out due seen    ARGV: now_ms member summary debounce_ms max_wait_ms
--                                       session_ttl_s replay_field
-- Returns the linked conversation, when the summary is due, and 1 for a replayed request.
local st, pre, out, due_key, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, member = tonumber(ARGV[1]), ARGV[2]
if replayed(seen, ARGV[7], ARGV[6]) then
  return {redis.call('HGET', st, 'conv') or '', -1, 1}
end
redis.call('HSET', st, 'summary', ARGV[3])
touch(st, now, ARGV[6])
local due = schedule(st, pre, out, due_key, member, now, tonumber(ARGV[4]), tonumber(ARGV[5]))
return {redis.call('HGET', st, 'conv') or '', due or -1, 0}
