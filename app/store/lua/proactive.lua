-- Enter proactive_assistance if the gate allows it (from thinking, no active cooldown).
-- A replayed request (its field already in the session's seen hash) changes nothing.
-- KEYS: state seen    ARGV: now_ms interaction_timeout_s cooldown_period_s trigger_id
--                           session_ttl_s replay_field
local st = KEYS[1]
local now = tonumber(ARGV[1])
if redis.call('EXISTS', st) == 0 then return {-1, 'unknown_session'} end
if replayed(KEYS[2], ARGV[6], ARGV[5]) then return {-2, 'replayed_request'} end
local allowed, reason = proactive_gate(st, now / 1000, tonumber(ARGV[2]), tonumber(ARGV[3]))
if not allowed then return {0, reason} end
redis.call('HSET', st, 'fsm', 'proactive_assistance', 'last_interaction_at', fmt(now / 1000),
  'proactive_trigger', ARGV[4])
touch(st, now, ARGV[5])
return {1, 'ok'}
