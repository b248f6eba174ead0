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
done = function(summary, latency, requests)
  io.write(string.format("WRK requests=%d seconds=%.2f non2xx=%d errors=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
