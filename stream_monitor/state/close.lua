-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Close one window: advance closed_before, drop it from the open set, let its sums expire, and save the
-- detector checkpoint, all at once. ARGV = prefix, start, end, detector_json, ttl_s, log_entry, log_limit.
-- Returns 1, or 0 if the window was already closed (another closer got there first). A non-empty
-- log_entry becomes the window's entry of the diagnosis log (sorted set scored by window start, newest
-- log_limit kept), here under the closed_before check so that a retry or a second closer never adds one.
local p = ARGV[1]
local closed = redis.call('GET', p .. ':closed_before')
if closed and tonumber(closed) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', p .. ':closed_before', ARGV[3])
redis.call('ZREM', p .. ':windows', ARGV[2])
redis.call('EXPIRE', p .. ':win:' .. ARGV[2], ARGV[5])
redis.call('SET', p .. ':detector', ARGV[4])
local limit = tonumber(ARGV[7] or '0')
if ARGV[6] and ARGV[6] ~= '' and limit > 0 then
  local log = p .. ':winlog'
  redis.call('ZREMRANGEBYSCORE', log, ARGV[2], ARGV[2])
  redis.call('ZADD', log, ARGV[2], ARGV[6])
  redis.call('ZREMRANGEBYRANK', log, 0, -(limit + 1))
end
return 1
