-- wrk: the one-line summary every benchmark script prints (scripts/bench/run parses it).
-- Loaded with dofile by each script; wrk runs one script per invocation, from the repo root.
done = function(summary, latency, requests)
  io.write(string.format("WRK requests=%d seconds=%.2f non2xx=%d errors=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
