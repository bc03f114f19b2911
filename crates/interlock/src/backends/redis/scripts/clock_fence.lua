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
--
-- A counter is missing (recovered from the clock, as above) or a decimal integer below 2^53 - 1
-- (Lua numbers are doubles, exact up to there; the largest token is 2^53 - 1). Anything else (a key
-- of another type, text that is not a decimal integer, a number at or beyond that limit) interlock
-- never writes: something else wrote it, and the tokens issued before are unknown, so no token can
-- be shown to be above them. The script then fails with an error naming the key (BADFENCE) before
-- it has written anything (a release skips its hand-over instead: see fence_usable).
local FENCE_LIMIT = 9007199254740991

local function bad_fence(key, why)
  error({err = 'BADFENCE the fencing counter ' .. key .. ' ' .. why ..
    ', which interlock never writes (it writes decimal integers below 2^53 - 1): tokens above every' ..
    ' earlier one cannot be made from it; set it to the highest token issued on the name, or delete' ..
    ' it if the server clock in microseconds is above that token (see Fencing in the backend docs)'})
end

-- The counter at KEY, or nil when there is none.
local function read_counter(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then bad_fence(key, 'is a ' .. redis.call('TYPE', key)['ok'] .. ', not a string') end
  if not raw then return nil end
  if string.match(raw, '^%d+$') then
    local v = tonumber(raw)
    if #raw <= 16 and v < FENCE_LIMIT then return v end
    bad_fence(key, 'holds ' .. string.sub(raw, 1, 40) .. ', at or beyond the largest token (2^53 - 1)')
  end
  local shown = string.gsub(string.sub(raw, 1, 40), '[^%w%p ]', '?')
  bad_fence(key, 'holds "' .. shown .. '", not a decimal integer')
end

-- Whether the counter at KEY can give tokens (a release that cannot hand over leaves the waiters
-- to meet the error themselves, at their next attempt).
local function fence_usable(key)
  return (pcall(read_counter, key))
end

local function read_fence(key)
  return read_counter(key) or 0
end

local function set_fence(key, v)
  redis.call('SET', key, string.format('%.0f', v))
  return v
end

-- An exclusive holder's token.
local function bump_fence(key)
  local v = read_fence(key) + 1
  if v > FENCE_LIMIT then bad_fence(key, 'has reached the largest token (2^53 - 1)') end
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

