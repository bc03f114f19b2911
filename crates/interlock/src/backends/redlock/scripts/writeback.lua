-- The fencing write-back: while TOKEN still holds the lock on this master, raise its counter to
-- the acquisition's token (set-if-greater). KEYS: 1 K, 2 {K}:fence, 3 {K}:readers.
-- ARGV: 1 token, 2 fencing token (decimal), 3 side, 4 readers' marker.
-- Returns 1 when written (the counter is now at least the token), 0 when the lock is not ours here.
local key, fence, readers = KEYS[1], KEYS[2], KEYS[3]
local token, t, side, marker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not is_lock_type(key) then return 0 end
if not holds(key, readers, token, side, marker, now_ms()) then return 0 end
if read_fence(fence) < tonumber(t) then set_fence(fence, tonumber(t)) end
return 1
