// The state store and plugin metrics through the ABI, with the real binary: the usage_meter example
// plugin (sdk/examples/usage_meter) charges every response's tokens to a window, a counter and a
// record, and shows them at GET /meter/<key>. Covers restart persistence (clean stop and kill -9),
// two proxies sharing Redis, Redis going away and coming back, and the store/plugin/stream metrics.
#include <cmath>
#include <csignal>
#include <filesystem>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "../support/redis_server.hpp"
#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

const std::string kSdkPlugins = (fs::path(GLMP_PROXY_BIN).parent_path().parent_path() / "plugins").string();
const std::string kMeter = "\n[[plugins]]\nname = \"usage_meter\"\npath = \"" + kSdkPlugins + "/usage_meter.so\"\n";

// Sums tokens_in + tokens_out over the proxied requests of an access log, once it has `lines` of
// them (the log line is written just after the client got its response).
long logged_tokens(const Proxy& proxy, size_t lines) {
  for (int attempt = 0;; ++attempt) {
    long total = 0;
    size_t n = 0;
    for (const auto& line : proxy.access_log()) {
      if (line.find("\"/v1/") == std::string::npos) continue;
      ++n;
      total += std::stol(json_get(line, "tokens_in")) + std::stol(json_get(line, "tokens_out"));
    }
    if (n >= lines || attempt == 300) {
      EXPECT_EQ(n, lines) << "access log lines";
      return total;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

long sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::lround(std::stod(line.substr(series.size() + 1)));
  return -1;
}

// Sends a mix of requests (both flavours, streamed and not) for `key`.
void traffic(uint16_t port, const std::string& key, int rounds = 1) {
  const std::map<std::string, std::string> h{{"x-meter-key", key}};
  for (int i = 0; i < rounds; ++i) {
    ASSERT_EQ(http(port, "POST", "/v1/chat/completions", openai_body(false), h).status, 200);
    ASSERT_EQ(http(port, "POST", "/v1/messages", anthropic_body(true), h).status, 200);
    ASSERT_EQ(http(port, "POST", "/v1/chat/completions", openai_body(true), h).status, 200);
  }
}

struct Meter {
  int status = 0;
  long window = -1, lifetime = -1, requests = -1;
  std::string body;
};
Meter meter(uint16_t port, const std::string& key) {
  Meter m;
  Response r = http(port, "GET", "/meter/" + key);
  m.status = r.status;
  m.body = r.body;
  if (r.status == 200) {
    m.window = std::stol(json_get(r.body, "window_tokens"));
    m.lifetime = std::stol(json_get(r.body, "lifetime_tokens"));
    const std::string requests = json_get(r.body, "record.requests");  // "<missing>" when the record is null
    if (requests != "<missing>") m.requests = std::stol(requests);
  }
  return m;
}

// on_complete runs after the response reached the client: poll until the meter has seen
// `requests` requests of `key`.
Meter meter_until(uint16_t port, const std::string& key, long requests) {
  Meter m;
  for (int i = 0; i < 300; ++i) {
    m = meter(port, key);
    if (m.requests == requests) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return m;
}

TEST(StoreThroughPlugins, UsageIsChargedAndSurvivesACleanRestart) {
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;
  opts.extra_toml = kMeter;
  auto proxy = std::make_unique<Proxy>(dir, &mock, opts);
  traffic(proxy->port(), "alice", 2);
  traffic(proxy->port(), "bob");
  const long total = logged_tokens(*proxy, 9);
  ASSERT_GT(total, 0);
  const Meter a = meter_until(proxy->port(), "alice", 6);
  const Meter b = meter_until(proxy->port(), "bob", 3);
  EXPECT_EQ(a.window + b.window, total) << a.body << "\n" << b.body;
  EXPECT_EQ(a.lifetime, a.window);
  EXPECT_EQ(a.requests, 6);
  EXPECT_EQ(b.requests, 3);
  EXPECT_EQ(meter(proxy->port(), "nobody").window, 0);

  proxy.reset();  // SIGTERM: the store flushes before exit
  proxy = std::make_unique<Proxy>(dir, &mock, opts);
  const Meter a2 = meter(proxy->port(), "alice");
  EXPECT_EQ(a2.window, a.window);
  EXPECT_EQ(a2.lifetime, a.lifetime);
  EXPECT_EQ(a2.requests, 6);
  // And it keeps counting on top.
  traffic(proxy->port(), "alice");
  EXPECT_EQ(meter_until(proxy->port(), "alice", 9).requests, 9);
  // The list route pages through the records.
  Response list = http(proxy->port(), "GET", "/meter?limit=1");
  ASSERT_EQ(list.status, 200) << list.body;
  EXPECT_EQ(json_get(list.body, "records.0.key"), "alice") << list.body;
  EXPECT_EQ(json_get(list.body, "more"), "true");
  Response rest = http(proxy->port(), "GET", "/meter?after=alice&limit=10");
  EXPECT_EQ(json_get(rest.body, "records.0.key"), "bob") << rest.body;
  EXPECT_EQ(json_get(rest.body, "more"), "false");
}

// The documented bound: after kill -9 only the updates of the last flush_interval can be lost.
// Everything charged more than one interval before the kill must be there after the restart.
TEST(StoreThroughPlugins, KillNineLosesAtMostOneFlushInterval) {
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;
  opts.extra_toml = kMeter;
  opts.store_toml = "[store]\npath = \"" + dir.file("state.db") + "\"\nflush_interval = \"200ms\"\n";
  auto proxy = std::make_unique<Proxy>(dir, &mock, opts);
  traffic(proxy->port(), "carol", 3);
  const Meter before = meter_until(proxy->port(), "carol", 9);
  ASSERT_EQ(before.window, logged_tokens(*proxy, 9));
  std::this_thread::sleep_for(std::chrono::milliseconds(450));  // > 2 flush intervals
  proxy->kill9();
  proxy.reset();
  proxy = std::make_unique<Proxy>(dir, &mock, opts);
  const Meter after = meter(proxy->port(), "carol");
  EXPECT_EQ(after.window, before.window) << "usage older than one flush interval was lost by kill -9";
  EXPECT_EQ(after.lifetime, before.lifetime);
  EXPECT_EQ(after.requests, 9);
}

TEST(StoreThroughPlugins, MetricsShowStorePluginAndStreams) {
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;
  opts.extra_toml = kMeter;
  Proxy proxy(dir, &mock, opts);
  traffic(proxy.port(), "dave");
  meter_until(proxy.port(), "dave", 3);
  // A slow stream is counted in glmp_active_streams while it runs.
  auto slow = std::async(std::launch::async, [&] {
    return http_stream(proxy.port(), "POST", "/v1/messages", anthropic_body(true),
                       {{"x-mock-chunks", "8"}, {"x-mock-delay-ms", "150"}});
  });
  long active = 0;
  for (int i = 0; i < 100 && active < 1; ++i) {
    active = sample(http(proxy.port(), "GET", "/metrics").body, "glmp_active_streams");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(active, 1);
  ASSERT_EQ(slow.get().status, 200);  // (x-meter-key absent: charged to "anonymous")
  for (int i = 0; i < 100 && active != 0; ++i) {
    active = sample(http(proxy.port(), "GET", "/metrics").body, "glmp_active_streams");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(active, 0);
  meter_until(proxy.port(), "anonymous", 1);
  const std::string t = settled_metrics(proxy.port()).body;
  EXPECT_EQ(sample(t, R"(glmp_usage_meter_requests_total{plugin="usage_meter"})"), 4) << t;
  EXPECT_EQ(sample(t, R"(glmp_usage_meter_request_tokens_count{plugin="usage_meter"})"), 4);
  EXPECT_GE(sample(t, R"(glmp_store_operations_total{backend="sqlite",op="window_add",result="ok"})"), 4);
  EXPECT_GE(sample(t, R"(glmp_store_operations_total{backend="sqlite",op="window_sum",result="ok"})"), 1);
  EXPECT_EQ(sample(t, R"(glmp_store_up{backend="sqlite"})"), 1);
  EXPECT_GE(sample(t, R"(glmp_store_flush_seconds_count{backend="sqlite"})"), 0);
  // promtool accepts the exposition with plugin and store metrics in it.
  ASSERT_EQ(std::system("command -v promtool >/dev/null 2>&1"), 0) << "promtool missing: apt-get install prometheus";
  write_file(dir.file("metrics.txt"), t);
  const int rc = std::system(("promtool check metrics < " + dir.file("metrics.txt") + " > " + dir.file("promtool.out") + " 2>&1").c_str());
  EXPECT_EQ(rc, 0) << read_file(dir.file("promtool.out"));
  // /health reports the store without secrets.
  const std::string h = health(proxy.port());
  EXPECT_EQ(json_get(h, "store.backend"), "sqlite " + dir.file("state.db"));
  EXPECT_EQ(json_get(h, "store.healthy"), "true");
}

TEST(StoreThroughPlugins, BrokenStoreConfigOrLockedFileStopsStartupWithAClearError) {
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;
  opts.extra_toml = kMeter;
  Proxy first(dir, &mock, opts);
  // A second proxy on the same sqlite file is refused at start, naming the problem.
  TempDir other;
  ProxyOptions same_file = opts;
  same_file.store_toml = "[store]\npath = \"" + dir.file("state.db") + "\"\n";
  try {
    Proxy second(other, &mock, same_file);
    FAIL() << "a second proxy on one sqlite file must not start";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another glm-proxy"), std::string::npos) << e.what();
  }
  // A [store] that cannot work stops the start with the key named (and no secret).
  ProxyOptions bad = opts;
  bad.store_toml = "[store]\nbackend = \"redis\"\nurl = \"http://:pw@h:1/0\"\n";
  try {
    Proxy third(other, &mock, bad);
    FAIL() << "a bad [store] must not start";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("store.url"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find(":pw@"), std::string::npos) << "secret leaked: " << e.what();
  }
}

// Two proxies on one Redis share every window exactly; Redis going away gives the configured
// failure (fail_closed: the meter answers 503) and both recover when it comes back.
TEST(StoreThroughPlugins, TwoProxiesShareRedisAndSurviveItsRestart) {
  RedisServer redis;
  TempDir dir_a, dir_b;
  Mock mock(dir_a);
  ProxyOptions opts;
  opts.extra_toml = kMeter;
  opts.store_toml = "[store]\nbackend = \"redis\"\nurl = \"" + redis.url() + "\"\ntimeout = \"300ms\"\n";
  Proxy a(dir_a, &mock, opts), b(dir_b, &mock, opts);
  auto fa = std::async(std::launch::async, [&] { traffic(a.port(), "erin", 2); });
  auto fb = std::async(std::launch::async, [&] { traffic(b.port(), "erin", 2); });
  fa.get();
  fb.get();
  const long total = logged_tokens(a, 6) + logged_tokens(b, 6);
  const Meter via_a = meter_until(a.port(), "erin", 12);
  const Meter via_b = meter(b.port(), "erin");
  EXPECT_EQ(via_a.window, total) << via_a.body;
  EXPECT_EQ(via_b.window, total) << via_b.body;
  EXPECT_EQ(via_b.lifetime, total);
  EXPECT_EQ(via_b.requests, 12);

  redis.stop();
  const Meter down = meter(a.port(), "erin");
  EXPECT_EQ(down.status, 503) << down.body;
  EXPECT_NE(down.body.find("unavailable"), std::string::npos) << down.body;
  // Proxied traffic keeps flowing while Redis is down (the meter only observes it).
  ASSERT_EQ(http(a.port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-meter-key", "erin"}}).status, 200);
  EXPECT_EQ(json_get(health(a.port()), "store.healthy"), "false");
  const std::string t = settled_metrics(a.port()).body;
  EXPECT_GE(sample(t, R"(glmp_store_operations_total{backend="redis",op="window_sum",result="unavailable"})"), 1) << t;

  redis.start();  // empty: persistence is off in the test server
  Meter back;
  for (int i = 0; i < 300 && back.status != 200; ++i) {
    back = meter(a.port(), "erin");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(back.status, 200) << back.body;
  Meter back_b;
  for (int i = 0; i < 300 && back_b.status != 200; ++i) {
    back_b = meter(b.port(), "erin");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(back_b.status, 200) << back_b.body;
  for (int i = 0; i < 100 && json_get(health(a.port()), "store.healthy") != "true"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(json_get(health(a.port()), "store.healthy"), "true");
}

}  // namespace
