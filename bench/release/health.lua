-- wrk script: keep-alive GETs that cycle over every service's /_venta/<service>/health route
-- (not rate-limited, unlike /api/), counting answers outside 2xx per thread. At the end one JSON
-- line: requests, non-2xx, socket errors (connect, read, write, timeout), wrk's status errors,
-- p50/p99 latency in ms, duration.  VENTA_SERVICES="a b c" overrides the service list.
-- VENTA_DELAY_MS paces each connection (milliseconds between its requests; 0: as fast as it
-- goes). Unpaced, wrk and nginx take both cores of a small machine and starve what is measured.
local services = {}
local list = os.getenv("VENTA_SERVICES") or
  "api-gateway file-management webhooks geolocation real-time user-management vendor-management search-discovery"
for name in string.gmatch(list, "%S+") do
  services[#services + 1] = "/_venta/" .. name .. "/health"
end

local pause_ms = tonumber(os.getenv("VENTA_DELAY_MS") or "0") or 0

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  non2xx = 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", services[(counter % #services) + 1])
end

function delay()
  return pause_ms
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  io.write(string.format(
    '{"requests": %d, "non2xx": %d, "socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"status_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "duration_s": %.3f}\n',
    summary.requests, bad, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.duration / 1e6))
end
