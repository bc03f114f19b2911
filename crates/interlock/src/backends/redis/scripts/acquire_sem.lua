-- Acquire one permit of a semaphore in one round trip.
-- KEYS: 1 holders (ZSET token -> expiry ms), 2 fence, 3 permits count, 4 Q, 5 QX.
-- ARGV: 1 token, 2 lease ms, 3 waiter member or '', 4 registration ms, 5 wake-list prefix,
--       6 permits.
-- Returns {1, fencing token}, {0, -1} when full (a waiter is then registered), or
-- {-1, permits in use} on a permits mismatch.
local holders, fence, count, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, lease, member, reg, permits = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
-- A counter that cannot give tokens fails the attempt here, before anything is written.
read_counter(fence)
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
-- Handed to us by a release (with a short claim window, see common.lua): claim it, with our
-- whole lease. (Or ours already from an attempt whose answer was lost with its connection.)
if redis.call('ZSCORE', holders, token) then
  redis.call('ZADD', holders, now + lease, token)
  local ms = longest(holders, now)
  redis.call('PEXPIRE', holders, ms)
  redis.call('PEXPIRE', count, ms)
  if member ~= '' then unregister(q, qx, member) end
  return {1, read_fence(fence)}
end
local n = redis.call('ZCARD', holders)
if n > 0 then
  local existing = tonumber(redis.call('GET', count))
  if existing and existing ~= permits then return {-1, existing} end
end
purge_waiters(q, qx, now)
local registered = member ~= '' and redis.call('ZSCORE', q, member)
-- FIFO: the free permits go to the waiters at the head of the queue, in order.
local rank
if registered then rank = redis.call('ZRANK', q, member) else rank = redis.call('ZCARD', q) end
if permits - n <= rank then
  if member ~= '' then register(q, qx, member, now, reg) end
  return {0, -1}
end
if registered then unregister(q, qx, member) end
redis.call('ZADD', holders, now + lease, token)
local ms = longest(holders, now)
redis.call('SET', count, permits, 'PX', ms)
redis.call('PEXPIRE', holders, ms)
local f = bump_fence(fence)
hand_over_sem(holders, fence, count, q, qx, reg, now)
return {1, f}
