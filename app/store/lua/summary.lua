-- Hold a session's latest summary; a linked session posts it after its queued action notes.
-- KEYS: state pre out due    ARGV: now_ms member summary debounce_ms max_wait_ms session_ttl_s
local st, pre, out, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, member = tonumber(ARGV[1]), ARGV[2]
redis.call('HSET', st, 'summary', ARGV[3])
touch(st, now, ARGV[6])
local due = schedule(st, pre, out, due_key, member, now, tonumber(ARGV[4]), tonumber(ARGV[5]))
return {redis.call('HGET', st, 'conv') or '', due or -1}
