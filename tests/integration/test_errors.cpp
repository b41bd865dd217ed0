// Failures get a precise status and a body in the caller's flavour; the process keeps running.
#include <gtest/gtest.h>

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/SocketAddress.h>

#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

class Errors : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  void start(ProxyOptions opts = {}) {
    mock = std::make_unique<Mock>(dir);
    proxy = std::make_unique<Proxy>(dir, mock.get(), std::move(opts));
  }
};

TEST_F(Errors, UpstreamStatusAndBodyPassThrough) {
  start();
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false),
                    {{"x-mock-status", "429"}, {"x-mock-error-message", "slow down"}});
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.header("retry-after"), "7");
  EXPECT_EQ(json_get(r.body, "error.message"), "slow down");
  Response a = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false), {{"x-mock-status", "529"}});
  EXPECT_EQ(a.status, 529);
  EXPECT_EQ(json_get(a.body, "type"), "error");
  EXPECT_NO_THROW(proxy->wait_log({"\"status\":529", "\"upstream_status\":529"}));
}

TEST_F(Errors, UpstreamRefusedIs502InFlavour) {
  // A port nobody listens on: bind, note the port, close.
  uint16_t dead_port;
  {
    Poco::Net::ServerSocket s(Poco::Net::SocketAddress("127.0.0.1", 0));
    dead_port = s.address().port();
  }
  ProxyOptions opts;
  opts.openai_base = "http://127.0.0.1:" + std::to_string(dead_port) + "/v4";
  opts.anthropic_base = "http://127.0.0.1:" + std::to_string(dead_port);
  start(opts);
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(json_get(r.body, "error.type"), "server_error");
  EXPECT_NE(json_get(r.body, "error.message").find("refused"), std::string::npos) << r.body;
  Response a = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false));
  EXPECT_EQ(a.status, 502);
  EXPECT_EQ(json_get(a.body, "error.type"), "api_error");
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
}

TEST_F(Errors, StalledUpstreamIs504) {
  mock = std::make_unique<Mock>(dir);
  ProxyOptions custom;  // a short read_timeout needs its own config (the harness sets 10s)
  custom.custom_toml = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = \"" + dir.file("access.log") +
                       "\"\n[upstreams.openai]\nbase_url = \"" + mock->base_url("/api/coding/paas/v4") +
                       "\"\nauth_header = \"Authorization\"\nauth_value = \"Bearer test-upstream-key\"\n"
                       "min_connections = 0\nread_timeout = \"500ms\"\n"
                       "[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\nstrip_prefix = \"/v1\"\n";
  proxy = std::make_unique<Proxy>(dir, mock.get(), custom);
  const auto t0 = std::chrono::steady_clock::now();
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-stall-ms", "3000"}});
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_EQ(json_get(r.body, "error.code"), "upstream_timeout");
  EXPECT_LT(elapsed, 2500ms);
  // A stall between chunks of a stream ends it with an error event.
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/chat/completions", openai_body(true),
                                   {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "1500"}});
  EXPECT_EQ(s.status, 200);
  EXPECT_NE(s.body().find("stalled"), std::string::npos) << s.body();
}

TEST_F(Errors, PoolExhaustedIs503) {
  mock = std::make_unique<Mock>(dir);
  ProxyOptions custom;
  custom.custom_toml = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = \"" + dir.file("access.log") +
                       "\"\n[upstreams.anthropic]\nbase_url = \"" + mock->base_url("/api/anthropic") +
                       "\"\nauth_header = \"x-api-key\"\nauth_value = \"test-upstream-key\"\n"
                       "min_connections = 0\nmax_connections = 1\nacquire_timeout = \"200ms\"\n"
                       "[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"anthropic\"\n";
  proxy = std::make_unique<Proxy>(dir, mock.get(), custom);
  // One long stream holds the only connection.
  std::thread holder([&] {
    http_stream(proxy->port(), "POST", "/v1/messages", anthropic_body(true), {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "300"}});
  });
  for (int i = 0; i < 200 && mock->stats()["active"] < 1; ++i) std::this_thread::sleep_for(10ms);
  Response r = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false));
  holder.join();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(json_get(r.body, "type"), "error");
  EXPECT_NE(json_get(r.body, "error.message").find("busy"), std::string::npos) << r.body;
  EXPECT_NE(json_get(health(proxy->port()), "upstreams.anthropic.pool.timeouts"), "0");
  // Once the stream ended the connection is free again.
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/messages", anthropic_body(false)).status, 200);
}

TEST_F(Errors, OversizedBodyIs413) {
  start({.server_extra = "max_request_body = \"1KiB\"\n"});
  Response r = http(proxy->port(), "POST", "/v1/messages", anthropic_body(false, ",\"pad\":\"" + std::string(2000, 'x') + "\""));
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(json_get(r.body, "error.type"), "request_too_large");
  Response o = http(proxy->port(), "POST", "/v1/chat/completions", std::string(1025, ' '));
  EXPECT_EQ(o.status, 413);
  EXPECT_EQ(json_get(o.body, "error.type"), "invalid_request_error");
  // Chunked bodies are bounded too.
  Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", proxy->port()));
  std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) req += "258\r\n" + std::string(600, 'a') + "\r\n";
  req += "0\r\n\r\n";
  sock.sendBytes(req.data(), static_cast<int>(req.size()));
  char buf[2048];
  int n = sock.receiveBytes(buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)).rfind("HTTP/1.1 413", 0), 0u);
}

TEST_F(Errors, MalformedRequestsAre400) {
  start();
  Response j = http(proxy->port(), "POST", "/v1/chat/completions", "{\"model\":\"x\",}");
  EXPECT_EQ(j.status, 400);
  EXPECT_NE(json_get(j.body, "error.message").find("malformed JSON"), std::string::npos);
  Response a = http(proxy->port(), "POST", "/v1/messages", "{\"model\":");
  EXPECT_EQ(a.status, 400);
  EXPECT_EQ(json_get(a.body, "error.type"), "invalid_request_error");
  EXPECT_EQ(json_get(a.body, "type"), "error");
  // A broken request line / header block.
  Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", proxy->port()));
  std::string bad = "POST /v1/chat/completions HTTP/1.1\r\nHost x\r\nbroken header line\r\n\r\n";
  sock.sendBytes(bad.data(), static_cast<int>(bad.size()));
  char buf[1024];
  int n = sock.receiveBytes(buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)).rfind("HTTP/1.1 400", 0), 0u);
  // Path traversal never reaches the upstream.
  Response t = http(proxy->port(), "GET", "/v1/../admin");
  EXPECT_EQ(t.status, 400);
  Response t2 = http(proxy->port(), "GET", "/v1/%2e%2e/admin");
  EXPECT_EQ(t2.status, 400);
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
}

TEST_F(Errors, UnknownRouteIs404InFlavour) {
  start();
  Response r = http(proxy->port(), "GET", "/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json_get(r.body, "error.code"), "unknown_route");
  Response m = http(proxy->port(), "POST", "/health");
  EXPECT_EQ(m.status, 405);
}

TEST_F(Errors, MissingUpstreamCredentialKeepsHealthAndExplains) {
  mock = std::make_unique<Mock>(dir);
  ProxyOptions opts;
  opts.auth_value_openai = "Bearer ${GLMP_TEST_UNSET_KEY}";
  opts.env = {{"GLMP_TEST_UNSET_KEY", "<unset>"}};
  proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  Response h = http(proxy->port(), "GET", "/health", "", {{"X-Admin-Token", kTestAdminToken}});
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(json_get(h.body, "upstreams.openai.configured"), "false");
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(json_get(r.body, "error.message").find("GLMP_TEST_UNSET_KEY"), std::string::npos) << r.body;
  // The other upstream still works.
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/messages", anthropic_body(false)).status, 200);
}

TEST_F(Errors, BrokenConfigIsRejectedWithLocation) {
  const std::string path = dir.file("bad.toml");
  write_file(path, "[server]\nlisten = \"127.0.0.1:0\"\nmax_thread = 5\n");
  Child check({GLMP_PROXY_BIN, "--check-config", path}, dir.file("c.out"), dir.file("c.err"));
  EXPECT_EQ(check.wait(10s), 1);
  EXPECT_NE(check.err().find("bad.toml:3"), std::string::npos) << check.err();
  EXPECT_NE(check.err().find("server.max_thread"), std::string::npos) << check.err();
  Child run({GLMP_PROXY_BIN, "--config", path}, dir.file("r.out"), dir.file("r.err"));
  EXPECT_EQ(run.wait(10s), 1);
  Child ok({GLMP_PROXY_BIN, "--check-config", std::string(GLMP_SOURCE_DIR) + "/config/glm-proxy.toml"},
           dir.file("o.out"), dir.file("o.err"));
  EXPECT_EQ(ok.wait(10s), 0) << ok.err();
  Child version({GLMP_PROXY_BIN, "--version"}, dir.file("v.out"), dir.file("v.err"));
  EXPECT_EQ(version.wait(10s), 0);
  EXPECT_EQ(version.out().rfind("glm-proxy ", 0), 0u);
}

}  // namespace
