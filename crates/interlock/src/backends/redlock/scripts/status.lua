-- Who holds a lock on this master, and how many wait. KEYS: 1 K, 2 {K}:readers, 3 {K}:qx.
-- ARGV: 1 readers' marker.
-- Returns {kind (0 free, 1 exclusive, 2 readers, 3 not a string), live readers, PTTL, live waiters}.
local now = now_ms()
local waiting = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local ok, ty = is_lock_type(KEYS[1])
if not ok then return {3, 0, -2, waiting} end
if ty == 'none' then return {0, 0, -2, waiting} end
local pttl = redis.call('PTTL', KEYS[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return {2, redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), pttl, waiting}
end
return {1, 0, pttl, waiting}
