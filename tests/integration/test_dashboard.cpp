// The dashboard plugin (plugins/dashboard) with the real binary against the mock upstream: the
// admin token on every metrics endpoint (401 without or with a wrong one, 403 with none
// configured), the page public with its CSP, no CORS header anywhere; the figures of
// GET /api/metrics/json against known traffic (totals, error classes and statuses, the per-second
// series and its tokens, TTFT for streams only, models against /metrics, the pools, the process);
// the core's own refusals (413, malformed JSON) and an unreachable upstream (502) classified;
// requests of two seconds in two buckets and ?since=; a fresh history after POST /admin/reload; a
// slow request in the slowest list with its profile; the top keys by the tokens ratelimit charged.
//
// on_complete runs after the client has its last byte, and the series holds complete seconds
// only: the checks poll (bounded) until the dashboard has counted the requests and their seconds
// have passed. Nothing here asserts how long anything took, only lower bounds the mock imposes.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

const std::string kDashboardSo = plugin_path("dashboard");
const std::string kAuthSo = plugin_path("auth");
const std::string kRatelimitSo = plugin_path("ratelimit");
const std::string kProfilingSo = plugin_path("profiling");
const std::string kAdminToken = "dash-adm1n-t0ken";
constexpr const char* kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

using Headers = std::map<std::string, std::string>;
const Headers kAdmin{{"Authorization", "Bearer " + kAdminToken}};

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A read-only view of a parsed JSON value (Poco::JSON), null when absent.
class J {
public:
  J() = default;
  explicit J(Poco::Dynamic::Var v) : v_(std::move(v)) {}
  static J parse(const std::string& text) {
    try {
      return J(Poco::JSON::Parser().parse(text));
    } catch (const std::exception&) {
      return J();
    }
  }
  J operator[](const std::string& key) const {
    const auto o = object();
    return o && o->has(key) ? J(o->get(key)) : J();
  }
  J operator[](std::size_t i) const {
    const auto a = array();
    return a && i < a->size() ? J(a->get(static_cast<unsigned>(i))) : J();
  }
  bool has(const std::string& key) const {
    const auto o = object();
    return o && o->has(key);
  }
  bool null() const { return v_.isEmpty(); }
  bool is_object() const { return object() != nullptr; }
  bool is_array() const { return array() != nullptr; }
  double num() const {
    try {
      return v_.convert<double>();
    } catch (const std::exception&) {
      return -1e300;
    }
  }
  // -1 when absent or not a number.
  long integer() const {
    const double v = num();
    return v < -1e15 || v > 1e15 ? -1 : static_cast<long>(v);
  }
  std::string str() const {
    if (null()) return "<null>";
    try {
      return v_.convert<std::string>();
    } catch (const std::exception&) {
      return "<not a string>";
    }
  }
  std::size_t size() const {
    if (const auto a = array()) return a->size();
    if (const auto o = object()) return o->size();
    return 0;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    if (const auto o = object()) o->getNames(out);
    std::sort(out.begin(), out.end());
    return out;
  }
  double sum() const {
    double s = 0;
    for (std::size_t i = 0; i < size(); ++i) s += (*this)[i].num();
    return s;
  }
  std::string dump() const {
    if (const auto o = object()) {
      std::ostringstream os;
      o->stringify(os);
      return os.str();
    }
    if (const auto a = array()) {
      std::ostringstream os;
      a->stringify(os);
      return os.str();
    }
    return str();
  }

private:
  Poco::JSON::Object::Ptr object() const {
    return !v_.isEmpty() && v_.type() == typeid(Poco::JSON::Object::Ptr) ? v_.extract<Poco::JSON::Object::Ptr>() : nullptr;
  }
  Poco::JSON::Array::Ptr array() const {
    return !v_.isEmpty() && v_.type() == typeid(Poco::JSON::Array::Ptr) ? v_.extract<Poco::JSON::Array::Ptr>() : nullptr;
  }
  Poco::Dynamic::Var v_;
};

template <class Pred>
bool poll(Pred pred, std::chrono::milliseconds bound = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// Waits until the wall clock is at least 50 ms into a second after `second` (the coarse clock
// on_complete reads lags by at most a tick).
void wait_past(std::int64_t second) {
  while (now_ms() < (second + 1) * 1000 + 50) std::this_thread::sleep_for(5ms);
}

// Waits until the wall clock is between 50 and 500 ms into a second, so that a short burst
// started now is most likely within that second.
void wait_early_in_a_second() {
  for (;;) {
    const std::int64_t ms = now_ms() % 1000;
    if (ms >= 50 && ms < 500) return;
    std::this_thread::sleep_for(5ms);
  }
}

std::string oai(bool stream) {
  return std::string(R"({"model":"glm-4.7","messages":[{"role":"user","content":"how busy is it"}])") +
         (stream ? ",\"stream\":true" : "") + "}";
}
std::string ant(bool stream) {
  return std::string(R"({"model":"glm-4.7","max_tokens":64,"messages":[{"role":"user","content":"how busy is it"}])") +
         (stream ? ",\"stream\":true" : "") + "}";
}

struct Key {
  std::string id, plain;
};

class Dashboard : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;

  static std::string entry(const std::string& name, const std::string& path, const std::string& settings = "") {
    return "\n[[plugins]]\nname = \"" + name + "\"\npath = \"" + path + "\"\n" +
           (settings.empty() ? "" : "[plugins.settings]\n" + settings);
  }
  static std::string dashboard(const std::string& settings = "") { return entry("dashboard", kDashboardSo, settings); }

  // The proxy with `plugins` ([[plugins]] entries), and the [admin] table given.
  void start(const std::string& plugins, const std::string& admin = "\n[admin]\ntoken = \"" + kAdminToken + "\"\n") {
    for (const auto& so : {kDashboardSo, kAuthSo, kRatelimitSo, kProfilingSo})
      ASSERT_TRUE(fs::exists(so)) << "plugin not built: " << so;
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.extra_toml = admin + plugins;
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  uint16_t port() const { return proxy->port(); }

  Key create_key(const std::string& name) {
    const Response r = http(port(), "POST", "/admin/keys", "{\"name\":\"" + name + "\"}", kAdmin);
    EXPECT_EQ(r.status, 201) << r.body;
    if (r.status != 201) return {"<none>", "<none>"};
    return {jget(r.body, "id"), jget(r.body, "key")};
  }

  // One proxied request; returns its status. Streams are read to the end.
  int send(const std::string& path, const std::string& body, Headers h = {}) {
    if (jget(body, "stream") == "true") {
      const StreamedResponse r = http_stream(port(), "POST", path, body, h, 20s);
      EXPECT_TRUE(r.error.empty()) << r.error;
      return r.status;
    }
    const Response r = http(port(), "POST", path, body, h, 20s);
    EXPECT_TRUE(r.error.empty()) << r.error;
    return r.status;
  }

  J get(const std::string& uri, int expect = 200) {
    const Response r = http(port(), "GET", uri, "", kAdmin);
    EXPECT_EQ(r.status, expect) << uri << ": " << r.body;
    return J::parse(r.body);
  }
  J json(const std::string& query = "") { return get("/api/metrics/json" + (query.empty() ? "" : "?" + query)); }

  // Polls GET /api/metrics/json until `pred` holds (bounded); returns the last answer.
  template <class Pred>
  J json_when(Pred pred, const std::string& what) {
    J j;
    const bool ok = poll([&] {
      j = json();
      return pred(j);
    });
    EXPECT_TRUE(ok) << "timed out waiting for " << what << ": " << j.dump();
    return j;
  }
  // Polls until the dashboard has counted `n` requests since it began.
  void wait_counted(long n) {
    long seen = -1;
    EXPECT_TRUE(poll([&] { return (seen = get("/api/metrics/system")["requests"]["totalRequests"].integer()) >= n; }))
        << "the dashboard counted " << seen << " of " << n;
  }
};

// ---------------------------------------------------------------------------------------------
// Access

const std::vector<std::pair<std::string, std::string>> kAdminEndpoints{
    {"GET", "/api/metrics/system"},   {"GET", "/api/metrics/json"},      {"GET", "/api/metrics/health"},
    {"PUT", "/api/metrics/baseline"}, {"DELETE", "/api/metrics/baseline"},
};
const std::vector<std::pair<std::string, std::string>> kPage{
    {"/dashboard", "text/html"},
    {"/dashboard/dashboard.js", "text/javascript"},
    {"/dashboard/dashboard.css", "text/css"},
    {"/dashboard/uPlot.iife.min.js", "text/javascript"},
    {"/dashboard/uPlot.min.css", "text/css"},
};

void expect_no_cors(const Response& r, const std::string& what) {
  for (const auto& [name, value] : r.headers)
    EXPECT_NE(name.rfind("access-control-", 0), 0u) << what << " answered " << name << ": " << value;
}

TEST_F(Dashboard, MetricsNeedTheAdminTokenAndThePageIsPublic) {
  start(dashboard());
  const Headers origin{{"Origin", "https://evil.example"}};
  for (const auto& [method, path] : kAdminEndpoints) {
    const std::string what = method + " " + path;
    for (const Headers& h : {Headers{}, Headers{{"Authorization", "Bearer wrong-token"}},
                             Headers{{"X-Admin-Token", "wrong-token"}}, Headers{{"Authorization", kAdminToken}},
                             Headers{{"Origin", "https://evil.example"}, {"Authorization", "Bearer " + kAdminToken + "x"}}}) {
      const Response r = http(port(), method, path, "", h);
      EXPECT_EQ(r.status, 401) << what << ": " << r.body;
      EXPECT_EQ(r.header("content-type").rfind("application/json", 0), 0u) << what;
      EXPECT_TRUE(J::parse(r.body).is_object()) << what << ": " << r.body;
      EXPECT_EQ(r.body.find("\"uptime_s\""), std::string::npos) << what << " leaked its answer";
      expect_no_cors(r, what);
    }
    for (const Headers& h : {Headers{{"Authorization", "Bearer " + kAdminToken}}, Headers{{"X-Admin-Token", kAdminToken}},
                             Headers{{"Authorization", "Bearer " + kAdminToken}, {"Origin", "https://evil.example"}}}) {
      const Response r = http(port(), method, path, "", h);
      EXPECT_EQ(r.status, 200) << what << ": " << r.body;
      EXPECT_EQ(r.header("content-type").rfind("application/json", 0), 0u) << what;
      EXPECT_TRUE(J::parse(r.body).is_object()) << what << ": " << r.body;
      expect_no_cors(r, what + " (admin)");
    }
  }
  for (const auto& [path, type] : kPage) {
    for (const Headers& h : {Headers{}, origin}) {
      const Response r = http(port(), "GET", path, "", h);
      EXPECT_EQ(r.status, 200) << path;
      EXPECT_EQ(r.header("content-type").rfind(type, 0), 0u) << path << ": " << r.header("content-type");
      EXPECT_EQ(r.header("content-security-policy"), kCsp) << path;
      EXPECT_EQ(r.header("x-content-type-options"), "nosniff") << path;
      EXPECT_FALSE(r.body.empty()) << path;
      expect_no_cors(r, path);
    }
  }
  // A CORS preflight gets no grant either.
  const Response pre = http(port(), "OPTIONS", "/api/metrics/json", "",
                            {{"Origin", "https://evil.example"}, {"Access-Control-Request-Method", "GET"},
                             {"Access-Control-Request-Headers", "authorization"}});
  expect_no_cors(pre, "OPTIONS /api/metrics/json");
  EXPECT_NE(pre.status, 200);
}

TEST_F(Dashboard, WithoutAnAdminTokenConfiguredTheMetricsAre403) {
  start(dashboard(), "\n[admin]\ntoken = \"\"\n");
  for (const auto& [method, path] : kAdminEndpoints)
    for (const Headers& h : {Headers{}, Headers{{"Authorization", "Bearer " + kAdminToken}}, Headers{{"Authorization", "Bearer "}}}) {
      const Response r = http(port(), method, path, "", h);
      EXPECT_EQ(r.status, 403) << method << " " << path << ": " << r.body;
      EXPECT_TRUE(J::parse(r.body).is_object()) << r.body;
      expect_no_cors(r, path);
    }
  for (const auto& [path, type] : kPage) {
    const Response r = http(port(), "GET", path);
    EXPECT_EQ(r.status, 200) << path;
    EXPECT_EQ(r.header("content-security-policy"), kCsp) << path;
  }
}

// ---------------------------------------------------------------------------------------------
// The figures

TEST_F(Dashboard, FiguresMatchTheTraffic) {
  // dashboard first: its on_complete also runs for the requests auth refuses.
  start(dashboard() + entry("auth", kAuthSo));
  const Key key = create_key("figures");
  const Headers as_key{{"Authorization", "Bearer " + key.plain}};
  auto with = [&](Headers h) {
    h.insert(as_key.begin(), as_key.end());
    return h;
  };

  // Phase A, nothing streamed: 3 + 2 successes, an upstream 500, an upstream 400, two 401s.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(send("/v1/chat/completions", oai(false), with({{"x-mock-chunks", "2"}})), 200);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(send("/v1/messages", ant(false), with({{"x-mock-chunks", "3"}})), 200);
  EXPECT_EQ(send("/v1/chat/completions", oai(false), with({{"x-mock-status", "500"}})), 500);
  EXPECT_EQ(send("/v1/messages", ant(false), with({{"x-mock-status", "400"}})), 400);
  EXPECT_EQ(send("/v1/chat/completions", oai(false)), 401);
  EXPECT_EQ(send("/v1/chat/completions", oai(false), {{"Authorization", "Bearer pk_not_a_key"}}), 401);
  wait_counted(9);
  const std::int64_t phase_a_last = now_ms() / 1000;  // every phase-A request ended in this second or before
  wait_past(phase_a_last);

  // Phase B, streams only: 2 OpenAI, 1 Anthropic.
  for (int i = 0; i < 2; ++i) EXPECT_EQ(send("/v1/chat/completions", oai(true), with({{"x-mock-chunks", "4"}})), 200);
  EXPECT_EQ(send("/v1/messages", ant(true), with({{"x-mock-chunks", "5"}})), 200);
  wait_counted(12);
  const Response prom = settled_metrics(port());
  ASSERT_EQ(prom.status, 200);
  const double in_openai = metric(prom.body, "glmp_tokens_total", {"direction=\"in\"", "flavour=\"openai\"", "model=\"glm-4.7\""});
  const double out_openai = metric(prom.body, "glmp_tokens_total", {"direction=\"out\"", "flavour=\"openai\"", "model=\"glm-4.7\""});
  const double in_ant = metric(prom.body, "glmp_tokens_total", {"direction=\"in\"", "flavour=\"anthropic\"", "model=\"glm-4.7\""});
  const double out_ant = metric(prom.body, "glmp_tokens_total", {"direction=\"out\"", "flavour=\"anthropic\"", "model=\"glm-4.7\""});
  ASSERT_GT(in_openai, 0) << prom.body;
  ASSERT_GT(in_ant, 0) << prom.body;
  EXPECT_EQ(out_openai, 3 * 2 + 2 * 4) << "the mock reports one output token per piece";
  EXPECT_EQ(out_ant, 2 * 3 + 5);

  auto model_tokens = [](const J& j, const std::string& flavour, const std::string& field) {
    const J models = j["models"];
    for (std::size_t i = 0; i < models.size(); ++i)
      if (models[i]["model"].str() == "glm-4.7" && models[i]["flavour"].str() == flavour) return models[i][field].num();
    return -1.0;
  };
  const J j = json_when(
      [&](const J& a) {
        return a["series"]["requests"].sum() == 12 && !a["system"]["resources"]["cpuUsagePercent"].null() &&
               model_tokens(a, "openai", "tokensIn") == in_openai && model_tokens(a, "anthropic", "tokensOut") == out_ant;
      },
      "12 requests in complete seconds, two samples and the models as in /metrics");

  // Totals and errors.
  const J sys = j["system"];
  EXPECT_EQ(sys["requests"]["totalRequests"].integer(), 12);
  EXPECT_EQ(sys["requests"]["successfulRequests"].integer(), 8);
  EXPECT_EQ(sys["requests"]["failedRequests"].integer(), 4);
  EXPECT_NEAR(sys["requests"]["errorRate"].num(), 100.0 * 4 / 12, 1e-3) << "all within the 60 s summary window";
  const J errors = sys["errors"];
  EXPECT_EQ(errors["totalErrors"].integer(), 4);
  EXPECT_EQ(errors["errorsByType"]["rejected"].integer(), 2);
  EXPECT_EQ(errors["errorsByType"]["upstream_4xx"].integer(), 1);
  EXPECT_EQ(errors["errorsByType"]["upstream_5xx"].integer(), 1);
  EXPECT_EQ(errors["errorsByType"]["gateway"].integer(), 0);
  EXPECT_EQ(errors["errorsByType"]["internal"].integer(), 0);
  EXPECT_EQ(errors["errorsByStatus"].keys(), (std::vector<std::string>{"400", "401", "500"}));
  EXPECT_EQ(errors["errorsByStatus"]["401"].integer(), 2);
  EXPECT_EQ(errors["errorsByStatus"]["400"].integer(), 1);
  EXPECT_EQ(errors["errorsByStatus"]["500"].integer(), 1);
  bool saw_401 = false;
  for (std::size_t i = 0; i < errors["topErrors"].size(); ++i) {
    const J e = errors["topErrors"][i];
    if (e["status"].integer() != 401) continue;
    saw_401 = true;
    EXPECT_EQ(e["type"].str(), "rejected");
    EXPECT_EQ(e["count"].integer(), 2);
    EXPECT_EQ(e["route"].str(), "/v1/");
  }
  EXPECT_TRUE(saw_401) << errors.dump();

  // The series: sums over the seconds, tokens as the mock reported them, TTFT for streams only.
  const J s = j["series"];
  EXPECT_EQ(s["interval_s"].integer(), 1);
  const std::size_t n = s["t"].size();
  for (const char* k : {"requests", "errors", "err_rejected", "err_upstream_4xx", "err_upstream_5xx", "err_gateway",
                        "err_internal", "tokens_in", "tokens_out", "bytes_in", "bytes_out", "cache_hits", "coalesced",
                        "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms", "in_flight", "streams", "pool_in_use",
                        "pool_idle", "pool_waiting", "rss_mb", "cpu_percent"})
    EXPECT_EQ(s[k].size(), n) << k;
  EXPECT_EQ(s["errors"].sum(), 4);
  EXPECT_EQ(s["err_rejected"].sum(), 2);
  EXPECT_EQ(s["err_upstream_4xx"].sum(), 1);
  EXPECT_EQ(s["err_upstream_5xx"].sum(), 1);
  EXPECT_EQ(s["err_gateway"].sum(), 0);
  EXPECT_EQ(s["err_internal"].sum(), 0);
  EXPECT_EQ(s["tokens_in"].sum(), in_openai + in_ant);
  EXPECT_EQ(s["tokens_out"].sum(), out_openai + out_ant);
  EXPECT_GT(s["bytes_in"].sum(), 0);
  EXPECT_GT(s["bytes_out"].sum(), 0);
  EXPECT_EQ(s["cache_hits"].sum(), 0);
  EXPECT_EQ(s["coalesced"].sum(), 0);
  long streamed_seconds = 0, sampled = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(s["t"][i].num());
    if (i > 0) {
      EXPECT_EQ(t, static_cast<std::int64_t>(s["t"][i - 1].num()) + 1) << "no gaps";
    }
    const bool busy = s["requests"][i].num() > 0;
    EXPECT_EQ(s["p50_ms"][i].null(), !busy) << t;
    if (!busy) {
      EXPECT_TRUE(s["ttft_p50_ms"][i].null()) << t;
    } else if (t <= phase_a_last) {
      EXPECT_TRUE(s["ttft_p50_ms"][i].null()) << t << ": nothing streamed in phase A";
    } else {
      EXPECT_FALSE(s["ttft_p50_ms"][i].null()) << t << ": only streams in phase B";
      EXPECT_LE(s["ttft_p50_ms"][i].num(), s["p99_ms"][i].num() * 1.25 + 1e-9) << t;
      ++streamed_seconds;
    }
    if (!s["rss_mb"][i].null()) {
      ++sampled;
      EXPECT_GT(s["rss_mb"][i].num(), 1.0) << t;
      EXPECT_GE(s["in_flight"][i].num(), 0) << t;
      EXPECT_GE(s["pool_in_use"][i].num(), 0) << t;
    }
  }
  EXPECT_GE(streamed_seconds, 1);
  EXPECT_GE(sampled, 1);

  // Models as /metrics counts them.
  EXPECT_EQ(model_tokens(j, "openai", "tokensIn"), in_openai);
  EXPECT_EQ(model_tokens(j, "openai", "tokensOut"), out_openai);
  EXPECT_EQ(model_tokens(j, "anthropic", "tokensIn"), in_ant);
  EXPECT_EQ(model_tokens(j, "anthropic", "tokensOut"), out_ant);

  // The upstream pools.
  std::set<std::string> pools;
  for (std::size_t i = 0; i < sys["connectionPools"].size(); ++i) {
    const J p = sys["connectionPools"][i];
    pools.insert(p["name"].str());
    EXPECT_EQ(p["max"].integer(), 32) << p.dump();
    EXPECT_GE(p["created"].integer(), 1) << p.dump();
    EXPECT_EQ(p["healthy"].str(), "true") << p.dump();
    EXPECT_GE(p["utilization"].num(), 0) << p.dump();
    EXPECT_LE(p["utilization"].num(), 100) << p.dump();
  }
  EXPECT_EQ(pools, (std::set<std::string>{"anthropic", "openai"}));

  // The process.
  const J res = sys["resources"];
  EXPECT_GT(res["memoryUsageMB"].num(), 0) << res.dump();
  EXPECT_GE(res["peakMemoryUsageMB"].num(), res["memoryUsageMB"].num() * 0.99) << res.dump();
  EXPECT_GT(res["threads"].num(), 0) << res.dump();
  EXPECT_GT(res["openFds"].num(), 0) << res.dump();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  EXPECT_GE(res["cpuUsagePercent"].num(), 0) << res.dump();
  EXPECT_LE(res["cpuUsagePercent"].num(), 100.0 * cores + 1) << res.dump();

  // Auth's key cache is listed; no response cache, no coalescing.
  std::set<std::string> caches;
  for (std::size_t i = 0; i < sys["caches"].size(); ++i) caches.insert(sys["caches"][i]["name"].str());
  EXPECT_EQ(caches, (std::set<std::string>{"api_keys"}));
  EXPECT_TRUE(sys["coalescing"].null());

  // The slowest: the keyed requests carry the key's id.
  const J slow = j["slowest"];
  ASSERT_GE(slow.size(), 1u);
  bool keyed = false;
  for (std::size_t i = 0; i < slow.size(); ++i) {
    keyed = keyed || slow[i]["keyId"].str() == key.id;
    if (i > 0) {
      EXPECT_LE(slow[i]["durationMs"].num(), slow[i - 1]["durationMs"].num());
    }
  }
  EXPECT_TRUE(keyed) << slow.dump();
}

// What the core refuses after the dashboard's first hook counts too (README "Error classes"): a
// body over max_request_body (413) and malformed JSON (400) are rejected, an unreachable upstream
// (502) is the gateway's, with the core's reason in the top errors.
TEST_F(Dashboard, TheCoresOwnRefusalsAndGatewayErrorsAreClassified) {
  ASSERT_TRUE(fs::exists(kDashboardSo)) << "plugin not built: " << kDashboardSo;
  mock = std::make_unique<Mock>(dir);
  ProxyOptions opts;
  opts.server_extra = "max_request_body = \"1KiB\"\n";
  opts.anthropic_base = "http://127.0.0.1:1/api/anthropic";  // nothing listens there
  opts.extra_toml = "\n[admin]\ntoken = \"" + kAdminToken + "\"\n" + dashboard();
  proxy = std::make_unique<Proxy>(dir, mock.get(), opts);

  const std::string big = R"({"model":"glm-4.7","messages":[{"role":"user","content":")" + std::string(4096, 'x') + R"("}]})";
  EXPECT_EQ(send("/v1/chat/completions", big), 413);
  EXPECT_EQ(send("/v1/chat/completions", R"({"model":"glm-4.7","messages":[)"), 400);
  EXPECT_EQ(send("/v1/messages", ant(false)), 502);
  wait_counted(3);
  const J errors = get("/api/metrics/system")["errors"];
  EXPECT_EQ(errors["totalErrors"].integer(), 3) << errors.dump();
  EXPECT_EQ(errors["errorsByType"]["rejected"].integer(), 2) << errors.dump();
  EXPECT_EQ(errors["errorsByType"]["gateway"].integer(), 1) << errors.dump();
  EXPECT_EQ(errors["errorsByType"]["upstream_4xx"].integer(), 0);
  EXPECT_EQ(errors["errorsByType"]["upstream_5xx"].integer(), 0);
  EXPECT_EQ(errors["errorsByStatus"].keys(), (std::vector<std::string>{"400", "413", "502"})) << errors.dump();
  bool saw_gateway = false;
  for (std::size_t i = 0; i < errors["topErrors"].size(); ++i) {
    const J e = errors["topErrors"][i];
    if (e["status"].integer() == 502) {
      saw_gateway = true;
      EXPECT_EQ(e["type"].str(), "gateway");
      EXPECT_EQ(e["route"].str(), "/v1/messages");
      EXPECT_FALSE(e["message"].str().empty()) << "the core's reason";
    }
    if (e["status"].integer() == 413) {
      EXPECT_EQ(e["type"].str(), "rejected");
      EXPECT_EQ(e["route"].str(), "/v1/");
    }
  }
  EXPECT_TRUE(saw_gateway) << errors.dump();
}

TEST_F(Dashboard, TwoSecondsAreTwoBucketsAndSinceFollows) {
  start(dashboard());
  wait_early_in_a_second();
  const std::int64_t first_start = now_ms() / 1000;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(send("/v1/chat/completions", oai(false)), 200);
  wait_counted(3);
  const std::int64_t first_end = now_ms() / 1000;
  wait_past(first_end);
  wait_early_in_a_second();
  const std::int64_t second_start = now_ms() / 1000;
  for (int i = 0; i < 2; ++i) EXPECT_EQ(send("/v1/messages", ant(false)), 200);
  wait_counted(5);
  const std::int64_t second_end = now_ms() / 1000;

  const J j = json_when([](const J& a) { return a["series"]["requests"].sum() == 5; }, "5 requests in complete seconds");
  std::map<std::int64_t, long> busy;
  for (std::size_t i = 0; i < j["series"]["t"].size(); ++i)
    if (j["series"]["requests"][i].integer() > 0)
      busy[static_cast<std::int64_t>(j["series"]["t"][i].num())] = j["series"]["requests"][i].integer();
  long first = 0, second = 0;
  for (const auto& [t, count] : busy) (t <= first_end ? first : second) += count;
  EXPECT_EQ(first, 3) << "the first burst in its second(s)";
  EXPECT_EQ(second, 2) << "the second burst in later second(s)";
  for (const auto& [t, count] : busy) {
    EXPECT_GE(t, first_start);
    EXPECT_LE(t, second_end);
  }
  if (first_start == first_end && second_start == second_end) {  // each burst within one second (the usual case)
    EXPECT_EQ(busy, (std::map<std::int64_t, long>{{first_start, 3}, {second_start, 2}}));
  }

  // ?since= the first burst's last second: only the later seconds.
  const J later = json("since=" + std::to_string(first_end));
  ASSERT_GE(later["series"]["t"].size(), 1u) << later.dump();
  for (std::size_t i = 0; i < later["series"]["t"].size(); ++i)
    EXPECT_GT(later["series"]["t"][i].num(), static_cast<double>(first_end));
  EXPECT_EQ(later["series"]["requests"].sum(), 2);
  EXPECT_EQ(later["series"]["requests"].size(), later["series"]["t"].size());
  const J after_all = json("since=" + std::to_string(second_end));
  EXPECT_EQ(after_all["series"]["requests"].sum(), 0);
  EXPECT_EQ(after_all["system"]["requests"]["totalRequests"].integer(), 5);
  const Response bad = http(port(), "GET", "/api/metrics/json?since=yesterday", "", kAdmin);
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_TRUE(J::parse(bad.body).is_object()) << bad.body;
}

// README "Since when": the series, totals and tables belong to the plugin instance and a reload
// starts them from zero (the core loads a private copy of the library for every chain); what comes
// from the core's registry (tokens by model) and from the store (the saved baseline) survives.
TEST_F(Dashboard, AReloadStartsAFreshHistoryAndKeepsWhatTheCoreAndTheStoreHold) {
  start(dashboard());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(send("/v1/chat/completions", oai(false)), 200);
  EXPECT_EQ(send("/v1/chat/completions", oai(false), {{"x-mock-status", "503"}}), 503);
  wait_counted(4);
  const Response saved = http(port(), "PUT", "/api/metrics/baseline", "", kAdmin);
  ASSERT_EQ(saved.status, 200) << saved.body;
  const J baseline = J::parse(saved.body)["baseline"];
  ASSERT_EQ(baseline["source"].str(), "snapshot") << saved.body;
  const J before = json_when([](const J& a) { return a["series"]["requests"].sum() == 4; }, "4 requests in the series");
  EXPECT_EQ(before["system"]["errors"]["errorsByStatus"]["503"].integer(), 1);
  const double tokens_in = metric(settled_metrics(port()).body, "glmp_tokens_total", {"direction=\"in\"", "flavour=\"openai\""});
  ASSERT_GT(tokens_in, 0);

  const Response r = http(port(), "POST", "/admin/reload", "", kAdmin);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(jget(r.body, "status"), "reloaded") << r.body;

  const J after = json();
  EXPECT_EQ(after["system"]["requests"]["totalRequests"].integer(), 0) << after.dump();
  EXPECT_EQ(after["system"]["errors"]["totalErrors"].integer(), 0);
  EXPECT_EQ(after["system"]["errors"]["errorsByStatus"].size(), 0u);
  EXPECT_EQ(after["system"]["errors"]["topErrors"].size(), 0u);
  EXPECT_EQ(after["series"]["requests"].sum(), 0);
  EXPECT_EQ(after["slowest"].size(), 0u);
  EXPECT_LE(after["uptime_s"].integer(), before["uptime_s"].integer()) << "its own start";
  // The saved baseline comes from the store, the models from the core's counters.
  EXPECT_EQ(after["baseline"]["source"].str(), "snapshot");
  EXPECT_EQ(after["baseline"]["savedAt"].num(), baseline["savedAt"].num());
  bool saw = false;
  for (std::size_t i = 0; i < after["models"].size(); ++i)
    if (after["models"][i]["flavour"].str() == "openai") {
      saw = true;
      EXPECT_EQ(after["models"][i]["tokensIn"].num(), tokens_in);
    }
  EXPECT_TRUE(saw) << after["models"].dump();
  // The new instance counts from there.
  EXPECT_EQ(send("/v1/chat/completions", oai(false)), 200);
  wait_counted(1);
  const J sys = get("/api/metrics/system");
  EXPECT_EQ(sys["requests"]["totalRequests"].integer(), 1);
  EXPECT_EQ(sys["requests"]["failedRequests"].integer(), 0);
}

TEST_F(Dashboard, TheSlowestListsASlowRequestWithItsProfile) {
  start(dashboard() + entry("profiling", kProfilingSo));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(send("/v1/chat/completions", oai(false)), 200);
  const std::string rid = "dash-slow-" + std::to_string(now_ms());
  // 3 pieces, each after 150 ms: at least 450 ms.
  EXPECT_EQ(send("/v1/chat/completions", oai(true),
                 {{"X-Request-ID", rid}, {"x-mock-chunks", "3"}, {"x-mock-delay-ms", "150"}}),
            200);
  const J j = json_when([&](const J& a) { return a["slowest"][0]["requestId"].str() == rid; }, "the slow request first");
  const J row = j["slowest"][0];
  EXPECT_GE(row["durationMs"].num(), 450.0) << row.dump();
  EXPECT_FALSE(row["ttfbMs"].null()) << "streamed";
  EXPECT_LE(row["ttfbMs"].num(), row["durationMs"].num());
  EXPECT_EQ(row["status"].integer(), 200);
  EXPECT_EQ(row["method"].str(), "POST");
  EXPECT_EQ(row["path"].str(), "/v1/chat/completions");
  EXPECT_EQ(row["model"].str(), "glm-4.7");
  EXPECT_EQ(row["origin"].str(), "upstream");
  EXPECT_TRUE(row["keyId"].null()) << "no auth: no key";
  EXPECT_GE(row["at"].num(), static_cast<double>(now_ms() - 60'000));
  EXPECT_EQ(j["slowest"].size(), 4u);

  // The page opens its profile with the admin token.
  Response p;
  EXPECT_TRUE(poll([&] { return (p = http(port(), "GET", "/profiling/" + rid, "", kAdmin)).status == 200; })) << p.body;
  EXPECT_EQ(jget(p.body, "request_id"), rid) << p.body;
}

TEST_F(Dashboard, TopKeysByTheTokensRatelimitCharged) {
  start(dashboard("top_keys_refresh = \"1s\"\n") + entry("auth", kAuthSo) +
        entry("ratelimit", kRatelimitSo, "window = \"5h\"\n"));
  const Key alice = create_key("alice");
  const Key bob = create_key("bob");
  const Key idle = create_key("idle");
  EXPECT_EQ(send("/v1/chat/completions", oai(false), {{"Authorization", "Bearer " + alice.plain}, {"x-mock-chunks", "1"}}), 200);
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(send("/v1/messages", ant(false), {{"Authorization", "Bearer " + bob.plain}, {"x-mock-chunks", "6"}}), 200);
  wait_counted(3);

  // What ratelimit's /stats says each key used in its window.
  auto used = [&](const Key& k) {
    const Response r = http(port(), "GET", "/stats", "", {{"Authorization", "Bearer " + k.plain}});
    return r.status == 200 ? jlong(r.body, "current_usage.tokens_used_in_current_window") : -1;
  };
  long alice_used = -1, bob_used = -1;
  const J j = json_when(
      [&](const J& a) {
        alice_used = used(alice);
        bob_used = used(bob);
        const J keys = a["topKeys"]["keys"];
        return keys.size() == 2 && keys[0]["tokens"].integer() == bob_used && keys[1]["tokens"].integer() == alice_used;
      },
      "bob then alice with their usage");
  const J top = j["topKeys"];
  EXPECT_EQ(top["windowSeconds"].integer(), 18000);
  EXPECT_TRUE(top["error"].null()) << top.dump();
  ASSERT_EQ(top["keys"].size(), 2u) << "the idle key is not listed: " << top.dump();
  EXPECT_EQ(top["keys"][0]["id"].str(), bob.id);
  EXPECT_EQ(top["keys"][0]["name"].str(), "bob");
  EXPECT_EQ(top["keys"][1]["id"].str(), alice.id);
  EXPECT_EQ(top["keys"][1]["name"].str(), "alice");
  EXPECT_GT(alice_used, 0);
  EXPECT_GT(bob_used, alice_used);
  EXPECT_NE(idle.id, "<none>");
}

}  // namespace
