-- Release (or undo) one permit, and hand free permits to the waiters at the head of the queue.
-- KEYS as acquire_sem. ARGV: 1 token, 3 waiter member or '', 4 registration ms, 5 wake prefix,
--       8 '1' when the waiter's BLPOP may still block (see unblock in common.lua).
-- Returns 1 when this holder still held its permit, 0 when not.
local holders, fence, count, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, member, reg = ARGV[1], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
if member ~= '' then
  unregister(q, qx, member)
  if ARGV[8] == '1' then unblock(member, reg) end
end
purge_waiters(q, qx, now)
local s = redis.call('ZSCORE', holders, token)
local held = 0
if s and tonumber(s) > now then held = 1 end
redis.call('ZREM', holders, token)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local ms = longest(holders, now)
if ms then
  redis.call('PEXPIRE', holders, ms)
  redis.call('PEXPIRE', count, ms)
else
  redis.call('DEL', count)
end
hand_over_sem(holders, fence, count, q, qx, reg, now)
return held
