-- KEYS[1]: one key of the slot the keys below live in; unused here, it routes the call in a Redis Cluster.
-- Atomically add per-partition window sums and advance offsets, fenced by epoch and offset.
-- ARGV[1] = key prefix, ARGV[2] = JSON payload:
--   {"now": "<wall ms>", "window_ttl_s": N, "history_limit": N,
--    "parts": [{"tp": "...", "epoch": "E", "first": "O1", "next": "O2", "counted": "O0" or "", "max_ts": "T",
--               "windows": {"<start>": {"<field>": n, ...}}, "events": {"<start>": n}, "counts": {...},
--               "deployments": [[model, arm, record], ...], "datasets": [[name, "<ts>", record], ...]}]}
-- Returns {applied_tps_json, refused_tps_json, late_events, closed_before or "", lost_tps_json,
-- conflict_tps_json, join_refused_json, behind_tps_json}. A "lost" partition has no epoch at all: the store lost
-- its state (e.g. Redis restarted empty). A "behind" partition has an older epoch than ours, or an offset
-- below "counted" (what the worker last saw this store count it to): the store went back in time (a
-- failover to a replica that had not received the last commits), so the worker must re-read from it. A delta whose epoch matches and whose next offset equals the stored one was applied
-- already (a retry after a reply was lost): it counts as applied and changes nothing. A "conflict" has
-- our epoch but overlapping offsets that are not that: the worker's view of what is counted is wrong.
-- "joins" (optional): [{"group": g, "parts": [tp, ...], "fence": {tp: "E"}, "put": {rid: entry},
--   "delete": [rid, ...], "matured": {"<window>": hex}, "drop_matured": ["<window>", ...],
--   "sums": {"<start>": {"<field>": "n"}}, "retention_s": N}]: a join group's state, applied only when
-- every tp in parts was applied by this call (not a recognised retry) and every fence epoch is current.
local p = ARGV[1]
local doc = cjson.decode(ARGV[2])
local closed = redis.call('GET', p .. ':closed_before')
local closed_n = closed and tonumber(closed) or nil
local applied, refused, lost, conflict, late = {}, {}, {}, {}, 0
local fresh, retried, join_refused, behind = {}, {}, {}, {}
for _, part in ipairs(doc.parts) do
  local tp = part.tp
  local epoch = redis.call('HGET', p .. ':epoch', tp)
  local offset = tonumber(redis.call('HGET', p .. ':offset', tp) or '0')
  if not epoch then
    table.insert(refused, tp)
    table.insert(lost, tp)
  elseif tonumber(epoch) < tonumber(part.epoch)
      or (part.counted and part.counted ~= '' and offset < tonumber(part.counted)) then
    table.insert(refused, tp)
    table.insert(behind, tp)
  elseif epoch ~= part.epoch then
    table.insert(refused, tp)
  elseif offset == tonumber(part.next) and offset > tonumber(part.first) then
    table.insert(applied, tp)
    retried[tp] = true
  elseif offset > tonumber(part.first) then
    table.insert(refused, tp)
    table.insert(conflict, tp)
  else
    for start, sums in pairs(part.windows) do
      if closed_n and tonumber(start) < closed_n then
        late = late + (part.events[start] or 0)
      else
        local key = p .. ':win:' .. start
        for field, value in pairs(sums) do
          redis.call('HINCRBY', key, field, value)
        end
        redis.call('ZADD', p .. ':windows', start, start)
        redis.call('EXPIRE', key, doc.window_ttl_s)
      end
    end
    for _, deployment in ipairs(part.deployments) do
      redis.call('HSET', p .. ':deploy:' .. deployment[1], deployment[2], deployment[3])
      -- The release history: appended here, under the offset check, so a retry never appends twice.
      local hkey = p .. ':history:' .. deployment[1]
      redis.call('RPUSH', hkey, deployment[3])
      redis.call('LTRIM', hkey, -(doc.history_limit or 200), -1)
    end
    -- The newest arrival per dataset by event ts (a re-published partition with the same ts replaces).
    for _, arrival in ipairs(part.datasets or {}) do
      local old_ts = redis.call('HGET', p .. ':datasets_ts', arrival[1])
      if not old_ts or tonumber(arrival[2]) >= tonumber(old_ts) then
        redis.call('HSET', p .. ':datasets', arrival[1], arrival[3])
        redis.call('HSET', p .. ':datasets_ts', arrival[1], arrival[2])
      end
    end
    for name, value in pairs(part.counts) do
      redis.call('HINCRBY', p .. ':totals', name, value)
    end
    redis.call('HSET', p .. ':offset', tp, part.next)
    if part.hw ~= '' then redis.call('HSET', p .. ':hw', tp, part.hw) end
    local old_ts = tonumber(redis.call('HGET', p .. ':maxts', tp) or '0')
    if tonumber(part.max_ts) > old_ts then
      redis.call('HSET', p .. ':maxts', tp, part.max_ts)
      redis.call('HSET', p .. ':seen', tp, doc.now)
    elseif redis.call('HEXISTS', p .. ':seen', tp) == 0 then
      redis.call('HSET', p .. ':seen', tp, doc.now)
    end
    table.insert(applied, tp)
    fresh[tp] = true
  end
end
for _, join in ipairs(doc.joins or {}) do
  local all_retried, ok = #join.parts > 0, #join.parts > 0
  for _, tp in ipairs(join.parts) do
    if not retried[tp] then all_retried = false end
    if not fresh[tp] then ok = false end
  end
  for tp, epoch in pairs(join.fence) do
    if redis.call('HGET', p .. ':epoch', tp) ~= epoch then ok = false end
  end
  if all_retried then
    -- applied with the first attempt of this commit
  elseif not ok then
    table.insert(join_refused, join.group)
  else
    local jkey = p .. ':join:' .. join.group
    for rid, entry in pairs(join.put) do redis.call('HSET', jkey, rid, entry) end
    for _, rid in ipairs(join.delete) do redis.call('HDEL', jkey, rid) end
    local mkey = p .. ':jm:' .. join.group
    for window, ids in pairs(join.matured) do
      redis.call('HSET', mkey, window, (redis.call('HGET', mkey, window) or '') .. ids)
    end
    for _, window in ipairs(join.drop_matured) do redis.call('HDEL', mkey, window) end
    for start, sums in pairs(join.sums) do
      if closed_n and tonumber(start) < closed_n then
        redis.call('HINCRBY', p .. ':totals', 'labels_late', 1)
      else
        local key = p .. ':lab:' .. start
        for name, value in pairs(sums) do redis.call('HINCRBY', key, name, value) end
        redis.call('EXPIRE', key, doc.window_ttl_s)
      end
    end
  end
end
if late > 0 then redis.call('HINCRBY', p .. ':totals', 'late', late) end
return {cjson.encode(applied), cjson.encode(refused), late, closed or '', cjson.encode(lost),
        cjson.encode(conflict), cjson.encode(join_refused), cjson.encode(behind)}
