-- Claim partitions: bump each one's epoch (fencing off any previous owner) and return where to resume.
-- ARGV[1] = key prefix, ARGV[2..] = partition names. Returns a flat list {tp, epoch, next_offset, ...}.
local p = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local tp = ARGV[i]
  local epoch = redis.call('HINCRBY', p .. ':epoch', tp, 1)
  local offset = redis.call('HGET', p .. ':offset', tp) or '0'
  table.insert(out, tp)
  table.insert(out, tostring(epoch))
  table.insert(out, offset)
end
return out
