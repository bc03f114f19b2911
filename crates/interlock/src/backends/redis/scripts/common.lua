-- Shared by every interlock script (prepended to each). Keys: see keys.rs; all of one lock share
-- the hash tag {KEY}, so one lock lives in one cluster slot.
-- Waiters: Q is a ZSET member -> arrival (server microseconds), QX the same members -> expiry
-- (server milliseconds); member "w:ID" (mutex, writer), "r:ID" (reader), "s:ID" (permit). Each
-- waiter blocks (BLPOP) on its own list WAKE_PREFIX..member, which a release pushes to, with its
-- next attempt pipelined behind the BLPOP on the same connection: that attempt claims a lock
-- handed over to it (it extends the short claim window the hand-over set to its whole lease).

-- The lock key must be absent or a string (ours, a peer tool's): anything else is not a lock.
local function check_type(key)
  local ty = redis.call('TYPE', key)['ok']
  if ty ~= 'none' and ty ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a ' .. ty .. ', not a string: it is not a lock')
  end
  return nil
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

-- The undo of a waiter whose wait may still be blocked in BLPOP on its own connection: a push to
-- its list ends that wait now, so that the attempt pipelined behind it runs at once and the
-- second undo, sent behind that attempt on the same connection, follows it (see raw.rs,
-- Op::undo). The second undo deletes the list again.
local function unblock(member, ttl)
  local k = wake_key(member)
  redis.call('LPUSH', k, 'undo')
  redis.call('PEXPIRE', k, ttl)
end

-- A waiter member: KIND:TOKEN:CLAIM_MS[:PERMITS] (KIND w mutex / writer, r reader, s permit).
-- CLAIM_MS is how long a lock handed to this waiter lives until the waiter claims it (its own
-- attempt then extends it to its lease): a hand-over to a waiter that is gone (killed, paused, its
-- undo lost) expires that soon. (Versions before it put the whole lease there, which a hand-over
-- to them still uses.)
local function parse_member(m)
  local kind, tok, lease, permits = string.match(m, '^(%a):(%x+):(%d+):?(%d*)$')
  return kind, tok, tonumber(lease), tonumber(permits)
end

-- Hands the lock to a waiter: takes it out of the queue and pushes its fencing token to its
-- list, where its BLPOP (on its own connection) receives it, and the attempt pipelined behind
-- that BLPOP claims the lock. One grant wakes one waiter.
local function grant(q, qx, member, fence_value, ttl)
  redis.call('ZREM', q, member)
  redis.call('ZREM', qx, member)
  local k = wake_key(member)
  redis.call('DEL', k)
  redis.call('LPUSH', k, string.format('%.0f', fence_value))
  redis.call('PEXPIRE', k, ttl)
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

-- Gives a free (or reader-held) lock to the waiters at the head of the queue that can have it
-- now: one writer, or every reader up to the first writer. KEYS as acquire_rw.
local function hand_over_rw(key, fence, readers, q, qx, marker, reg, now)
  if not fence_usable(fence) then return end
  while true do
    local head = redis.call('ZRANGE', q, 0, 0)[1]
    if not head then return end
    local kind, tok, lease = parse_member(head)
    if not tok then
      unregister(q, qx, head)
    else
      local v = redis.call('GET', key)
      if kind == 'w' then
        if v then return end
        redis.call('SET', key, tok, 'PX', lease)
        grant(q, qx, head, bump_fence(fence), reg)
        return
      end
      if v and v ~= marker then return end
      if not v then redis.call('DEL', readers) end
      redis.call('ZADD', readers, now + lease, tok)
      local ms = longest(readers, now)
      redis.call('SET', key, marker, 'PX', ms)
      redis.call('PEXPIRE', readers, ms)
      grant(q, qx, head, current_fence(fence), reg)
    end
  end
end

-- Gives free permits to the waiters at the head of the queue. KEYS as acquire_sem.
local function hand_over_sem(holders, fence, count, q, qx, reg, now)
  if not fence_usable(fence) then return end
  while true do
    local head = redis.call('ZRANGE', q, 0, 0)[1]
    if not head then return end
    local _, tok, lease, permits = parse_member(head)
    if not tok or not permits then
      unregister(q, qx, head)
    else
      local n = redis.call('ZCARD', holders)
      if n > 0 then
        local existing = tonumber(redis.call('GET', count))
        if existing and existing ~= permits then return end
      end
      if n >= permits then return end
      redis.call('ZADD', holders, now + lease, tok)
      local ms = longest(holders, now)
      redis.call('SET', count, permits, 'PX', ms)
      redis.call('PEXPIRE', holders, ms)
      grant(q, qx, head, bump_fence(fence), reg)
    end
  end
end
