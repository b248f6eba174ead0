-- wrk: one seed-sized event per request, random subject, to POST /api/v1/events.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"type":"user.created","source":"user-service","subject":"user-%d","data":{"user_id":"%d","email":"user@example.com"}}',
    math.random(1, 100000), counter)
  return wrk.format(nil, nil, nil, body)
end
dofile("scripts/bench/report.lua")
