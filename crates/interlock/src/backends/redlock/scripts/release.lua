-- Release this holder's lock on this master (compare-and-delete; a reader leaves the readers)
-- and, when the lock is free here afterwards and this freed it (or gave up a waiter's place),
-- PUBLISH on the lock's channel to wake the head waiter. Also the undo of a cancelled
-- acquisition, and (quietly, keeping its place) of a failed attempt. Idempotent; never releases
-- another holder's lock.
-- KEYS: 1 K, 2 {K}:readers, 3 {K}:writers, 4 {K}:q, 5 {K}:qx.
-- ARGV: 1 token, 2 side, 3 readers' marker, 4 channel, 5 '1' for a failed attempt that waits on
--       (it keeps its waiting registrations and publishes nothing).
-- Returns 1 when this holder held the lock here, 0 when not.
local key, readers, writers, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, side, marker, channel, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local freed = false
if keep ~= '1' and redis.call('TYPE', q)['ok'] == 'zset' then
  if dequeue(q, qx, writers, side, token) == 1 then freed = true end
end
local ok = is_lock_type(key)
if not ok then return 0 end
local v = redis.call('GET', key)
local held = 0
if side == 'w' then
  if v == token then
    redis.call('DEL', key)
    held = 1
    freed = true
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
      freed = true
    end
  end
end
if freed and keep ~= '1' and not redis.call('GET', key) then wake(channel, q, qx, writers, now) end
return held
