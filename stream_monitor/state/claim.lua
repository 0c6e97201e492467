-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Claim partitions: bump each one's epoch (fencing off any previous owner) and return where to resume.
-- A claimed partition counts as active from now on, so the watermark waits for it (until it has been
-- idle for the idle timeout) even before its first event is committed; with its log-end offset given,
-- until what is below it has been counted.
-- ARGV[1] = key prefix, ARGV[2] = wall ms, ARGV[3..] = pairs of partition name, log-end offset ('' unknown).
-- Returns a flat list {tp, epoch, next_offset, ...}.
local p = ARGV[1]
local out = {}
for i = 3, #ARGV, 2 do
  local tp = ARGV[i]
  local epoch = redis.call('HINCRBY', p .. ':epoch', tp, 1)
  local offset = redis.call('HGET', p .. ':offset', tp) or '0'
  redis.call('HSETNX', p .. ':maxts', tp, '0')
  redis.call('HSET', p .. ':seen', tp, ARGV[2])
  if ARGV[i + 1] ~= '' then redis.call('HSET', p .. ':hw', tp, ARGV[i + 1]) end
  table.insert(out, tp)
  table.insert(out, tostring(epoch))
  table.insert(out, offset)
end
return out
