// Process lifecycle and connection handling: SIGTERM drain, stale pooled sockets, HTTPS upstreams.
#include <gtest/gtest.h>

#include <signal.h>

#include <future>
#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

TEST(Lifecycle, SigtermDrainsInFlightStream) {
  TempDir dir;
  Mock mock(dir);
  Proxy proxy(dir, &mock);
  auto stream = std::async(std::launch::async, [&] {
    return http_stream(proxy.port(), "POST", "/v1/messages", anthropic_body(true),
                       {{"x-mock-chunks", "6"}, {"x-mock-delay-ms", "200"}});
  });
  for (int i = 0; i < 300 && mock.stats()["active"] < 1; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(mock.stats()["active"], 1);
  proxy.process().signal(SIGTERM);
  // New connections are refused (or closed) while draining...
  std::this_thread::sleep_for(200ms);
  Response late = http(proxy.port(), "GET", "/health", "", {}, 2s);
  EXPECT_TRUE(late.status == 0 || json_get(late.body, "status") == "draining") << late.status << " " << late.body;
  // ... but the stream in flight completes intact.
  StreamedResponse s = stream.get();
  EXPECT_EQ(s.status, 200);
  EXPECT_TRUE(s.error.empty()) << s.error;
  EXPECT_NE(s.body().find("event: message_stop"), std::string::npos);
  EXPECT_EQ(proxy.process().wait(15s), 0) << proxy.process().err();
  EXPECT_NE(proxy.process().err().find("draining"), std::string::npos);
}

TEST(Lifecycle, DrainTimeoutAbortsWhatIsLeft) {
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;  // the harness sets drain_timeout itself, so this test needs its own config
  opts.custom_toml = "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"300ms\"\n[log]\naccess_log = \"off\"\n"
                     "[upstreams.anthropic]\nbase_url = \"" + mock.base_url("/api/anthropic") +
                     "\"\nauth_header = \"x-api-key\"\nauth_value = \"test-upstream-key\"\nmin_connections = 0\n"
                     "[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"anthropic\"\n";
  Proxy proxy(dir, &mock, opts);
  auto stream = std::async(std::launch::async, [&] {
    return http_stream(proxy.port(), "POST", "/v1/messages", anthropic_body(true),
                       {{"x-mock-chunks", "50"}, {"x-mock-delay-ms", "100"}});
  });
  for (int i = 0; i < 300 && mock.stats()["active"] < 1; ++i) std::this_thread::sleep_for(10ms);
  const auto t0 = std::chrono::steady_clock::now();
  proxy.process().signal(SIGTERM);
  EXPECT_EQ(proxy.process().wait(10s), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  StreamedResponse s = stream.get();
  EXPECT_EQ(s.body().find("message_stop"), std::string::npos);
  EXPECT_NE(proxy.process().err().find("drain timeout"), std::string::npos) << proxy.process().err();
}

TEST(Lifecycle, StaleKeptAliveSocketIsRetriedOnce) {
  TempDir dir;
  MockOptions mo;
  mo.keepalive_timeout_ms = 150;  // the mock closes idle keep-alive connections quickly
  Mock mock(dir, mo);
  Proxy proxy(dir, &mock);
  for (int i = 0; i < 5; ++i) {
    Response r = http(proxy.port(), "POST", "/v1/chat/completions", openai_body(false));
    ASSERT_EQ(r.status, 200) << "round " << i << ": " << r.body << r.error;
    std::this_thread::sleep_for(400ms);  // the pooled socket goes stale in the meantime
  }
  const long requests = mock.stats()["requests"];
  // Every proxied request reached the mock exactly once, never twice (stats calls are not counted).
  EXPECT_EQ(requests, 5);
  EXPECT_NE(json_get(health(proxy.port()), "upstreams.openai.pool.expired"), "0");
}

TEST(Lifecycle, HttpsUpstreamWithCustomCa) {
  TempDir dir;
  TestPki pki = make_pki(dir);
  MockOptions mo;
  mo.https = true;
  mo.cert = pki.server_cert;
  mo.key = pki.server_key;
  Mock mock(dir, mo);
  ProxyOptions opts;
  opts.upstream_extra = "ca_file = \"" + pki.ca_cert + "\"\n";
  Proxy proxy(dir, &mock, opts);
  Response r = http(proxy.port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json_get(r.body, "choices.0.message.content"), "tok0 tok1 tok2 ");
  StreamedResponse s = http_stream(proxy.port(), "POST", "/v1/messages", anthropic_body(true));
  EXPECT_EQ(s.status, 200);
  EXPECT_NE(s.body().find("message_stop"), std::string::npos);
  // Pooled TLS connections are reused (the mock offers h2 by ALPN: the streams share a session of
  // each event loop, so at most one connection per loop).
  for (int i = 0; i < 5; ++i) ASSERT_EQ(http(proxy.port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  const std::string h = health(proxy.port());
  EXPECT_GE(jlong(h, "upstreams.openai.pool.h2_connections"), 1) << h;
  EXPECT_LE(jlong(h, "upstreams.openai.pool.h2_connections"), jlong(h, "loops")) << h;
  EXPECT_GE(std::stol(json_get(h, "upstreams.openai.pool.h2_streams_total")), 6) << h;
}

TEST(Lifecycle, HttpsUpstreamWithoutTrustedCaIsRejected) {
  TempDir dir;
  TestPki pki = make_pki(dir);
  MockOptions mo;
  mo.https = true;
  mo.cert = pki.server_cert;
  mo.key = pki.server_key;
  Mock mock(dir, mo);
  Proxy proxy(dir, &mock);  // no ca_file: the self-made CA is not trusted
  Response r = http(proxy.port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_NE(json_get(r.body, "error.message").find("TLS"), std::string::npos) << r.body;
  EXPECT_EQ(json_get(health(proxy.port()), "status"), "ok");
}

}  // namespace
