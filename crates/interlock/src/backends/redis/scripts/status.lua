-- Who holds a lock. KEYS: 1 lock key, 2 readers, 3 Q, 4 QX, 5 semaphore holders, 6 permits count,
-- 7 semaphore Q, 8 semaphore QX. ARGV: 6 readers' value of the lock key (others unused).
-- Returns {kind (0 free, 1 exclusive, 2 readers, 3 not a string), readers, PTTL, waiters,
--          permit holders, permits, permit waiters}.
local now = now_ms()
local function live(z) return redis.call('ZCOUNT', z, '(' .. now, '+inf') end
local ty = redis.call('TYPE', KEYS[1])['ok']
local kind, nreaders, pttl = 0, 0, -2
if ty == 'string' then
  pttl = redis.call('PTTL', KEYS[1])
  if redis.call('GET', KEYS[1]) == ARGV[6] then
    kind = 2
    nreaders = live(KEYS[2])
  else
    kind = 1
  end
elseif ty ~= 'none' then
  kind = 3
end
return {kind, nreaders, pttl, live(KEYS[4]), live(KEYS[5]), tonumber(redis.call('GET', KEYS[6]) or '0'), live(KEYS[8])}
