-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Take or renew a lease: ARGV = key, owner, ttl_ms. Returns 1 when the caller holds it afterwards.
local holder = redis.call('GET', ARGV[1])
if holder == false or holder == ARGV[2] then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
