// Basic proxying through the real binary: both flavours, streaming and not, against the mock.
#include <gtest/gtest.h>

#include "harness.hpp"

using namespace glmp::test;

namespace {

class BasicProxy : public ProxyTest {};

TEST_F(BasicProxy, HealthReportsPools) {
  Response r = http(proxy->port(), "GET", "/health", "", {{"Authorization", std::string("Bearer ") + kTestAdminToken}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json_get(r.body, "status"), "ok");
  EXPECT_NE(json_get(r.body, "timestamp"), "<missing>");
  EXPECT_EQ(json_get(r.body, "upstreams.openai.pool.max"), "32");
  EXPECT_EQ(json_get(r.body, "upstreams.anthropic.configured"), "true");
  EXPECT_FALSE(r.header("x-request-id").empty());
}

// Anyone may ask whether the proxy is up; only the operator sees upstream URLs, pools and the store.
TEST_F(BasicProxy, PublicHealthShowsNoInternals) {
  for (const auto& headers : std::vector<std::map<std::string, std::string>>{{}, {{"X-Admin-Token", "wrong"}}}) {
    Response r = http(proxy->port(), "GET", "/health", "", headers);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json_get(r.body, "status"), "ok");
    EXPECT_NE(json_get(r.body, "version"), "<missing>");
    EXPECT_EQ(json_get(r.body, "upstreams"), "<missing>") << r.body;
    EXPECT_EQ(json_get(r.body, "store"), "<missing>") << r.body;
    EXPECT_EQ(r.body.find("127.0.0.1"), std::string::npos) << r.body;
    EXPECT_EQ(r.body.find("state.db"), std::string::npos) << r.body;
  }
}

TEST_F(BasicProxy, OpenAINonStreamingMatchesDirect) {
  Response via = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(via.status, 200) << via.body << via.error;
  EXPECT_EQ(json_get(via.body, "model"), "glm-4.7");  // [proxy] model forced
  EXPECT_EQ(json_get(via.body, "choices.0.message.content"), "tok0 tok1 tok2 ");
  EXPECT_NE(json_get(via.body, "usage.prompt_tokens"), "<missing>");
  EXPECT_EQ(json_get(via.body, "usage.completion_tokens"), "3");
}

TEST_F(BasicProxy, AnthropicStreamingPassesEventsAndCountsUsage) {
  StreamedResponse s = http_stream(proxy->port(), "POST", "/v1/messages", anthropic_body(true),
                                   {{"x-mock-chunks", "5"}, {"x-mock-delay-ms", "100"}});
  ASSERT_EQ(s.status, 200) << s.error;
  const std::string body = s.body();
  EXPECT_NE(body.find("event: message_start"), std::string::npos);
  EXPECT_NE(body.find("event: message_stop"), std::string::npos);
  // Events arrive spread over time, not all at the end.
  ASSERT_GE(s.pieces.size(), 3u);
  EXPECT_GT(s.pieces.back().first - s.pieces.front().first, 300.0);
  EXPECT_NO_THROW(proxy->wait_log({"\"tokens_out\":5", "\"status\":200", "anthropic"}));
}

}  // namespace
