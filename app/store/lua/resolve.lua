-- Find the latest session of a contact, or remember the conversation for it (docs/delivery.md).
-- Atomic, so a batch that lands meanwhile either is found here or finds the pending link.
-- Remembering it records the webhook's delivery id in the same step (see link.lua).
-- KEYS: id_user id_email pending_user pending_email delivery
-- ARGV: conversation_id pending_ttl_s has_user has_email dedupe_ttl_s
-- Returns {'session', id}, {'pending'} or {'duplicate'}.
local has_user, has_email = ARGV[3] == '1', ARGV[4] == '1'
local sid = false
if has_user then sid = redis.call('GET', KEYS[1]) end
if not sid and has_email then sid = redis.call('GET', KEYS[2]) end
if sid then return {'session', sid} end
if KEYS[5] ~= '' and not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[5]) then
  return {'duplicate'}
end
if has_user then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
if has_email then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[2]) end
return {'pending'}
