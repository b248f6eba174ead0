-- wrk: a batch of 100 seed-sized events per request, to POST /api/v1/events/batch.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local function batch()
  local parts = {}
  for i = 1, 100 do
    parts[i] = string.format(
      '{"type":"user.created","source":"user-service","subject":"user-%d","data":{"user_id":"%d","email":"user@example.com"}}',
      math.random(1, 100000), i)
  end
  return '{"events":[' .. table.concat(parts, ",") .. ']}'
end
local bodies = {}
for i = 1, 64 do bodies[i] = batch() end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % 64) + 1])
end
dofile("scripts/bench/report.lua")
