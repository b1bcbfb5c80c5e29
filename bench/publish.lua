-- wrk script: POST ~500-byte publish bodies (a distinct event each; relay assigns ids).
-- The admin key comes from the RELAY_BENCH_KEY environment variable.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("RELAY_BENCH_KEY") or "bench-key")
local counter = 0
local pad = string.rep("x", 400)

request = function()
  counter = counter + 1
  local body = '{"tenant_id":"bench","topic":"order.created","data":{"n":' .. counter ..
    ',"customer":"c-' .. counter .. '","pad":"' .. pad .. '"}}'
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
