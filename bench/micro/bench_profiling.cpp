// The profiling plugin's cost per request (issue 14: ≤ 1 µs CPU on the hot path): its on_complete,
// which reads the request's profile and timings through the host API and keeps a record, driven
// through the C ABI by the SDK's fake host (dlopen of the built profiling.so). The fake host's
// answers are plain struct copies, so this is the plugin's own work; the core's side
// (request_timings sorting the spans) is BM_RequestTimings in bench_hot_paths.cpp.
#include <benchmark/benchmark.h>

#include <glmproxy/fake_host.hpp>

#include <string>

namespace {

using namespace glmp::testing;

// A proxied, streamed request through auth, ratelimit and profiling, as the core reports it.
FakeRequest typical_request(int i) {
  FakeRequest r;
  r.id = "req-" + std::to_string(i);
  r.streaming = true;
  r.model = "glm-4.7";
  r.attributes["auth.key_id"] = "key_" + std::to_string(i % 50);
  r.response_status = 200;
  r.usage.seen = 1;
  r.usage.input_tokens = 120;
  r.usage.output_tokens = 380;
  r.profile.status = 200;
  r.profile.upstream_status = 200;
  r.profile.started_unix_us = 1'780'000'000'000'000 + i;
  r.profile.elapsed_ns = 1'250'000'000;
  r.profile.ttfb_ns = 180'000'000;
  r.profile.upstream_ns = 1'249'000'000;
  r.profile.bytes_in = 900;
  r.profile.bytes_out = 24'000;
  r.route = "/v1/";
  r.timings = {{"receive", "", 0, 12'000},
               {"auth", "on_request_headers", 14'000, 2'000},
               {"auth", "on_request", 30'000, 1'500},
               {"ratelimit", "on_request", 32'000, 3'000},
               {"upstream_connect", "", 40'000, 9'000},
               {"upstream_headers", "", 49'000, 179'000'000},
               {"first_byte", "", 179'049'000, 900'000},
               {"stream", "", 180'000'000, 1'070'000'000},
               {"ratelimit", "on_complete", 1'250'001'000, 4'000}};
  return r;
}

void BM_ProfilingOnComplete(benchmark::State& state) {
  static PluginLibrary lib(PROFILING_SO);
  static FakeHost host;
  static PluginInstance plugin(lib.descriptor(), host, R"({"max_records":1000,"per_key_max":200})");
  std::vector<FakeRequest> requests;
  for (int i = 0; i < 256; ++i) requests.push_back(typical_request(i));
  size_t i = 0;
  for (auto _ : state) {
    plugin.on_complete(requests[i++ & 255]);  // the store is full after a few iterations: insert + evict
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ProfilingOnComplete);

}  // namespace
