-- Close one window: advance closed_before, drop it from the open set, let its sums expire, and save the
-- detector checkpoint, all at once. ARGV = prefix, start, end, detector_json, ttl_s. Returns 1, or 0 if
-- the window was already closed (another closer got there first).
local p = ARGV[1]
local closed = redis.call('GET', p .. ':closed_before')
if closed and tonumber(closed) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', p .. ':closed_before', ARGV[3])
redis.call('ZREM', p .. ':windows', ARGV[2])
redis.call('EXPIRE', p .. ':win:' .. ARGV[2], ARGV[5])
redis.call('SET', p .. ':detector', ARGV[4])
return 1
