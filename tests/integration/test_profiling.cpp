// The profiling plugin (plugins/profiling, spec in its README.md) with the real binary against the
// mock upstream, first in a chain of profiling, auth and ratelimit: a streamed request's total,
// time to first byte and stream phase; the core's phases and the plugin hooks, ordered by start;
// tenant isolation of the list, the single record and DELETE; the admin's view and key_id filter;
// 401 without credentials (from auth, or from the plugin when auth is absent); the bounds under a flood; Server-Timing on and off; the /profiling
// requests themselves never recorded; a hot reload dropping the records.
//
// A request's record is stored by on_complete, which runs after the client has its last byte: the
// request helper waits until the record can be read (or, for requests whose record may be evicted
// at once or is never made, for the access-log line, written after on_complete ran; the access
// log is flushed in batches, so that wait is the slower one).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
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

const std::string kAuthSo = plugin_path("auth");
const std::string kRatelimitSo = plugin_path("ratelimit");
const std::string kProfilingSo = plugin_path("profiling");
const std::string kAdminToken = "prof-adm1n-t0ken";

using Headers = std::map<std::string, std::string>;
const Headers kAdmin{{"Authorization", "Bearer " + kAdminToken}};

// "prefix" + std::to_string(n), without the operator+(const char*, std::string&&) that GCC 12's
// -Wrestrict misreads.
std::string numbered(std::string prefix, long n) { return prefix += std::to_string(n); }

Poco::JSON::Object::Ptr parse(const std::string& body) {
  try {
    return Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception&) {
    return nullptr;
  }
}

Poco::JSON::Array::Ptr array(const Poco::JSON::Object::Ptr& obj, const std::string& name) {
  return obj ? obj->getArray(name) : nullptr;
}

std::string next_request_id() {
  static std::atomic<int> n{0};
  return numbered(numbered("prof-test-", ::getpid()) + "-", n.fetch_add(1));
}

std::string oai(bool stream = false) {
  return std::string(R"({"model":"glm-4.7","messages":[{"role":"user","content":"profile me"}])") +
         (stream ? ",\"stream\":true" : "") + "}";
}

struct Key {
  std::string id, plain;
};

struct Call {
  int status = 0;
  std::string rid;
  std::string body;
  std::string error;
  Headers headers;  // lower-case names
};

class Profiling : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  Key key;  // created by start()

  // profiling, auth and ratelimit; or profiling alone (auth = false: no keys then).
  void start(const std::string& profiling_settings = "", bool auth = true) {
    ASSERT_TRUE(fs::exists(kProfilingSo)) << "profiling plugin not built: " << kProfilingSo;
    ASSERT_TRUE(fs::exists(kAuthSo)) << "auth plugin not built: " << kAuthSo;
    ASSERT_TRUE(fs::exists(kRatelimitSo)) << "ratelimit plugin not built: " << kRatelimitSo;
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.extra_toml = config(profiling_settings, auth);
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
    if (auth) key = create_key("tenant-a");
  }

  // profiling first: it then sees every other plugin's on_complete (they run in reverse order),
  // and its on_complete runs for requests that auth or a cache answer in their on_request.
  std::string config(const std::string& profiling_settings, bool auth) const {
    std::string toml = "\n[admin]\ntoken = \"" + kAdminToken + "\"\n"
                       "\n[[plugins]]\nname = \"profiling\"\npath = \"" + kProfilingSo + "\"\n[plugins.settings]\n" +
                       profiling_settings;
    if (auth)
      toml += "\n[[plugins]]\nname = \"auth\"\npath = \"" + kAuthSo + "\"\n"
              "\n[[plugins]]\nname = \"ratelimit\"\npath = \"" + kRatelimitSo + "\"\n[plugins.settings]\nwindow = \"5h\"\n";
    return toml;
  }

  uint16_t port() const { return proxy->port(); }

  Key create_key(const std::string& name) {
    const Response r = http(port(), "POST", "/admin/keys", "{\"name\":\"" + name + "\"}", kAdmin);
    EXPECT_EQ(r.status, 201) << r.body;
    if (r.status != 201) return {"<none>", "<none>"};
    return {jget(r.body, "id"), jget(r.body, "key")};
  }

  enum class Wait { Record, Log, None };

  // One proxied request as `as` (streamed when the body says so); returns once its record is
  // stored (Wait::Record), its access-log line written (Wait::Log), or at once (Wait::None).
  Call call(const std::string& body, const Key& as, Headers h = {}, const std::string& path = "/v1/chat/completions",
            Wait wait = Wait::Record) {
    Call c;
    c.rid = next_request_id();
    h["X-Request-ID"] = c.rid;
    h["Authorization"] = "Bearer " + as.plain;
    if (jget(body, "stream") == "true") {
      const StreamedResponse r = http_stream(port(), "POST", path, body, h, 20s);
      c.status = r.status;
      c.headers = r.headers;
      c.body = r.body();
      c.error = r.error;
    } else {
      const Response r = http(port(), "POST", path, body, h, 20s);
      c.status = r.status;
      c.headers = r.headers;
      c.body = r.body;
      c.error = r.error;
    }
    if (wait == Wait::Record) wait_record(c.rid);
    if (wait == Wait::Log) proxy->wait_log({"\"id\":\"" + c.rid + "\""});
    return c;
  }
  Call call(const std::string& body = oai()) { return call(body, key); }

  // Polls GET /profiling/{rid} (as the admin) until the record is there, at most 5 s.
  void wait_record(const std::string& rid) const {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (get("/profiling/" + rid, kAdmin).status != 200) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no profiling record for " << rid;
      std::this_thread::sleep_for(1ms);
    }
  }

  Response get(const std::string& uri, const Headers& h) const { return http(port(), "GET", uri, "", h); }
  static Headers as_key(const Key& k) { return {{"Authorization", "Bearer " + k.plain}}; }

  // GET /profiling[?query] answered with 200: its parsed body.
  Poco::JSON::Object::Ptr listing(const Headers& h, const std::string& query = "") const {
    const Response r = get("/profiling" + (query.empty() ? "" : "?" + query), h);
    EXPECT_EQ(r.status, 200) << r.body;
    return parse(r.body);
  }
  long count(const Headers& h, const std::string& query = "") const {
    const Response r = get("/profiling" + (query.empty() ? "" : "?" + query), h);
    EXPECT_EQ(r.status, 200) << r.body;
    return jlong(r.body, "window.count");
  }
  // The key ids of the listed recent records (top is large enough in these tests to list them all).
  std::vector<std::string> recent_keys(const Headers& h, const std::string& query = "") const {
    std::vector<std::string> out;
    const auto recent = array(listing(h, query), "recent");
    for (std::size_t i = 0; recent && i < recent->size(); ++i)
      out.push_back(recent->getObject(static_cast<unsigned>(i))->getValue<std::string>("key_id"));
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// The record

TEST_F(Profiling, StreamedRequestHasItsTimesPhasesAndHooks) {
  start();
  const Call c = call(oai(true), key, {{"x-mock-chunks", "5"}, {"x-mock-delay-ms", "100"}});
  ASSERT_EQ(c.status, 200) << c.body << c.error;
  ASSERT_NE(c.body.find("data: [DONE]"), std::string::npos);
  EXPECT_EQ(c.headers.count("server-timing"), 0u) << "Server-Timing is off by default";

  const Response r = get("/profiling/" + c.rid, as_key(key));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto rec = parse(r.body);
  ASSERT_TRUE(rec) << r.body;
  EXPECT_EQ(rec->getValue<std::string>("request_id"), c.rid);
  EXPECT_EQ(rec->getValue<std::string>("key_id"), key.id);
  EXPECT_EQ(rec->getValue<std::string>("method"), "POST");
  EXPECT_EQ(rec->getValue<std::string>("path"), "/v1/chat/completions");
  EXPECT_EQ(rec->getValue<std::string>("route"), "/v1/");
  EXPECT_EQ(rec->getValue<std::string>("model"), "glm-4.7");
  EXPECT_EQ(rec->getValue<int>("status"), 200);
  EXPECT_EQ(rec->getValue<int>("upstream_status"), 200);
  EXPECT_TRUE(rec->getValue<bool>("streamed"));
  EXPECT_FALSE(rec->getValue<bool>("cached"));
  EXPECT_FALSE(rec->getValue<bool>("coalesced"));
  EXPECT_GE(rec->getValue<long>("bytes_in"), static_cast<long>(oai(true).size()));
  EXPECT_GE(rec->getValue<long>("bytes_out"), static_cast<long>(c.body.size()));
  EXPECT_EQ(jlong(r.body, "usage.output"), 5);
  EXPECT_GT(jlong(r.body, "usage.input"), 0);
  EXPECT_EQ(rec->getValue<std::string>("started_at").size(), std::string("2026-01-01T00:00:00.000Z").size());
  EXPECT_EQ(rec->getValue<std::string>("started_at").back(), 'Z');
  EXPECT_FALSE(rec->has("error") && !rec->isNull("error")) << r.body;

  // 5 events, each 100 ms after the previous one.
  const double total = rec->getValue<double>("total_ms");
  const double ttft = rec->getValue<double>("ttft_ms");
  const double overhead = rec->getValue<double>("overhead_ms");
  EXPECT_GE(total, 500.0) << r.body;
  EXPECT_LT(total, 5000.0) << r.body;
  EXPECT_GT(ttft, 0.0);
  EXPECT_LT(ttft, total - 400.0) << "the head is relayed before the events: " << r.body;
  EXPECT_GE(overhead, 0.0);
  EXPECT_LT(overhead, total);

  const auto phases = array(rec, "phases");
  ASSERT_TRUE(phases) << r.body;
  std::map<std::string, std::pair<double, double>> by_name;  // name -> (start, dur)
  std::vector<std::string> names;
  double last_start = -1;
  for (std::size_t i = 0; i < phases->size(); ++i) {
    const auto p = phases->getObject(static_cast<unsigned>(i));
    const std::string name = p->getValue<std::string>("name");
    const double start = p->getValue<double>("start_ms");
    const double dur = p->getValue<double>("dur_ms");
    EXPECT_GE(start, last_start) << "phases are ordered by start: " << r.body;
    EXPECT_GE(dur, 0.0) << name;
    // Everything but the on_complete hooks (they run after the last byte) lies within the total.
    EXPECT_TRUE(name.find(".on_complete") != std::string::npos || start + dur <= total + 0.01) << name << ": " << r.body;
    last_start = start;
    names.push_back(name);
    EXPECT_EQ(by_name.count(name), 0u) << name << " listed twice: " << r.body;
    by_name[name] = {start, dur};
  }
  for (const char* want : {"receive", "upstream_connect", "upstream_headers", "first_byte", "stream",
                           "auth.on_request_headers", "auth.on_request", "ratelimit.on_request", "ratelimit.on_complete"})
    EXPECT_EQ(by_name.count(want), 1u) << want << " missing: " << r.body;
  // profiling's own on_complete is still running while it reads the spans: of its hooks, only
  // on_response_headers (Server-Timing, off here: it returned at once) is listed.
  for (const auto& n : names)
    EXPECT_TRUE(n.rfind("profiling.", 0) != 0 || n == "profiling.on_response_headers") << n;
  EXPECT_EQ(by_name.count("profiling.on_response_headers"), 1u) << r.body;
  EXPECT_GE(by_name["stream"].second, 400.0) << r.body;
  EXPECT_NEAR(by_name["stream"].first, ttft, 1.0) << r.body;
  EXPECT_LE(by_name["auth.on_request_headers"].first, by_name["auth.on_request"].first);
  EXPECT_LE(by_name["auth.on_request"].first, by_name["ratelimit.on_request"].first);
  EXPECT_LE(by_name["ratelimit.on_request"].first, by_name["upstream_connect"].first);
  EXPECT_LE(by_name["upstream_headers"].first, by_name["first_byte"].first);
  EXPECT_GE(by_name["ratelimit.on_complete"].first, by_name["stream"].first + by_name["stream"].second - 1.0);

  // The listing summarises the same record.
  const auto list = listing(as_key(key));
  ASSERT_TRUE(list);
  EXPECT_EQ(jlong(get("/profiling", as_key(key)).body, "window.count"), 1);
  const auto summary = list->getObject("summary");
  ASSERT_TRUE(summary);
  EXPECT_DOUBLE_EQ(summary->getObject("total_ms")->getValue<double>("p50"), total);
  EXPECT_DOUBLE_EQ(summary->getObject("ttft_ms")->getValue<double>("max"), ttft);
  EXPECT_EQ(summary->getObject("phases")->getObject("stream")->getValue<int>("count"), 1);
  EXPECT_EQ(array(list, "slowest")->getObject(0)->getValue<std::string>("request_id"), c.rid);
  EXPECT_EQ(list->getObject("settings")->getValue<long>("max_records"), 1000);
}

TEST_F(Profiling, ErrorsAndTheAnthropicRouteAreRecorded) {
  start();
  const Call failed = call(oai(), key, {{"x-mock-status", "503"}});
  EXPECT_EQ(failed.status, 503);
  const Call ant = call(R"({"model":"glm-4.7","max_tokens":64,"messages":[{"role":"user","content":"hi"}]})", key, {},
                        "/v1/messages");
  EXPECT_EQ(ant.status, 200) << ant.body;

  const Response f = get("/profiling/" + failed.rid, as_key(key));
  ASSERT_EQ(f.status, 200) << f.body;
  EXPECT_EQ(jlong(f.body, "status"), 503);
  EXPECT_EQ(jlong(f.body, "upstream_status"), 503);
  EXPECT_EQ(jget(f.body, "streamed"), "false");
  const Response a = get("/profiling/" + ant.rid, as_key(key));
  ASSERT_EQ(a.status, 200) << a.body;
  EXPECT_EQ(jget(a.body, "route"), "/v1/messages");
  EXPECT_EQ(jget(a.body, "path"), "/v1/messages");
  EXPECT_EQ(jlong(a.body, "usage.output"), 3);
}

// ---------------------------------------------------------------------------------------------
// Who sees what

TEST_F(Profiling, KeysNeverSeeEachOthersRecords) {
  start();
  const Key other = create_key("tenant-b");
  const Call a1 = call(oai(), key);
  const Call b1 = call(oai(), other);
  const Call a2 = call(oai(), key);
  const Call b2 = call(oai(true), other);

  // The list.
  EXPECT_EQ(recent_keys(as_key(key)), (std::vector<std::string>{key.id, key.id}));
  EXPECT_EQ(recent_keys(as_key(other)), (std::vector<std::string>{other.id, other.id}));
  const Response foreign = get("/profiling?key_id=" + other.id, as_key(key));
  EXPECT_EQ(foreign.status, 403) << foreign.body;
  EXPECT_EQ(foreign.body.find(b1.rid), std::string::npos);

  // One record: someone else's answers exactly like one that does not exist.
  EXPECT_EQ(get("/profiling/" + a1.rid, as_key(key)).status, 200);
  const Response theirs = get("/profiling/" + b1.rid, as_key(key));
  const Response missing = get("/profiling/no-such-request", as_key(key));
  EXPECT_EQ(theirs.status, 404);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(theirs.body, missing.body);
  EXPECT_EQ(theirs.header("content-type"), missing.header("content-type"));
  EXPECT_EQ(get("/profiling/" + a2.rid, as_key(other)).body, missing.body);

  // The admin sees everyone's, and filters by key.
  EXPECT_EQ(count(kAdmin), 4);
  EXPECT_EQ(recent_keys(kAdmin, "key_id=" + other.id), (std::vector<std::string>{other.id, other.id}));
  EXPECT_EQ(get("/profiling/" + b2.rid, kAdmin).status, 200);

  // DELETE: a key clears its own records only.
  const Response del = http(port(), "DELETE", "/profiling", "", as_key(key));
  EXPECT_EQ(del.status, 200) << del.body;
  EXPECT_EQ(jlong(del.body, "deleted"), 2);
  EXPECT_EQ(count(as_key(key)), 0);
  EXPECT_EQ(count(as_key(other)), 2);
  EXPECT_EQ(http(port(), "DELETE", "/profiling?key_id=" + other.id, "", as_key(key)).status, 403);
  EXPECT_EQ(count(as_key(other)), 2);
  // The admin clears one key, or everything.
  const Response admin_del = http(port(), "DELETE", "/profiling?key_id=" + other.id, "", kAdmin);
  EXPECT_EQ(jlong(admin_del.body, "deleted"), 2) << admin_del.body;
  call(oai(), key);
  call(oai(), other);
  EXPECT_EQ(jlong(http(port(), "DELETE", "/profiling", "", kAdmin).body, "deleted"), 2);
  EXPECT_EQ(count(kAdmin), 0);
}

TEST_F(Profiling, NoCredentialsGet401) {
  start();
  call();
  for (const auto& [method, uri] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/profiling"}, {"GET", "/profiling/anything"}, {"DELETE", "/profiling"}}) {
    const Response none = http(port(), method, uri, "");
    EXPECT_EQ(none.status, 401) << method << " " << uri << ": " << none.body;
    EXPECT_NE(jget(none.body, "error.message"), "<missing>") << none.body;
    const Response bad = http(port(), method, uri, "", {{"Authorization", "Bearer pk_not_a_key"}});
    EXPECT_EQ(bad.status, 401) << method << " " << uri << ": " << bad.body;
  }
  EXPECT_EQ(count(kAdmin), 1);  // the refused DELETEs removed nothing

  // Documented (README "What is recorded"): a proxied request auth refuses from its headers alone
  // never reaches profiling's on_complete (the core calls it only for plugins whose request hooks
  // had their turn, and profiling has none).
  const std::string rid = next_request_id();
  const Response refused = http(port(), "POST", "/v1/chat/completions", oai(), {{"X-Request-ID", rid}});
  EXPECT_EQ(refused.status, 401) << refused.body;
  proxy->wait_log({"\"id\":\"" + rid + "\""});
  EXPECT_EQ(count(kAdmin), 1);
}

// Without auth there are no key ids: only the admin may read the records (all under key_id "").
TEST_F(Profiling, WithoutAuthOnlyTheAdminGetsIn) {
  start("", false);
  const std::string rid = next_request_id();
  ASSERT_EQ(http(port(), "POST", "/v1/chat/completions", oai(), {{"X-Request-ID", rid}}).status, 200);
  wait_record(rid);
  for (const auto& [method, uri] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/profiling"}, {"GET", "/profiling/" + rid}, {"DELETE", "/profiling"}}) {
    const Response r = http(port(), method, uri, "", {{"Authorization", "Bearer pk_whatever"}});
    EXPECT_EQ(r.status, 401) << method << " " << uri << ": " << r.body;
    EXPECT_NE(jget(r.body, "error.message"), "<missing>") << r.body;
    EXPECT_EQ(r.body.find(rid), std::string::npos);
  }
  EXPECT_EQ(jget(get("/profiling/" + rid, kAdmin).body, "key_id"), "");
  EXPECT_EQ(count(kAdmin), 1);
}

TEST_F(Profiling, ItsOwnRequestsAreNeverRecorded) {
  start();
  const Call c = call();
  for (int i = 0; i < 3; ++i) {
    get("/profiling", as_key(key));
    get("/profiling/" + c.rid, as_key(key));
    get("/profiling", kAdmin);
  }
  get("/health", {});
  Headers models = as_key(key);  // a proxied GET is a request like any other
  models["X-Request-ID"] = next_request_id();
  EXPECT_EQ(get("/v1/models", models).status, 200);
  wait_record(models["X-Request-ID"]);
  const auto list = listing(kAdmin);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->getObject("window")->getValue<long>("count"), 2);
  std::vector<std::string> paths;
  const auto recent = array(list, "recent");
  for (std::size_t i = 0; i < recent->size(); ++i)
    paths.push_back(recent->getObject(static_cast<unsigned>(i))->getValue<std::string>("path"));
  EXPECT_EQ(paths, (std::vector<std::string>{"/v1/models", "/v1/chat/completions"}));
}

// ---------------------------------------------------------------------------------------------
// Bounds

TEST_F(Profiling, BoundsHoldUnderAFlood) {
  start("max_records = 20\nper_key_max = 8\ntop = 50\n");
  const Key quiet = create_key("quiet");
  const Key noisy = create_key("noisy");
  for (int i = 0; i < 3; ++i) call(oai(), quiet);
  // Concurrent: a record may be evicted by another thread's before anyone reads it, so the flood
  // waits for the access log (after on_complete) instead of the records.
  std::vector<std::thread> flood;
  std::vector<std::vector<std::string>> rids(4);
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    flood.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const Call c = call(oai(), noisy, {}, "/v1/chat/completions", Wait::None);
        ok += c.status == 200 ? 1 : 0;
        rids[t].push_back(c.rid);
      }
    });
  for (auto& t : flood) t.join();
  EXPECT_EQ(ok.load(), 40);
  for (const auto& list : rids)
    for (const auto& rid : list) proxy->wait_log({"\"id\":\"" + rid + "\""});
  EXPECT_EQ(count(as_key(noisy)), 8) << "per_key_max";
  EXPECT_EQ(count(as_key(quiet)), 3) << "a flood of one key evicted another key's records";
  EXPECT_EQ(count(kAdmin), 11);

  // Many keys: max_records holds overall.
  for (int k = 0; k < 4; ++k) {
    const Key each = create_key(numbered("many-", k));
    for (int i = 0; i < 5; ++i) call(oai(), each);
  }
  EXPECT_EQ(count(kAdmin), 20);
  const Response m = settled_metrics(port());
  EXPECT_EQ(metric(m.body, "glmp_profiling_records"), 20) << m.body;
  EXPECT_EQ(metric(m.body, "glmp_profiling_evictions_total", {"reason=\"per_key\""}), 32) << m.body;
  EXPECT_EQ(metric(m.body, "glmp_profiling_evictions_total", {"reason=\"max_records\""}), 11) << m.body;
  EXPECT_EQ(metric(m.body, "glmp_profiling_sampled_out_total"), 0) << m.body;
}

// ---------------------------------------------------------------------------------------------
// Server-Timing

TEST_F(Profiling, ServerTimingWhenEnabled) {
  start("server_timing = true\n");
  for (const bool stream : {false, true}) {
    const Call c = call(oai(stream));
    ASSERT_EQ(c.status, 200) << c.body;
    const auto it = c.headers.find("server-timing");
    ASSERT_NE(it, c.headers.end()) << "stream=" << stream;
    const std::string& v = it->second;
    for (const char* metric_name : {"receive;dur=", "auth.on_request;dur=", "ratelimit.on_request;dur=",
                                    "upstream_connect;dur=", "upstream_headers;dur="})
      EXPECT_NE(v.find(metric_name), std::string::npos) << metric_name << " in " << v;
    EXPECT_EQ(v.find("stream;"), std::string::npos) << "the body has not been sent yet: " << v;
    // name;dur=<ms with 3 decimals>, comma-separated.
    std::istringstream items(v);
    std::string item;
    while (std::getline(items, item, ',')) {
      if (!item.empty() && item.front() == ' ') item.erase(0, 1);
      const auto semi = item.find(";dur=");
      ASSERT_NE(semi, std::string::npos) << item;
      const std::string dur = item.substr(semi + 5);
      EXPECT_EQ(dur.size() - dur.find('.'), 4u) << item;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hot reload

// Documented (README "Hot reload"): each configuration instance has its own records; a reload's
// new instance starts empty and the old records are dropped with the old instance.
TEST_F(Profiling, HotReloadDropsTheRecords) {
  start();
  call();
  call(oai(true));
  EXPECT_EQ(count(kAdmin), 2);
  const std::string before = read_file(proxy->config_path());
  const std::string marker = "[plugins.settings]\n";
  const auto at = before.find(marker);  // the first one: profiling's
  ASSERT_NE(at, std::string::npos);
  write_file(proxy->config_path(), before.substr(0, at + marker.size()) + "top = 3\n" + before.substr(at + marker.size()));
  const Response r = http(port(), "POST", "/admin/reload", "", kAdmin);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(jget(r.body, "status"), "reloaded") << r.body;

  const auto list = listing(kAdmin);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->getObject("window")->getValue<long>("count"), 0);
  EXPECT_EQ(list->getObject("settings")->getValue<long>("top"), 3) << "the new instance answers";
  const Call after = call();
  EXPECT_EQ(count(kAdmin), 1);
  EXPECT_EQ(get("/profiling/" + after.rid, as_key(key)).status, 200);
  const Response m = settled_metrics(port());
  EXPECT_EQ(metric(m.body, "glmp_profiling_records"), 1) << "the retired instance took its records out: " << m.body;
  const std::string err = proxy->process().err();
  for (const char* level : {" Error ", " Critical ", " Fatal "}) EXPECT_EQ(err.find(level), std::string::npos) << err;
}

}  // namespace
