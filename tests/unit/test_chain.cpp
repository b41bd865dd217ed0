// The chain contract: on_request_headers (the headers phase) then on_request in order, the other
// hooks in reverse, on_complete exactly once for every plugin whose on_request_headers or
// on_request ran; snapshots are immutable across publish(); the route guard that keeps plugin
// routes off the core's.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include <prometheus/registry.h>

#include "metrics/plugin_metrics.hpp"
#include "plugins/chain.hpp"

namespace {

using namespace std::chrono_literals;
using glmp::core::pipeline::RequestContext;
using glmp::core::plugins::Chain;
using glmp::core::plugins::ChainHolder;
using glmp::core::plugins::ChainRun;
using glmp::core::plugins::Hook;
using glmp::core::plugins::HookResult;
using glmp::core::plugins::Plugin;
using glmp::core::plugins::shadows_core_route;

class Recorder : public Plugin {
public:
  // Without a headers hook (an ABI 1.0/1.1 plugin): on_request_headers logs if it is ever called.
  Recorder(std::string name, std::vector<std::string>& log, HookResult result = HookResult::Continue)
      : name_(std::move(name)), log_(log), result_(result) {}
  // With a headers hook answering `headers`.
  Recorder(std::string name, std::vector<std::string>& log, HookResult headers, HookResult result)
      : name_(std::move(name)), log_(log), result_(result), has_headers_(true), headers_(headers) {}
  const std::string& name() const override { return name_; }
  bool has_request_headers_hook() const override { return has_headers_; }
  HookResult on_request_headers(RequestContext& ctx) override {
    log_.push_back(name_ + ".rh" + (ctx.body.empty() ? "" : ":body"));
    return headers_;
  }
  HookResult on_request(RequestContext&) override {
    log_.push_back(name_ + ".request");
    return result_;
  }
  void on_response_headers(RequestContext&) override { log_.push_back(name_ + ".headers"); }
  void on_response_body(RequestContext&, std::string_view chunk, bool eos) override {
    log_.push_back(name_ + ".body:" + std::string(chunk) + (eos ? ":eos" : ""));
  }
  void on_complete(RequestContext&) override { log_.push_back(name_ + ".complete"); }

private:
  std::string name_;
  std::vector<std::string>& log_;
  HookResult result_;
  bool has_headers_ = false;
  HookResult headers_ = HookResult::Continue;
};

// A plugin with a headers hook (an ABI 1.2 plugin that implements on_request_headers).
std::shared_ptr<Recorder> with_headers(std::string name, std::vector<std::string>& log,
                                       HookResult headers = HookResult::Continue,
                                       HookResult request = HookResult::Continue) {
  return std::make_shared<Recorder>(std::move(name), log, headers, request);
}

std::shared_ptr<Chain> chain_of(std::vector<std::shared_ptr<Plugin>> plugins) {
  auto chain = std::make_shared<Chain>();
  chain->plugins = std::move(plugins);
  return chain;
}

TEST(ChainRun, OrderIsForwardThenReverse) {
  std::vector<std::string> log;
  auto chain = std::make_shared<Chain>();
  chain->plugins = {std::make_shared<Recorder>("a", log), std::make_shared<Recorder>("b", log)};
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request(ctx), HookResult::Continue);
  run.response_headers(ctx);
  run.response_body(ctx, "x", true);
  run.complete(ctx);
  run.complete(ctx);  // idempotent
  EXPECT_EQ(log, (std::vector<std::string>{"a.request", "b.request", "b.headers", "a.headers", "b.body:x:eos",
                                           "a.body:x:eos", "b.complete", "a.complete"}));
}

TEST(ChainRun, StopsAtRespondedAndCompletesOnlyThoseThatRan) {
  std::vector<std::string> log;
  auto chain = std::make_shared<Chain>();
  chain->plugins = {std::make_shared<Recorder>("a", log), std::make_shared<Recorder>("b", log, HookResult::Responded),
                    std::make_shared<Recorder>("c", log)};
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request(ctx), HookResult::Responded);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"a.request", "b.request", "b.complete", "a.complete"}));
}

TEST(ChainHolder, SnapshotSurvivesPublish) {
  std::vector<std::string> log;
  ChainHolder holder;
  EXPECT_TRUE(holder.snapshot()->plugins.empty());
  auto first = std::make_shared<Chain>();
  first->plugins = {std::make_shared<Recorder>("v1", log)};
  first->generation = 1;
  holder.publish(first);
  auto taken = holder.snapshot();
  auto second = std::make_shared<Chain>();
  second->generation = 2;
  holder.publish(second);
  EXPECT_EQ(taken->generation, 1u);
  ASSERT_EQ(taken->plugins.size(), 1u);
  EXPECT_EQ(taken->plugins[0]->name(), "v1");
  EXPECT_EQ(holder.snapshot()->generation, 2u);
}

// The headers phase runs every headers hook, in order, before any on_request (and before the
// body is there); on_complete then runs once for each plugin.
TEST(ChainRun, HeadersPhaseRunsInOrderBeforeAnyOnRequest) {
  std::vector<std::string> log;
  auto chain = chain_of({with_headers("a", log), with_headers("b", log)});
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request_headers(ctx), HookResult::Continue);
  ctx.body = "{}";  // the pipeline reads the body between the phases
  EXPECT_EQ(run.request_headers(ctx), HookResult::Continue);  // once only
  EXPECT_EQ(run.request(ctx), HookResult::Continue);
  run.response_headers(ctx);
  run.complete(ctx);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"a.rh", "b.rh", "a.request", "b.request", "b.headers", "a.headers",
                                           "b.complete", "a.complete"}));
}

// A refusal in the headers phase stops it there: no on_request runs (request() returns the
// refusal), the later plugins' headers hooks don't run, and on_complete runs for exactly the
// plugins whose headers hook ran — the refusing one included.
TEST(ChainRun, RefusalInTheHeadersPhaseCompletesThoseWhoseHeadersHookRan) {
  std::vector<std::string> log;
  auto chain = chain_of({with_headers("a", log),
                         with_headers("b", log, HookResult::Responded),
                         with_headers("c", log)});
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request_headers(ctx), HookResult::Responded);
  EXPECT_EQ(run.request(ctx), HookResult::Responded);
  run.response_headers(ctx);  // nothing: no on_request ran
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"a.rh", "b.rh", "b.complete", "a.complete"}));
}

// A plugin whose headers hook ran but whose on_request never did, because an earlier plugin
// refused in on_request, still gets on_complete — once; response hooks only for those whose
// on_request ran.
TEST(ChainRun, HeadersHookRanButOnRequestDidNotStillCompletes) {
  std::vector<std::string> log;
  auto chain = chain_of({with_headers("a", log, HookResult::Continue, HookResult::Responded),
                         with_headers("b", log)});
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request_headers(ctx), HookResult::Continue);
  EXPECT_EQ(run.request(ctx), HookResult::Responded);
  run.response_headers(ctx);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"a.rh", "b.rh", "a.request", "a.headers", "b.complete", "a.complete"}));
}

// A plugin without a headers hook (ABI 1.0/1.1) is not "run" by the headers phase: a refusal there
// by a later plugin gives it no on_complete (its on_complete pairs with its on_request), and its
// default on_request_headers is never called.
TEST(ChainRun, PluginsWithoutAHeadersHookKeepTheirOnRequestOnCompletePairing) {
  std::vector<std::string> log;
  auto chain = chain_of({std::make_shared<Recorder>("old", log),
                         with_headers("new", log, HookResult::Error)});
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request_headers(ctx), HookResult::Error);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"new.rh", "new.complete"}));

  std::vector<std::string> log2;
  auto chain2 = chain_of({std::make_shared<Recorder>("old", log2), with_headers("new", log2)});
  RequestContext ctx2;
  ChainRun run2(chain2);
  EXPECT_EQ(run2.request_headers(ctx2), HookResult::Continue);
  EXPECT_EQ(run2.request(ctx2), HookResult::Continue);
  run2.complete(ctx2);
  EXPECT_EQ(log2, (std::vector<std::string>{"new.rh", "old.request", "new.request", "new.complete", "old.complete"}));
}

// A caller that never ran the headers phase (a Key-access plugin route served by a server that
// does not call request_headers) still gets it: request() runs it first, and a refusal there
// stops the request before any on_request.
TEST(ChainRun, RequestRunsTheHeadersPhaseWhenNobodyDid) {
  std::vector<std::string> log;
  auto chain = chain_of({with_headers("auth", log, HookResult::Responded),
                         with_headers("other", log)});
  RequestContext ctx;
  ctx.body = "{}";
  ChainRun run(chain);
  EXPECT_EQ(run.request(ctx), HookResult::Responded);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"auth.rh:body", "auth.complete"}));

  std::vector<std::string> log2;
  auto chain2 = chain_of({with_headers("a", log2)});
  RequestContext ctx2;
  ChainRun run2(chain2);
  EXPECT_EQ(run2.request(ctx2), HookResult::Continue);
  run2.complete(ctx2);
  EXPECT_EQ(log2, (std::vector<std::string>{"a.rh", "a.request", "a.complete"}));
}

// A plugin whose hooks take a known time; it implements every hook but on_response_headers.
class Slow : public Plugin {
public:
  explicit Slow(std::string name) : name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  bool has_request_headers_hook() const override { return true; }
  bool has_hook(Hook hook) const override { return hook != Hook::ResponseHeaders; }
  HookResult on_request_headers(RequestContext&) override {
    spin(1ms);
    return HookResult::Continue;
  }
  HookResult on_request(RequestContext&) override {
    spin(3ms);
    return HookResult::Continue;
  }
  void on_response_headers(RequestContext&) override {}  // "lacks": a no-op, like a NULL hook of a native plugin
  void on_response_body(RequestContext&, std::string_view, bool) override { spin(1ms); }
  void on_complete(RequestContext&) override { spin(2ms); }

private:
  static void spin(std::chrono::microseconds d) { std::this_thread::sleep_for(d); }
  std::string name_;
};

// The core times every hook a plugin implements: when it first ran (from the request's start) and
// how long it took in all (on_response_body summed over chunks), and observes each in
// glmp_plugin_hook_duration_seconds{plugin,hook} once per request.
TEST(ChainRun, TimesEachHookAndObservesItOncePerRequest) {
  prometheus::Registry registry;
  glmp::core::metrics::PluginMetrics metrics(registry);
  auto slow = std::make_shared<Slow>("slow");
  auto chain = std::make_shared<Chain>();
  chain->plugins = {slow};
  chain->hook_histograms.push_back(metrics.hook_histograms(
      "slow", {"on_request_headers", "on_request", nullptr, "on_response_body", "on_complete"}));
  for (int request = 0; request < 2; ++request) {
    RequestContext ctx;
    ChainRun run(chain);
    ASSERT_EQ(run.request(ctx), HookResult::Continue);
    run.response_headers(ctx);
    for (int i = 0; i < 3; ++i) run.response_body(ctx, "x", i == 2);
    run.complete(ctx);
    const ChainRun::HookTimes* t = run.hook_times(0);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(run.hook_times(1), nullptr);
    const auto h = [](Hook hook) { return static_cast<size_t>(hook); };
    EXPECT_EQ(t->ran, 0b11011) << "every hook but on_response_headers";
    EXPECT_GE(t->dur_ns[h(Hook::RequestHeaders)], 1'000'000);
    EXPECT_GE(t->dur_ns[h(Hook::Request)], 3'000'000);
    EXPECT_GE(t->dur_ns[h(Hook::ResponseBody)], 3'000'000) << "three chunks of 1 ms, summed";
    EXPECT_GE(t->dur_ns[h(Hook::Complete)], 2'000'000);
    // Starts are in the order the hooks ran, each after the previous one ended.
    EXPECT_GE(t->start_ns[h(Hook::RequestHeaders)], 0);
    EXPECT_GE(t->start_ns[h(Hook::Request)], t->start_ns[h(Hook::RequestHeaders)] + t->dur_ns[h(Hook::RequestHeaders)]);
    EXPECT_GE(t->start_ns[h(Hook::ResponseBody)], t->start_ns[h(Hook::Request)] + t->dur_ns[h(Hook::Request)]);
    EXPECT_GE(t->start_ns[h(Hook::Complete)], t->start_ns[h(Hook::ResponseBody)] + t->dur_ns[h(Hook::ResponseBody)]);
  }
  std::map<std::string, std::pair<uint64_t, double>> seen;  // hook → (count, sum)
  for (const auto& family : registry.Collect()) {
    if (family.name != "glmp_plugin_hook_duration_seconds") continue;
    for (const auto& m : family.metric) {
      std::string plugin, hook;
      for (const auto& l : m.label) (l.name == "plugin" ? plugin : hook) = l.value;
      EXPECT_EQ(plugin, "slow");
      seen[hook] = {m.histogram.sample_count, m.histogram.sample_sum};
    }
  }
  EXPECT_EQ(seen.size(), 4u) << "no series for the hook it lacks";
  EXPECT_EQ(seen["on_request"].first, 2u) << "one observation per request";
  EXPECT_EQ(seen["on_response_body"].first, 2u) << "one observation per request, not per chunk";
  EXPECT_GE(seen["on_response_body"].second, 2 * 0.003);
  EXPECT_GE(seen["on_request"].second, 2 * 0.003);
  EXPECT_LT(seen["on_request"].second, 2 * 1.0);
  EXPECT_EQ(seen.count("on_response_headers"), 0u);
}

TEST(ChainRouteGuard, RefusesRoutesThatMatchOrShadowCoreRoutes) {
  // Exact core paths.
  for (const char* p : {"/health", "/metrics", "/api/metrics/prometheus", "/admin/reload", "/admin/plugins", "/v1",
                        "/v1/", "/v1/chat/completions", "/v1/messages"})
    EXPECT_TRUE(shadows_core_route(p, false)) << p;
  // Prefixes that reach a core path or the /v1/ tree ("/v1*", "/heal*", "/*", "/admin/*", …).
  for (const char* p : {"/", "/v", "/v1", "/v1/", "/v1/models", "/heal", "/health", "/m", "/metrics", "/api/",
                        "/api/metrics/", "/admin/", "/admin/r", "/admin/reload", "/admin/plugins", "/a"})
    EXPECT_TRUE(shadows_core_route(p, true)) << p << "*";
  // Plugin routes that stay off the core's.
  for (const char* p : {"/admin/keys", "/stats", "/plugins/x/stats", "/healthz", "/health/", "/v1x", "/v2/models",
                        "/metrics2", "/api/other", "/admin/reloads"})
    EXPECT_FALSE(shadows_core_route(p, false)) << p;
  for (const char* p : {"/admin/keys/", "/admin/keys", "/stats", "/meter/", "/v1x", "/v2/", "/healthz", "/metrics/",
                        "/api/metrics/prometheus/", "/admin/plugins/"})
    EXPECT_FALSE(shadows_core_route(p, true)) << p << "*";
}

}  // namespace
