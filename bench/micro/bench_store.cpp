// Micro-benchmarks of what plugins do on the hot path: a window add-and-sum and a window sum in
// the in-memory store (what the sqlite backend serves reads from; the 5 h window over 1 min
// buckets is the ratelimit case, 300 buckets), a lifetime counter add, and the plugin metric
// updates (counter, histogram) that the host API maps to prometheus-cpp.
#include <benchmark/benchmark.h>

#include <prometheus/registry.h>

#include "metrics/plugin_metrics.hpp"
#include "plugins/native_plugin.hpp"  // host_api()
#include "store/store.hpp"

namespace {

using namespace glmp::core;

std::unique_ptr<store::Store> memory_store() {
  config::StoreConfig cfg;
  cfg.backend = config::StoreBackend::Memory;
  return store::make_store(cfg, nullptr);
}

constexpr store::Millis kWindow = 5 * 3600'000;
constexpr store::Millis kBase = 1'800'000'000'000;

// A window whose 300 one-minute buckets are all filled (the worst case for a 5 h sum).
std::unique_ptr<store::Store> full_window(const char* name) {
  auto s = memory_store();
  for (store::Millis t = kBase - kWindow + 60'000; t <= kBase; t += 60'000) s->window_add(name, 100, kWindow, t, nullptr);
  return s;
}

void BM_StoreWindowAddAndSum(benchmark::State& state) {
  static std::unique_ptr<store::Store> s;
  if (state.thread_index() == 0) s = full_window("key:abc");
  int64_t sum = 0;
  for (auto _ : state) {
    s->window_add("key:abc", 1, kWindow, kBase + 1000, &sum);
    benchmark::DoNotOptimize(sum);
  }
  if (state.thread_index() == 0) state.counters["buckets"] = static_cast<double>(kWindow / 60'000);
}
BENCHMARK(BM_StoreWindowAddAndSum)->Threads(1)->Threads(2);

void BM_StoreWindowSum(benchmark::State& state) {
  auto s = full_window("key:abc");
  int64_t sum = 0;
  for (auto _ : state) {
    s->window_sum("key:abc", kWindow, kBase + 1000, sum);
    benchmark::DoNotOptimize(sum);
  }
}
BENCHMARK(BM_StoreWindowSum);

void BM_StoreCounterAdd(benchmark::State& state) {
  static std::unique_ptr<store::Store> s;
  if (state.thread_index() == 0) s = memory_store();
  for (auto _ : state) s->counter_add("lifetime:key:abc", 1, nullptr);
}
BENCHMARK(BM_StoreCounterAdd)->Threads(1)->Threads(2);

void BM_StoreRecordGet(benchmark::State& state) {
  auto s = memory_store();
  s->put("keys", "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", R"({"name":"alice","model":"glm-4.7","token_limit_per_5h":100000,"enabled":true})");
  std::string value;
  for (auto _ : state) {
    s->get("keys", "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", value);
    benchmark::DoNotOptimize(value.data());
  }
}
BENCHMARK(BM_StoreRecordGet);

void BM_PluginCounterInc(benchmark::State& state) {
  static prometheus::Registry registry;
  static metrics::PluginMetrics pm(registry);
  std::string error;
  auto* m = pm.create(GLMP_METRIC_COUNTER, "glmp_bench_requests_total", "bench", {{"plugin", "bench"}}, {}, error);
  auto* handle = reinterpret_cast<glmp_metric_host_ptr*>(m);
  const glmp_host_api& api = plugins::host_api();  // the path a plugin takes
  for (auto _ : state) api.metric_add(handle, 1);
}
BENCHMARK(BM_PluginCounterInc)->Threads(1)->Threads(2);

void BM_PluginHistogramObserve(benchmark::State& state) {
  static prometheus::Registry registry;
  static metrics::PluginMetrics pm(registry);
  std::string error;
  auto* m = pm.create(GLMP_METRIC_HISTOGRAM, "glmp_bench_tokens", "bench", {{"plugin", "bench"}},
                      {10, 100, 1000, 10000, 100000}, error);
  auto* handle = reinterpret_cast<glmp_metric_host_ptr*>(m);
  const glmp_host_api& api = plugins::host_api();
  double v = 1;
  for (auto _ : state) {
    api.metric_observe(handle, v);
    v = v * 1.7 > 200000 ? 1 : v * 1.7;
  }
}
BENCHMARK(BM_PluginHistogramObserve)->Threads(1)->Threads(2);

}  // namespace
