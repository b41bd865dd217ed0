// The built profiling.so through the SDK's fake host: the hooks it implements, records made in
// on_complete from the fake's profile and timings, what is never recorded, the endpoints for a
// key and for the admin (scoping, the same 404 for someone else's record, DELETE counts, 401 / 400
// / 403), sampling that keeps errors and slow requests, the Server-Timing header, the metrics, that
// the library unloads after its hooks ran (no thread_local), and the cost of on_complete.
#include <gtest/gtest.h>

#include <glmproxy/fake_host.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace {

using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using Json = nlohmann::json;

constexpr std::int64_t kMs = 1'000'000;  // ns
constexpr std::int64_t kStartUs = 1'767'225'599'123'456;  // 2025-12-31T23:59:59.123456Z

// "prefix" + std::to_string(n), without the operator+(const char*, std::string&&) that GCC 12's
// -Wrestrict misreads.
std::string numbered(std::string prefix, long n) { return prefix += std::to_string(n); }

// What response_origin answers (the fake host has no 1.5 recordings of its own).
glmp_origin g_origin = GLMP_ORIGIN_UPSTREAM;

// A proxied request as the core would show it in on_complete: a chain of auth then ratelimit,
// a streamed answer of `total_ms`.
FakeRequest proxied(const std::string& id, const std::string& key_id, std::int64_t total_ms = 40, int status = 200) {
  FakeRequest r;
  r.id = id;
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.route = "/v1/";
  r.model = "glm-4.7";
  r.streaming = true;
  if (!key_id.empty()) r.attributes["auth.key_id"] = key_id;
  r.response_status = status;
  r.profile.status = status;
  r.profile.upstream_status = status;
  r.profile.started_unix_us = kStartUs;
  r.profile.elapsed_ns = total_ms * kMs;
  r.profile.ttfb_ns = 5 * kMs;
  r.profile.upstream_ns = total_ms * kMs - 2 * kMs;
  r.profile.bytes_in = 180;
  r.profile.bytes_out = 2048;
  r.usage.seen = 1;
  r.usage.input_tokens = 11;
  r.usage.output_tokens = 22;
  r.usage.cache_read_input_tokens = 3;
  r.usage.cache_creation_input_tokens = 4;
  r.timings = {
      {"receive", "", 0, 12'000},
      {"auth", "on_request_headers", 15'000, 3'000},
      {"auth", "on_request", 120'000, 4'000},
      {"ratelimit", "on_request", 130'000, 6'000},
      {"upstream_connect", "", 140'000, 200'000},
      {"upstream_headers", "", 340'000, 4 * kMs},
      {"ratelimit", "on_response_headers", 4 * kMs + 400'000, 1'000},
      {"first_byte", "", 4 * kMs + 340'000, kMs - 340'000},
      {"stream", "", 5 * kMs, total_ms * kMs - 5 * kMs},
      {"ratelimit", "on_complete", total_ms * kMs + 10'000, 8'000},
  };
  return r;
}

class ProfilingPlugin : public ::testing::Test {
protected:
  PluginLibrary lib{PROFILING_SO};
  FakeHost host;
  std::unique_ptr<PluginInstance> plugin;

  void SetUp() override {
    g_origin = GLMP_ORIGIN_UPSTREAM;
    host.mutable_api().response_origin = [](glmp_request_host_ptr*) { return g_origin; };
  }

  void start(const std::string& settings = "{}") {
    plugin = std::make_unique<PluginInstance>(lib.descriptor(), host, settings);
  }

  // A reload: the old instance is destroyed (its routes with it), a new one is built.
  void restart(const std::string& settings = "{}") {
    plugin.reset();
    host.routes.clear();  // the fake host keeps them; the core drops them with the old chain
    start(settings);
  }

  void complete(FakeRequest r) { plugin->on_complete(r); }

  // Calls an endpoint as the admin (as = "*"), as a key (its id, as auth would have set it), or
  // with neither (as = "").
  FakeRequest call(const std::string& method, const std::string& path, const std::string& as,
                   const std::string& query = "") {
    FakeRequest r;
    r.method = method;
    r.path = path;
    r.query = query;
    r.route.clear();
    if (as == "*") r.is_admin = true;
    else if (!as.empty()) r.attributes["auth.key_id"] = as;
    EXPECT_TRUE(plugin->call_route(r)) << method << " " << path;
    return r;
  }

  Json listing(const std::string& as, const std::string& query = "") {
    const FakeRequest r = call("GET", "/profiling", as, query);
    EXPECT_EQ(r.respond_status, 200) << r.respond_body;
    EXPECT_EQ(r.respond_content_type, "application/json");
    return Json::parse(r.respond_body, nullptr, false);
  }

  std::vector<std::string> recent_ids(const std::string& as, const std::string& query = "") {
    std::vector<std::string> out;
    const Json j = listing(as, query);  // kept: a range-for over a temporary's member would dangle
    for (const auto& rec : j["recent"]) out.push_back(rec["request_id"]);
    return out;
  }

  double metric(const std::string& name, const glmp::testing::Labels& labels = {}) const {
    const auto m = host.metric(name, labels);
    return m ? m->value : -1;
  }
};

TEST_F(ProfilingPlugin, ImplementsOnlyTheHooksItNeeds) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  EXPECT_EQ(d->abi_minor, GLMP_ABI_MINOR);
  EXPECT_NE(d->on_complete, nullptr);
  EXPECT_NE(d->on_response_headers, nullptr);  // Server-Timing
  EXPECT_EQ(d->on_request, nullptr);
  EXPECT_EQ(d->on_request_headers, nullptr);
  EXPECT_EQ(d->on_response_body, nullptr);
  EXPECT_EQ(d->flags & GLMP_PLUGIN_NONBLOCKING, GLMP_PLUGIN_NONBLOCKING);
}

TEST_F(ProfilingPlugin, RefusesBadSettingsAndOldHosts) {
  EXPECT_NE(glmp::testing::refusal(lib.descriptor(), R"({"max_records":0})").find("\"max_records\""), std::string::npos);
  EXPECT_NE(glmp::testing::refusal(lib.descriptor(), R"({"sample_rate":2})").find("\"sample_rate\""), std::string::npos);
  EXPECT_NE(glmp::testing::refusal(lib.descriptor(), R"({"retention":"1h"})").find("unknown setting \"retention\""),
            std::string::npos);
  EXPECT_EQ(glmp::testing::refusal(lib.descriptor(), "{}"), "");
  host.mutable_api().abi_minor = 5;
  EXPECT_THROW(start(), std::runtime_error);
}

TEST_F(ProfilingPlugin, EndpointsAreKeyOrAdminRoutes) {
  start();
  std::vector<std::string> routes;
  for (const auto& route : host.routes) {
    routes.push_back(route.method + " " + route.path);
    EXPECT_EQ(route.access, GLMP_ACCESS_KEY_OR_ADMIN) << route.path;
  }
  EXPECT_EQ(routes, (std::vector<std::string>{"GET /profiling", "DELETE /profiling", "GET /profiling/*"}));
}

TEST_F(ProfilingPlugin, RecordsAProxiedRequestFromOnComplete) {
  start();
  complete(proxied("req-1", "key_alice", 40));
  const Json j = listing("*");
  EXPECT_EQ(j["window"]["count"], 1);
  EXPECT_EQ(j["window"]["oldest"], "2025-12-31T23:59:59.123Z");
  ASSERT_EQ(j["recent"].size(), 1u);
  const Json& rec = j["recent"][0];
  EXPECT_EQ(rec["request_id"], "req-1");
  EXPECT_EQ(rec["key_id"], "key_alice");
  EXPECT_EQ(rec["method"], "POST");
  EXPECT_EQ(rec["path"], "/v1/chat/completions");
  EXPECT_EQ(rec["route"], "/v1/");
  EXPECT_EQ(rec["model"], "glm-4.7");
  EXPECT_EQ(rec["status"], 200);
  EXPECT_EQ(rec["upstream_status"], 200);
  EXPECT_EQ(rec["streamed"], true);
  EXPECT_EQ(rec["cached"], false);
  EXPECT_EQ(rec["coalesced"], false);
  EXPECT_EQ(rec["bytes_in"], 180);
  EXPECT_EQ(rec["bytes_out"], 2048);
  EXPECT_EQ(rec["usage"], (Json{{"input", 11}, {"output", 22}, {"cache_read", 3}, {"cache_creation", 4}}));
  EXPECT_EQ(rec["started_at"], "2025-12-31T23:59:59.123Z");
  EXPECT_EQ(rec["total_ms"], 40.0);
  EXPECT_EQ(rec["ttft_ms"], 5.0);
  EXPECT_EQ(rec["overhead_ms"], 2.0);
  EXPECT_FALSE(rec.contains("error"));
  std::vector<std::string> names;
  for (const auto& p : rec["phases"]) names.push_back(p["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"receive", "auth.on_request_headers", "auth.on_request",
                                             "ratelimit.on_request", "upstream_connect", "upstream_headers",
                                             "ratelimit.on_response_headers", "first_byte", "stream",
                                             "ratelimit.on_complete"}));
  EXPECT_EQ(rec["phases"][0], (Json{{"name", "receive"}, {"start_ms", 0.0}, {"dur_ms", 0.012}}));
  EXPECT_EQ(rec["phases"][4], (Json{{"name", "upstream_connect"}, {"start_ms", 0.14}, {"dur_ms", 0.2}}));
  EXPECT_EQ(rec["phases"][8]["dur_ms"], 35.0);
  EXPECT_EQ(j["summary"]["phases"]["auth.on_request"], (Json{{"p50", 0.004}, {"p95", 0.004}, {"count", 1}}));
  EXPECT_EQ(j["slowest"][0], rec);
  EXPECT_EQ(metric("glmp_profiling_records"), 1);
}

TEST_F(ProfilingPlugin, OriginErrorsAndMissingFigures) {
  start();
  g_origin = GLMP_ORIGIN_CACHE;
  complete(proxied("hit", "k"));
  g_origin = GLMP_ORIGIN_COALESCED;
  complete(proxied("follower", "k"));
  g_origin = GLMP_ORIGIN_UPSTREAM;
  FakeRequest failed = proxied("failed", "k", 3, 502);
  failed.profile.upstream_status = 0;
  failed.profile.ttfb_ns = -1;
  failed.usage = glmp_usage{};
  failed.error = "upstream connect failed";
  complete(failed);
  FakeRequest anonymous = proxied("anonymous", "");
  anonymous.timings.clear();
  complete(anonymous);

  const Json recent = listing("*")["recent"];
  ASSERT_EQ(recent.size(), 4u);
  EXPECT_EQ(recent[0]["request_id"], "anonymous");
  EXPECT_EQ(recent[0]["key_id"], "");
  EXPECT_TRUE(recent[0]["phases"].empty());
  EXPECT_EQ(recent[1]["status"], 502);
  EXPECT_EQ(recent[1]["upstream_status"], 0);
  EXPECT_TRUE(recent[1]["ttft_ms"].is_null());
  EXPECT_TRUE(recent[1]["usage"].is_null());
  EXPECT_EQ(recent[1]["error"], "upstream connect failed");
  EXPECT_EQ(recent[2]["coalesced"], true);
  EXPECT_EQ(recent[2]["cached"], false);
  EXPECT_EQ(recent[3]["cached"], true);
  EXPECT_EQ(recent[3]["coalesced"], false);
}

TEST_F(ProfilingPlugin, BytesThatAreNotUtf8DoNotBreakTheAnswers) {
  start();
  FakeRequest odd = proxied("id-\xff\xfe", "k");
  odd.path = "/v1/\xc3(";
  complete(odd);
  const Json j = listing("*");
  ASSERT_EQ(j["recent"].size(), 1u);
  EXPECT_EQ(j["recent"][0]["request_id"], "id-\xef\xbf\xbd\xef\xbf\xbd");  // U+FFFD each
  const FakeRequest one = call("GET", "/profiling/id-%FF%FE", "k");
  EXPECT_EQ(one.respond_status, 200) << one.respond_body;
}

TEST_F(ProfilingPlugin, NeverRecordsItsOwnOrUnproxiedRequests) {
  start();
  FakeRequest route_less = proxied("plugin-route", "k");
  route_less.route.clear();  // a plugin route, /health, …
  complete(route_less);
  for (const char* path : {"/profiling", "/profiling/abc", "/dashboard", "/dashboard/app.js"}) {
    FakeRequest own = proxied(path, "k");
    own.path = path;
    complete(own);
  }
  // The endpoint calls themselves run through the chain (a key's), and get on_complete too.
  FakeRequest list = call("GET", "/profiling", "k");
  plugin->on_complete(list);
  EXPECT_EQ(listing("*")["window"]["count"], 0);
  complete(proxied("real", "k"));
  EXPECT_EQ(recent_ids("*"), (std::vector<std::string>{"real"}));
}

TEST_F(ProfilingPlugin, AKeySeesOnlyItsOwnRecords) {
  start();
  complete(proxied("a1", "key_alice"));
  complete(proxied("b1", "key_bob"));
  complete(proxied("a2", "key_alice"));
  complete(proxied("n1", ""));
  EXPECT_EQ(recent_ids("key_alice"), (std::vector<std::string>{"a2", "a1"}));
  EXPECT_EQ(recent_ids("key_bob"), (std::vector<std::string>{"b1"}));
  EXPECT_EQ(listing("key_bob")["window"]["count"], 1);
  EXPECT_EQ(recent_ids("key_alice", "key_id=key_alice"), (std::vector<std::string>{"a2", "a1"}));
  // Asking for another key is refused, whether that key exists or not.
  for (const char* other : {"key_id=key_bob", "key_id=key_nobody"}) {
    const FakeRequest r = call("GET", "/profiling", "key_alice", other);
    EXPECT_EQ(r.respond_status, 403) << other;
    EXPECT_EQ(r.respond_body.find("b1"), std::string::npos);
  }
  // The admin sees everyone's, and can filter.
  EXPECT_EQ(recent_ids("*"), (std::vector<std::string>{"n1", "a2", "b1", "a1"}));
  EXPECT_EQ(recent_ids("*", "key_id=key_bob"), (std::vector<std::string>{"b1"}));
  EXPECT_EQ(recent_ids("*", "key_id=key%5Falice"), (std::vector<std::string>{"a2", "a1"}));  // percent-decoded
}

TEST_F(ProfilingPlugin, RefusalsOfTheEndpoints) {
  start();
  complete(proxied("a1", "key_alice"));
  // Neither the admin token nor a key id (no auth plugin in the chain).
  for (const auto& [method, path] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/profiling"}, {"GET", "/profiling/a1"}, {"DELETE", "/profiling"}}) {
    const FakeRequest r = call(method, path, "");
    EXPECT_EQ(r.respond_status, 401) << method << " " << path;
    EXPECT_TRUE(r.respond_was_error);
  }
  EXPECT_EQ(call("GET", "/profiling", "*", "keyid=key_alice").respond_status, 400);
  EXPECT_EQ(call("DELETE", "/profiling", "*", "key_id=").respond_status, 400);
  EXPECT_EQ(call("DELETE", "/profiling", "key_alice", "key_id=key_bob").respond_status, 403);
  EXPECT_EQ(listing("*")["window"]["count"], 1);  // nothing was deleted
}

TEST_F(ProfilingPlugin, SomeoneElsesRecordIsAsMissingAsAMissingOne) {
  start();
  complete(proxied("a1", "key_alice"));
  complete(proxied("b1", "key_bob"));

  const FakeRequest own = call("GET", "/profiling/a1", "key_alice");
  EXPECT_EQ(own.respond_status, 200);
  const Json rec = Json::parse(own.respond_body);
  EXPECT_EQ(rec["request_id"], "a1");
  EXPECT_EQ(rec["key_id"], "key_alice");
  EXPECT_EQ(rec["total_ms"], 40.0);

  const FakeRequest others = call("GET", "/profiling/b1", "key_alice");
  const FakeRequest missing = call("GET", "/profiling/zz", "key_alice");
  EXPECT_EQ(others.respond_status, 404);
  EXPECT_EQ(missing.respond_status, 404);
  EXPECT_EQ(others.respond_body, missing.respond_body);
  EXPECT_EQ(others.error_type, missing.error_type);
  EXPECT_EQ(others.respond_content_type, missing.respond_content_type);
  EXPECT_EQ(call("GET", "/profiling/", "key_alice").respond_body, missing.respond_body);

  const FakeRequest admin = call("GET", "/profiling/b1", "*");
  EXPECT_EQ(admin.respond_status, 200);
  EXPECT_EQ(Json::parse(admin.respond_body)["key_id"], "key_bob");
  EXPECT_EQ(call("GET", "/profiling/b1", "*", "key_id=key_alice").respond_status, 404);
}

TEST_F(ProfilingPlugin, DeleteCountsWhatItRemoved) {
  start();
  for (int i = 0; i < 3; ++i) complete(proxied(numbered("a", i), "key_alice"));
  for (int i = 0; i < 2; ++i) complete(proxied(numbered("b", i), "key_bob"));
  for (int i = 0; i < 4; ++i) complete(proxied(numbered("c", i), "key_carol"));
  auto deleted = [&](const std::string& as, const std::string& query = "") {
    const FakeRequest r = call("DELETE", "/profiling", as, query);
    EXPECT_EQ(r.respond_status, 200) << r.respond_body;
    return Json::parse(r.respond_body, nullptr, false)["deleted"];
  };
  EXPECT_EQ(deleted("key_alice"), 3);
  EXPECT_EQ(deleted("key_alice"), 0);
  EXPECT_EQ(recent_ids("key_bob").size(), 2u);  // untouched
  EXPECT_EQ(deleted("*", "key_id=key_bob"), 2);
  EXPECT_EQ(metric("glmp_profiling_records"), 4);
  EXPECT_EQ(deleted("*"), 4);
  EXPECT_EQ(listing("*")["window"]["count"], 0);
  EXPECT_EQ(metric("glmp_profiling_records"), 0);
}

TEST_F(ProfilingPlugin, SamplingKeepsErrorsAndSlowRequests) {
  start(R"({"sample_rate":0.05,"slow_threshold":"1s"})");
  for (int i = 0; i < 400; ++i) complete(proxied(numbered("fast-", i), "k", 10));
  const double kept = listing("*")["window"]["count"].get<double>();
  EXPECT_GT(kept, 5);
  EXPECT_LT(kept, 45);
  EXPECT_EQ(metric("glmp_profiling_sampled_out_total"), 400 - kept);
  EXPECT_EQ(metric("glmp_profiling_records"), kept);

  for (int i = 0; i < 20; ++i) complete(proxied(numbered("err-", i), "k", 10, 500));
  for (int i = 0; i < 20; ++i) complete(proxied(numbered("client-err-", i), "k", 10, 429));
  for (int i = 0; i < 20; ++i) {
    FakeRequest cut = proxied(numbered("cut-", i), "k", 10);
    cut.error = "client went away";
    complete(cut);
  }
  for (int i = 0; i < 20; ++i) complete(proxied(numbered("slow-", i), "k", 1000));
  EXPECT_EQ(listing("*")["window"]["count"].get<double>(), kept + 80);
  EXPECT_EQ(metric("glmp_profiling_sampled_out_total"), 400 - kept);
}

TEST_F(ProfilingPlugin, BoundsAndTheirMetrics) {
  start(R"({"max_records":10,"per_key_max":4,"top":2})");
  for (int i = 0; i < 50; ++i) complete(proxied(numbered("flood-", i), "key_flood"));
  for (int i = 0; i < 3; ++i) complete(proxied(numbered("quiet-", i), "key_quiet"));
  for (int i = 0; i < 8; ++i) complete(proxied(numbered("k", i), numbered("key_", i)));
  const Json j = listing("*");
  EXPECT_EQ(j["window"]["count"], 10);
  EXPECT_EQ(j["recent"].size(), 2u);
  EXPECT_EQ(j["slowest"].size(), 2u);
  EXPECT_EQ(j["settings"]["max_records"], 10);
  EXPECT_EQ(listing("key_flood")["window"]["count"], 0);  // the oldest overall went first
  EXPECT_EQ(metric("glmp_profiling_records"), 10);
  EXPECT_EQ(metric("glmp_profiling_evictions_total", {{"reason", "per_key"}}), 46);
  EXPECT_EQ(metric("glmp_profiling_evictions_total", {{"reason", "max_records"}}), 5);
  EXPECT_EQ(metric("glmp_profiling_evictions_total", {{"reason", "age"}}), 0);
}

TEST_F(ProfilingPlugin, ServerTimingWhenEnabled) {
  start(R"({"server_timing":true})");
  FakeRequest r = proxied("st", "k");
  r.timings = {
      {"receive", "", 0, 12'000},
      {"auth", "on_request", 15'000, 4'000},
      {"upstream_connect", "", 30'000, 200'000},
      {"upstream_headers", "", 230'000, 12'500'000},
  };
  plugin->on_response_headers(r);
  EXPECT_EQ(r.response_header("Server-Timing"),
            "receive;dur=0.012, auth.on_request;dur=0.004, upstream_connect;dur=0.200, upstream_headers;dur=12.500");
  FakeRequest none = proxied("st-none", "k");
  none.timings.clear();
  plugin->on_response_headers(none);
  EXPECT_FALSE(none.response_header("Server-Timing"));

  restart();  // server_timing = false (the default)
  FakeRequest off = proxied("st-off", "k");
  plugin->on_response_headers(off);
  EXPECT_FALSE(off.response_header("Server-Timing"));
}

TEST_F(ProfilingPlugin, ManySpansAreAllKept) {
  start();
  FakeRequest r = proxied("long-chain", "k");
  r.timings.clear();
  for (int i = 0; i < 50; ++i) r.timings.push_back({numbered("p", i), "on_request", i * 1000, 500});
  complete(r);
  const Json phases = listing("*")["recent"][0]["phases"];
  ASSERT_EQ(phases.size(), 50u);
  EXPECT_EQ(phases[49]["name"], "p49.on_request");
}

TEST_F(ProfilingPlugin, ANewInstanceStartsEmpty) {
  start();
  complete(proxied("before", "k"));
  EXPECT_EQ(metric("glmp_profiling_records"), 1);
  plugin.reset();  // a reload retires the old instance: its records go with it
  EXPECT_EQ(metric("glmp_profiling_records"), 0);
  restart();
  EXPECT_EQ(listing("*")["window"]["count"], 0);
}

// A flood of 20 000 requests from 20 keys through the C ABI keeps exactly max_records. (What
// on_complete costs is measured by glmp-micro-bench, BM_ProfilingOnComplete, not here: timed
// unit tests fail on a busy machine.)
TEST_F(ProfilingPlugin, AFloodKeepsMaxRecords) {
  start(R"({"max_records":1000})");
  constexpr int kN = 20'000;
  for (int i = 0; i < kN; ++i) {
    FakeRequest r = proxied(numbered("req-", i), numbered("key_", i % 20));
    plugin->on_complete(r);
  }
  EXPECT_EQ(listing("*")["window"]["count"], 1000);
  EXPECT_EQ(metric("glmp_profiling_records"), 1000);
}

// Hot reload unloads the library of a retired chain: no STB_GNU_UNIQUE (the exports test) and no
// thread_local with a destructor, which would pin the library to every thread that ran a hook.
TEST(ProfilingLibrary, UnloadsAfterItsHooksRan) {
  {
    PluginLibrary lib(PROFILING_SO);
    FakeHost host;
    {
      PluginInstance plugin(lib.descriptor(), host, R"({"server_timing":true})");
      FakeRequest r = proxied("unload", "k");
      plugin.on_response_headers(r);
      plugin.on_complete(r);
      FakeRequest list;
      list.method = "GET";
      list.path = "/profiling";
      list.is_admin = true;
      ASSERT_TRUE(plugin.call_route(list));
      EXPECT_EQ(list.respond_status, 200);
    }
    lib.close();
  }
  EXPECT_FALSE(PluginLibrary::is_loaded(PROFILING_SO));
}

}  // namespace
