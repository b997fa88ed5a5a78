//! Lua scripts, so the steps of delayed requeues are atomic and use the
//! server's clock.

/// Moves due delayed requeues into the group's retry stream.
/// KEYS: delayed set, retry stream. ARGV: limit, hash key prefix.
pub(crate) const MOVE_DUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, token in ipairs(due) do
  local hkey = ARGV[2] .. token
  local fields = redis.call('HGETALL', hkey)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('DEL', hkey)
  redis.call('ZREM', KEYS[1], token)
end
return #due
";

/// Holds a copy back until a delay passes, and settles the original.
/// KEYS: delayed set, copy hash, source stream.
/// ARGV: delay ms, group, entry id, token, delete source entry (1/0), fields...
pub(crate) const DELAY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[4])
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
if ARGV[5] == '1' then
  redis.call('XDEL', KEYS[3], ARGV[3])
end
return 1
";

/// Deletes a consumer from a group only if it has no pending entries (which
/// DELCONSUMER would drop for good). KEYS: stream. ARGV: group, consumer.
/// Returns 1 when deleted.
pub(crate) const DELETE_IDLE_CONSUMER: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";
