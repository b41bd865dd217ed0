-- wrk script used by scripts/bench: the same POST chat completion for every target, and a
-- machine-readable summary line (latencies in microseconds).
wrk.method = "POST"
wrk.body = '{"model":"glm-4.7","messages":[{"role":"user","content":"Hello, benchmark"}],"max_tokens":64}'
wrk.headers["Content-Type"] = "application/json"
-- A proxy key when the target runs the auth plugin (scripts/bench --auth), else the mock's key.
local key = os.getenv("GLMP_BENCH_KEY")
wrk.headers["Authorization"] = "Bearer " .. ((key ~= nil and key ~= "") and key or "test-upstream-key")

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
