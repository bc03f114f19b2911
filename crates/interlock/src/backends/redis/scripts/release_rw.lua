-- Release (or undo) a mutex / write lock ('w') or a read lock ('r'), and wake the next waiter
-- when the lock is free. Also the undo of a cancelled acquisition: ARGV[3] names its waiter
-- registration to remove ('' when none). Idempotent; never releases another holder's lock.
-- KEYS as acquire_rw. ARGV: 1 token, 2 unused, 3 waiter member or '', 4 registration ms,
--       5 wake-list prefix, 6 readers' value of the lock key, 7 'w' or 'r'.
-- Returns 1 when this holder still held the lock, 0 when it no longer did.
local key, readers, q, qx = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local token, member, reg, marker, side = ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[6], ARGV[7]
local now = now_ms()
if member ~= '' then unregister(q, qx, member) end
purge_waiters(q, qx, now)
local ty = redis.call('TYPE', key)['ok']
local v = false
if ty == 'string' then v = redis.call('GET', key) end
local held = 0
if side == 'w' then
  if v == token then
    redis.call('DEL', key)
    v = false
    held = 1
  end
else
  local s = redis.call('ZSCORE', readers, token)
  if s and v == marker then
    if tonumber(s) > now then held = 1 end
    redis.call('ZREM', readers, token)
    redis.call('ZREMRANGEBYSCORE', readers, '-inf', now)
    local ms = longest(readers, now)
    if ms then
      redis.call('PEXPIRE', key, ms)
      redis.call('PEXPIRE', readers, ms)
    else
      redis.call('DEL', key, readers)
      v = false
    end
  end
end
if ty == 'none' or not v then wake_head(q, reg) end
return held
