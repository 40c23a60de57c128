-- Hold a due session back until `until_ms` without a failure (its product's note budget or
-- open circuit says not yet). The session keeps collecting actions meanwhile: retry_at makes
-- every rescheduling (ingest, link) keep it at `until_ms` at the earliest. A leased session
-- (being posted) or one already due later is left alone. Returns 1 if it was held back.
local st, now, member, until_ms = K.state, tonumber(A.now_ms), A.member, tonumber(A.until_ms)
local score = num(redis.call('ZSCORE', K.due, member))
if not score or score >= until_ms then return 0 end
local lease_until = num(redis.call('HGET', st, 'lease_until'))
if lease_until and lease_until > now then return 0 end
local retry_at = num(redis.call('HGET', st, 'retry_at'))
if not retry_at or retry_at < until_ms then redis.call('HSET', st, 'retry_at', fmt(until_ms)) end
redis.call('ZADD', K.due, fmt(until_ms), member)
return 1
