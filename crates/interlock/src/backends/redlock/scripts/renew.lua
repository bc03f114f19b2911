-- Extend this holder's lease on this master (compare-and-PEXPIRE; a reader its own expiry).
-- KEYS: 1 K, 2 {K}:readers. ARGV: 1 token, 2 lease ms, 3 side, 4 readers' marker.
-- Returns 1 when extended, 0 when the lock is not ours on this master.
local key, readers = KEYS[1], KEYS[2]
local token, lease, side, marker = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if redis.call('TYPE', key)['ok'] ~= 'string' then return 0 end
local now = now_ms()
if not holds(key, readers, token, side, marker, now) then return 0 end
if side == 'w' then
  redis.call('PEXPIRE', key, lease)
  return 1
end
redis.call('ZADD', readers, now + lease, token)
local ms = longest(readers, now)
redis.call('PEXPIRE', key, ms)
redis.call('PEXPIRE', readers, ms)
return 1
