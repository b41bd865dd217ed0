// The dashboard plugin's cost per request (issue 15: feeding the buckets <= 0.2 µs per request).
// BM_DashboardRecord is the feed itself: History::record, the relaxed atomic adds into the current
// second's bucket (a new second's bucket is cleared once, under a short lock). BM_DashboardRecord
// threads it over 2 threads on the same seconds (the contended case). BM_DashboardOnComplete is the
// whole hook through the C ABI (the built dashboard.so driven by the SDK's fake host): the profile,
// usage, origin and streaming reads plus the feed and the slowest-requests check.
#include <benchmark/benchmark.h>

#include <glmproxy/fake_host.hpp>

#include <time.h>

#include <string>
#include <vector>

#include "history.hpp"
#include "typical_request.hpp"

namespace {

using glmp::plugins::dashboard::History;
using glmp::plugins::dashboard::Sample;

std::int64_t now_s() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return ts.tv_sec;
}

History& shared_history() {
  static History h(3600, 0);
  return h;
}

void BM_DashboardRecord(benchmark::State& state) {
  History& h = shared_history();
  Sample s;
  s.status = 200;
  s.upstream_status = 200;
  s.bytes_in = 900;
  s.bytes_out = 24'000;
  s.tokens_in = 120;
  s.tokens_out = 380;
  std::uint64_t i = 0;
  for (auto _ : state) {
    s.second = now_s();  // a real request reads the clock too
    s.duration_us = 1'000 + (i++ & 1023) * 97;
    s.ttfb_us = (i & 1) != 0 ? 180'000 : -1;
    h.record(s);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DashboardRecord);
BENCHMARK(BM_DashboardRecord)->Threads(2);

#ifdef DASHBOARD_SO
using namespace glmp::testing;

void BM_DashboardOnComplete(benchmark::State& state) {
  static PluginLibrary lib(DASHBOARD_SO);
  static FakeHost host;
  static PluginInstance plugin(lib.descriptor(), host, R"({"history":"1h"})");
  std::vector<FakeRequest> requests;
  for (int i = 0; i < 256; ++i) {
    FakeRequest r = glmp::bench::typical_request(i);
    r.streaming = (i & 1) != 0;                                // half of them streamed (TTFT counted)
    r.profile.elapsed_ns = 1'250'000'000 + i * 1'000'000;      // spread: the slowest list keeps moving
    requests.push_back(std::move(r));
  }
  size_t i = 0;
  for (auto _ : state) plugin.on_complete(requests[i++ & 255]);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DashboardOnComplete);
#endif

}  // namespace
