// HTTP/2 to the upstream (docs/design.md, "Upstream HTTP/2"): the real binary against the mock
// speaking h2c (prior knowledge) or h2 over TLS with ALPN. Both flavours, streaming and not;
// multiplexing within max_streams_per_connection, the peer's SETTINGS_MAX_CONCURRENT_STREAMS and
// max_connections; ALPN fallback; GOAWAY during streams; RST_STREAM mid-stream; a slow reader that
// holds only its own stream; metrics.
#include <gtest/gtest.h>

#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

#include <atomic>
#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

// The OpenAI stream's content events, in order ("tok0 tok1 …").
std::string openai_content(const std::string& body) {
  std::string out;
  for (size_t p = 0; (p = body.find("\"content\":\"", p)) != std::string::npos;) {
    p += 11;
    out += body.substr(p, body.find('"', p) - p);
  }
  return out;
}

std::string cache_status(const StreamedResponse& s) {
  const auto it = s.headers.find("x-cache-status");  // the harness keeps names lowercase
  return it == s.headers.end() ? std::string() : it->second;
}

struct H2Setup {
  bool tls = false;
  std::vector<std::string> mock_args;
  std::string upstream = "protocol = \"h2\"\n";  // lines inside both [upstreams.*]
  // Lines inside [server]. One event loop by default: sessions belong to a loop, so connection
  // counts are exact.
  std::string server = "workers = 1\n";
  std::string extra_toml;  // [[plugins]] etc.
};

class H2Upstream : public ::testing::Test {
protected:
  TempDir dir;
  TestPki pki;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;

  void start(const H2Setup& s) {
    MockOptions mo;
    mo.extra_args = s.mock_args;
    std::string upstream = s.upstream;
    if (s.tls) {
      pki = make_pki(dir);
      mo.https = true;
      mo.cert = pki.server_cert;
      mo.key = pki.server_key;
      upstream += "ca_file = \"" + pki.ca_cert + "\"\n";
    }
    mock = std::make_unique<Mock>(dir, mo);
    ProxyOptions po;
    po.upstream_extra = upstream;
    po.server_extra = s.server;
    po.extra_toml = s.extra_toml;
    proxy = std::make_unique<Proxy>(dir, mock.get(), po);
  }
  uint16_t port() const { return proxy->port(); }
  long mock_stat(const std::string& name) const {
    const auto st = mock->stats();
    auto it = st.find(name);
    return it == st.end() ? -1 : it->second;
  }
  // The pool figure of upstream `name` in /health.
  long pool(const std::string& name, const std::string& figure) const {
    return jlong(health(port()), "upstreams." + name + ".pool." + figure);
  }
};

void expect_both_flavours(uint16_t port) {
  const Response o = http(port, "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-chunks", "5"}});
  ASSERT_EQ(o.status, 200) << o.body << o.error;
  EXPECT_EQ(json_get(o.body, "choices.0.message.content"), "tok0 tok1 tok2 tok3 tok4 ");
  EXPECT_FALSE(o.header("x-request-id").empty());

  const StreamedResponse os = http_stream(port, "POST", "/v1/chat/completions", openai_body(true),
                                          {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "120"}});
  ASSERT_EQ(os.status, 200) << os.error;
  EXPECT_EQ(openai_content(os.body()), "tok0 tok1 tok2 tok3 ");
  EXPECT_NE(os.body().find("data: [DONE]"), std::string::npos);
  EXPECT_EQ(os.body().find("\"choices\":[]"), std::string::npos) << "the usage-only chunk is hidden over h2 too";
  ASSERT_GE(os.pieces.size(), 4u);
  EXPECT_GT(os.pieces.back().first - os.pieces.front().first, 300.0) << "events are relayed as they come";

  const Response a = http(port, "POST", "/v1/messages", anthropic_body(false), {{"x-mock-chunks", "2"}});
  ASSERT_EQ(a.status, 200) << a.body << a.error;
  EXPECT_EQ(json_get(a.body, "content.0.text"), "tok0 tok1 ");
  EXPECT_EQ(json_get(a.body, "usage.output_tokens"), "2");

  const StreamedResponse as = http_stream(port, "POST", "/v1/messages", anthropic_body(true), {{"x-mock-chunks", "3"}});
  ASSERT_EQ(as.status, 200) << as.error;
  EXPECT_NE(as.body().find("message_stop"), std::string::npos);
  EXPECT_NE(as.body().find("tok2"), std::string::npos);

  // Errors pass through with their status and body.
  const Response e = http(port, "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-status", "429"}});
  EXPECT_EQ(e.status, 429);
  EXPECT_EQ(e.header("retry-after"), "7");
  EXPECT_FALSE(json_get(e.body, "error.message").empty());
}

TEST_F(H2Upstream, H2cBothFlavoursStreamingAndNot) {
  start({});
  expect_both_flavours(port());
  // Usage is read from h2 responses as from HTTP/1.1 ones.
  EXPECT_NO_THROW(proxy->wait_log({"/v1/chat/completions", "\"stream\":true", "\"tokens_out\":4", "\"status\":200"}));
  EXPECT_NO_THROW(proxy->wait_log({"/v1/messages", "\"stream\":true", "\"tokens_out\":3", "\"status\":200"}));
  EXPECT_GE(mock_stat("h2_streams"), 5);
  EXPECT_GE(mock_stat("h2_connections"), 1);
  // Requests shared connections: each upstream needed one.
  EXPECT_LE(mock_stat("h2_connections"), 2);
  EXPECT_GE(pool("openai", "h2_streams_total"), 3);
}

TEST_F(H2Upstream, TlsAlpnAutoNegotiatesH2) {
  start({.tls = true, .upstream = "protocol = \"auto\"\n"});
  expect_both_flavours(port());
  EXPECT_GE(mock_stat("h2_connections"), 1);
  EXPECT_GE(mock_stat("h2_streams"), 5);
  EXPECT_EQ(pool("openai", "h2_connections") + pool("anthropic", "h2_connections") >= 1, true) << health(port());
}

TEST_F(H2Upstream, AlpnFallsBackToHttp1) {
  start({.tls = true, .mock_args = {"--alpn", "http/1.1"}, .upstream = "protocol = \"auto\"\n"});
  expect_both_flavours(port());
  EXPECT_EQ(mock_stat("h2_connections"), 0);
  EXPECT_EQ(pool("openai", "h2_streams_total"), 0);
  EXPECT_GE(pool("openai", "reused"), 1) << "HTTP/1.1 keep-alive as before";
}

TEST_F(H2Upstream, H2RequiredButRefusedByAlpnIsAClear502) {
  start({.tls = true, .mock_args = {"--alpn", "http/1.1"}, .upstream = "protocol = \"h2\"\n"});
  const Response r = http(port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_NE(json_get(r.body, "error.message").find("does not speak HTTP/2"), std::string::npos) << r.body;
  const Response a = http(port(), "POST", "/v1/messages", anthropic_body(false));
  EXPECT_EQ(a.status, 502);
  EXPECT_EQ(json_get(a.body, "type"), "error") << "Anthropic flavour";
}

TEST_F(H2Upstream, ManyStreamsShareFewConnections) {
  // Two loops and max_connections = 1: each loop needs a session of its own, so the bound is 2.
  start({.upstream = "protocol = \"h2\"\nmax_connections = 1\n", .server = "workers = 2\n"});
  constexpr int kStreams = 40;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      const std::string chunks = std::to_string(2 + i % 5);
      const StreamedResponse s = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                                             {{"x-mock-chunks", chunks}, {"x-mock-delay-ms", "100"}});
      std::string want;
      for (int k = 0; k < 2 + i % 5; ++k) want += "tok" + std::to_string(k) + " ";
      if (s.status == 200 && openai_content(s.body()) == want && s.body().find("[DONE]") != std::string::npos) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kStreams);
  // At most one per loop.
  EXPECT_LE(mock_stat("h2_connections"), 2);
  EXPECT_EQ(pool("openai", "max"), 2) << "max_connections is raised to the number of loops";
  EXPECT_GT(mock_stat("max_streams_per_connection"), 1) << "streams were multiplexed";
  EXPECT_EQ(mock_stat("h2_streams"), kStreams);
  EXPECT_NO_THROW(proxy->wait_log({"/v1/chat/completions", "\"tokens_out\":6"}));
}

TEST_F(H2Upstream, StreamsPerConnectionAreBoundedBySettingAndPeer) {
  // Ours: 3 per connection.
  start({.upstream = "protocol = \"h2\"\nmax_streams_per_connection = 3\nmax_connections = 8\n"});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 9; ++i)
    threads.emplace_back([&] {
      if (http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "200"}})
              .status == 200)
        ++ok;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 9);
  EXPECT_LE(mock_stat("max_streams_per_connection"), 3);
  EXPECT_GE(mock_stat("h2_connections"), 3);
}

TEST_F(H2Upstream, PeerMaxConcurrentStreamsIsRespected) {
  start({.mock_args = {"--max-concurrent-streams", "2"}, .upstream = "protocol = \"h2\"\nmax_connections = 8\n"});
  // A first request lets the proxy learn the peer's SETTINGS.
  ASSERT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&] {
      if (http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "200"}})
              .status == 200)
        ++ok;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 6);
  EXPECT_LE(mock_stat("max_streams_per_connection"), 2);
}

TEST_F(H2Upstream, MaxConnectionsReachedWaitsForRoomThenTimesOut) {
  start({.upstream = "protocol = \"h2\"\nmax_connections = 1\nmax_streams_per_connection = 1\nacquire_timeout = \"500ms\"\n"});
  std::thread slow([&] {
    http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "700"}});
  });
  std::this_thread::sleep_for(300ms);
  const Response busy = http(port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(busy.status, 503) << busy.body;
  EXPECT_EQ(json_get(busy.body, "error.code"), "upstream_pool_exhausted") << busy.body;
  slow.join();
  // Room again: served on the same connection.
  EXPECT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  EXPECT_EQ(mock_stat("h2_connections"), 1);
}

TEST_F(H2Upstream, RstStreamMidStreamIsTheFlavoursErrorEvent) {
  start({.upstream = "protocol = \"h2\"\nmax_connections = 1\n"});
  // A neighbour on the same connection is not disturbed by the reset.
  StreamedResponse neighbour;
  std::thread t([&] {
    neighbour = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "6"}, {"x-mock-delay-ms", "150"}});
  });
  std::this_thread::sleep_for(100ms);
  const StreamedResponse s = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                                         {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "2"}});
  ASSERT_EQ(s.status, 200) << s.error;
  const std::string body = s.body();
  EXPECT_NE(body.find("tok1"), std::string::npos);
  EXPECT_EQ(body.find("tok5"), std::string::npos);
  const std::string event = openai_error_event(body);
  ASSERT_FALSE(event.empty()) << body;
  EXPECT_EQ(json_get(event, "error.type"), "server_error");
  EXPECT_NE(json_get(event, "error.message").find("mid-response"), std::string::npos) << event;
  EXPECT_NE(json_get(event, "error.message").find("INTERNAL_ERROR"), std::string::npos) << event;

  const StreamedResponse a = http_stream(port(), "POST", "/v1/messages", anthropic_body(true),
                                         {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "3"}});
  const auto apos = a.body().rfind("event: error\ndata: ");
  ASSERT_NE(apos, std::string::npos) << a.body();
  EXPECT_EQ(a.body().find("message_stop"), std::string::npos);

  t.join();
  EXPECT_EQ(neighbour.status, 200);
  EXPECT_EQ(openai_content(neighbour.body()), "tok0 tok1 tok2 tok3 tok4 tok5 ");
  EXPECT_NE(neighbour.body().find("[DONE]"), std::string::npos);
  EXPECT_EQ(mock_stat("h2_connections"), 2) << "a stream reset keeps the connection (one per upstream)";
  EXPECT_NO_THROW(proxy->wait_log({"mid-response", "INTERNAL_ERROR"}));
}

TEST_F(H2Upstream, GoawayDuringStreamsFinishesAcceptedAndRetriesRefused) {
  start({.upstream = "protocol = \"h2\"\nmax_connections = 4\n"});
  // A: its GOAWAY names A as the last stream. B and C, opened after A on the same connection and
  // not answered yet (the mock holds them back), are refused by it and must be sent again on a
  // new connection, transparently.
  StreamedResponse a, b;
  Response c;
  std::thread ta([&] {
    a = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                    {{"x-mock-chunks", "6"}, {"x-mock-delay-ms", "200"}, {"x-mock-goaway-after", "2"}});
  });
  std::this_thread::sleep_for(150ms);
  std::thread tb([&] {
    b = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                    {{"x-mock-chunks", "3"}, {"x-mock-stall-ms", "700"}});
  });
  std::thread tc([&] { c = http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-stall-ms", "700"}}); });
  ta.join();
  tb.join();
  tc.join();
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(openai_content(a.body()), "tok0 tok1 tok2 tok3 tok4 tok5 ") << "an accepted stream finishes after GOAWAY";
  EXPECT_NE(a.body().find("[DONE]"), std::string::npos);
  EXPECT_EQ(b.status, 200) << b.error;
  EXPECT_EQ(openai_content(b.body()), "tok0 tok1 tok2 ");
  EXPECT_EQ(c.status, 200) << c.body;
  EXPECT_FALSE(json_get(c.body, "choices.0.message.content").empty()) << c.body;
  EXPECT_GE(mock_stat("h2_connections"), 2) << "the refused streams went to a new connection";
  EXPECT_GE(mock_stat("goaways"), 1);
  EXPECT_GE(pool("openai", "h2_goaways"), 1);
  // And the proxy reconnects for what comes next.
  EXPECT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

TEST_F(H2Upstream, RefusedStreamIsRetriedOnANewConnection) {
  start({.upstream = "protocol = \"h2\"\n"});
  const Response r = http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-goaway-refuse", "1"}});
  // The retry goes to a fresh connection, where the mock refuses again (the header travels with
  // it); after the bounded number of retries the answer is a 502 naming the refusal.
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_NE(json_get(r.body, "error.message").find("refused the stream"), std::string::npos) << r.body;
  EXPECT_GE(mock_stat("goaways"), 2) << "it was sent again on another connection";
  // A normal request still works afterwards.
  EXPECT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

TEST_F(H2Upstream, SlowReaderHoldsOnlyItsOwnStream) {
  start({.upstream = "protocol = \"h2\"\nmax_connections = 1\n"});
  // A client that asks for 8 MB and reads nothing.
  // A small receive buffer, set before connecting (shrunk afterwards, Linux would crawl through
  // zero-window probes when it finally reads).
  Poco::Net::StreamSocket slow(Poco::Net::SocketAddress::IPv4);
  slow.setReceiveBufferSize(16384);
  slow.connect(Poco::Net::SocketAddress("127.0.0.1", port()));
  const std::string body = openai_body(true);
  const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "x-mock-large-bytes: 8000000\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  slow.sendBytes(req.data(), static_cast<int>(req.size()));
  std::this_thread::sleep_for(500ms);
  const long rss_before = proxy->process().rss_kib();
  // Its neighbours on the same (only) connection go on.
  for (int i = 0; i < 5; ++i) {
    const StreamedResponse s = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "3"}}, 10s);
    ASSERT_EQ(s.status, 200) << s.error;
    EXPECT_EQ(openai_content(s.body()), "tok0 tok1 tok2 ");
  }
  EXPECT_EQ(mock_stat("h2_connections"), 1);
  // The slow stream is held back by flow control: the proxy did not buffer the 8 MB.
  EXPECT_LT(proxy->process().rss_kib() - rss_before, 4000);
  // Reading it now gets everything.
  size_t got = 0;
  char buf[65536];
  std::string tail;  // the last bytes read: "[DONE]" may straddle two reads
  slow.setReceiveTimeout(Poco::Timespan(20, 0));
  for (;;) {
    const int n = slow.receiveBytes(buf, sizeof buf);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
    tail.append(buf, static_cast<size_t>(n));
    if (tail.find("[DONE]") != std::string::npos) break;
    if (tail.size() > 16) tail.erase(0, tail.size() - 16);
  }
  EXPECT_GT(got, 8000000u);
}

TEST_F(H2Upstream, MetricsShowStreamsPerConnection) {
  start({.upstream = "protocol = \"h2\"\nidle_timeout = \"300ms\"\n"});
  std::vector<std::thread> streams;
  for (int i = 0; i < 2; ++i)
    streams.emplace_back([&] {
      http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "400"}});
    });
  std::this_thread::sleep_for(400ms);
  const Response m = http(port(), "GET", "/metrics");
  EXPECT_EQ(metric(m.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_connections\""}), 1) << m.body;
  EXPECT_EQ(metric(m.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_streams\""}), 2);
  EXPECT_EQ(metric(m.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_max_streams_per_connection\""}), 2);
  // Per connection: one series for the one connection, with its two streams.
  EXPECT_EQ(metric(m.body, "glmp_upstream_h2_connection_streams", {"upstream=\"openai\""}), 2) << m.body;
  const std::string h = health(port());
  EXPECT_EQ(jlong(h, "upstreams.openai.pool.h2_per_connection.0.streams"), 2) << h;
  EXPECT_EQ(json_get(h, "upstreams.openai.pool.h2_per_connection.1"), "null") << "one connection: " << h;
  for (auto& t : streams) t.join();
  const Response after = settled_metrics(port());
  EXPECT_EQ(metric(after.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_streams\""}), 0);
  EXPECT_GE(metric(after.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_streams_total\""}), 2);
  // The connection closes once idle past idle_timeout: its series goes with it.
  std::this_thread::sleep_for(1600ms);
  const Response closed = http(port(), "GET", "/metrics");
  EXPECT_EQ(metric(closed.body, "glmp_upstream_pool", {"upstream=\"openai\"", "figure=\"h2_connections\""}), 0) << closed.body;
  EXPECT_EQ(closed.body.find("glmp_upstream_h2_connection_streams{"), std::string::npos) << closed.body;
}

TEST_F(H2Upstream, CacheAndCoalescingWorkOverH2) {
  start({.extra_toml = "[[plugins]]\nname = \"cache\"\n[plugins.settings]\nscope = \"global\"\n"
                       "[[plugins]]\nname = \"batching\"\n[plugins.settings]\nmode = \"all\"\nscope = \"global\"\n"});
  // Three identical streams at once: one upstream stream, two followers of its recording.
  const std::string body = openai_body(true, ",\"temperature\":0");
  std::vector<StreamedResponse> got(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      got[static_cast<size_t>(i)] =
          http_stream(port(), "POST", "/v1/chat/completions", body, {{"x-mock-chunks", "5"}, {"x-mock-delay-ms", "150"}});
    });
  for (auto& t : threads) t.join();
  int coalesced = 0;
  for (const auto& g : got) {
    ASSERT_EQ(g.status, 200) << g.error;
    EXPECT_EQ(openai_content(g.body()), "tok0 tok1 tok2 tok3 tok4 ");
    if (cache_status(g) == "COALESCED") ++coalesced;
  }
  EXPECT_EQ(coalesced, 2);
  EXPECT_EQ(mock_stat("h2_streams"), 1) << "one upstream stream for the three";
  // The recorded answer is now in the cache: the same request again never reaches the upstream.
  const StreamedResponse hit = http_stream(port(), "POST", "/v1/chat/completions", body, {{"x-mock-chunks", "5"}});
  ASSERT_EQ(hit.status, 200) << hit.error;
  EXPECT_EQ(cache_status(hit), "HIT");
  EXPECT_EQ(openai_content(hit.body()), "tok0 tok1 tok2 tok3 tok4 ");
  EXPECT_EQ(mock_stat("h2_streams"), 1);
  // Usage of the one upstream response, recorded over h2, is what the followers and the hit report.
  EXPECT_NO_THROW(proxy->wait_log({"\"origin\":\"coalesced\"", "\"tokens_out\":5"}));
  EXPECT_NO_THROW(proxy->wait_log({"\"origin\":\"cache\"", "\"tokens_out\":5"}));
}

TEST_F(H2Upstream, OversizedResponseHeadIsA502AndOnlyThatStreamIsReset) {
  start({.upstream = "protocol = \"h2\"\nmax_connections = 1\n"});
  // A neighbour streams on the same (only) connection meanwhile.
  StreamedResponse neighbour;
  std::thread t([&] {
    neighbour = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "150"}});
  });
  std::this_thread::sleep_for(100ms);
  const Response big = http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-header-bytes", "300000"}});
  EXPECT_EQ(big.status, 502) << big.body;
  EXPECT_NE(json_get(big.body, "error.message").find("headers larger than 262144 bytes"), std::string::npos) << big.body;
  // (The mock repeats one field: HPACK indexes it, so the 300 000 bytes took a few KiB on the wire,
  // the shape of a decompression bomb.) Under the bound, the fields are relayed.
  const Response fine = http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-header-bytes", "40000"}});
  EXPECT_EQ(fine.status, 200) << fine.body;
  EXPECT_EQ(fine.header("x-mock-filler").substr(0, 3000), std::string(3000, 'a'));
  t.join();
  EXPECT_EQ(openai_content(neighbour.body()), "tok0 tok1 tok2 tok3 ");
  EXPECT_EQ(mock_stat("h2_connections"), 1) << "the reset did not cost the connection";
}

TEST_F(H2Upstream, OversizedResponseHeadOverHttp1IsThe502Too) {
  start({.upstream = "protocol = \"http1\"\n"});
  const Response big = http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-header-bytes", "300000"}});
  EXPECT_EQ(big.status, 502) << big.body;
  EXPECT_NE(json_get(big.body, "error.message").find("headers larger than 262144 bytes"), std::string::npos) << big.body;
  EXPECT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false), {{"x-mock-header-bytes", "40000"}}).status, 200);
}

TEST_F(H2Upstream, IdleConnectionWithPingsIsKept) {
  start({.upstream = "protocol = \"h2\"\nping_interval = \"200ms\"\nidle_timeout = \"30s\"\n"});
  ASSERT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  std::this_thread::sleep_for(1500ms);
  ASSERT_EQ(http(port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  EXPECT_EQ(mock_stat("h2_connections"), 1) << "the pinged connection stays in use";
}

TEST_F(H2Upstream, UpstreamGoneMidStreamEndsWithErrorEventAndReconnects) {
  start({.upstream = "protocol = \"h2\"\n"});
  std::thread killer([&] {
    std::this_thread::sleep_for(400ms);
    mock->process().signal(SIGTERM);  // GOAWAY, then every connection shut down
  });
  const StreamedResponse s = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                                         {{"x-mock-chunks", "20"}, {"x-mock-delay-ms", "100"}});
  killer.join();
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_NE(s.body().find("data: {\"error\":"), std::string::npos) << s.body();
  EXPECT_EQ(s.body().find("[DONE]"), std::string::npos);
}

}  // namespace
