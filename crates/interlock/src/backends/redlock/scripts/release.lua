-- Release this holder's lock on this master (compare-and-delete; a reader leaves the readers),
-- and PUBLISH on the lock's channel when that frees it, to wake waiters. Also the undo of a
-- failed or cancelled attempt. Idempotent; never releases another holder's lock.
-- KEYS: 1 K, 2 {K}:readers, 3 {K}:writers. ARGV: 1 token, 2 side, 3 readers' marker,
--       4 channel, 5 '1' to keep this writer's waiting registration (a failed attempt that waits on).
-- Returns 1 when this holder held the lock here, 0 when not.
local key, readers, writers = KEYS[1], KEYS[2], KEYS[3]
local token, side, marker, channel, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local freed = false
if keep ~= '1' and redis.call('TYPE', writers)['ok'] == 'zset' then
  if redis.call('ZREM', writers, token) == 1 then freed = true end
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
if freed and not redis.call('GET', key) then redis.call('PUBLISH', channel, 'released') end
return held
