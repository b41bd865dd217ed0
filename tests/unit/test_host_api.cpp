// The host API's request_body_member (ABI 1.4): a top-level member of the request body as raw
// JSON, from the core's scan of the body, without a parse.
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "metrics/metrics.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/request_context.hpp"
#include "plugins/chain.hpp"
#include "plugins/native_plugin.hpp"  // host_api()

namespace glmp::core::plugins {
namespace {

using pipeline::RequestContext;

glmp_request_host_ptr* handle(RequestContext& ctx) { return reinterpret_cast<glmp_request_host_ptr*>(&ctx); }

// The member's raw text, or "<absent>".
std::string member(RequestContext& ctx, std::string_view name) {
  const char* v = nullptr;
  size_t n = 0;
  if (host_api().request_body_member(handle(ctx), name.data(), name.size(), &v, &n) == 0) return "<absent>";
  return std::string(v, n);
}

TEST(HostApiBodyMember, RawTopLevelValuesOnly) {
  RequestContext ctx;
  ctx.body = R"({ "model" : "glm-\u0034.7", "max_tokens":64,"stream":true,
                 "messages":[{"role":"user","content":"hi","model":"nested"}],"tools":{"temperature":1},
                 "temperature": 0.5e1 })";
  EXPECT_EQ(member(ctx, "model"), R"("glm-\u0034.7")");  // exactly as written: quotes and escapes kept
  EXPECT_EQ(member(ctx, "max_tokens"), "64");
  EXPECT_EQ(member(ctx, "stream"), "true");
  EXPECT_EQ(member(ctx, "temperature"), "0.5e1");        // the top-level one, not the one in "tools"
  EXPECT_EQ(member(ctx, "tools"), R"({"temperature":1})");
  EXPECT_EQ(member(ctx, "role"), "<absent>");            // nested members are never returned
  EXPECT_EQ(member(ctx, "content"), "<absent>");
  EXPECT_EQ(member(ctx, "max_completion_tokens"), "<absent>");
  EXPECT_EQ(member(ctx, ""), "<absent>");
}

TEST(HostApiBodyMember, KeysComparedUnescapedAndTheLastDuplicateWins) {
  RequestContext ctx;
  ctx.body = R"({"max_tokens":10,"m\u0061x_tokens":20,"max_tokens":30})";
  EXPECT_EQ(member(ctx, "max_tokens"), "30");
  ctx.body = R"({"mod\u0065l":"x"})";
  ctx.body_scanned = false;
  EXPECT_EQ(member(ctx, "model"), R"("x")");
}

TEST(HostApiBodyMember, NothingWithoutAJsonObject) {
  for (const char* body : {"", "[1,2]", "\"model\"", "{\"model\":", "model=x&max_tokens=5", "{\"a\":1}{"}) {
    RequestContext ctx;
    ctx.body = body;
    EXPECT_EQ(member(ctx, "model"), "<absent>") << body;
    EXPECT_EQ(member(ctx, "a"), "<absent>") << body;
  }
}

// The headers phase runs before the body is read: nothing is found then, and nothing remembered,
// so the body read afterwards is found.
TEST(HostApiBodyMember, TheBodyReadAfterTheHeadersPhaseIsFound) {
  RequestContext ctx;
  EXPECT_EQ(member(ctx, "model"), "<absent>");
  ctx.body = R"({"model":"glm-4.7"})";
  EXPECT_EQ(member(ctx, "model"), R"("glm-4.7")");
}

TEST(HostApiBodyMember, DescribesABodyAPluginReplaced) {
  RequestContext ctx;
  ctx.body = R"({"model":"a","max_tokens":1})";
  EXPECT_EQ(member(ctx, "model"), R"("a")");
  const std::string replaced = R"({"max_tokens":2,"model":"bb"})";
  host_api().request_set_body(handle(ctx), replaced.data(), replaced.size());
  EXPECT_EQ(member(ctx, "model"), R"("bb")");
  EXPECT_EQ(member(ctx, "max_tokens"), "2");
}

// A scan the core stored (body_scanned) is used as it is: the body is not scanned again.
TEST(HostApiBodyMember, UsesTheScanTheCoreStored) {
  RequestContext ctx;
  ctx.body = R"({"a":"1","b":"2"})";
  ctx.body_scan = pipeline::scan_top_level(R"({"b":"1","a":"2"})");  // same offsets, names swapped
  ctx.body_scanned = true;
  EXPECT_EQ(member(ctx, "a"), R"("2")");
  EXPECT_EQ(member(ctx, "b"), R"("1")");
}


// --- ABI 1.6: request_profile, request_timings, request_is_admin ----------------------------

// A plugin with one hook, on_request, that takes 2 ms.
class Sleeper : public Plugin {
public:
  explicit Sleeper(std::string name) : name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  bool has_hook(Hook hook) const override { return hook == Hook::Request; }
  HookResult on_request(RequestContext&) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return HookResult::Continue;
  }

private:
  std::string name_;
};

std::vector<glmp_timing> timings_of(RequestContext& ctx) {
  const size_t n = host_api().request_timings(handle(ctx), nullptr, 0);
  std::vector<glmp_timing> out(n);
  EXPECT_EQ(host_api().request_timings(handle(ctx), out.data(), out.size()), n);
  return out;
}

std::string name_of(const glmp_timing& t) {
  return std::string(t.name, t.name_len) + (t.hook ? "." + std::string(t.hook, t.hook_len) : "");
}

// The core's phases come from the exchange's marks, the hooks from the ChainRun's timing, all
// ordered by start; a phase not reached is not listed.
TEST(HostApiTimings, PhasesAndHooksInTheOrderTheyStarted) {
  auto chain = std::make_shared<Chain>();
  chain->plugins = {std::make_shared<Sleeper>("first"), std::make_shared<Sleeper>("second")};
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_TRUE(timings_of(ctx).empty()) << "nothing reached yet";
  ctx.marks.received = 1000;
  ASSERT_EQ(run.request(ctx), HookResult::Continue);
  ctx.marks.upstream_start = ctx.since_start();
  ctx.marks.upstream_ready = ctx.marks.upstream_start + 500;
  ctx.marks.upstream_head = ctx.marks.upstream_ready + 7000;
  ctx.ttfb = std::chrono::nanoseconds(ctx.marks.upstream_head + 300);
  std::vector<std::string> names;
  for (const auto& t : timings_of(ctx)) names.push_back(name_of(t));
  EXPECT_EQ(names, (std::vector<std::string>{"receive", "first.on_request", "second.on_request", "upstream_connect",
                                             "upstream_headers", "first_byte"}))
      << "no stream before the end";
  ctx.marks.ended = *ctx.ttfb / std::chrono::nanoseconds(1) + 40'000;
  run.complete(ctx);
  const auto all = timings_of(ctx);
  names.clear();
  for (const auto& t : all) names.push_back(name_of(t));
  EXPECT_EQ(names, (std::vector<std::string>{"receive", "first.on_request", "second.on_request", "upstream_connect",
                                             "upstream_headers", "first_byte", "stream"}))
      << "on_complete is not a hook Sleeper has: not timed";
  for (size_t i = 1; i < all.size(); ++i) EXPECT_LE(all[i - 1].start_ns, all[i].start_ns) << names[i];
  EXPECT_EQ(all[0].start_ns, 0);
  EXPECT_EQ(all[0].dur_ns, 1000);
  EXPECT_GE(all[1].dur_ns, 2'000'000) << "on_request slept 2 ms";
  EXPECT_GE(all[2].start_ns, all[1].start_ns + all[1].dur_ns);
  EXPECT_EQ(all[3].dur_ns, 500);
  EXPECT_EQ(all[4].dur_ns, 7000);
  EXPECT_EQ(all[5].dur_ns, 300);
  EXPECT_EQ(all[6].dur_ns, 40'000);
  // A short array gets the first `cap`, and the count says how many there are.
  glmp_timing two[2];
  EXPECT_EQ(host_api().request_timings(handle(ctx), two, 2), all.size());
  EXPECT_EQ(name_of(two[1]), "first.on_request");
}

// A follower's wait for its leader's head, a deferred upstream call.
TEST(HostApiTimings, DeferAndFollowWait) {
  RequestContext ctx;
  ctx.marks.received = 10;
  ctx.marks.deferred = 100;
  ctx.marks.upstream_start = 5'000;
  ctx.marks.upstream_ready = 6'000;
  ctx.marks.ended = 10'000;  // the head never came: the phases that waited for it end with the request
  ctx.marks.follow_start = 50;
  ctx.marks.follow_head = 900;
  std::vector<std::string> names;
  std::vector<int64_t> durs;
  for (const auto& t : timings_of(ctx)) {
    names.push_back(name_of(t));
    durs.push_back(t.dur_ns);
  }
  ASSERT_EQ(names, (std::vector<std::string>{"receive", "follow_wait", "defer", "upstream_connect", "upstream_headers"}));
  EXPECT_EQ(durs[4], 4'000);
  EXPECT_EQ(durs[1], 850);
  EXPECT_EQ(durs[2], 4'900);
}

TEST(HostApiProfile, ReportsTheRequestsCourse) {
  RequestContext ctx;
  config::RouteConfig route;
  route.prefix = "/v1/messages";
  ctx.route = &route;
  ctx.status = 200;
  ctx.upstream_status = 201;
  ctx.bytes_in = 12;
  ctx.bytes_out = 34;
  ctx.error = "upstream reset";
  ctx.upstream_time = std::chrono::microseconds(700);
  glmp_request_profile p{};
  EXPECT_EQ(host_api().request_profile(handle(ctx), &p), 0) << "struct_size 0 is refused";
  p.struct_size = sizeof p;
  const int64_t before_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  ASSERT_EQ(host_api().request_profile(handle(ctx), &p), 1);
  EXPECT_EQ(p.status, 200);
  EXPECT_EQ(p.upstream_status, 201);
  EXPECT_EQ(p.ttfb_ns, -1);
  EXPECT_EQ(p.upstream_ns, 700'000);
  EXPECT_EQ(p.bytes_in, 12u);
  EXPECT_EQ(p.bytes_out, 34u);
  EXPECT_EQ(std::string(p.route, p.route_len), "/v1/messages");
  EXPECT_EQ(std::string(p.error, p.error_len), "upstream reset");
  EXPECT_GE(p.elapsed_ns, 0);
  EXPECT_LE(p.started_unix_us, before_us + 1000);
  EXPECT_GT(p.started_unix_us, before_us - 10'000'000);
  ctx.marks.ended = 123'456;
  ctx.ttfb = std::chrono::nanoseconds(99);
  ASSERT_EQ(host_api().request_profile(handle(ctx), &p), 1);
  EXPECT_EQ(p.elapsed_ns, 123'456) << "after the end: to the last byte";
  EXPECT_EQ(p.ttfb_ns, 99);
  EXPECT_EQ(host_api().request_is_admin(handle(ctx)), 0);
  ctx.is_admin = true;
  EXPECT_EQ(host_api().request_is_admin(handle(ctx)), 1);
}


// --- ABI 1.7: metrics_collect --------------------------------------------------------------

// A NativePlugin without a library behind it (no on_config_new): only its Services matter to
// metrics_collect, which reads the registry through them.
class CollectFixture {
public:
  explicit CollectFixture(metrics::Metrics* all) {
    descriptor_.struct_size = sizeof descriptor_;
    descriptor_.abi_major = GLMP_ABI_MAJOR;
    descriptor_.abi_minor = GLMP_ABI_MINOR;
    descriptor_.name = "collector";
    descriptor_.version = "1.0.0";
    auto library = std::make_shared<Library>();
    library->descriptor = &descriptor_;
    library->name = "collector";
    config::PluginConfig cfg;
    cfg.name = "collector";
    cfg.settings_json = "{}";
    Services services;
    services.all_metrics = all;
    plugin_ = std::make_unique<NativePlugin>(library, cfg, 0, services);
  }
  glmp_instance_host_ptr* instance() { return reinterpret_cast<glmp_instance_host_ptr*>(plugin_.get()); }

private:
  glmp_plugin_descriptor descriptor_{};
  std::unique_ptr<NativePlugin> plugin_;
};

// One sample as handed out, copied out of the host-owned strings.
struct Collected {
  std::string family, name;
  glmp_metric_kind kind;
  std::vector<std::pair<std::string, std::string>> labels;
  double value;
};

std::pair<size_t, std::vector<Collected>> collect(glmp_instance_host_ptr* instance, std::string_view prefix) {
  std::vector<Collected> out;
  const size_t n = host_api().metrics_collect(
      instance, prefix.data(), prefix.size(),
      [](void* user, const glmp_metric_sample* s) {
        Collected c{std::string(s->family, s->family_len), std::string(s->name, s->name_len), s->kind, {}, s->value};
        for (size_t i = 0; i < s->label_count; ++i)
          c.labels.emplace_back(std::string(s->labels[i].name, s->labels[i].name_len),
                                std::string(s->labels[i].value, s->labels[i].value_len));
        static_cast<std::vector<Collected>*>(user)->push_back(std::move(c));
      },
      &out);
  return {n, std::move(out)};
}

TEST(HostApiMetricsCollect, CountersGaugesAndHistogramsUnderThePrefix) {
  metrics::Metrics all({"/v1/"});
  int refreshed = 0;
  all.set_refresher([&] { ++refreshed; });
  prometheus::Registry& registry = all.registry();
  prometheus::BuildCounter().Name("glmp_demo_hits_total").Help("x").Register(registry).Add({{"kind", "a"}}).Increment(3);
  prometheus::BuildCounter().Name("glmp_demo_hits_total").Help("x").Register(registry).Add({{"kind", "b"}}).Increment(4);
  prometheus::BuildGauge().Name("glmp_demo_level").Help("x").Register(registry).Add({}).Set(7);
  auto& hist = prometheus::BuildHistogram().Name("glmp_demo_size").Help("x").Register(registry)
                   .Add({{"flavour", "openai"}}, prometheus::Histogram::BucketBoundaries{0.25, 10, 100});
  for (double v : {0.1, 5.0, 50.0, 500.0}) hist.Observe(v);
  prometheus::BuildCounter().Name("other_demo_total").Help("x").Register(registry).Add({}).Increment(1);
  CollectFixture fx(&all);

  const auto [n, samples] = collect(fx.instance(), "glmp_demo_");
  EXPECT_GE(refreshed, 1) << "the scrape-time gauges are refreshed first, as for GET /metrics";
  ASSERT_EQ(n, samples.size()) << "returns how many it handed out";
  std::map<std::string, const Collected*> by_series;
  for (const auto& s : samples) {
    std::string key = s.name + "{";
    for (const auto& [k, v] : s.labels) key += k + "=" + v + ",";
    by_series[key + "}"] = &s;
  }
  std::vector<std::string> keys;
  for (const auto& [k, s] : by_series) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "glmp_demo_hits_total{kind=a,}",
                      "glmp_demo_hits_total{kind=b,}",
                      "glmp_demo_level{}",
                      "glmp_demo_size_bucket{flavour=openai,le=+Inf,}",
                      "glmp_demo_size_bucket{flavour=openai,le=0.25,}",
                      "glmp_demo_size_bucket{flavour=openai,le=10,}",
                      "glmp_demo_size_bucket{flavour=openai,le=100,}",
                      "glmp_demo_size_count{flavour=openai,}",
                      "glmp_demo_size_sum{flavour=openai,}",
                  }));
  ASSERT_EQ(n, 9u);
  auto at = [&](const std::string& key) -> const Collected& {
    static const Collected none{"", "", GLMP_METRIC_COUNTER, {}, -1};
    const auto it = by_series.find(key);
    return it == by_series.end() ? none : *it->second;
  };
  EXPECT_EQ(at("glmp_demo_hits_total{kind=a,}").value, 3);
  EXPECT_EQ(at("glmp_demo_hits_total{kind=a,}").kind, GLMP_METRIC_COUNTER);
  EXPECT_EQ(at("glmp_demo_hits_total{kind=a,}").family, "glmp_demo_hits_total");
  EXPECT_EQ(at("glmp_demo_hits_total{kind=b,}").value, 4);
  EXPECT_EQ(at("glmp_demo_level{}").value, 7);
  EXPECT_EQ(at("glmp_demo_level{}").kind, GLMP_METRIC_GAUGE);
  // A histogram: cumulative buckets (le last), then _sum and _count, all of the family.
  EXPECT_EQ(at("glmp_demo_size_bucket{flavour=openai,le=0.25,}").value, 1);
  EXPECT_EQ(at("glmp_demo_size_bucket{flavour=openai,le=10,}").value, 2);
  EXPECT_EQ(at("glmp_demo_size_bucket{flavour=openai,le=100,}").value, 3);
  EXPECT_EQ(at("glmp_demo_size_bucket{flavour=openai,le=+Inf,}").value, 4);
  EXPECT_DOUBLE_EQ(at("glmp_demo_size_sum{flavour=openai,}").value, 555.1);
  EXPECT_EQ(at("glmp_demo_size_count{flavour=openai,}").value, 4);
  for (const auto& s : samples) {
    if (s.family != "glmp_demo_size") continue;
    EXPECT_EQ(s.kind, GLMP_METRIC_HISTOGRAM) << s.name;
    if (s.name == "glmp_demo_size_bucket") {
      ASSERT_EQ(s.labels.size(), 2u);
      EXPECT_EQ(s.labels.back().first, "le");
    }
  }
  std::vector<std::string> bucket_order;
  for (const auto& s : samples)
    if (s.name == "glmp_demo_size_bucket") bucket_order.push_back(s.labels.back().second);
  EXPECT_EQ(bucket_order, (std::vector<std::string>{"0.25", "10", "100", "+Inf"})) << "in increasing order";
}

TEST(HostApiMetricsCollect, PrefixSelectsFamiliesAndEveryRegistryIsSeen) {
  metrics::Metrics all({"/v1/"});
  prometheus::BuildCounter().Name("other_demo_total").Help("x").Register(all.registry()).Add({}).Increment(1);
  CollectFixture fx(&all);
  const auto [none, nothing] = collect(fx.instance(), "glmp_nothing_here_");
  EXPECT_EQ(none, 0u);
  EXPECT_TRUE(nothing.empty());
  const auto [n_flight, in_flight] = collect(fx.instance(), "glmp_requests_in_flight");
  ASSERT_EQ(n_flight, 1u);
  EXPECT_EQ(in_flight[0].family, "glmp_requests_in_flight");
  EXPECT_EQ(in_flight[0].kind, GLMP_METRIC_GAUGE);
  // "" = every family: the core's and anything else registered.
  const auto [n_all, everything] = collect(fx.instance(), "");
  EXPECT_EQ(n_all, everything.size());
  std::set<std::string> families;
  for (const auto& s : everything) families.insert(s.family);
  for (const char* f : {"glmp_requests_in_flight", "glmp_active_streams", "glmp_process_resident_memory_bytes",
                        "glmp_plugin_reloads_total", "other_demo_total"})
    EXPECT_EQ(families.count(f), 1u) << f;
  // The prefix is a prefix of the family's name, not of a sample's.
  const auto [n_other, other] = collect(fx.instance(), "other_");
  ASSERT_EQ(n_other, 1u);
  EXPECT_EQ(other[0].value, 1);
}

TEST(HostApiMetricsCollect, NothingWithoutARegistryOrACallback) {
  CollectFixture without(nullptr);
  const auto [n, samples] = collect(without.instance(), "");
  EXPECT_EQ(n, 0u);
  EXPECT_TRUE(samples.empty());
  metrics::Metrics all({"/v1/"});
  CollectFixture fx(&all);
  EXPECT_EQ(host_api().metrics_collect(fx.instance(), "", 0, nullptr, nullptr), 0u);
  EXPECT_EQ(host_api().metrics_collect(nullptr, "", 0, [](void*, const glmp_metric_sample*) {}, nullptr), 0u);
  EXPECT_GT(host_api().metrics_collect(fx.instance(), nullptr, 0, [](void*, const glmp_metric_sample*) {}, nullptr), 0u)
      << "a null prefix is \"\"";
}

}  // namespace
}  // namespace glmp::core::plugins
