-- Shared by every interlock script (prepended to each). Keys: see keys.rs; all of one lock share
-- the hash tag {KEY}, so one lock lives in one cluster slot.
-- Waiters: Q is a ZSET member -> arrival (server microseconds), QX the same members -> expiry
-- (server milliseconds); member "w:ID" (mutex, writer), "r:ID" (reader), "s:ID" (permit). Each
-- waiter blocks (BLPOP) on its own list WAKE_PREFIX..member, which a release pushes to.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The lock key must be absent or a string (ours, a peer tool's): anything else is not a lock.
local function check_type(key)
  local ty = redis.call('TYPE', key)['ok']
  if ty ~= 'none' and ty ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a ' .. ty .. ', not a string: it is not a lock')
  end
  return nil
end

-- Fencing: INCR, or, for a counter that does not exist (first use, or a server restarted without
-- persistence), the server clock in microseconds, which is above every token issued before as
-- long as the server clock did not go back and fewer than one token per microsecond was issued.
local function init_fence(key)
  local v = now_us()
  redis.call('SET', key, string.format('%.0f', v))
  return v
end

local function bump_fence(key)
  if redis.call('EXISTS', key) == 0 then return init_fence(key) end
  return redis.call('INCR', key)
end

local function current_fence(key)
  local v = redis.call('GET', key)
  if not v then return init_fence(key) end
  return tonumber(v)
end

local function wake_key(member) return ARGV[5] .. member end

local function purge_waiters(q, qx, now)
  local dead = redis.call('ZRANGEBYSCORE', qx, '-inf', now)
  for _, m in ipairs(dead) do
    redis.call('ZREM', q, m)
    redis.call('ZREM', qx, m)
    redis.call('DEL', wake_key(m))
  end
end

local function keep_for(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function register(q, qx, member, now, ttl)
  if not redis.call('ZSCORE', q, member) then redis.call('ZADD', q, now_us(), member) end
  redis.call('ZADD', qx, now + ttl, member)
  keep_for(q, ttl)
  keep_for(qx, ttl)
end

local function unregister(q, qx, member)
  redis.call('ZREM', q, member)
  redis.call('ZREM', qx, member)
  redis.call('DEL', wake_key(member))
end

-- Wakes one waiter: pushes to its own list (at most one pending wake-up per waiter).
local function wake(member, ttl)
  local k = wake_key(member)
  redis.call('LPUSH', k, '1')
  redis.call('LTRIM', k, 0, 0)
  redis.call('PEXPIRE', k, ttl)
end

local function wake_head(q, ttl)
  local head = redis.call('ZRANGE', q, 0, 0)[1]
  if head then wake(head, ttl) end
end

-- Keeps a ZSET of holders (member -> expiry ms) and its companion keys alive as long as its
-- longest holder; returns that remaining time, or nil when nobody holds (the ZSET is gone).
local function longest(zset, now)
  local top = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if not top[2] then return nil end
  local ms = tonumber(top[2]) - now
  if ms < 1 then ms = 1 end
  return ms
end
