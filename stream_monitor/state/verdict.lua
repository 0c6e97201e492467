-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Keep a verdict document: ARGV = hash key (<prefix>:verdict:<model>), its sorted set of emitted_at
-- (<prefix>:verdict_ts:<model>), field (model/deployment), document, emitted_at (ms), fields to keep. A document older than the one kept under the same field is
-- ignored (a re-delivery after a newer verdict); past the limit the fields emitted longest ago go.
local hkey, zkey, field, doc = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ts, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local old = redis.call('ZSCORE', zkey, field)
if old and tonumber(old) > ts then
  return 0
end
redis.call('HSET', hkey, field, doc)
redis.call('ZADD', zkey, ts, field)
local extra = redis.call('ZCARD', zkey) - keep
if extra > 0 then
  local gone = redis.call('ZRANGE', zkey, 0, extra - 1)
  for _, name in ipairs(gone) do
    redis.call('HDEL', hkey, name)
    redis.call('ZREM', zkey, name)
  end
end
return 1
