-- Forget a contact's pending conversation once a session is linked to it: only if it still
-- names that conversation (a newer webhook may have replaced it meanwhile).
local v = redis.call('GET', K.pending)
if not v then return 0 end
local conv = A.conversation_id
if v == conv or string.sub(v, 1, #conv + 1) == conv .. '\31' then
  return redis.call('DEL', K.pending)
end
return 0
