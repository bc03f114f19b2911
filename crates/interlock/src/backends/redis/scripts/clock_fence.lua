-- Shared by the redis and redlock scripts (prepended to each, before its own common.lua):
-- the server clock and the fencing counter. The redis backend takes its tokens with
-- bump_fence / current_fence below; Redlock builds its own rule on these helpers (its
-- common.lua: quorum_bump / quorum_current).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Fencing. A token is the counter plus one, but never less than the server clock in
-- microseconds, and the counter keeps it. A counter that is missing, unreadable or behind (first
-- use, a restart without persistence, a failover to a replica that had not received the last
-- tokens) therefore still yields a token above every token issued before on the name, as long as
-- the clock of this server did not go back (relative to the server that issued the earlier
-- tokens) by more than the time the restart or failover took, and tokens came at less than one
-- per microsecond (Redis does not come near that rate).
local function read_fence(key)
  return tonumber(redis.call('GET', key) or '0') or 0
end

local function set_fence(key, v)
  redis.call('SET', key, string.format('%.0f', v))
  return v
end

-- An exclusive holder's token.
local function bump_fence(key)
  local v = read_fence(key) + 1
  local now = now_us()
  if v < now then v = now end
  return set_fence(key, v)
end

-- A shared holder's token (reader): the counter, raised to the clock the same way, so that it is
-- not below the last exclusive token even on a counter that fell behind; the next exclusive
-- token is above it.
local function current_fence(key)
  local v = read_fence(key)
  local now = now_us()
  if v < now then return set_fence(key, now) end
  return v
end

