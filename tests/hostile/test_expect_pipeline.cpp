// Expect: 100-continue is answered only once the header-phase checks (auth) passed; a caller
// without a valid key gets the 401 directly (no 100 Continue) and the connection is closed; any
// other expectation is 417. Pipelined requests in one write are all answered, in order, on the
// same connection.
#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

class Expect : public Hostile {};

TEST_F(Expect, ContinueWithAValidKeyComesBeforeTheBodyIsSent) {
  start_keyed();
  const std::string body = openai_json();
  RawConn c(port());
  c.send(request("POST", "/v1/chat/completions",
                 {"Content-Type: application/json", "Authorization: Bearer " + key, "Expect: 100-continue",
                  "X-Request-ID: expect-ok", "Content-Length: " + std::to_string(body.size())}));
  const Exchange first = c.read_until([](const Exchange& x) { return !x.responses.empty() && x.responses[0].complete; }, 3s);
  ASSERT_EQ(first.responses.size(), 1u) << first.describe();
  EXPECT_EQ(first.responses[0].status, 100) << first.describe();
  EXPECT_EQ(first.bytes.rfind("HTTP/1.1 100 Continue\r\n", 0), 0u) << first.describe();
  ASSERT_TRUE(c.send(body));
  const Exchange x = c.read_responses(1, 5s);
  ASSERT_EQ(x.finals().size(), 1u) << x.describe();
  EXPECT_EQ(x.interims(), 1u) << x.describe();
  const RawResponse& r = *x.finals()[0];
  EXPECT_EQ(r.status, 200) << x.describe();
  EXPECT_EQ(r.header("X-Request-ID"), "expect-ok");
  EXPECT_NE(jget(r.body, "usage.total_tokens"), "<missing>") << r.body;
  EXPECT_FALSE(x.closed);
}

TEST_F(Expect, NoOrInvalidKeyGets401WithoutContinueAndCloses) {
  start_keyed();
  const long before = upstream_requests();
  const auto head = [](const std::string& target, const std::string& credential) {
    std::vector<std::string> lines{"Content-Type: application/json", "Expect: 100-continue", "Content-Length: 100"};
    if (!credential.empty()) lines.push_back(credential);
    return request("POST", target, lines);  // the body is never sent: the answer must not wait for it
  };
  expect_refusals(port(), {
      {"no key", head("/v1/chat/completions", ""), {401}, Flavour::OpenAI, false, kPrompt},
      {"invalid Bearer key", head("/v1/chat/completions", "Authorization: Bearer pk_invalidInvalidInvalidInvalidInvalid12"),
       {401}, Flavour::OpenAI, false, kPrompt},
      {"invalid x-api-key on /v1/messages", head("/v1/messages", "x-api-key: pk_invalidInvalidInvalidInvalidInvalid12"),
       {401}, Flavour::Anthropic, false, kPrompt},
      {"no key on /v1/messages", head("/v1/messages", ""), {401}, Flavour::Anthropic, false, kPrompt},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Expect, OtherExpectationIs417) {
  start();
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"Expect: something-else",
       request("POST", "/v1/chat/completions", {"Content-Type: application/json", "Expect: something-else"}, "{}"), {417}},
      {"Expect: something-else on /v1/messages",
       request("POST", "/v1/messages", {"Content-Type: application/json", "Expect: something-else"}, "{}"), {417},
       Flavour::Anthropic},
      {"Expect: 200-ok on a GET", request("GET", "/health", {"Expect: 200-ok"}), {417}},
  });
  EXPECT_EQ(upstream_requests(), before);
}

class Pipelining : public Hostile {
protected:
  void SetUp() override { start(); }
};

// X-Request-ID of each final response, in order.
std::vector<std::string> ids(const Exchange& x) {
  std::vector<std::string> out;
  for (const auto* r : x.finals()) out.push_back(r->header("X-Request-ID"));
  return out;
}

TEST_F(Pipelining, TwoRequestsInOneWriteAreAnsweredInOrder) {
  const std::string body = openai_json();
  const size_t half = body.size() / 2;
  RawConn c(port());
  // A chunked proxied POST, then a GET.
  c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\nX-Request-ID: pipe-1\r\n\r\n" +
         hex(half) + "\r\n" + body.substr(0, half) + "\r\n" + hex(body.size() - half) + "\r\n" +
         body.substr(half) + "\r\n0\r\n\r\n" + request("GET", "/health", {"X-Request-ID: pipe-2"}));
  const Exchange x = c.read_responses(2, 5s);
  ASSERT_EQ(x.finals().size(), 2u) << x.describe();
  EXPECT_EQ(ids(x), (std::vector<std::string>{"pipe-1", "pipe-2"})) << x.describe();
  EXPECT_EQ(x.finals()[0]->status, 200) << x.describe();
  EXPECT_NE(jget(x.finals()[0]->body, "usage.total_tokens"), "<missing>") << x.finals()[0]->body;
  EXPECT_EQ(x.finals()[1]->status, 200) << x.describe();
  EXPECT_EQ(jget(x.finals()[1]->body, "status"), "ok") << x.finals()[1]->body;
  // The same connection goes on serving.
  ASSERT_FALSE(x.closed) << x.describe();
  c.send(request("GET", "/health", {"X-Request-ID: pipe-3"}));
  const Exchange y = c.read_responses(3, 5s);
  ASSERT_EQ(y.finals().size(), 3u) << y.describe();
  EXPECT_EQ(y.finals()[2]->header("X-Request-ID"), "pipe-3");
}

TEST_F(Pipelining, ThreeRequestsInOneWriteAreAnsweredInOrderEvenWhenTheFirstIsSlow) {
  RawConn c(port());
  c.send(request("POST", "/v1/chat/completions", {"Content-Type: application/json", "X-Request-ID: pipe-a", "x-mock-stall-ms: 400"},
                 openai_json()) +
         request("GET", "/health", {"X-Request-ID: pipe-b"}) +
         request("POST", "/v1/messages", {"Content-Type: application/json", "X-Request-ID: pipe-c"}, anthropic_json()));
  const Exchange x = c.read_responses(3, 8s);
  ASSERT_EQ(x.finals().size(), 3u) << x.describe();
  EXPECT_EQ(ids(x), (std::vector<std::string>{"pipe-a", "pipe-b", "pipe-c"})) << x.describe();
  for (const auto* r : x.finals()) EXPECT_EQ(r->status, 200) << x.describe();
  EXPECT_EQ(jget(x.finals()[2]->body, "type"), "message") << x.finals()[2]->body;
  EXPECT_FALSE(x.closed);
}

}  // namespace
