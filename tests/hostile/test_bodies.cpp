// Bodies bound for a JSON API: a body whose first non-blank byte is '{' or '[' must be well-formed
// JSON (nesting within the core's limit, valid UTF-8) whatever the Content-Type says, and a
// Content-Type naming JSON requires a JSON body; otherwise 400 in the caller's flavour, nothing
// forwarded. So the forced [proxy] model can't be bypassed by mislabelling a body.
#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

class Bodies : public Hostile {
protected:
  void SetUp() override { start(); }

  // POSTs `body` with the given Content-Type line ("" = none) and x-mock-echo; the first response.
  Exchange post(const std::string& target, const std::string& content_type, const std::string& body) {
    std::vector<std::string> lines{"x-mock-echo: 1"};
    if (!content_type.empty()) lines.push_back("Content-Type: " + content_type);
    RawConn c(port());
    c.send(request("POST", target, lines, body));
    return c.read_responses(1, 5s);
  }
};

struct BodyCase {
  std::string what, content_type, body;
};

TEST_F(Bodies, MalformedJsonIsRefusedWhateverTheContentType) {
  const long before = upstream_requests();
  const std::string deep = std::string(1000, '[') + std::string(1000, ']');
  const std::vector<BodyCase> cases{
      {"truncated object, text/plain", "text/plain", R"({"model":"gpt-4o","messages":[)"},
      {"trailing comma, no Content-Type", "", R"({"model":"gpt-4o",})"},
      {"truncated object, Application/Json", "Application/Json", R"({"model":)"},
      {"truncated object, APPLICATION/JSON; charset=utf-8", "APPLICATION/JSON; charset=utf-8", R"({"model":)"},
      {"blank lines then a broken array, text/plain", "text/plain", "  \r\n\t [1,2"},
      {"garbage after the object, text/plain", "text/plain", R"({"model":"gpt-4o"} {"model":"x"})"},
      {"duplicate-looking bypass, octet-stream", "application/octet-stream", R"({"model":"gpt-4o","model":})"},
      {"nesting 1000 deep, text/plain", "text/plain", deep},
      {"nesting 1000 deep, application/json", "application/json", deep},
      {"invalid UTF-8 in a string, text/plain", "text/plain",
       "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"},
      {"invalid UTF-8 in a string, application/json", "application/json",
       "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}"},
      {"JSON Content-Type, body not JSON", "application/json", "hello, world"},
      {"JSON Content-Type in another case, body not JSON", "Application/JSON; charset=utf-8", "model=gpt-4o"},
  };
  for (const auto& c : cases) {
    for (const auto& [target, flavour] :
         {std::pair<std::string, Flavour>{"/v1/chat/completions", Flavour::OpenAI}, {"/v1/messages", Flavour::Anthropic}}) {
      const std::string what = c.what + " on " + target;
      const Exchange x = post(target, c.content_type, c.body);
      ASSERT_EQ(x.finals().size(), 1u) << what << " " << x.describe();
      expect_proxy_error(*x.finals()[0], 400, flavour, what);
    }
  }
  EXPECT_EQ(upstream_requests(), before) << "a malformed JSON body reached the upstream";
}

TEST_F(Bodies, ForcedModelAppliesWhateverTheContentType) {
  for (const std::string ct : {"text/plain", "", "application/x-www-form-urlencoded", "Application/Json"}) {
    const Exchange x = post("/v1/chat/completions", ct, R"(  {"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})");
    ASSERT_EQ(x.finals().size(), 1u) << "Content-Type '" << ct << "' " << x.describe();
    const RawResponse& r = *x.finals()[0];
    EXPECT_EQ(r.status, 200) << ct << " " << r.body;
    EXPECT_EQ(jget(jget(r.body, "body"), "model"), "glm-4.7") << "Content-Type '" << ct << "': " << r.body;
  }
}

TEST_F(Bodies, NonJsonBodiesWithoutAJsonContentTypePass) {
  const long before = upstream_requests();
  for (const auto& [ct, body] : std::vector<std::pair<std::string, std::string>>{
           {"text/plain", "hello, world"}, {"application/x-www-form-urlencoded", "model=gpt-4o&x=1"}}) {
    const Exchange x = post("/v1/chat/completions", ct, body);
    ASSERT_EQ(x.finals().size(), 1u) << ct << " " << x.describe();
    EXPECT_EQ(x.finals()[0]->status, 200) << ct << " " << x.describe();
    EXPECT_EQ(jget(x.finals()[0]->body, "body"), body) << x.finals()[0]->body;
  }
  EXPECT_EQ(upstream_requests(), before + 2);
}

}  // namespace
