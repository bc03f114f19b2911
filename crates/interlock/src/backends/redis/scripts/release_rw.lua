-- Release (or undo) a mutex / write lock ('w') or a read lock ('r'), and hand the lock to the
-- waiters at the head of the queue when it is free. Also the undo of a cancelled acquisition:
-- ARGV[3] names its waiter registration to remove ('' when none); the lock is released if a
-- release had handed it to that waiter meanwhile. Idempotent; never releases another holder's.
-- KEYS as acquire_rw. ARGV: 1 token, 2 unused, 3 waiter member or '', 4 registration ms,
--       5 wake-list prefix, 6 readers' value of the lock key, 7 'w' or 'r', 8 '1' when the
--       waiter's BLPOP may still block (the undo then ends it, see unblock in common.lua).
-- Returns 1 when this holder still held the lock, 0 when it no longer did.
local key, fence, readers, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, member, reg, marker, side = ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[6], ARGV[7]
local now = now_ms()
if member ~= '' then
  unregister(q, qx, member)
  if ARGV[8] == '1' then unblock(member, reg) end
end
purge_waiters(q, qx, now)
local ty = redis.call('TYPE', key)['ok']
if ty ~= 'none' and ty ~= 'string' then return 0 end
local v = redis.call('GET', key)
local held = 0
if side == 'w' then
  if v == token then
    redis.call('DEL', key)
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
    end
  end
end
hand_over_rw(key, fence, readers, q, qx, marker, reg, now)
return held
