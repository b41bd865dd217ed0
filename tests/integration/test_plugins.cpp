// The plugin system through the real binary, with tiny raw-C-ABI plugins (tests/plugins/):
// loading, hooks (the ABI 1.2 headers phase included), failure isolation, the core-route guard,
// admin token, /admin/plugins, and reload (HTTP, SIGHUP, watch).
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Exception.h>
#include <Poco/Timespan.h>
#include <thread>

#include "glmproxy/plugin_api.h"
#include "harness.hpp"

using namespace glmp::test;

namespace {

const std::string kPlugins = GLMP_TEST_PLUGIN_DIR;

std::string plugin_entry(const std::string& name, const std::string& path, const std::string& settings = "") {
  return "\n[[plugins]]\nname = \"" + name + "\"\npath = \"" + path + "\"\n" +
         (settings.empty() ? "" : "[plugins.settings]\n" + settings + "\n");
}

const std::string kAdmin = "\n[admin]\ntoken = \"s3cret-admin\"\n";
const std::map<std::string, std::string> kAdminHeader{{"Authorization", "Bearer s3cret-admin"}};

class Plugins : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  std::string live_so;  // a copy the tests overwrite to simulate a rebuilt plugin

  void start(const std::string& extra) {
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.extra_toml = extra;
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  void swap_plugin(const std::string& so) {
    std::filesystem::copy_file(kPlugins + "/" + so, live_so + ".tmp", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::rename(live_so + ".tmp", live_so);
  }
  void SetUp() override {
    live_so = dir.file("live.so");
    std::filesystem::copy_file(kPlugins + "/c_ok.so", live_so);
  }
};

TEST_F(Plugins, HooksRunAndStampResponses) {
  start(kAdmin + plugin_entry("c_plugin", live_so));
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-c-plugin"), "c1");
  Response t = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false), {{"x-c-teapot", "1"}});
  EXPECT_EQ(t.status, 418);
  EXPECT_EQ(json_get(t.body, "type"), "error");  // respond_error uses the caller's flavour
  EXPECT_EQ(json_get(t.body, "error.message"), "teapot");
  Response f = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-c-fail", "1"}});
  EXPECT_EQ(f.status, 500);
  EXPECT_NE(json_get(f.body, "error.message").find("c_plugin"), std::string::npos) << f.body;
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
  // A plugin that replaces the body and sets a model: the core rescans the new body and inserts it.
  Response echo = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false),
                       {{"x-c-body", "1"}, {"x-mock-echo", "1"}});
  ASSERT_EQ(echo.status, 200) << echo.body;
  const std::string sent = json_get(echo.body, "body");
  EXPECT_EQ(json_get(sent, "model"), "c-model");
  EXPECT_EQ(json_get(sent, "messages.0.content"), "from plugin");
}

// A plugin built against ABI 1.0 (before the store and metrics were appended) keeps loading and
// working on this newer host. Its descriptor's struct_size ends before on_request_headers (1.2);
// the bytes after it hold a hook answering 500 "host read past struct_size": the host must not
// call it, so its requests (also one with the x-c-deny a 1.2 build refuses) pass.
TEST_F(Plugins, AbiOneZeroPluginLoadsOnANewerMinor) {
  swap_plugin("c_v10.so");
  start(kAdmin + plugin_entry("c_plugin", live_so));
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-c-plugin"), "v10");
  Response d = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-c-deny", "1"}});
  EXPECT_EQ(d.status, 200) << d.body;
  Response info = http(proxy->port(), "GET", "/admin/plugins", "", kAdminHeader);
  EXPECT_EQ(json_get(info.body, "plugins.0.abi"), "1.0") << info.body;
}

TEST_F(Plugins, OnCompleteRunsExactlyOnceForEveryOnRequest) {
  start(plugin_entry("c_plugin", live_so));
  const uint16_t port = proxy->port();
  // Plain, streamed, upstream error status, upstream reset mid-stream, answered early by the
  // plugin, failed by the plugin, and a client that leaves mid-stream.
  EXPECT_EQ(http(port, "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  EXPECT_EQ(http_stream(port, "POST", "/v1/messages", anthropic_body(true)).status, 200);
  EXPECT_EQ(http(port, "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-status", "500"}}).status, 500);
  http_stream(port, "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "2"}});
  EXPECT_EQ(http(port, "POST", "/v1/messages", anthropic_body(false), {{"x-c-teapot", "1"}}).status, 418);
  EXPECT_EQ(http(port, "POST", "/v1/messages", anthropic_body(false), {{"x-c-fail", "1"}}).status, 500);
  // Refused by the plugin's own headers hook: no on_request, still one on_complete.
  EXPECT_EQ(http(port, "POST", "/v1/messages", anthropic_body(false), {{"x-c-deny", "1"}}).status, 401);
  {
    Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", port));
    const std::string body = openai_body(true);
    const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            "x-mock-chunks: 40\r\nx-mock-delay-ms: 50\r\nContent-Length: " + std::to_string(body.size()) +
                            "\r\n\r\n" + body;
    sock.sendBytes(req.data(), static_cast<int>(req.size()));
    char buf[2048];
    ASSERT_GT(sock.receiveBytes(buf, sizeof buf), 0);
    sock.close();
  }
  EXPECT_NO_THROW(proxy->wait_log({"\"client_gone\":true"}));
  Response counts = http(port, "GET", "/c-plugin/counts");
  ASSERT_EQ(counts.status, 200) << counts.body;
  EXPECT_EQ(json_get(counts.body, "requests"), "7");
  EXPECT_EQ(json_get(counts.body, "headers"), "8");
  EXPECT_EQ(json_get(counts.body, "completes"), "8");
  EXPECT_EQ(json_get(counts.body, "body_in_headers"), "0") << "the headers hook ran after the body was read";
}

// ABI 1.2: a plugin refuses a request from its headers alone — before the core reads the body.
// The client announces a large body and sends only its first bytes: the refusal still arrives at
// once (waiting for the body would take until the server's timeouts), with Connection: close, and
// the connection is closed since the body was never read. Nothing reaches the upstream.
TEST_F(Plugins, HeadersHookRefusesBeforeTheBodyIsRead) {
  start(plugin_entry("c_plugin", live_so));
  const uint16_t port = proxy->port();
  const long upstream_before = mock->stats()["requests"];
  Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", port));
  sock.setReceiveTimeout(Poco::Timespan(3, 0));
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "x-c-deny: 1\r\nContent-Length: 1000000\r\n\r\n{\"model\":";
  sock.sendBytes(head.data(), static_cast<int>(head.size()));
  const auto sent = std::chrono::steady_clock::now();
  std::string got;
  bool eof = false;
  char buf[4096];
  for (int i = 0; i < 100 && !eof; ++i) {  // bounded: every read either returns bytes, EOF, or times out
    int n = 0;
    try {
      n = sock.receiveBytes(buf, sizeof buf);
    } catch (const Poco::TimeoutException&) {
      break;
    }
    if (n <= 0) eof = true;
    else got.append(buf, static_cast<size_t>(n));
  }
  const auto waited = std::chrono::steady_clock::now() - sent;
  ASSERT_EQ(got.rfind("HTTP/1.1 401", 0), 0u) << got;
  EXPECT_LT(waited, 1500ms) << "the refusal waited for the body";
  EXPECT_NE(got.find("denied from the headers"), std::string::npos) << got;
  std::string lower = got;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  EXPECT_NE(lower.find("connection: close"), std::string::npos) << got;
  EXPECT_TRUE(eof) << "the connection stayed open with an unread body: " << got;
  EXPECT_EQ(mock->stats()["requests"], upstream_before);
  Response counts = http(port, "GET", "/c-plugin/counts");
  EXPECT_EQ(json_get(counts.body, "headers"), "1") << counts.body;
  EXPECT_EQ(json_get(counts.body, "requests"), "0") << counts.body;
  EXPECT_EQ(json_get(counts.body, "completes"), "1") << counts.body;
}

// register_route refuses any route, exact or prefix, that would match or shadow a core route
// (plugin routes are looked up before /health and /metrics): the plugin's configuration fails.
TEST_F(Plugins, RoutesThatShadowCoreRoutesAreRefused) {
  mock = std::make_unique<Mock>(dir);
  auto check = [&](const std::string& route) {
    const std::string cfg = dir.file("route.toml");
    write_file(cfg, "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.openai]\nbase_url = \"" + mock->base_url() +
                        "\"\nmin_connections = 0\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\n" +
                        plugin_entry("c_plugin", kPlugins + "/c_ok.so", "route = \"" + route + "\""));
    Child child({GLMP_PROXY_BIN, "--check-plugins", cfg}, dir.file("r.out"), dir.file("r.err"));
    const int rc = child.wait(10s);
    EXPECT_FALSE(sanitizer_report(child.err())) << child.err();
    return std::make_pair(rc, child.err());
  };
  for (const std::string route : {"/v1*", "/v1/*", "/v1/models", "/v1", "/heal*", "/health", "/*", "/metrics",
                                  "/api/metrics/prometheus", "/api*", "/admin/reload", "/admin/plugins", "/admin/*"}) {
    const auto [rc, err] = check(route);
    EXPECT_EQ(rc, 1) << route << ": " << err;
    EXPECT_NE(err.find("route refused: " + route), std::string::npos) << route << ": " << err;
  }
  for (const std::string route : {"/c-extra", "/c-extra/*", "/healthz", "/v2/*"}) {
    const auto [rc, err] = check(route);
    EXPECT_EQ(rc, 0) << route << ": " << err;
  }
}

TEST_F(Plugins, AdminApiNeedsTheToken) {
  start("\n[admin]\ntoken = \"\"\n" + plugin_entry("c_plugin", live_so));  // no admin token
  Response disabled = http(proxy->port(), "GET", "/admin/plugins");
  EXPECT_EQ(disabled.status, 403);
  EXPECT_NE(json_get(disabled.body, "error.message").find("admin API disabled"), std::string::npos);
  proxy.reset();
  start(kAdmin + plugin_entry("c_plugin", live_so));
  EXPECT_EQ(http(proxy->port(), "GET", "/admin/plugins").status, 401);
  EXPECT_EQ(http(proxy->port(), "GET", "/admin/plugins", "", {{"Authorization", "Bearer wrong"}}).status, 401);
  Response ok = http(proxy->port(), "GET", "/admin/plugins", "", kAdminHeader);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(json_get(ok.body, "plugins.0.name"), "c_plugin");
  EXPECT_EQ(json_get(ok.body, "plugins.0.version"), "c1");
  EXPECT_EQ(json_get(ok.body, "plugins.0.abi"), "1." + std::to_string(GLMP_ABI_MINOR));
  EXPECT_EQ(json_get(ok.body, "plugins.0.position"), "0");
  EXPECT_EQ(json_get(ok.body, "plugins.0.sha256").size(), 64u);
  EXPECT_EQ(ok.body.find("s3cret-admin"), std::string::npos);
}

TEST_F(Plugins, BrokenPluginsRefuseToStartWithPreciseErrors) {
  struct Case { std::string so, settings, expect; };
  const std::vector<Case> cases{
      {"c_major.so", "", "ABI major 2"},
      {"c_newer_minor.so", "", "newer than the host's"},
      {"c_null.so", "", "refused host ABI"},
      {"c_no_symbol.so", "", "missing symbol glmp_plugin_init"},
      {"does_not_exist.so", "", "file not found"},
      {"c_ok.so", "refuse = true", "refused its settings: settings say refuse"},
  };
  mock = std::make_unique<Mock>(dir);
  for (const auto& c : cases) {
    const std::string cfg = dir.file("bad.toml");
    // Its own store: the default data/glm-proxy.db would be shared with tests running in parallel.
    write_file(cfg, "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"" + dir.file("state.db") + "\"\n[upstreams.openai]\nbase_url = \"" + mock->base_url() +
                        "\"\nmin_connections = 0\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\n" +
                        plugin_entry("p", kPlugins + "/" + c.so, c.settings));
    Child child({GLMP_PROXY_BIN, "--config", cfg}, dir.file("b.out"), dir.file("b.err"));
    EXPECT_EQ(child.wait(10s), 1) << c.so;
    EXPECT_FALSE(sanitizer_report(child.err())) << child.err();
    EXPECT_NE(child.err().find(c.expect), std::string::npos) << c.so << ": " << child.err();
    EXPECT_NE(child.err().find("plugin 'p'"), std::string::npos) << child.err();
  }
}

TEST_F(Plugins, TwoPluginsClaimingOneRouteRefuseToStart) {
  mock = std::make_unique<Mock>(dir);
  const std::string cfg = dir.file("clash.toml");
  write_file(cfg, "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.openai]\nbase_url = \"" + mock->base_url() +
                      "\"\nmin_connections = 0\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\n" +
                      plugin_entry("c_a", kPlugins + "/c_ok.so") + plugin_entry("c_b", kPlugins + "/c_ok2.so"));
  Child child({GLMP_PROXY_BIN, "--check-plugins", cfg}, dir.file("c.out"), dir.file("c.err"));
  EXPECT_EQ(child.wait(10s), 1);
  EXPECT_FALSE(sanitizer_report(child.err())) << child.err();
  EXPECT_NE(child.err().find("plugin 'c_b' registers /c-plugin/counts, already served by plugin 'c_a'"), std::string::npos)
      << child.err();
}

TEST_F(Plugins, ReloadSwapsBuildsAndKeepsTheOldChainOnFailure) {
  start(kAdmin + plugin_entry("c_plugin", live_so));
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin"), "c1");
  // A stream in flight keeps the chain it started with.
  StreamedResponse during;
  std::thread streaming([&] {
    during = http_stream(proxy->port(), "POST", "/v1/chat/completions", openai_body(true),
                         {{"x-mock-chunks", "5"}, {"x-mock-delay-ms", "150"}});
  });
  std::this_thread::sleep_for(200ms);
  swap_plugin("c_ok2.so");
  Response r = http(proxy->port(), "POST", "/admin/reload", "", kAdminHeader);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json_get(r.body, "generation"), "2");
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin"), "c2");
  streaming.join();
  EXPECT_EQ(during.headers["x-c-plugin"], "c1");
  EXPECT_NE(during.body().find("[DONE]"), std::string::npos);

  // A broken build: the reload fails, the running chain (c2) stays.
  swap_plugin("c_major.so");
  Response bad = http(proxy->port(), "POST", "/admin/reload", "", kAdminHeader);
  EXPECT_EQ(bad.status, 500);
  EXPECT_NE(json_get(bad.body, "message").find("ABI major"), std::string::npos) << bad.body;
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin"), "c2");
  // A broken TOML, likewise.
  swap_plugin("c_ok.so");
  const std::string good = read_file(proxy->config_path());
  write_file(proxy->config_path(), good + "\n[[[broken");
  EXPECT_EQ(http(proxy->port(), "POST", "/admin/reload", "", kAdminHeader).status, 500);
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin"), "c2");
  write_file(proxy->config_path(), good);
  // SIGHUP reloads too.
  proxy->process().signal(SIGHUP);
  bool swapped = false;
  for (int i = 0; i < 200 && !swapped; ++i) {
    swapped = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin") == "c1";
    if (!swapped) std::this_thread::sleep_for(25ms);
  }
  EXPECT_TRUE(swapped) << "SIGHUP reload";
}

TEST_F(Plugins, FileWatchReloadsOnChange) {
  start(kAdmin + "\n[loader]\nwatch = true\nwatch_interval = \"100ms\"\n" + plugin_entry("c_plugin", live_so));
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin"), "c1");
  std::this_thread::sleep_for(150ms);
  swap_plugin("c_ok2.so");
  bool swapped = false;
  for (int i = 0; i < 200 && !swapped; ++i) {
    swapped = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).header("x-c-plugin") == "c2";
    if (!swapped) std::this_thread::sleep_for(25ms);
  }
  EXPECT_TRUE(swapped) << "watch reload";
  // Runtime copies are unlinked once loaded: nothing accumulates on disk.
  const std::string maps = read_file("/proc/" + std::to_string(proxy->process().pid()) + "/maps");
  EXPECT_NE(maps.find("(deleted)"), std::string::npos);
}

}  // namespace
