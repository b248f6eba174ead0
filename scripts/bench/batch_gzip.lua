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
dofile("scripts/bench/report.lua")
