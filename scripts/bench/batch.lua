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
done = function(summary, latency, requests)
  io.write(string.format("WRK requests=%d seconds=%.2f non2xx=%d errors=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
