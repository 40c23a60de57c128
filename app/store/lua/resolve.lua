-- Find the latest session of a contact, or remember the conversation for it (docs/delivery.md).
-- Atomic, so a batch that lands meanwhile either is found here or finds the pending link.
-- Remembering it records the webhook's delivery id in the same step (see link.lua).
-- KEYS and ARGV: K.<name>, A.<name> and REST, declared in LAYOUTS (app/store/scripts.py).
-- Returns {'session', id}, {'pending'} or {'duplicate'}.
local has_user, has_email = A.has_user == '1', A.has_email == '1'
local sid = false
if has_user then sid = redis.call('GET', K.id_user) end
if not sid and has_email then sid = redis.call('GET', K.id_email) end
if sid then return {'session', sid} end
if K.delivery ~= '' and not redis.call('SET', K.delivery, '1', 'NX', 'EX', A.dedupe_ttl_s) then
  return {'duplicate'}
end
if has_user then redis.call('SET', K.pending_user, A.conversation_id, 'EX', A.pending_ttl_s) end
if has_email then redis.call('SET', K.pending_email, A.conversation_id, 'EX', A.pending_ttl_s) end
return {'pending'}
