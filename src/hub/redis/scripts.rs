//! The Lua scripts of the Redis hub, and the layout of their arguments.
//!
//! Every script starts with [`VERIFY`], so the check that Redis still holds
//! the history this replica believes in runs atomically with whatever the
//! script then reads or writes (see the parent module's doc for why).
//!
//! KEYS (every script): 1 epoch, 2 seq, 3 history, 4 state, 5 state_sizes,
//! 6 retained_bytes, 7 history_bytes; the publish script adds one key per
//! event id (`<prefix>id:<id>`) from 8 on.
//!
//! ARGV (every script): 1 channel, 2 believed epoch ('' = none yet),
//! 3 highest seq seen in it, 4 retired epochs (`,a,b,`), 5 a fresh epoch
//! to rotate to; then each script's own, from 6.

/// Verifies the epoch and rotates, at most once, when the history it names
/// is gone or went backwards. A rotation deletes the old epoch's keys, sets
/// the fresh epoch (compare-and-set: only a script that still finds the
/// broken epoch rotates, so replicas noticing together create one epoch)
/// and PUBLISHes `<epoch>\n` so every listener hears of it at once.
pub const VERIFY: &str = r#"
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
"#;

/// The periodic check. → {epoch, seq, rotated}
pub const CHECK: &str = r#"
local epoch, seq, rotated = verify()
return {epoch, seq, rotated}
"#;

/// ARGV 6: epoch to resume ('' = current), 7: since ('' = no resume
/// point), 8: '1' to answer the epoch's whole history ('restart') when the
/// point cannot be resumed but history still starts at seq 1.
/// → {epoch, seq, rotated, 'resumed'|'restart'|'fresh', frames}: history
/// frames after the point, all history frames, or the retained state.
pub const SNAPSHOT: &str = r#"
local epoch, seq, rotated = verify()
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
"#;

/// ARGV 6: history size, 7: ts, 8: history max bytes, 9: retained max
/// bytes, 10: id window in seconds, then per event from 11: topic, retain
/// 0/1, data JSON, index of its id key in KEYS (0: no id).
/// → {epoch, seq, rotated, status, seqs, originals}: status 0 published
/// (`seqs`), 1 retained state full, 2 every event a repeat (`originals`:
/// "epoch seq" of each), 3 some events repeats (`originals`: the first
/// repeated event's index, from 0); nothing is applied unless 0.
pub const PUBLISH: &str = r#"
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
"#;
