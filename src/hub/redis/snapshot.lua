-- A subscribe's, poll's or catch-up's snapshot: the history after a resume
-- point, the whole history ('restart', or 'history' when asked for it
-- whatever its first seq), or the retained state ('fresh').
local epoch, seq, rotated = verify()
if ARGV[8] == 'history' then
  return {epoch, seq, rotated, 'history', redis.call('LRANGE', KEYS[3], 0, -1)}
end
local len = redis.call('LLEN', KEYS[3])
local oldest = seq - len + 1
if ARGV[7] ~= '' then
  local since = tonumber(ARGV[7])
  if (ARGV[6] == '' or ARGV[6] == epoch) and since <= seq and since + 1 >= oldest then
    return {epoch, seq, rotated, 'resumed', redis.call('LRANGE', KEYS[3], since + 1 - oldest, -1)}
  end
end
if ARGV[8] == '1' and oldest <= 1 then
  return {epoch, seq, rotated, 'restart', redis.call('LRANGE', KEYS[3], 0, -1)}
end
return {epoch, seq, rotated, 'fresh', redis.call('HVALS', KEYS[4])}
