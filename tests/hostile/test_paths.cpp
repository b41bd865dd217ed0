// Paths: "." / ".." segments (raw or percent-encoded), encoded slashes and backslashes, raw
// backslashes, %00, and double encodings of those are refused with 400 "invalid request path" in
// the caller's flavour and never forwarded. Ordinary paths (dots inside a segment, other escapes,
// anything in the query) still are.
#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

class Paths : public Hostile {
protected:
  void SetUp() override { start(); }

  // Sends `target` (with x-mock-echo: were it forwarded, the mock would answer it) and returns the
  // first response.
  Exchange get(const std::string& target, const std::string& method = "GET") {
    RawConn c(port());
    c.send(request(method, target, {"x-mock-echo: 1", "Content-Type: application/json"}, method == "POST" ? "{}" : ""));
    return c.read_responses(1, 3s);
  }
};

TEST_F(Paths, TraversalAndEncodedSeparatorsAreRefused) {
  const long before = upstream_requests();
  const std::vector<std::string> openai{
      "/v1/../admin/keys",
      "/v1/./models",
      "/v1/models/..",
      "/v1/models/.",
      "/v1/%2e%2e/admin",
      "/v1/%2E%2E/admin",
      "/v1/.%2e/admin",
      "/v1/%2e/models",
      "/v1/..%2f..%2fadmin/keys",
      "/v1/..%2F..%2Fadmin/keys",
      "/v1/%2e%2e%2fadmin",
      "/v1/models%2fx",
      "/v1/models%2Fx",
      "/v1/models%5cx",
      "/v1/models%5Cx",
      "/v1/\\..\\admin",
      "/v1/models\\x",
      "/v1/models%00",
      "/v1/models%00.json",
      "/v1/%252e%252e/admin",
      "/v1/%252E%252E/admin",
      "/v1/..%252f..%252fadmin",
      "/v1/models%252Fx",
      "/v1/models%255cx",
      "/v1/models%255Cx",
      "/health/..",
      "/admin/../health",
  };
  const std::vector<std::string> anthropic{
      "/v1/messages/..%2f..%2fadmin/keys",
      "/v1/messages/%2e%2e",
      "/v1/messages/..",
      "/v1/messages/%5c..%5cx",
      "/v1/messages/%252e%252e/count_tokens",
  };
  for (const auto& [list, flavour] : {std::pair{&openai, Flavour::OpenAI}, std::pair{&anthropic, Flavour::Anthropic}}) {
    for (const auto& target : *list) {
      for (const std::string method : {"GET", "POST"}) {
        const std::string what = method + " " + target;
        const Exchange x = get(target, method);
        ASSERT_EQ(x.finals().size(), 1u) << what << " " << x.describe();
        const RawResponse& r = *x.finals()[0];
        expect_proxy_error(r, 400, flavour, what);
        if (r.status == 400) {
          EXPECT_EQ(jget(r.body, "error.message"), "invalid request path") << what << " " << r.body;
        }
      }
    }
  }
  EXPECT_EQ(upstream_requests(), before) << "an unsafe path reached the upstream";
}

TEST_F(Paths, OrdinaryPathsAreStillForwarded) {
  const long before = upstream_requests();
  const std::vector<std::pair<std::string, std::string>> cases{
      // target, the path the upstream sees
      {"/v1/models.json", "/api/coding/paas/v4/models.json"},
      {"/v1/a..b/c", "/api/coding/paas/v4/a..b/c"},
      {"/v1/.well-known", "/api/coding/paas/v4/.well-known"},
      {"/v1/a%20b", "/api/coding/paas/v4/a%20b"},
      {"/v1/models?next=..%2f..%2fadmin", "/api/coding/paas/v4/models"},
  };
  for (const auto& [target, upstream_path] : cases) {
    const Exchange x = get(target);
    ASSERT_EQ(x.finals().size(), 1u) << target << " " << x.describe();
    EXPECT_EQ(x.finals()[0]->status, 200) << target << " " << x.describe();
    EXPECT_EQ(jget(x.finals()[0]->body, "path"), upstream_path) << target << " " << x.finals()[0]->body;
  }
  EXPECT_EQ(upstream_requests(), before + static_cast<long>(cases.size()));
}

}  // namespace
