-- Acquire a mutex / write lock (ARGV[7] == 'w') or a read lock (ARGV[7] == 'r') in one round trip.
-- KEYS: 1 lock key, 2 fence, 3 readers (ZSET token -> expiry ms), 4 Q, 5 QX.
-- ARGV: 1 token, 2 lease ms, 3 waiter member ('' for a single try), 4 waiter registration ms,
--       5 wake-list prefix, 6 the value of the lock key while readers hold it, 7 'w' or 'r'.
-- Returns {1, fencing token} when granted (now, or earlier by a release that handed the lock to
-- this waiter), {0, PTTL of the lock key} when not; a waiter is then registered in the queue, in
-- the same script, so that no release can slip in between its attempt and its wait.
local key, fence, readers, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, lease, member, reg, marker, side = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[6], ARGV[7]
local bad = check_type(key)
if bad then return bad end
-- A counter that cannot give tokens fails the attempt here, before anything is written.
read_counter(fence)
local now = now_ms()
purge_waiters(q, qx, now)
local v = redis.call('GET', key)
if not v then
  -- No lock key: whatever the readers ZSET says is stale (expired with it, or deleted).
  redis.call('DEL', readers)
end
-- Handed to us by a release (with a short claim window, see common.lua): claim it, with our
-- whole lease. (Or ours already from an attempt whose answer was lost with its connection.)
if side == 'w' and v == token then
  redis.call('PEXPIRE', key, lease)
  if member ~= '' then unregister(q, qx, member) end
  return {1, current_fence(fence)}
end
if side == 'r' and v == marker then
  local s = redis.call('ZSCORE', readers, token)
  if s and tonumber(s) > now then
    redis.call('ZADD', readers, now + lease, token)
    local ms = longest(readers, now)
    redis.call('PEXPIRE', key, ms)
    redis.call('PEXPIRE', readers, ms)
    if member ~= '' then unregister(q, qx, member) end
    return {1, current_fence(fence)}
  end
end
local registered = member ~= '' and redis.call('ZSCORE', q, member)
local ok
if side == 'w' then
  -- Strict FIFO: a free lock goes to the head of the queue (or to anyone when nobody waits).
  local head = redis.call('ZRANGE', q, 0, 0)[1]
  ok = (not v) and ((not head) or (registered and head == member))
else
  ok = (not v) or v == marker
  if ok then
    -- Writer preference: a reader never passes a writer that waits ahead of it.
    local ahead = redis.call('ZRANGE', q, 0, -1)
    for _, m in ipairs(ahead) do
      if m == member then break end
      if string.sub(m, 1, 2) == 'w:' then ok = false break end
    end
  end
end
if not ok then
  if member ~= '' then register(q, qx, member, now, reg) end
  return {0, redis.call('PTTL', key)}
end
if registered then unregister(q, qx, member) end
if side == 'w' then
  redis.call('SET', key, token, 'PX', lease)
  return {1, bump_fence(fence)}
end
redis.call('ZADD', readers, now + lease, token)
local ms = longest(readers, now)
redis.call('SET', key, marker, 'PX', ms)
redis.call('PEXPIRE', readers, ms)
local f = current_fence(fence)
-- Readers queued at the head get in with us.
hand_over_rw(key, fence, readers, q, qx, marker, reg, now)
return {1, f}
