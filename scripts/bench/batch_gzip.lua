-- wrk: the batch of 100 seed-sized events as a gzip body (Content-Encoding: gzip), to
-- POST /api/v1/events/batch. wrk's Lua has no zlib: scripts/bench/run writes the gzipped
-- bodies first (.bench/batch-N.json.gz, made with Python's gzip module).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Content-Encoding"] = "gzip"
local bodies = {}
for i = 1, 64 do
  local f = assert(io.open(string.format(".bench/batch-%d.json.gz", i), "rb"))
  bodies[i] = f:read("*a")
  f:close()
end
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
