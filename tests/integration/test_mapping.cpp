// What crosses the proxy: paths, query strings, headers, credentials, request ids, the model.
#include <gtest/gtest.h>

#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/SocketAddress.h>

#include "harness.hpp"

using namespace glmp::test;

namespace {

class Mapping : public ProxyTest {
protected:
  Response echo(const std::string& method, const std::string& uri, const std::string& body,
                std::map<std::string, std::string> headers = {}) {
    headers["x-mock-echo"] = "1";
    return http(proxy->port(), method, uri, body, headers);
  }
};

TEST_F(Mapping, PathAndQueryKeepBasePathAndDropApiKey) {
  Response r = echo("GET", "/v1/models/glm-4.7?a=1&api_key=pk_secret&b=%20x&a=2", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json_get(r.body, "path"), "/api/coding/paas/v4/models/glm-4.7");
  EXPECT_EQ(json_get(r.body, "query"), "a=1&b=%20x&a=2");
  Response m = echo("POST", "/v1/messages/count_tokens?beta=true", anthropic_body(false));
  EXPECT_EQ(json_get(m.body, "path"), "/api/anthropic/v1/messages/count_tokens");
  EXPECT_EQ(json_get(m.body, "query"), "beta=true");
}

TEST_F(Mapping, CredentialSwapAndHeaderForwarding) {
  Response r = echo("POST", "/v1/chat/completions", openai_body(false),
                    {{"Authorization", "Bearer pk_client_secret"},
                     {"x-api-key", "pk_client_secret"},
                     {"Proxy-Authorization", "Basic abc"},
                     {"OpenAI-Beta", "assistants=v2"},
                     {"X-Custom", "kept"},
                     {"Keep-Alive", "timeout=5"},
                     {"Accept-Encoding", "gzip, br"},
                     {"User-Agent", "it-test/1.0"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json_get(r.body, "headers.authorization"), "Bearer test-upstream-key");
  EXPECT_EQ(json_get(r.body, "headers.x-api-key"), "<missing>");
  EXPECT_EQ(json_get(r.body, "headers.proxy-authorization"), "<missing>");
  EXPECT_EQ(json_get(r.body, "headers.openai-beta"), "assistants=v2");
  EXPECT_EQ(json_get(r.body, "headers.x-custom"), "kept");
  EXPECT_EQ(json_get(r.body, "headers.user-agent"), "it-test/1.0");
  EXPECT_EQ(json_get(r.body, "headers.keep-alive"), "<missing>");
  EXPECT_EQ(json_get(r.body, "headers.accept-encoding"), "identity");
  EXPECT_EQ(json_get(r.body, "headers.host"), "127.0.0.1:" + std::to_string(mock->port()));
  EXPECT_EQ(r.body.find("pk_client_secret"), std::string::npos);
  // Anthropic: the upstream key goes in x-api-key, anthropic-version passes through.
  Response a = echo("POST", "/v1/messages", anthropic_body(false),
                    {{"x-api-key", "pk_client_secret"}, {"anthropic-version", "2023-06-01"}});
  EXPECT_EQ(json_get(a.body, "headers.x-api-key"), "test-upstream-key");
  EXPECT_EQ(json_get(a.body, "headers.authorization"), "<missing>");
  EXPECT_EQ(json_get(a.body, "headers.anthropic-version"), "2023-06-01");
  EXPECT_EQ(a.body.find("pk_client_secret"), std::string::npos);
}

TEST_F(Mapping, HeadersNamedInConnectionAreNotForwarded) {
  // Raw request: Poco's client would rewrite the Connection header.
  Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", proxy->port()));
  const std::string body = openai_body(false);
  const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Drop-Me\r\n"
                          "X-Drop-Me: hop\r\nX-Keep-Me: yes\r\nx-mock-echo: 1\r\nContent-Type: application/json\r\n"
                          "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  sock.sendBytes(req.data(), static_cast<int>(req.size()));
  std::string got;
  char buf[8192];
  while (got.find("\"body\"") == std::string::npos) {
    int n = sock.receiveBytes(buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got.find("x-drop-me"), std::string::npos) << got;
  EXPECT_NE(got.find("x-keep-me"), std::string::npos) << got;
}

TEST_F(Mapping, ResponseHeadersPassBackWithoutHopByHop) {
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false),
                    {{"x-mock-status", "429"}});
  EXPECT_EQ(r.header("x-mock-error"), "1");
  EXPECT_EQ(r.header("retry-after"), "7");
  EXPECT_TRUE(r.header("keep-alive").empty());
  // One Date header, not Poco's plus the upstream's.
  Response ok = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(ok.header("date").find(", ", 5), std::string::npos) << ok.header("date");
}

TEST_F(Mapping, RequestIdIsKeptWhenSaneAndGeneratedOtherwise) {
  Response kept = echo("POST", "/v1/chat/completions", openai_body(false), {{"X-Request-ID", "client-id_1.2:3"}});
  EXPECT_EQ(kept.header("x-request-id"), "client-id_1.2:3");
  EXPECT_EQ(json_get(kept.body, "headers.x-request-id"), "client-id_1.2:3");
  Response bad = echo("POST", "/v1/chat/completions", openai_body(false), {{"X-Request-ID", "bad id\"<script>"}});
  const std::string gen = bad.header("x-request-id");
  EXPECT_EQ(gen.size(), 32u);
  EXPECT_EQ(json_get(bad.body, "headers.x-request-id"), gen);
  // Errors produced by the proxy itself carry one too.
  EXPECT_EQ(http(proxy->port(), "GET", "/nope").header("x-request-id").size(), 32u);
  EXPECT_NO_THROW(proxy->wait_log({"\"id\":\"client-id_1.2:3\""}));
}

TEST_F(Mapping, ModelIsForcedOnlyAtTopLevel) {
  const std::string body =
      R"({"messages":[{"role":"user","content":"the \"model\" is x","model":"nested"}],"model":"gpt-4o","metadata":{"model":"m"}})";
  Response r = echo("POST", "/v1/chat/completions", body);
  const std::string sent = json_get(r.body, "body");
  EXPECT_EQ(json_get(sent, "model"), "glm-4.7");
  EXPECT_EQ(json_get(sent, "messages.0.model"), "nested");
  EXPECT_EQ(json_get(sent, "metadata.model"), "m");
  EXPECT_EQ(json_get(sent, "messages.0.content"), "the \"model\" is x");
  // No model in the body: none is added by [proxy] model.
  Response none = echo("POST", "/v1/embeddings", R"({"input":"hi"})");
  EXPECT_EQ(json_get(json_get(none.body, "body"), "model"), "<missing>");
}

TEST_F(Mapping, StreamUsageIsRequestedFromOpenAIUpstream) {
  Response r = echo("POST", "/v1/chat/completions", openai_body(true));
  const std::string sent = json_get(r.body, "body");
  EXPECT_EQ(json_get(sent, "stream_options.include_usage"), "true");
  Response keep = echo("POST", "/v1/chat/completions", openai_body(true, R"(,"stream_options":{"include_usage":false,"x":1})"));
  const std::string sent2 = json_get(keep.body, "body");
  EXPECT_EQ(json_get(sent2, "stream_options.include_usage"), "true");
  EXPECT_EQ(json_get(sent2, "stream_options.x"), "1");
}

TEST_F(Mapping, KeepAliveConnectionsAreReusedUpstream) {
  const long before = mock->stats()["connections"];
  for (int i = 0; i < 20; ++i) ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  const long after = mock->stats()["connections"];
  // One connection for the second stats call, at most one per event loop: each loop keeps its own
  // idle connections, and each new client connection lands on one of them.
  const long loops = std::stol(json_get(health(proxy->port()), "loops"));
  EXPECT_LE(after - before, 1 + loops) << "20 sequential requests should share the pooled connections";
  EXPECT_GE(std::stol(json_get(health(proxy->port()), "upstreams.openai.pool.reused")), 18);
}

}  // namespace
