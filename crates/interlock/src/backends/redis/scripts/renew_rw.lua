-- Extend a held mutex / write lock ('w', compare-and-PEXPIRE) or read lock ('r').
-- KEYS as acquire_rw. ARGV: 1 token, 2 lease ms, 6 readers' value, 7 'w' or 'r'.
-- Returns 1 when extended, 0 when the lock is no longer ours (gone, expired, taken over).
local key, readers = KEYS[1], KEYS[3]
local token, lease, marker, side = ARGV[1], tonumber(ARGV[2]), ARGV[6], ARGV[7]
if redis.call('TYPE', key)['ok'] ~= 'string' then return 0 end
local v = redis.call('GET', key)
if side == 'w' then
  if v ~= token then return 0 end
  redis.call('PEXPIRE', key, lease)
  return 1
end
local now = now_ms()
local s = redis.call('ZSCORE', readers, token)
if v ~= marker or not s or tonumber(s) <= now then return 0 end
redis.call('ZADD', readers, now + lease, token)
local ms = longest(readers, now)
redis.call('PEXPIRE', key, ms)
redis.call('PEXPIRE', readers, ms)
return 1
