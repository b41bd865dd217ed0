// Streaming behaviour through the real binary: incremental delivery, failures mid-stream,
// clients that leave, and constant memory for very large responses.
#include <gtest/gtest.h>

#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/SocketAddress.h>

#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

class Streaming : public ProxyTest {};

TEST_F(Streaming, OpenAIEventsArriveAsSentAndUsageIsCounted) {
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/chat/completions", openai_body(true),
                                   {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "150"}});
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_EQ(s.headers["content-type"].rfind("text/event-stream", 0), 0u);
  const std::string body = s.body();
  EXPECT_NE(body.find("tok3"), std::string::npos);
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos);
  // The client did not ask for usage: the proxy asked upstream for it but hid the usage-only chunk.
  EXPECT_EQ(body.find("\"choices\":[]"), std::string::npos);
  // Delivery is incremental: the first piece arrives well before the last.
  ASSERT_GE(s.pieces.size(), 4u);
  EXPECT_GT(s.pieces.back().first - s.pieces.front().first, 400.0);
  // ... and the streamed tokens were counted.
  EXPECT_NO_THROW(proxy->wait_log({"\"stream\":true", "\"tokens_out\":4", "\"status\":200"}));
}

TEST_F(Streaming, OpenAIClientThatAskedForUsageGetsIt) {
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/chat/completions",
                                   openai_body(true, ",\"stream_options\":{\"include_usage\":true}"));
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_NE(s.body().find("\"choices\":[]"), std::string::npos);
  EXPECT_NE(s.body().find("\"completion_tokens\":3"), std::string::npos);
}

TEST_F(Streaming, UpstreamResetMidStreamEndsWithOpenAIErrorEvent) {
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/chat/completions", openai_body(true),
                                   {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "2"}});
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_TRUE(s.error.empty()) << "the proxy must end the stream cleanly with an error event: " << s.error;
  const std::string body = s.body();
  EXPECT_NE(body.find("tok1"), std::string::npos);
  EXPECT_EQ(body.find("tok5"), std::string::npos);
  const std::string event = openai_error_event(body);
  ASSERT_FALSE(event.empty()) << body;
  EXPECT_EQ(json_get(event, "error.type"), "server_error");
  EXPECT_NE(json_get(event, "error.message").find("mid-response"), std::string::npos);
  // The proxy is still healthy afterwards.
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

TEST_F(Streaming, UpstreamResetMidStreamEndsWithAnthropicErrorEvent) {
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/messages", anthropic_body(true),
                                   {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "3"}});
  ASSERT_EQ(s.status, 200) << s.error;
  const std::string body = s.body();
  const auto pos = body.rfind("event: error\ndata: ");
  ASSERT_NE(pos, std::string::npos) << body;
  const size_t data = pos + std::string("event: error\ndata: ").size();
  const std::string event = body.substr(data, body.find("\n\n", data) - data);
  EXPECT_EQ(json_get(event, "type"), "error");
  EXPECT_EQ(json_get(event, "error.type"), "api_error");
  EXPECT_EQ(body.find("message_stop"), std::string::npos);
  EXPECT_NO_THROW(proxy->wait_log({"/v1/messages", "mid-response"}));
}

TEST_F(Streaming, NonStreamingResetAbortsClientConnection) {
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false),
                    {{"x-mock-reset-after", "1"}, {"x-mock-large-bytes", "200000"}});
  // Either the headers never came (502) or the body was cut: never a silently short 200.
  if (r.status == 200) EXPECT_FALSE(r.error.empty()) << "a truncated body must not look complete";
  else EXPECT_EQ(r.status, 502) << r.body;
}

TEST_F(Streaming, ClientDisconnectMidStreamLeavesProxyHealthy) {
  for (int round = 0; round < 3; ++round) {
    Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", proxy->port()));
    const std::string body = openai_body(true);
    const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            "x-mock-chunks: 50\r\nx-mock-delay-ms: 50\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body;
    sock.sendBytes(req.data(), static_cast<int>(req.size()));
    char buf[4096];
    int got = sock.receiveBytes(buf, sizeof buf);  // headers and the first events
    ASSERT_GT(got, 0);
    sock.close();  // leave mid-stream
  }
  // The proxy notices at its next write, aborts the upstream connection, and logs it.
  EXPECT_NO_THROW(proxy->wait_log({"\"client_gone\":true"}));
  // The mock sees its streams end (the proxy closed those upstream sockets) ...
  for (int i = 0; i < 300 && mock->stats()["active"] > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(mock->stats()["active"], 0);
  // ... and the pool is not poisoned: many requests in a row succeed.
  for (int i = 0; i < 10; ++i) {
    Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
    ASSERT_EQ(r.status, 200) << r.body << r.error;
    EXPECT_EQ(json_get(r.body, "choices.0.message.content"), "tok0 tok1 tok2 ");
  }
  EXPECT_EQ(json_get(health(proxy->port()), "status"), "ok");
}

TEST_F(Streaming, HundredMegabyteStreamKeepsMemoryFlat) {
  // Warm up once so lazily-initialised state is not counted as growth.
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  const long rss_before = proxy->process().rss_kib();
  long rss_peak = rss_before;
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      rss_peak = std::max(rss_peak, proxy->process().rss_kib());
      std::this_thread::sleep_for(20ms);
    }
  });
  // Read the stream without keeping it, counting bytes.
  Poco::Net::HTTPClientSession session("127.0.0.1", proxy->port());
  session.setTimeout(Poco::Timespan(60, 0));
  Poco::Net::HTTPRequest req("POST", "/v1/chat/completions", Poco::Net::HTTPMessage::HTTP_1_1);
  const std::string body = openai_body(true);
  req.setContentLength64(static_cast<Poco::Int64>(body.size()));
  req.set("x-mock-large-bytes", std::to_string(100 * 1000 * 1000));
  session.sendRequest(req) << body;
  Poco::Net::HTTPResponse resp;
  std::istream& in = session.receiveResponse(resp);
  ASSERT_EQ(resp.getStatus(), 200);
  uint64_t total = 0;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) total += static_cast<uint64_t>(in.gcount());
  done = true;
  sampler.join();
  EXPECT_GE(total, 100u * 1000 * 1000);
  const long growth_kib = rss_peak - rss_before;
  RecordProperty("rss_growth_kib", std::to_string(growth_kib));
  EXPECT_LT(growth_kib, 10 * 1024) << "RSS grew by " << growth_kib << " KiB while relaying " << total << " bytes";
}

}  // namespace
