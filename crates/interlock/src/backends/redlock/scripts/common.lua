-- Shared by every Redlock script (prepended to each); each runs on ONE master. Keys: see
-- keys.rs; the lock key K is the redis backend's (prefix + name), the side keys share the hash
-- tag {K}. Side 'w' is a mutex or write lock (K holds the token), 'r' a read lock (K holds the
-- readers' marker, the readers are a ZSET token -> expiry in server ms).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The fencing counter of this master: INCR, or, when missing (first use, a master restarted
-- without persistence), the master's clock in microseconds.
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
-- it started, the same on every master, so that every master names the same head), QX the same members ->
-- registration expiry (server ms); a member is 'w:TOKEN' or 'r:TOKEN'. It orders wake-ups
-- only: a release names the head waiter on its channel, so that one waiter, not every waiter,
-- retries (a free lock still goes to whoever asks first).
local function purge_queue(q, qx, now)
  local dead = redis.call('ZRANGEBYSCORE', qx, '-inf', now)
  for _, m in ipairs(dead) do
    redis.call('ZREM', q, m)
    redis.call('ZREM', qx, m)
  end
end

local function keep_for(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function enqueue(q, qx, member, arrival, now, reg)
  redis.call('ZADD', q, 'NX', arrival, member)
  redis.call('ZADD', qx, now + reg, member)
  keep_for(q, reg)
  keep_for(qx, reg)
end

local function dequeue(q, qx, member)
  local n = redis.call('ZREM', q, member)
  redis.call('ZREM', qx, member)
  return n
end

-- Wakes the waiters of a free lock: names the head of the queue ('*' for a reader at the head,
-- since the readers behind it may come in with it; '*' too when nobody is queued here).
local function wake(channel, q, qx, now)
  purge_queue(q, qx, now)
  local head = redis.call('ZRANGE', q, 0, 0)[1]
  if head and string.sub(head, 1, 2) == 'w:' then
    redis.call('PUBLISH', channel, head)
  else
    redis.call('PUBLISH', channel, '*')
  end
end
