// The built dashboard.so through the SDK's fake host: the hooks and routes it registers (the page
// public, the metrics admin-only), the page's files with their CSP and content types and without
// a URL to elsewhere, the settings it refuses, hosts older than ABI 1.7, on_complete feeding (only
// proxied requests), every field of GET /api/metrics/json against the requests fed and the
// foreign metrics the fake hands out (pools, tokens by model, process, auth's key cache), ?since=
// (also beyond any time), the baseline (settings, saved snapshot in the store, removed), the top
// keys from the store's key records and token windows (top_keys, top_keys_scan, a usage window the
// store refuses), each instance's own history, the sampler reading
// metrics_collect, and unloading after all that (the sampler thread stopped).
//
// Requests end in the current second, which the series leaves out until it is complete: checks
// of the series poll (bounded) until the second has passed.
#include <gtest/gtest.h>

#include <glmproxy/fake_host.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using glmp::testing::FakeHost;
using glmp::testing::FakeMetric;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::int64_t kMs = 1'000'000;  // ns
constexpr const char* kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
constexpr std::int64_t kFiveHoursMs = 5 * 3600 * 1000;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// What response_origin answers (the fake host has no 1.5 recordings of its own).
glmp_origin g_origin = GLMP_ORIGIN_UPSTREAM;

// A proxied request as the core shows it in on_complete.
struct Proxied {
  std::string id;
  int status = 200;
  int upstream_status = -1;  // -1: the same as status
  std::int64_t total_ms = 40;
  bool stream = false;
  std::string key_id;
  std::string error;
  std::string route = "/v1/";
};

FakeRequest proxied(const Proxied& p) {
  FakeRequest r;
  r.id = p.id;
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.route = p.route;
  r.error = p.error;
  r.model = "glm-4.7";
  r.streaming = p.stream;
  if (!p.key_id.empty()) r.attributes["auth.key_id"] = p.key_id;
  r.response_status = p.status;
  r.profile.status = p.status;
  r.profile.upstream_status = p.upstream_status < 0 ? p.status : p.upstream_status;
  r.profile.started_unix_us = now_ms() * 1000 - p.total_ms * 1000;
  r.profile.elapsed_ns = p.total_ms * kMs;
  r.profile.ttfb_ns = 5 * kMs;  // the core times the first byte of any response; only streams' count as TTFT
  r.profile.upstream_ns = p.total_ms * kMs - kMs;
  if (p.status < 400) {
    r.profile.bytes_in = 180;
    r.profile.bytes_out = 2048;
    r.usage.seen = 1;
    r.usage.input_tokens = 11;
    r.usage.output_tokens = 22;
  } else {
    r.profile.bytes_in = 180;
    r.profile.bytes_out = 100;
  }
  return r;
}

FakeMetric gauge(const std::string& name, glmp::testing::Labels labels, double value) {
  FakeMetric m;
  m.kind = GLMP_METRIC_GAUGE;
  m.name = name;
  m.labels = std::move(labels);
  m.value = value;
  return m;
}

FakeMetric counter(const std::string& name, glmp::testing::Labels labels, double value) {
  FakeMetric m = gauge(name, std::move(labels), value);
  m.kind = GLMP_METRIC_COUNTER;
  return m;
}

// The core's and auth's families as metrics_collect would hand them out.
std::vector<FakeMetric> foreign_metrics() {
  std::vector<FakeMetric> out;
  auto pool = [&](const std::string& upstream, const std::string& figure, double v) {
    out.push_back(gauge("glmp_upstream_pool", {{"upstream", upstream}, {"figure", figure}}, v));
  };
  for (const auto& [figure, v] : std::vector<std::pair<std::string, double>>{
           {"size", 4}, {"idle", 3}, {"in_use", 1}, {"waiting", 0}, {"max", 32}, {"created", 7}, {"reused", 20},
           {"failed", 1}, {"expired", 2}, {"timeouts", 0}, {"healthy", 1}})
    pool("openai", figure, v);
  pool("anthropic", "size", 1);
  pool("anthropic", "in_use", 1);
  pool("anthropic", "max", 0);
  pool("anthropic", "healthy", 1);
  out.push_back(counter("glmp_tokens_total", {{"direction", "in"}, {"flavour", "openai"}, {"model", "glm-4.7"}}, 30));
  out.push_back(counter("glmp_tokens_total", {{"direction", "out"}, {"flavour", "openai"}, {"model", "glm-4.7"}}, 60));
  out.push_back(counter("glmp_tokens_total", {{"direction", "in"}, {"flavour", "anthropic"}, {"model", "glm-4.7"}}, 500));
  out.push_back(counter("glmp_tokens_total", {{"direction", "out"}, {"flavour", "anthropic"}, {"model", "glm-4.7"}}, 1));
  out.push_back(gauge("glmp_requests_in_flight", {}, 3));
  out.push_back(gauge("glmp_active_streams", {}, 2));
  out.push_back(gauge("glmp_process_resident_memory_bytes", {}, 50.0 * 1024 * 1024));
  out.push_back(gauge("glmp_process_threads", {}, 17));
  out.push_back(gauge("glmp_process_open_fds", {}, 42));
  out.push_back(gauge("glmp_process_peak_resident_memory_bytes", {}, 64.0 * 1024 * 1024));
  out.push_back(counter("glmp_process_cpu_seconds_total", {}, 12.5));
  out.push_back(counter("glmp_auth_lookups_total", {{"result", "cache_hit"}}, 9));
  out.push_back(counter("glmp_auth_lookups_total", {{"result", "store"}}, 1));
  out.push_back(counter("not_ours_total", {}, 1));  // outside the "glmp_" prefix
  return out;
}

template <class Pred>
bool poll(Pred pred, std::chrono::milliseconds bound = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

std::int64_t sum(const Json& a) {
  std::int64_t s = 0;
  for (const auto& v : a) s += v.get<std::int64_t>();
  return s;
}

class DashboardPlugin : public ::testing::Test {
protected:
  PluginLibrary lib{DASHBOARD_SO};
  FakeHost host;
  std::unique_ptr<PluginInstance> plugin;

  void SetUp() override {
    g_origin = GLMP_ORIGIN_UPSTREAM;
    host.mutable_api().response_origin = [](glmp_request_host_ptr*) { return g_origin; };
  }
  void TearDown() override { plugin.reset(); }

  void start(const std::string& settings = "{}") { plugin = std::make_unique<PluginInstance>(lib.descriptor(), host, settings); }

  void complete(const Proxied& p) {
    FakeRequest r = proxied(p);
    plugin->on_complete(r);
  }

  FakeRequest call(const std::string& method, const std::string& path, const std::string& query = "") {
    FakeRequest r;
    r.method = method;
    r.path = path;
    r.query = query;
    r.route.clear();
    r.is_admin = true;
    EXPECT_TRUE(plugin->call_route(r)) << method << " " << path;
    return r;
  }

  // An endpoint answered with 200 JSON: its parsed body.
  Json get_json(const std::string& path, const std::string& query = "", const std::string& method = "GET") {
    const FakeRequest r = call(method, path, query);
    EXPECT_EQ(r.respond_status, 200) << path << " " << r.respond_body;
    EXPECT_FALSE(r.respond_was_error);
    EXPECT_EQ(r.respond_content_type, "application/json");
    EXPECT_EQ(r.response_header("Cache-Control"), "no-store");
    const Json j = Json::parse(r.respond_body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.respond_body;
    return j;
  }
  Json metrics_json(const std::string& query = "") { return get_json("/api/metrics/json", query); }

  // Polls /api/metrics/json until `pred` holds for it (bounded); returns the last answer.
  template <class Pred>
  Json json_when(Pred pred, const std::string& what) {
    Json j;
    const bool ok = poll([&] {
      j = metrics_json();
      return pred(j);
    });
    EXPECT_TRUE(ok) << "timed out waiting for: " << what << "\n" << j.dump();
    return j;
  }

  void window_add(const std::string& name, std::int64_t amount, std::int64_t at_ms) {
    ASSERT_EQ(host.api()->window_add(host.instance(), name.data(), name.size(), amount, kFiveHoursMs, at_ms, nullptr),
              GLMP_STORE_OK);
  }
};

// --- the plugin's shape --------------------------------------------------------------------------

TEST_F(DashboardPlugin, ImplementsTheHooksItNeeds) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  EXPECT_EQ(d->abi_minor, 7u);
  EXPECT_NE(d->on_complete, nullptr);
  EXPECT_NE(d->on_request_headers, nullptr) << "so on_complete also runs for requests auth refuses in its headers phase";
  EXPECT_EQ(d->on_response_body, nullptr);
  EXPECT_EQ(d->flags & GLMP_PLUGIN_NONBLOCKING, GLMP_PLUGIN_NONBLOCKING);
  EXPECT_EQ(lib.init(GLMP_ABI_MAJOR, 6), nullptr) << "built for 1.7: an older host is refused";
  start();
  FakeRequest r = proxied({"x"});
  EXPECT_EQ(plugin->on_request_headers(r), GLMP_CONTINUE);
  EXPECT_EQ(plugin->on_request(r), GLMP_CONTINUE);
  EXPECT_FALSE(r.responded);
}

TEST_F(DashboardPlugin, RegistersThePagePublicAndTheMetricsForTheAdmin) {
  start();
  std::set<std::string> routes;
  for (const auto& route : host.routes)
    routes.insert(route.method + " " + route.path + " " + (route.access == GLMP_ACCESS_PUBLIC ? "public"
                                                           : route.access == GLMP_ACCESS_ADMIN ? "admin"
                                                                                               : "other"));
  EXPECT_EQ(routes, (std::set<std::string>{
                        "GET /dashboard public",
                        "GET /dashboard/dashboard.js public",
                        "GET /dashboard/dashboard.css public",
                        "GET /dashboard/uPlot.iife.min.js public",
                        "GET /dashboard/uPlot.min.css public",
                        "GET /api/metrics/system admin",
                        "GET /api/metrics/json admin",
                        "GET /api/metrics/health admin",
                        "PUT /api/metrics/baseline admin",
                        "DELETE /api/metrics/baseline admin",
                    }));
  EXPECT_EQ(host.routes.size(), routes.size());
}

// Removes /* ... */ comments (uPlot's banner names its home page).
std::string without_block_comments(const std::string& s) {
  std::string out;
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t open = s.find("/*", i);
    if (open == std::string::npos) {
      out += s.substr(i);
      break;
    }
    out += s.substr(i, open - i);
    const std::size_t close = s.find("*/", open + 2);
    if (close == std::string::npos) break;
    i = close + 2;
  }
  return out;
}

// Every value of attribute `attr` (attr="...") in `html`.
std::vector<std::string> attribute_values(const std::string& html, const std::string& attr) {
  std::vector<std::string> out;
  const std::string needle = " " + attr + "=\"";
  for (std::size_t at = html.find(needle); at != std::string::npos; at = html.find(needle, at + 1)) {
    const std::size_t begin = at + needle.size();
    out.push_back(html.substr(begin, html.find('"', begin) - begin));
  }
  return out;
}

TEST_F(DashboardPlugin, ServesThePageWithItsCspAndNothingFromElsewhere) {
  start();
  const std::vector<std::pair<std::string, std::string>> assets{
      {"/dashboard", "text/html; charset=utf-8"},
      {"/dashboard/dashboard.js", "text/javascript; charset=utf-8"},
      {"/dashboard/dashboard.css", "text/css; charset=utf-8"},
      {"/dashboard/uPlot.iife.min.js", "text/javascript; charset=utf-8"},
      {"/dashboard/uPlot.min.css", "text/css; charset=utf-8"},
  };
  std::map<std::string, std::string> bodies;
  for (const auto& [path, type] : assets) {
    const FakeRequest r = call("GET", path);
    ASSERT_EQ(r.respond_status, 200) << path;
    EXPECT_EQ(r.respond_content_type, type) << path;
    EXPECT_EQ(r.response_header("Content-Security-Policy"), kCsp) << path;
    EXPECT_EQ(r.response_header("X-Content-Type-Options"), "nosniff") << path;
    EXPECT_EQ(r.response_header("X-Frame-Options"), "DENY") << path;
    EXPECT_EQ(r.response_header("Access-Control-Allow-Origin"), std::nullopt) << path;
    EXPECT_GT(r.respond_body.size(), 100u) << path;
    bodies[path] = r.respond_body;
  }
  // No URL to another origin in any file (uPlot's licence banner aside).
  for (const auto& [path, body] : bodies) {
    const std::string code = path.find("uPlot") != std::string::npos ? without_block_comments(body) : body;
    EXPECT_EQ(code.find("http://"), std::string::npos) << path;
    EXPECT_EQ(code.find("https://"), std::string::npos) << path;
    EXPECT_EQ(code.find("//cdn"), std::string::npos) << path;
  }
  // The shell: only this plugin's files, no inline script or style (the CSP would block them).
  const std::string& html = bodies["/dashboard"];
  std::vector<std::string> refs = attribute_values(html, "src");
  for (const auto& h : attribute_values(html, "href")) refs.push_back(h);
  for (const auto& a : attribute_values(html, "action")) refs.push_back(a);
  std::set<std::string> local;
  for (const auto& ref : refs) {
    if (ref.rfind("data:", 0) == 0) continue;  // the empty favicon (img-src data:)
    EXPECT_EQ(ref.rfind("/dashboard/", 0), 0u) << ref;
    local.insert(ref);
  }
  EXPECT_EQ(local, (std::set<std::string>{"/dashboard/dashboard.js", "/dashboard/dashboard.css",
                                          "/dashboard/uPlot.iife.min.js", "/dashboard/uPlot.min.css"}));
  EXPECT_EQ(html.find("<style"), std::string::npos);
  EXPECT_EQ(html.find(" style=\""), std::string::npos);
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  for (std::size_t at = html.find("<script"); at != std::string::npos; at = html.find("<script", at + 1)) {
    const std::string tag = html.substr(at, html.find('>', at) - at);
    EXPECT_NE(tag.find(" src=\"/dashboard/"), std::string::npos) << tag;
    EXPECT_EQ(html.compare(html.find('>', at) + 1, 9, "</script>"), 0) << "an inline script: " << tag;
  }
  EXPECT_EQ(html.find(" onclick="), std::string::npos);
  EXPECT_EQ(html.find(" onload="), std::string::npos);
  EXPECT_EQ(bodies["/dashboard/dashboard.js"].find("eval("), std::string::npos);
}

// --- settings and hosts --------------------------------------------------------------------------

TEST_F(DashboardPlugin, RefusesBadSettings) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  auto refusal = [&](const std::string& json) { return glmp::testing::refusal(d, json); };
  auto refused_naming = [&](const std::string& json, const std::string& needle) {
    const std::string why = refusal(json);
    EXPECT_NE(why, "") << json << " accepted";
    EXPECT_NE(why.find(needle), std::string::npos) << json << ": " << why;
  };
  refused_naming(R"({"histroy":"1h"})", "unknown setting \"histroy\"");
  refused_naming(R"({"history":"abc"})", "history");
  refused_naming(R"({"history":true})", "history");
  refused_naming(R"({"history":"30s"})", "history");
  refused_naming(R"({"history":"25h"})", "history");
  refused_naming(R"({"summary_window":"0s"})", "summary_window");
  refused_naming(R"({"summary_window":"2h"})", "summary_window");
  refused_naming(R"({"history":"120s","summary_window":"120s"})", "summary_window must be shorter than history");
  refused_naming(R"({"history":"120s","summary_window":"5m"})", "summary_window");
  refused_naming(R"({"usage_window":"10s"})", "usage_window");
  refused_naming(R"({"usage_window":"-5m"})", "usage_window");
  refused_naming(R"({"top_keys":-1})", "top_keys");
  refused_naming(R"({"top_keys":1001})", "top_keys");
  refused_naming(R"({"top_keys":"5"})", "top_keys");
  refused_naming(R"({"top_keys_refresh":"0s"})", "top_keys_refresh");
  refused_naming(R"({"top_keys_scan":0})", "top_keys_scan");
  refused_naming(R"({"slow_window":"2h"})", "slow_window");
  refused_naming(R"({"slowest":101})", "slowest");
  refused_naming(R"({"top_errors":201})", "top_errors");
  refused_naming(R"({"baseline":{"p51":1}})", "unknown baseline figure \"p51\"");
  refused_naming(R"({"baseline":{"p50":-1}})", "baseline.p50");
  refused_naming(R"({"baseline":{"error_rate":"low"}})", "baseline.error_rate");
  refused_naming(R"({"baseline":[120]})", "baseline");
  refused_naming(R"({"baseline":120})", "baseline");
  refused_naming(R"([1])", "object");
  EXPECT_EQ(refusal("{}"), "");
  EXPECT_EQ(refusal(""), "");
  EXPECT_EQ(refusal(R"({"history":"2h","summary_window":"30s","usage_window":"1h","top_keys":5,"top_keys_refresh":"1s",
                       "top_keys_scan":100,"slow_window":"10m","slowest":20,"top_errors":50,"baseline":{"p50":0}})"),
            "");
}

TEST_F(DashboardPlugin, SettingsShowInTheAnswer) {
  start(R"({"history":"2h","summary_window":"30s","usage_window":"1h"})");
  const Json j = metrics_json();
  EXPECT_EQ(j["settings"], (Json{{"history_s", 7200}, {"summary_window_s", 30}, {"usage_window_s", 3600}}));
  EXPECT_EQ(j["topKeys"]["windowSeconds"], 3600);
}

TEST_F(DashboardPlugin, RefusesAHostWithoutMetricsCollect) {
  host.mutable_api().abi_minor = 6;
  try {
    start();
    ADD_FAILURE() << "a 1.6 host was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("1.7"), std::string::npos) << e.what();
  }
  host.mutable_api().abi_minor = GLMP_ABI_MINOR;
  host.mutable_api().metrics_collect = nullptr;
  EXPECT_THROW(start(), std::runtime_error);
  EXPECT_TRUE(host.routes.empty()) << "refused before registering anything";
}

// --- feeding and the answers ---------------------------------------------------------------------

TEST_F(DashboardPlugin, CountsProxiedRequestsOnly) {
  start();
  complete({"a"});
  complete({"b", 429, 0});
  complete({"c"});
  Proxied core_route{"d"};
  core_route.route = "";  // /health, /metrics, admin and plugin routes: no [[routes]] match
  complete(core_route);
  Proxied core_error{"e", 404, 0};
  core_error.route = "";
  complete(core_error);
  const Json sys = get_json("/api/metrics/system");
  EXPECT_EQ(sys["requests"]["totalRequests"], 3);
  EXPECT_EQ(sys["requests"]["successfulRequests"], 2);
  EXPECT_EQ(sys["requests"]["failedRequests"], 1);
  EXPECT_EQ(sys["errors"]["errorsByStatus"], (Json{{"429", 1}}));
  // The endpoints' own calls are not counted either.
  metrics_json();
  get_json("/api/metrics/health");
  EXPECT_EQ(get_json("/api/metrics/system")["requests"]["totalRequests"], 3);
}

TEST_F(DashboardPlugin, JsonAnswersEveryFieldFromTheRequestsAndTheMetrics) {
  host.set_foreign_metrics(foreign_metrics());
  start();
  const std::int64_t before = now_ms();
  Proxied streamed{"ok-stream", 200, -1, 40, true, "key_alice"};
  complete(streamed);
  complete({"ok-plain", 200, -1, 80});
  complete({"up-5xx", 500, 500, 10});
  complete({"rejected", 401, 0, 1});
  Proxied gateway{"gateway", 502, 0, 20};
  gateway.error = "upstream unreachable";
  complete(gateway);
  complete({"up-4xx", 400, 400, 2});
  g_origin = GLMP_ORIGIN_CACHE;
  complete({"cached", 200, -1, 3});
  g_origin = GLMP_ORIGIN_COALESCED;
  complete({"coalesced", 200, -1, 4});
  g_origin = GLMP_ORIGIN_UPSTREAM;

  // Wait until the seconds of these requests are complete and a sample has been taken.
  const Json j = json_when(
      [](const Json& a) {
        if (sum(a["series"]["requests"]) != 8) return false;
        return std::any_of(a["series"]["rss_mb"].begin(), a["series"]["rss_mb"].end(),
                           [](const Json& v) { return !v.is_null(); });
      },
      "8 requests in the series and a sampled second");
  const std::int64_t after = now_ms();

  // Top level.
  for (const char* k : {"timestamp", "uptime_s", "settings", "system", "series", "models", "topKeys", "slowest", "baseline"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_GE(j["timestamp"].get<std::int64_t>(), before);
  EXPECT_LE(j["timestamp"].get<std::int64_t>(), after);
  EXPECT_GE(j["uptime_s"].get<std::int64_t>(), 0);
  EXPECT_EQ(j["settings"], (Json{{"history_s", 3600}, {"summary_window_s", 60}, {"usage_window_s", 18000}}));
  EXPECT_TRUE(j["baseline"].is_null());
  EXPECT_EQ(j["topKeys"]["windowSeconds"], 18000);
  EXPECT_EQ(j["topKeys"]["keys"], Json::array());
  EXPECT_TRUE(j["topKeys"]["error"].is_null());

  // system: the same object GET /api/metrics/system answers.
  const Json& sys = j["system"];
  const Json alone = get_json("/api/metrics/system");
  for (const char* k : {"requests", "throughput", "connectionPools", "caches", "coalescing", "errors", "resources", "timestamp"}) {
    EXPECT_TRUE(sys.contains(k)) << k;
    EXPECT_TRUE(alone.contains(k)) << k;
  }
  const Json& req = sys["requests"];
  for (const char* k : {"totalRequests", "successfulRequests", "failedRequests", "requestRate", "errorRate", "p50", "p95",
                        "p99", "avg", "min", "max", "timestamp"})
    EXPECT_TRUE(req.contains(k)) << k;
  EXPECT_EQ(req["totalRequests"], 8);
  EXPECT_EQ(req["successfulRequests"], 4);
  EXPECT_EQ(req["failedRequests"], 4);
  EXPECT_EQ(alone["requests"]["totalRequests"], 8);
  // The summary window holds all of them (the last 60 s).
  EXPECT_NEAR(req["errorRate"].get<double>(), 50.0, 1e-9);
  EXPECT_NEAR(req["requestRate"].get<double>(), 8.0 / 60.0, 1e-3);
  EXPECT_NEAR(req["min"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(req["max"].get<double>(), 80.0, 1e-9);
  EXPECT_NEAR(req["avg"].get<double>(), (40 + 80 + 10 + 1 + 20 + 2 + 3 + 4) / 8.0, 1e-3);
  EXPECT_LE(req["p50"].get<double>(), req["p95"].get<double>());
  EXPECT_LE(req["p95"].get<double>(), req["p99"].get<double>());
  EXPECT_GE(req["p99"].get<double>(), 64.0) << "the 80 ms request";
  const Json& tp = sys["throughput"];
  for (const char* k : {"requestsPerSecond", "bytesPerSecond", "avgRequestSize", "avgResponseSize", "peakRequestsPerSecond",
                        "tokensInPerSecond", "tokensOutPerSecond"})
    EXPECT_TRUE(tp.contains(k)) << k;
  EXPECT_NEAR(tp["avgRequestSize"].get<double>(), 180.0, 1e-9);
  EXPECT_NEAR(tp["avgResponseSize"].get<double>(), (4 * 2048 + 4 * 100) / 8.0, 1e-9);
  EXPECT_NEAR(tp["tokensInPerSecond"].get<double>(), 44.0 / 60.0, 1e-3);
  EXPECT_NEAR(tp["tokensOutPerSecond"].get<double>(), 88.0 / 60.0, 1e-3);
  EXPECT_GE(tp["peakRequestsPerSecond"].get<int>(), 1);
  EXPECT_LE(tp["peakRequestsPerSecond"].get<int>(), 8);

  // Pools from the foreign glmp_upstream_pool samples.
  const Json& pools = sys["connectionPools"];
  ASSERT_EQ(pools.size(), 2u) << pools.dump();
  const Json& ant = pools[0]["name"] == "anthropic" ? pools[0] : pools[1];
  const Json& oai = pools[0]["name"] == "openai" ? pools[0] : pools[1];
  EXPECT_EQ(oai["name"], "openai");
  EXPECT_EQ(oai["size"], 4);
  EXPECT_EQ(oai["idle"], 3);
  EXPECT_EQ(oai["inUse"], 1);
  EXPECT_EQ(oai["waiting"], 0);
  EXPECT_EQ(oai["max"], 32);
  EXPECT_EQ(oai["created"], 7);
  EXPECT_EQ(oai["reused"], 20);
  EXPECT_EQ(oai["failed"], 1);
  EXPECT_EQ(oai["expired"], 2);
  EXPECT_EQ(oai["timeouts"], 0);
  EXPECT_EQ(oai["healthy"], true);
  EXPECT_NEAR(oai["utilization"].get<double>(), 100.0 / 32, 1e-9);
  EXPECT_EQ(ant["name"], "anthropic");
  EXPECT_EQ(ant["inUse"], 1);
  EXPECT_TRUE(ant["utilization"].is_null()) << "no max";

  // Caches: auth's key cache only (no cache plugin, no redis store); no batching.
  ASSERT_EQ(sys["caches"].size(), 1u) << sys["caches"].dump();
  EXPECT_EQ(sys["caches"][0]["name"], "api_keys");
  EXPECT_EQ(sys["caches"][0]["plugin"], "auth");
  EXPECT_EQ(sys["caches"][0]["hits"], 9);
  EXPECT_EQ(sys["caches"][0]["misses"], 1);
  EXPECT_NEAR(sys["caches"][0]["hitRate"].get<double>(), 90.0, 1e-9);
  EXPECT_TRUE(sys["coalescing"].is_null());

  // Errors.
  const Json& errors = sys["errors"];
  EXPECT_EQ(errors["totalErrors"], 4);
  EXPECT_EQ(errors["errorsByType"],
            (Json{{"rejected", 1}, {"upstream_4xx", 1}, {"upstream_5xx", 1}, {"gateway", 1}, {"internal", 0}}));
  EXPECT_EQ(errors["errorsByStatus"], (Json{{"400", 1}, {"401", 1}, {"500", 1}, {"502", 1}}));
  EXPECT_NEAR(errors["errorRate"].get<double>(), 50.0, 1e-9);
  ASSERT_EQ(errors["topErrors"].size(), 4u);
  bool saw_gateway = false;
  for (const Json& e : errors["topErrors"]) {
    for (const char* k : {"status", "type", "message", "route", "count", "lastSeen"}) EXPECT_TRUE(e.contains(k)) << k;
    EXPECT_EQ(e["count"], 1);
    EXPECT_EQ(e["route"], "/v1/");
    EXPECT_GE(e["lastSeen"].get<std::int64_t>(), before);
    EXPECT_LE(e["lastSeen"].get<std::int64_t>(), after);
    if (e["status"] == 502) {
      saw_gateway = true;
      EXPECT_EQ(e["type"], "gateway");
      EXPECT_EQ(e["message"], "upstream unreachable");
    }
    if (e["status"] == 401) {
      EXPECT_EQ(e["type"], "rejected");
    }
    if (e["status"] == 400) {
      EXPECT_EQ(e["type"], "upstream_4xx");
    }
    if (e["status"] == 500) {
      EXPECT_EQ(e["type"], "upstream_5xx");
    }
  }
  EXPECT_TRUE(saw_gateway);

  // Resources from the foreign process gauges.
  const Json& res = sys["resources"];
  for (const char* k : {"memoryUsageMB", "peakMemoryUsageMB", "memoryGrowthRate", "cpuUsagePercent", "threads", "openFds",
                        "inFlight", "activeStreams"})
    EXPECT_TRUE(res.contains(k)) << k;
  EXPECT_NEAR(res["memoryUsageMB"].get<double>(), 50.0, 1e-9);
  EXPECT_GT(res["peakMemoryUsageMB"].get<double>(), 0.0) << "the core's glmp_process_peak_resident_memory_bytes";
  EXPECT_EQ(res["threads"], 17);
  EXPECT_EQ(res["openFds"], 42);
  EXPECT_EQ(res["inFlight"], 3);
  EXPECT_EQ(res["activeStreams"], 2);
  EXPECT_TRUE(res["memoryGrowthRate"].is_null()) << "fewer than 60 samples";
  if (!res["cpuUsagePercent"].is_null()) {
    EXPECT_GE(res["cpuUsagePercent"].get<double>(), 0.0);
  }

  // Models from the foreign glmp_tokens_total samples, the most tokens first.
  EXPECT_EQ(j["models"], (Json::array({
                             {{"model", "glm-4.7"}, {"flavour", "anthropic"}, {"tokensIn", 500}, {"tokensOut", 1}},
                             {{"model", "glm-4.7"}, {"flavour", "openai"}, {"tokensIn", 30}, {"tokensOut", 60}},
                         })));

  // The series.
  const Json& s = j["series"];
  EXPECT_EQ(s["interval_s"], 1);
  const std::size_t n = s["t"].size();
  ASSERT_GT(n, 0u);
  for (const char* k : {"requests", "errors", "err_rejected", "err_upstream_4xx", "err_upstream_5xx", "err_gateway",
                        "err_internal", "tokens_in", "tokens_out", "bytes_in", "bytes_out", "cache_hits", "coalesced",
                        "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms", "in_flight", "streams", "pool_in_use",
                        "pool_idle", "pool_waiting", "rss_mb", "cpu_percent"}) {
    ASSERT_TRUE(s.contains(k)) << k;
    EXPECT_EQ(s[k].size(), n) << k;
  }
  for (std::size_t i = 1; i < n; ++i) EXPECT_EQ(s["t"][i].get<std::int64_t>(), s["t"][i - 1].get<std::int64_t>() + 1);
  EXPECT_LT(s["t"][n - 1].get<std::int64_t>(), j["timestamp"].get<std::int64_t>() / 1000) << "complete seconds only";
  EXPECT_EQ(sum(s["errors"]), 4);
  EXPECT_EQ(sum(s["err_rejected"]), 1);
  EXPECT_EQ(sum(s["err_upstream_4xx"]), 1);
  EXPECT_EQ(sum(s["err_upstream_5xx"]), 1);
  EXPECT_EQ(sum(s["err_gateway"]), 1);
  EXPECT_EQ(sum(s["err_internal"]), 0);
  EXPECT_EQ(sum(s["tokens_in"]), 44);
  EXPECT_EQ(sum(s["tokens_out"]), 88);
  EXPECT_EQ(sum(s["bytes_in"]), 8 * 180);
  EXPECT_EQ(sum(s["bytes_out"]), 4 * 2048 + 4 * 100);
  EXPECT_EQ(sum(s["cache_hits"]), 1);
  EXPECT_EQ(sum(s["coalesced"]), 1);
  int ttft_seconds = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool busy = s["requests"][i].get<int>() > 0;
    EXPECT_EQ(s["p50_ms"][i].is_null(), !busy) << i;
    EXPECT_EQ(s["p99_ms"][i].is_null(), !busy) << i;
    if (!s["ttft_p50_ms"][i].is_null()) {
      ++ttft_seconds;
      EXPECT_TRUE(busy);
      EXPECT_GE(s["ttft_p50_ms"][i].get<double>(), 4.0) << "the streamed request's 5 ms";
      EXPECT_LE(s["ttft_p50_ms"][i].get<double>(), 6.25);
    }
    if (!s["rss_mb"][i].is_null()) {
      EXPECT_NEAR(s["rss_mb"][i].get<double>(), 50.0, 1e-9);
      EXPECT_EQ(s["in_flight"][i], 3);
      EXPECT_EQ(s["streams"][i], 2);
      EXPECT_EQ(s["pool_in_use"][i], 2) << "summed over the pools";
      EXPECT_EQ(s["pool_idle"][i], 3);
      EXPECT_EQ(s["pool_waiting"][i], 0);
    }
  }
  EXPECT_EQ(ttft_seconds, 1) << "only the streamed request has a TTFT";

  // The slowest requests, slowest first, with their details.
  const Json& slow = j["slowest"];
  ASSERT_EQ(slow.size(), 8u);
  std::vector<std::string> ids;
  for (const Json& row : slow) {
    ids.push_back(row["requestId"]);
    for (const char* k : {"requestId", "at", "method", "path", "status", "durationMs", "ttfbMs", "model", "keyId", "origin"})
      EXPECT_TRUE(row.contains(k)) << k;
    EXPECT_GE(row["at"].get<std::int64_t>(), before);
    EXPECT_LE(row["at"].get<std::int64_t>(), after);
    EXPECT_EQ(row["method"], "POST");
    EXPECT_EQ(row["path"], "/v1/chat/completions");
    EXPECT_EQ(row["model"], "glm-4.7");
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"ok-plain", "ok-stream", "gateway", "up-5xx", "coalesced", "cached", "up-4xx",
                                           "rejected"}));
  EXPECT_EQ(slow[0]["durationMs"], 80.0);
  EXPECT_TRUE(slow[0]["ttfbMs"].is_null()) << "not streamed";
  EXPECT_TRUE(slow[0]["keyId"].is_null());
  EXPECT_EQ(slow[0]["status"], 200);
  EXPECT_EQ(slow[0]["origin"], "upstream");
  EXPECT_EQ(slow[1]["durationMs"], 40.0);
  EXPECT_EQ(slow[1]["ttfbMs"], 5.0);
  EXPECT_EQ(slow[1]["keyId"], "key_alice");
  EXPECT_EQ(slow[2]["status"], 502);
  EXPECT_EQ(slow[4]["origin"], "coalesced");
  EXPECT_EQ(slow[5]["origin"], "cache");
}

TEST_F(DashboardPlugin, SinceKeepsLaterSecondsAndABadOneIs400) {
  start();
  for (const char* bad : {"since=abc", "since=-1", "since=12x", "since=1.5"}) {
    const FakeRequest r = call("GET", "/api/metrics/json", bad);
    EXPECT_EQ(r.respond_status, 400) << bad;
    EXPECT_TRUE(r.respond_was_error) << bad;
    EXPECT_EQ(r.error_type, "invalid_request_error") << bad;
  }
  complete({"a"});
  const Json full = json_when([](const Json& a) { return a["series"]["t"].size() >= 2; }, "two complete seconds");
  const Json& t = full["series"]["t"];
  const std::int64_t first = t[0];
  const std::int64_t last = t[t.size() - 1];
  const Json later = metrics_json("since=" + std::to_string(first));
  ASSERT_GE(later["series"]["t"].size(), 1u);
  EXPECT_EQ(later["series"]["t"][0], first + 1);
  for (const auto& v : later["series"]["t"]) EXPECT_GT(v.get<std::int64_t>(), first);
  EXPECT_EQ(later["series"]["requests"].size(), later["series"]["t"].size());
  const Json none = metrics_json("since=" + std::to_string(last + 1000));
  EXPECT_EQ(none["series"]["t"], Json::array());
  EXPECT_EQ(none["series"]["requests"], Json::array());
  EXPECT_EQ(none["series"]["p50_ms"], Json::array());
  EXPECT_EQ(none["system"]["requests"]["totalRequests"], 1) << "since filters the series only";
  // since=0 and an empty since: the whole history.
  EXPECT_EQ(metrics_json("since=0")["series"]["t"][0], first);
  EXPECT_EQ(metrics_json("since=")["series"]["t"][0], first);
}

// A since beyond any time the ring holds (the largest Unix second, or a number too large for 64
// bits) selects no second at all, or is refused: never the whole history again.
TEST_F(DashboardPlugin, SinceBeyondAnyTimeSelectsNothing) {
  start();
  complete({"a"});
  json_when([](const Json& a) { return !a["series"]["t"].empty(); }, "a complete second");
  for (const char* since : {"since=9223372036854775807", "since=9223372036854775806", "since=99999999999999999999"}) {
    const FakeRequest r = call("GET", "/api/metrics/json", since);
    if (r.respond_status == 400) continue;  // refusing it is fine too
    ASSERT_EQ(r.respond_status, 200) << since;
    const Json j = Json::parse(r.respond_body, nullptr, false);
    EXPECT_EQ(j["series"]["t"], Json::array()) << since << ": " << j["series"]["t"].dump();
    EXPECT_EQ(j["series"]["requests"], Json::array()) << since;
  }
}

TEST_F(DashboardPlugin, BaselineFromTheSettingsThenASnapshotInTheStore) {
  start(R"({"baseline":{"p50":120,"error_rate":1.5,"ttft_p50":30}})");
  const Json from_settings = {{"source", "settings"},
                              {"savedAt", nullptr},
                              {"p50", 120.0},
                              {"p95", nullptr},
                              {"p99", nullptr},
                              {"requestsPerSecond", nullptr},
                              {"errorRate", 1.5},
                              {"cpuUsagePercent", nullptr},
                              {"memoryUsageMB", nullptr},
                              {"ttftP50", 30.0}};
  EXPECT_EQ(metrics_json()["baseline"], from_settings);

  complete({"a", 200, -1, 25});
  const std::int64_t before = now_ms();
  const Json put = get_json("/api/metrics/baseline", "", "PUT");
  ASSERT_TRUE(put.contains("baseline")) << put.dump();
  const Json& b = put["baseline"];
  std::set<std::string> keys;
  for (const auto& [k, v] : b.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"source", "savedAt", "p50", "p95", "p99", "requestsPerSecond", "errorRate",
                                         "cpuUsagePercent", "memoryUsageMB", "ttftP50"}));
  EXPECT_EQ(b["source"], "snapshot");
  EXPECT_GE(b["savedAt"].get<std::int64_t>(), before);
  const auto stored = host.record("dashboard", "baseline");
  ASSERT_TRUE(stored) << "saved in the store: dashboard/baseline";
  EXPECT_EQ(Json::parse(*stored), b);
  EXPECT_EQ(metrics_json()["baseline"], b) << "the snapshot wins over the settings";

  // Another instance (another replica, a reload) sees it through the store.
  FakeHost other_host;
  {
    PluginInstance other(lib.descriptor(), other_host, "{}");
    other_host.records = host.records;
    FakeRequest r;
    r.method = "GET";
    r.path = "/api/metrics/json";
    r.is_admin = true;
    ASSERT_TRUE(other.call_route(r));
    EXPECT_EQ(Json::parse(r.respond_body)["baseline"], b);
  }

  const Json del = get_json("/api/metrics/baseline", "", "DELETE");
  EXPECT_EQ(del, (Json{{"baseline", from_settings}})) << "back to the settings' baseline";
  EXPECT_FALSE(host.record("dashboard", "baseline"));
  EXPECT_EQ(metrics_json()["baseline"], from_settings);
  EXPECT_EQ(get_json("/api/metrics/baseline", "", "DELETE"), (Json{{"baseline", from_settings}})) << "nothing to remove";

  // The store down: PUT and DELETE say so.
  host.store_mode = FakeHost::StoreMode::Unavailable;
  FakeRequest r = call("PUT", "/api/metrics/baseline");
  EXPECT_EQ(r.respond_status, 503);
  EXPECT_TRUE(r.respond_was_error);
  r = call("DELETE", "/api/metrics/baseline");
  EXPECT_EQ(r.respond_status, 503);
  host.store_mode = FakeHost::StoreMode::Normal;
}

TEST_F(DashboardPlugin, WithoutSettingsTheBaselineFallsBackToNull) {
  start();
  EXPECT_TRUE(metrics_json()["baseline"].is_null());
  const Json put = get_json("/api/metrics/baseline", "", "PUT");
  EXPECT_EQ(put["baseline"]["source"], "snapshot");
  EXPECT_TRUE(put["baseline"]["p50"].is_null()) << "no request in the window";
  EXPECT_EQ(get_json("/api/metrics/baseline", "", "DELETE"), (Json{{"baseline", nullptr}}));
  EXPECT_TRUE(metrics_json()["baseline"].is_null());
}

TEST_F(DashboardPlugin, TopKeysFromTheKeyRecordsAndTheirTokenWindows) {
  const std::int64_t now = now_ms();
  host.records["keys"]["key_a"] = R"({"name":"alice","prefix":"pk_a"})";
  host.records["keys"]["key_b"] = R"({"name":"bob"})";
  host.records["keys"]["key_c"] = R"({"name":"carol"})";
  host.records["keys"]["key_d"] = R"({"name":"dave"})";
  host.records["keys"]["key_e"] = R"({"id":"key_e"})";
  host.records["keys"]["key_f"] = R"({"name":"frank"})";
  host.records["other"]["key_x"] = R"({"name":"not a key"})";
  window_add("tokens:key_a", 100, now);
  window_add("tokens:key_b", 250, now);
  window_add("tokens:key_b", 50, now - 3600 * 1000);
  window_add("tokens:key_c", 200, now);
  window_add("tokens:key_d", 5000, now - 6 * 3600 * 1000);  // older than the 5 h usage window
  window_add("tokens:key_e", 50, now);
  window_add("tokens:key_x", 9999, now);
  // key_f: no usage at all.

  start(R"({"top_keys":3})");
  Json top = metrics_json()["topKeys"];
  EXPECT_EQ(top["windowSeconds"], 18000);
  EXPECT_TRUE(top["error"].is_null()) << top.dump();
  EXPECT_EQ(top["keys"], (Json::array({{{"id", "key_b"}, {"name", "bob"}, {"tokens", 300}},
                                       {{"id", "key_c"}, {"name", "carol"}, {"tokens", 200}},
                                       {{"id", "key_a"}, {"name", "alice"}, {"tokens", 100}}})));

  plugin.reset();
  host.routes.clear();
  start(R"({"top_keys_refresh":"1s"})");
  top = metrics_json()["topKeys"];
  ASSERT_EQ(top["keys"].size(), 4u) << top.dump();
  EXPECT_EQ(top["keys"][3], (Json{{"id", "key_e"}, {"name", ""}, {"tokens", 50}})) << "a record without a name";
  // Cached for top_keys_refresh, then recomputed.
  window_add("tokens:key_e", 1000, now_ms());
  const Json refreshed = json_when([](const Json& a) { return a["topKeys"]["keys"][0]["id"] == "key_e"; }, "key_e first");
  EXPECT_EQ(refreshed["topKeys"]["keys"][0]["tokens"], 1050);

  plugin.reset();
  host.routes.clear();
  start(R"({"top_keys":0})");
  EXPECT_EQ(metrics_json()["topKeys"]["keys"], Json::array());

  plugin.reset();
  host.routes.clear();
  start();
  host.store_mode = FakeHost::StoreMode::Unavailable;
  top = metrics_json()["topKeys"];
  EXPECT_EQ(top["keys"], Json::array());
  EXPECT_EQ(top["error"], "the store is unavailable");
  host.store_mode = FakeHost::StoreMode::Normal;
}

// README: "top_keys_scan: at most this many keys are read per refresh", and `error` says when it
// cut the scan short.
TEST_F(DashboardPlugin, TopKeysScanReadsAtMostThatManyKeys) {
  const std::int64_t now = now_ms();
  for (int i = 1; i <= 5; ++i) {
    const std::string id = "key_" + std::to_string(i);
    host.records["keys"][id] = R"({"name":"k)" + std::to_string(i) + R"("})";
    window_add("tokens:" + id, 10 * i, now);
  }
  start(R"({"top_keys_scan":2})");
  const Json top = metrics_json()["topKeys"];
  EXPECT_LE(top["scanned"].get<int>(), 2) << top.dump();
  EXPECT_LE(top["keys"].size(), 2u) << top.dump();
  EXPECT_FALSE(top["error"].is_null()) << "the cut is reported: " << top.dump();
}

// A usage_window the store refuses (longer than its max_window, 24 h by default, while the setting
// allows up to 7 days) must not silently list no keys.
TEST_F(DashboardPlugin, AUsageWindowTheStoreRefusesIsReported) {
  const std::int64_t now = now_ms();
  host.records["keys"]["key_a"] = R"({"name":"alice"})";
  window_add("tokens:key_a", 100, now);
  ASSERT_EQ(host.max_window_ms, 24 * 3600 * 1000);
  start(R"({"usage_window":"48h"})");
  const Json top = metrics_json()["topKeys"];
  EXPECT_TRUE(!top["keys"].empty() || !top["error"].is_null())
      << "alice used 100 tokens, yet no key and no error: " << top.dump();
}

TEST_F(DashboardPlugin, HealthAnswersAndFollowsThePools) {
  host.set_foreign_metrics(foreign_metrics());
  start();
  const std::int64_t before = now_ms();
  Json h = get_json("/api/metrics/health");
  EXPECT_EQ(h["healthy"], true);
  EXPECT_GE(h["uptime_s"].get<std::int64_t>(), 0);
  EXPECT_GE(h["timestamp"].get<std::int64_t>(), before);
  std::vector<FakeMetric> sick = foreign_metrics();
  for (FakeMetric& m : sick)
    if (m.name == "glmp_upstream_pool" && m.labels[0].second == "anthropic" && m.labels[1].second == "healthy") m.value = 0;
  host.set_foreign_metrics(sick);
  EXPECT_TRUE(poll([&] { return get_json("/api/metrics/health")["healthy"] == false; }))
      << "an unhealthy pool makes the dashboard unhealthy once sampled";
  const Json sys = get_json("/api/metrics/system");
  for (const Json& p : sys["connectionPools"])
    if (p["name"] == "anthropic") {
      EXPECT_EQ(p["healthy"], false);
    }
}

TEST_F(DashboardPlugin, TheSamplerReadsTheMetricsOnceASecond) {
  host.set_foreign_metrics(foreign_metrics());
  start();
  EXPECT_TRUE(poll([&] { return host.collect_calls() >= 2; })) << host.collect_calls();
  // The CPU figure needs two samples.
  const Json sys = [&] {
    Json s;
    EXPECT_TRUE(poll([&] {
      s = get_json("/api/metrics/system");
      return !s["resources"]["cpuUsagePercent"].is_null();
    }));
    return s;
  }();
  const double cpu = sys["resources"]["cpuUsagePercent"].get<double>();
  EXPECT_GE(cpu, 0.0);
  EXPECT_LE(cpu, 100.0 * std::max(1u, std::thread::hardware_concurrency()) + 1e-9);
}

// --- instances ---------------------------------------------------------------------------------

// The history belongs to the instance (README "Since when"): a second instance, even from the
// same library with the same settings (a reload builds the new one while the old still serves),
// starts from zero, and the old one keeps its own until it goes.
TEST_F(DashboardPlugin, EachInstanceHasItsOwnHistory) {
  start();
  complete({"a"});
  complete({"b", 503, 0});
  FakeHost next_host;
  auto next = std::make_unique<PluginInstance>(lib.descriptor(), next_host, "{}");
  auto totals = [](PluginInstance& instance) {
    FakeRequest r;
    r.method = "GET";
    r.path = "/api/metrics/system";
    r.is_admin = true;
    EXPECT_TRUE(instance.call_route(r));
    return Json::parse(r.respond_body, nullptr, false)["requests"]["totalRequests"];
  };
  EXPECT_EQ(totals(*next), 0) << "a new instance starts afresh";
  EXPECT_EQ(totals(*plugin), 2) << "the old one keeps its own";
  FakeRequest r = proxied({"c"});
  next->on_complete(r);
  EXPECT_EQ(totals(*next), 1);
  EXPECT_EQ(totals(*plugin), 2);
  plugin.reset();  // the old chain retired
  EXPECT_EQ(totals(*next), 1);
  Json sys;
  {
    FakeRequest q;
    q.method = "GET";
    q.path = "/api/metrics/system";
    q.is_admin = true;
    ASSERT_TRUE(next->call_route(q));
    sys = Json::parse(q.respond_body);
  }
  EXPECT_EQ(sys["errors"]["errorsByStatus"], Json::object()) << "nor its error tables";
  next.reset();
}

// The sampler thread stops with the last instance and nothing pins the library (no
// STB_GNU_UNIQUE: the exports test; no thread_local with a destructor).
TEST(DashboardLibrary, UnloadsAfterItsThreadAndHooksRan) {
  {
    PluginLibrary lib(DASHBOARD_SO);
    FakeHost host;
    host.set_foreign_metrics(foreign_metrics());
    {
      PluginInstance plugin(lib.descriptor(), host, "{}");
      FakeRequest r = proxied({"unload", 500, 0});
      plugin.on_request_headers(r);
      plugin.on_complete(r);
      for (const char* path : {"/api/metrics/json", "/dashboard"}) {
        FakeRequest get;
        get.method = "GET";
        get.path = path;
        get.is_admin = true;
        ASSERT_TRUE(plugin.call_route(get));
        EXPECT_EQ(get.respond_status, 200);
      }
      EXPECT_TRUE(poll([&] { return host.collect_calls() >= 2; })) << "the sampler ran";
    }
    lib.close();
  }
  EXPECT_FALSE(PluginLibrary::is_loaded(DASHBOARD_SO));
}

}  // namespace
