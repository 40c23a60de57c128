-- Enter proactive_assistance if the gate allows it (from thinking, no active cooldown).
-- A replayed request (its field already in the session's seen hash) changes nothing.
local st = K.state
local now = tonumber(A.now_ms)
if redis.call('EXISTS', st) == 0 then return {-1, 'unknown_session'} end
if replayed(K.seen, A.replay_field, A.session_ttl_s) then return {-2, 'replayed_request'} end
local allowed, reason = proactive_gate(st, now / 1000, tonumber(A.interaction_timeout_s),
  tonumber(A.cooldown_period_s))
if not allowed then return {0, reason} end
redis.call('HSET', st, 'fsm', 'proactive_assistance', 'last_interaction_at', fmt(now / 1000),
  'proactive_trigger', A.trigger_id)
touch(st, now, A.session_ttl_s)
return {1, 'ok'}
