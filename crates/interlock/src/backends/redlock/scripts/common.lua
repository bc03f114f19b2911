-- Shared by every Redlock script (prepended to each); each runs on ONE master. Keys: see
-- keys.rs; the lock key K is the redis backend's (prefix + name), the side keys share the hash
-- tag {K}. Side 'w' is a mutex or write lock (K holds the token), 'r' a read lock (K holds the
-- readers' marker, the readers are a ZSET token -> expiry in server ms).

-- Fencing values on one master (docs/backends/redlock.md, "Fencing"): the counter plus one for a
-- writer, the counter for a reader, and the master's clock in microseconds only where there is
-- no usable counter (first use of the name, a master restarted without persistence). Unlike the
-- redis backend's rule (clock_fence.lua), a counter that is there is not raised to the clock:
-- masters whose counters agree then return the same value, so a quorum already holds the token
-- and the acquisition needs no write-back round. A counter that fell behind on some master is
-- covered by the quorum's maximum and the write-back, which need no clock.
-- (A counter that holds what interlock never writes fails the script: read_counter in
-- clock_fence.lua.)
local function counter(key)
  return read_counter(key)
end

local function quorum_bump(key)
  local v = counter(key)
  if v and v + 1 > FENCE_LIMIT then bad_fence(key, 'has reached the largest token (2^53 - 1)') end
  if v then return set_fence(key, v + 1) end
  return set_fence(key, now_us())
end

local function quorum_current(key)
  local v = counter(key)
  if v then return v end
  return set_fence(key, now_us())
end

-- The remaining time of the longest holder of a ZSET (member -> expiry ms), or nil when empty.
local function longest(zset, now)
  local top = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if not top[2] then return nil end
  local ms = tonumber(top[2]) - now
  if ms < 1 then ms = 1 end
  return ms
end

-- Whether TOKEN holds the lock on this master (K must be a string or absent).
local function holds(key, readers, token, side, marker, now)
  local v = redis.call('GET', key)
  if side == 'w' then return v == token end
  if v ~= marker then return false end
  local s = redis.call('ZSCORE', readers, token)
  return s ~= false and s ~= nil and tonumber(s) > now
end

local function is_lock_type(key)
  local ty = redis.call('TYPE', key)['ok']
  return ty == 'none' or ty == 'string', ty
end

-- The wake-up queue: Q is a ZSET member -> arrival (the waiter's own clock in microseconds when
-- it started, the same on every master), QX the same members -> registration expiry (server
-- ms); a member is 'w:TOKEN' or 'r:TOKEN'. WRITERS holds the waiting writers' tokens -> arrival:
-- a free lock goes to the first of them (FIFO among writers), and while any writer waits, new
-- readers wait too. A release names the first waiting writer on the lock's channel, so that one
-- waiter, not every waiter, retries; '*' (everyone) when only readers wait.
local function purge_queue(q, qx, writers, now)
  local dead = redis.call('ZRANGEBYSCORE', qx, '-inf', now)
  for _, m in ipairs(dead) do
    redis.call('ZREM', q, m)
    redis.call('ZREM', qx, m)
    if string.sub(m, 1, 2) == 'w:' then redis.call('ZREM', writers, string.sub(m, 3)) end
  end
end

local function keep_for(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function enqueue(q, qx, writers, side, token, arrival, now, reg)
  local member = side .. ':' .. token
  redis.call('ZADD', q, 'NX', arrival, member)
  redis.call('ZADD', qx, now + reg, member)
  keep_for(q, reg)
  keep_for(qx, reg)
  if side == 'w' then
    redis.call('ZADD', writers, 'NX', arrival, token)
    keep_for(writers, reg)
  end
end

local function dequeue(q, qx, writers, side, token)
  local member = side .. ':' .. token
  local n = redis.call('ZREM', q, member)
  redis.call('ZREM', qx, member)
  if side == 'w' then redis.call('ZREM', writers, token) end
  return n
end

local function wake(channel, q, qx, writers, now)
  purge_queue(q, qx, writers, now)
  local first = redis.call('ZRANGE', writers, 0, 0)[1]
  if first then
    redis.call('PUBLISH', channel, 'w:' .. first)
  else
    redis.call('PUBLISH', channel, '*')
  end
end
