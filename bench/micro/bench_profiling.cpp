// The profiling plugin's cost per request (issue 14: ≤ 1 µs CPU on the hot path): its on_complete,
// which reads the request's profile and timings through the host API and keeps a record, driven
// through the C ABI by the SDK's fake host (dlopen of the built profiling.so). The fake host's
// answers are plain struct copies, so this is the plugin's own work; the core's side
// (request_timings sorting the spans) is BM_RequestTimings in bench_hot_paths.cpp.
#include <benchmark/benchmark.h>

#include <glmproxy/fake_host.hpp>

#include <string>

#include "typical_request.hpp"

namespace {

using namespace glmp::testing;

void BM_ProfilingOnComplete(benchmark::State& state) {
  static PluginLibrary lib(PROFILING_SO);
  static FakeHost host;
  static PluginInstance plugin(lib.descriptor(), host, R"({"max_records":1000,"per_key_max":200})");
  std::vector<FakeRequest> requests;
  for (int i = 0; i < 256; ++i) requests.push_back(glmp::bench::typical_request(i));
  size_t i = 0;
  for (auto _ : state) {
    plugin.on_complete(requests[i++ & 255]);  // the store is full after a few iterations: insert + evict
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ProfilingOnComplete);

}  // namespace
