-- Extend one held permit. KEYS as acquire_sem. ARGV: 1 token, 2 lease ms.
-- Returns 1 when extended, 0 when the permit is no longer ours.
local holders, count = KEYS[1], KEYS[3]
local token, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local s = redis.call('ZSCORE', holders, token)
if not s or tonumber(s) <= now then return 0 end
redis.call('ZADD', holders, now + lease, token)
local ms = longest(holders, now)
redis.call('PEXPIRE', holders, ms)
redis.call('PEXPIRE', count, ms)
return 1
