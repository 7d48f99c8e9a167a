-- Publish a batch all-or-nothing: dedup ids, bound retained state, take seqs,
-- append to history, update state, PUBLISH each frame, trim history.
local epoch, seq, rotated = verify()
local first_event = 11
local events = (#ARGV - first_event + 1) / 4
local originals = {}
local first_repeat = nil
for i = first_event, #ARGV, 4 do
  local k = tonumber(ARGV[i + 3])
  if k > 0 then
    local seen = redis.call('GET', KEYS[k])
    if seen then
      originals[#originals + 1] = seen
      if first_repeat == nil then first_repeat = (i - first_event) / 4 end
    end
  end
end
if first_repeat ~= nil then
  if #originals == events then return {epoch, seq, rotated, 2, {}, originals} end
  return {epoch, seq, rotated, 3, {}, {tostring(first_repeat)}}
end
local retained = redis.call('GET', KEYS[6])
if not retained then
  retained = 0
  local all = redis.call('HGETALL', KEYS[4])
  for j = 1, #all, 2 do
    local size = #all[j] + #all[j + 1]
    redis.call('HSET', KEYS[5], all[j], size)
    retained = retained + size
  end
end
retained = tonumber(retained)
local after = retained
local sizes = {}
for i = first_event, #ARGV, 4 do
  if ARGV[i + 1] == '1' then
    local topic, data = ARGV[i], ARGV[i + 2]
    local old = sizes[topic]
    if old == nil then old = tonumber(redis.call('HGET', KEYS[5], topic) or '0') end
    local new = 0
    if data ~= 'null' then new = #topic + #data end
    after = after - old + new
    sizes[topic] = new
  end
end
if after > tonumber(ARGV[9]) and after > retained then return {epoch, seq, rotated, 1, {}, {}} end
local history_bytes = redis.call('GET', KEYS[7])
if history_bytes then
  history_bytes = tonumber(history_bytes)
else
  history_bytes = 0
  for _, old in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do history_bytes = history_bytes + #old end
end
local seqs = {}
for i = first_event, #ARGV, 4 do
  local topic, retain, data, k = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  seq = redis.call('INCR', KEYS[2])
  local frame = '{"type":"event","seq":' .. seq .. ',"topic":"' .. topic .. '","data":' .. data
  if retain == '1' then frame = frame .. ',"retain":true' end
  frame = frame .. ',"ts":"' .. ARGV[7] .. '"}'
  redis.call('RPUSH', KEYS[3], frame)
  history_bytes = history_bytes + #frame
  if retain == '1' then
    if data == 'null' then
      redis.call('HDEL', KEYS[4], topic)
      redis.call('HDEL', KEYS[5], topic)
    else
      redis.call('HSET', KEYS[4], topic, frame)
      redis.call('HSET', KEYS[5], topic, #topic + #data)
    end
  end
  if k > 0 then
    redis.call('SET', KEYS[k], epoch .. ' ' .. seq, 'EX', tonumber(ARGV[10]))
  end
  redis.call('PUBLISH', ARGV[1], epoch .. '\n' .. frame)
  seqs[#seqs + 1] = seq
end
redis.call('SET', KEYS[6], after)
local size, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[8])
local len = redis.call('LLEN', KEYS[3])
while len > 0 and (len > size or history_bytes > max_bytes) do
  history_bytes = history_bytes - #redis.call('LPOP', KEYS[3])
  len = len - 1
end
redis.call('SET', KEYS[7], history_bytes)
return {epoch, seq, rotated, 0, seqs, {}}
