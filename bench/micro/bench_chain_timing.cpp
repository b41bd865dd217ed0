// What the core's hook timing costs (issue 14: "cheaply, whether or not profiling is loaded"):
// one request through a chain of three plugins whose hooks do nothing, timed and observed, against
// the same chain with nothing timed. "Typical" has the hooks auth, ratelimit and profiling
// implement (auth: on_request_headers, on_request; ratelimit: on_request, on_complete; profiling:
// on_complete); "every hook" has all five on all three, on_response_body for three chunks (the
// worst case). Plus what request_timings costs a profiling plugin that asks in on_complete.
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include <prometheus/registry.h>

#include "metrics/plugin_metrics.hpp"
#include "pipeline/request_context.hpp"
#include "plugins/chain.hpp"
#include "plugins/native_plugin.hpp"  // host_api()

namespace {

using namespace glmp::core;

using plugins::Hook;

enum class Hooks { None, Typical, Every };

class Idle : public plugins::Plugin {
public:
  Idle(std::string name, Hooks hooks) : name_(std::move(name)), hooks_(hooks) {}
  const std::string& name() const override { return name_; }
  bool has_request_headers_hook() const override { return has_hook(Hook::RequestHeaders); }
  bool has_hook(Hook h) const override {
    if (hooks_ != Hooks::Typical) return hooks_ == Hooks::Every;
    if (name_ == "auth") return h == Hook::RequestHeaders || h == Hook::Request;
    if (name_ == "ratelimit") return h == Hook::Request || h == Hook::Complete;
    return h == Hook::Complete;
  }

private:
  std::string name_;
  Hooks hooks_;
};

std::shared_ptr<plugins::Chain> chain_of(Hooks hooks, metrics::PluginMetrics* m) {
  auto chain = std::make_shared<plugins::Chain>();
  for (const char* name : {"auth", "ratelimit", "profiling"}) {
    auto plugin = std::make_shared<Idle>(name, hooks);
    if (m) chain->hook_histograms.push_back(m->hook_histograms(name, plugins::implemented_hook_names(*plugin)));
    chain->plugins.push_back(std::move(plugin));
  }
  return chain;
}

metrics::PluginMetrics& registry_metrics() {
  static prometheus::Registry registry;
  static metrics::PluginMetrics m(registry);
  return m;
}

// request_headers, request, response_headers, 3 response_body chunks, complete.
void one_request(const std::shared_ptr<plugins::Chain>& chain) {
  pipeline::RequestContext ctx;
  plugins::ChainRun run(chain);
  benchmark::DoNotOptimize(run.request(ctx));
  run.response_headers(ctx);
  for (int i = 0; i < 3; ++i) run.response_body(ctx, "data: {}\n\n", i == 2);
  run.complete(ctx);
}

void BM_ChainRunUntimed(benchmark::State& state) {
  const auto chain = chain_of(Hooks::None, nullptr);
  for (auto _ : state) one_request(chain);
}
BENCHMARK(BM_ChainRunUntimed);

void BM_ChainRunTimedTypical(benchmark::State& state) {
  const auto chain = chain_of(Hooks::Typical, &registry_metrics());
  for (auto _ : state) one_request(chain);
}
BENCHMARK(BM_ChainRunTimedTypical);

void BM_ChainRunTimedEveryHook(benchmark::State& state) {
  const auto chain = chain_of(Hooks::Every, &registry_metrics());
  for (auto _ : state) one_request(chain);
}
BENCHMARK(BM_ChainRunTimedEveryHook);

// The spans of a finished request (3 plugins x 5 hooks and 6 core phases), as on_complete asks.
void BM_RequestTimings(benchmark::State& state) {
  const auto chain = chain_of(Hooks::Every, nullptr);
  pipeline::RequestContext ctx;
  plugins::ChainRun run(chain);
  run.request(ctx);
  run.response_headers(ctx);
  run.response_body(ctx, "x", true);
  ctx.marks.received = 1'000;
  ctx.marks.upstream_start = 2'000;
  ctx.marks.upstream_ready = 3'000;
  ctx.marks.upstream_head = 50'000;
  ctx.ttfb = std::chrono::nanoseconds(60'000);
  ctx.marks.ended = 90'000;
  run.complete(ctx);
  std::vector<glmp_timing> out(32);
  auto* handle = reinterpret_cast<glmp_request_host_ptr*>(&ctx);
  for (auto _ : state) benchmark::DoNotOptimize(plugins::host_api().request_timings(handle, out.data(), out.size()));
}
BENCHMARK(BM_RequestTimings);

}  // namespace
