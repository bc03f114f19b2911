-- One master's part of an acquisition: SET K token NX PX lease (mutex, writer) or join the
-- readers, and on success return this master's fencing value (INCR for a writer, the current
-- value for a reader), all in one script.
-- KEYS: 1 K, 2 {K}:fence, 3 {K}:readers, 4 {K}:writers (waiting writers, token -> expiry ms).
-- ARGV: 1 token, 2 lease ms, 3 side 'w' / 'r', 4 readers' marker, 5 '1' when this writer waits
--       (it is then registered as a waiting writer, which keeps new readers out), 6 registration ms.
-- Returns {1, fence} when granted here, {0, PTTL of K} when busy here.
local key, fence, readers, writers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, lease, side, marker, wait, reg = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local ok, ty = is_lock_type(key)
if not ok then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. ty .. ', not a string: it is not a lock')
end
local now = now_ms()
local v = redis.call('GET', key)
if not v then redis.call('DEL', readers) end
redis.call('ZREMRANGEBYSCORE', writers, '-inf', now)
if side == 'w' then
  if v == token then
    redis.call('ZREM', writers, token)
    return {1, current_fence(fence)}
  end
  if v then
    if wait == '1' then
      redis.call('ZADD', writers, now + reg, token)
      if redis.call('PTTL', writers) < reg then redis.call('PEXPIRE', writers, reg) end
    end
    return {0, redis.call('PTTL', key)}
  end
  redis.call('SET', key, token, 'PX', lease)
  redis.call('ZREM', writers, token)
  return {1, bump_fence(fence)}
end
if v and v ~= marker then return {0, redis.call('PTTL', key)} end
local mine = redis.call('ZSCORE', readers, token)
if not mine and redis.call('ZCARD', writers) > 0 then
  -- Writer preference: a new reader does not pass a writer that waits.
  return {0, -3}
end
redis.call('ZADD', readers, now + lease, token)
local ms = longest(readers, now)
redis.call('SET', key, marker, 'PX', ms)
redis.call('PEXPIRE', readers, ms)
return {1, current_fence(fence)}
