-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Store a batch of traces and their engagement (stream_monitor.state.redis_traces), in one call.
-- ARGV = prefix, ttl_ms, per_slice, max_engagement, n_traces,
--        then n_traces x (request_id, series, ts, trace), then (request_id, ts, engagement) triples.
-- Keys under the prefix: :tr:<rid> trace (PX ttl); :tre:<rid> sorted set of engagement by ts (expires
-- with its trace); :tri:<series> sorted set rid -> ts, the newest per_slice (the ones trimmed off are
-- deleted with their engagement, unless pinned); :trs sorted set series -> last written (server ms),
-- pruned after ttl; :trp sorted set of pinned request ids (named by an alert) -> when pinned.
-- Idempotent: the same batch again writes the same values.
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local per_slice = tonumber(ARGV[3])
local max_eng = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
-- The registry's clock is the server's (TTLs run on it too), whatever clock the worker runs on.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local reg = p .. ':trs'
local touched = {}
local i = 6
for _ = 1, n do
  local rid, series, ts, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  redis.call('SET', p .. ':tr:' .. rid, doc, 'PX', ttl)
  redis.call('ZADD', p .. ':tri:' .. series, ts, rid)
  touched[series] = true
end
for series, _ in pairs(touched) do
  local idx = p .. ':tri:' .. series
  local excess = redis.call('ZCARD', idx) - per_slice
  if excess > 0 then
    for _, rid in ipairs(redis.call('ZRANGE', idx, 0, excess - 1)) do
      -- A trace an alert names stays until its TTL: the alert's link must keep working.
      if not redis.call('ZSCORE', p .. ':trp', rid) then
        redis.call('DEL', p .. ':tr:' .. rid, p .. ':tre:' .. rid)
      end
    end
    redis.call('ZREMRANGEBYRANK', idx, 0, excess - 1)
  end
  redis.call('PEXPIRE', idx, ttl)
  redis.call('ZADD', reg, now, series)
end
while i + 2 <= #ARGV do
  local rid, ts, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  -- Engagement only for a stored trace: a sampled request that was capped leaves nothing behind.
  local left = redis.call('PTTL', p .. ':tr:' .. rid)
  if left > 0 then
    local ekey = p .. ':tre:' .. rid
    redis.call('ZADD', ekey, ts, doc)
    redis.call('ZREMRANGEBYRANK', ekey, max_eng, -1)
    redis.call('PEXPIRE', ekey, left)
  end
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', reg, '-inf', '(' .. (now - ttl))
  redis.call('PEXPIRE', reg, ttl)
  redis.call('ZREMRANGEBYSCORE', p .. ':trp', '-inf', '(' .. (now - ttl))
end
return n
