// The host API's request_body_member (ABI 1.4): a top-level member of the request body as raw
// JSON, from the core's scan of the body, without a parse.
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

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

}  // namespace
}  // namespace glmp::core::plugins
