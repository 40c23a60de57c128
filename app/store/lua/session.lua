-- Read a session's state with FSM timeouts applied, or nil when the session is unknown.
local st, pre, out = K.state, K.pre, K.out
if redis.call('EXISTS', st) == 0 then return false end
local allowed, reason = proactive_gate(st, tonumber(A.now_ms) / 1000,
  tonumber(A.interaction_timeout_s), tonumber(A.cooldown_period_s))
return {redis.call('HGETALL', st), redis.call('ZCARD', pre), redis.call('ZCARD', out),
  allowed and 1 or 0, reason}
