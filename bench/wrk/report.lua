-- wrk script for every scenario. Request shape comes from the environment:
--   BENCH_METHOD (GET), BENCH_BODY_BYTES (0: no body), BENCH_CLOSE (1: Connection: close).
-- done() prints one line "BENCH_JSON {...}" with the summary, latency percentiles and errors.

local method = os.getenv("BENCH_METHOD") or "GET"
local bodyBytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")

wrk.method = method
if bodyBytes > 0 then
  wrk.body = string.rep("x", bodyBytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
