-- verify(): the epoch check every script starts with (prepended to each).
-- Rotates to ARGV[5] when the history the epoch names is gone or went back.
local function verify()
  local epoch = redis.call('GET', KEYS[1])
  local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
  local lost = (not epoch)
    or (epoch == ARGV[2] and seq < tonumber(ARGV[3]))
    or (string.find(ARGV[4], ',' .. epoch .. ',', 1, true) ~= nil)
    or (tonumber(redis.call('GET', KEYS[6]) or '0') > 0 and redis.call('EXISTS', KEYS[4]) == 0)
    or (tonumber(redis.call('GET', KEYS[7]) or '0') > 0 and redis.call('EXISTS', KEYS[3]) == 0)
  if lost then
    epoch = ARGV[5]
    seq = 0
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
    redis.call('SET', KEYS[1], epoch)
    redis.call('PUBLISH', ARGV[1], epoch .. '\n')
  end
  local rotated = 0
  if lost then rotated = 1 end
  return epoch, seq, rotated
end
