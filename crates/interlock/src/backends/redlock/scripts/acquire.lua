-- One master's part of an acquisition: SET K token NX PX lease (mutex, writer) or join the
-- readers, and on success return this master's fencing value (INCR for a writer, the current
-- value for a reader), all in one script.
-- KEYS: 1 K, 2 {K}:fence, 3 {K}:readers, 4 {K}:writers (waiting writers), 5 {K}:q, 6 {K}:qx
--       (the wake-up queue, see common.lua).
-- ARGV: 1 token, 2 lease ms, 3 side 'w' / 'r', 4 readers' marker, 5 '1' when this acquisition
--       waits (it is then queued for wake-ups, a writer as a waiting writer), 6 registration ms,
--       7 the waiter's arrival (its clock, µs): its rank, the same on every master.
-- Returns {1, fence} when granted here, {0, PTTL of K} when busy here.
local key, fence, readers, writers, q, qx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, lease, side, marker, wait, reg = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local arrival = ARGV[7]
local ok, ty = is_lock_type(key)
if not ok then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. ty .. ', not a string: it is not a lock')
end
-- A counter that cannot give tokens fails the attempt here, before anything is written.
read_counter(fence)
local now = now_ms()
local v = redis.call('GET', key)
if not v then redis.call('DEL', readers) end
purge_queue(q, qx, writers, now)
local function busy(pttl)
  if wait == '1' then enqueue(q, qx, writers, side, token, arrival, now, reg) end
  return {0, pttl}
end
local function granted(f)
  dequeue(q, qx, writers, side, token)
  return {1, f}
end
if side == 'w' then
  if v == token then return granted(quorum_current(fence)) end
  if v then return busy(redis.call('PTTL', key)) end
  -- FIFO among writers: a free lock goes to the first waiting writer, or to anyone when no
  -- writer waits.
  local first = redis.call('ZRANGE', writers, 0, 0)[1]
  if first and first ~= token then return busy(-4) end
  redis.call('SET', key, token, 'PX', lease)
  return granted(quorum_bump(fence))
end
if v and v ~= marker then return busy(redis.call('PTTL', key)) end
local mine = redis.call('ZSCORE', readers, token)
if not mine and redis.call('ZCARD', writers) > 0 then
  -- Writer preference: a new reader does not pass a writer that waits.
  return busy(-3)
end
redis.call('ZADD', readers, now + lease, token)
local ms = longest(readers, now)
redis.call('SET', key, marker, 'PX', ms)
redis.call('PEXPIRE', readers, ms)
return granted(quorum_current(fence))
