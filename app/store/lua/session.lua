-- Read a session's state with FSM timeouts applied, or nil when the session is unknown.
-- KEYS: state pre out    ARGV: now_ms interaction_timeout_s cooldown_period_s
local st, pre, out = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', st) == 0 then return false end
local allowed, reason = proactive_gate(st, tonumber(ARGV[1]) / 1000, tonumber(ARGV[2]),
  tonumber(ARGV[3]))
return {redis.call('HGETALL', st), redis.call('ZCARD', pre), redis.call('ZCARD', out),
  allowed and 1 or 0, reason}
