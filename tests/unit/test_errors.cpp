// Unit tests for core/src/pipeline/errors: error bodies and SSE error events in the OpenAI and
// Anthropic shapes, checked by parsing them back with Poco::JSON.

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "pipeline/errors.hpp"

namespace pl = glmp::core::pipeline;
using pl::ApiError;
using pl::Flavour;

namespace {

Poco::JSON::Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  Poco::Dynamic::Var v = parser.parse(text);
  Poco::JSON::Object::Ptr obj = v.extract<Poco::JSON::Object::Ptr>();
  if (!obj) throw std::runtime_error("not an object: " + text);
  return obj;
}

std::vector<std::string> keys_of(const Poco::JSON::Object::Ptr& obj) {
  std::vector<std::string> keys;
  obj->getNames(keys);
  std::sort(keys.begin(), keys.end());
  return keys;
}

ApiError make(int status, std::string message, std::string type = "", std::string code = "") {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

struct OpenAiShape {
  std::string message, type;
  bool code_null = false;
  std::string code;
};

// Parses an OpenAI error body and checks its exact shape.
OpenAiShape parse_openai(const std::string& body) {
  auto root = parse(body);
  EXPECT_EQ(keys_of(root), std::vector<std::string>{"error"}) << body;
  auto err = root->getObject("error");
  EXPECT_TRUE(err) << body;
  if (!err) return {};
  EXPECT_EQ(keys_of(err), (std::vector<std::string>{"code", "message", "type"})) << body;
  OpenAiShape s;
  s.message = err->getValue<std::string>("message");
  s.type = err->getValue<std::string>("type");
  s.code_null = err->isNull("code");
  if (!s.code_null) s.code = err->getValue<std::string>("code");
  return s;
}

struct AnthropicShape {
  std::string message, type;
};

// Parses an Anthropic error body and checks its exact shape.
AnthropicShape parse_anthropic(const std::string& body) {
  auto root = parse(body);
  EXPECT_EQ(keys_of(root), (std::vector<std::string>{"error", "type"})) << body;
  EXPECT_EQ(root->getValue<std::string>("type"), "error") << body;
  auto err = root->getObject("error");
  EXPECT_TRUE(err) << body;
  if (!err) return {};
  EXPECT_EQ(keys_of(err), (std::vector<std::string>{"message", "type"})) << body;
  return {err->getValue<std::string>("message"), err->getValue<std::string>("type")};
}

}  // namespace

TEST(Errors, OpenAiShapeWithNullCode) {
  const std::string body = pl::error_body(Flavour::OpenAI, make(401, "invalid api key"));
  const auto s = parse_openai(body);
  EXPECT_EQ(s.message, "invalid api key");
  EXPECT_EQ(s.type, "authentication_error");
  EXPECT_TRUE(s.code_null);
}

TEST(Errors, OpenAiShapeWithCodeAndType) {
  const std::string body = pl::error_body(Flavour::OpenAI, make(429, "slow down", "tokens", "rate_limit_exceeded"));
  const auto s = parse_openai(body);
  EXPECT_EQ(s.message, "slow down");
  EXPECT_EQ(s.type, "tokens");
  EXPECT_FALSE(s.code_null);
  EXPECT_EQ(s.code, "rate_limit_exceeded");
}

TEST(Errors, AnthropicShape) {
  const std::string body = pl::error_body(Flavour::Anthropic, make(404, "no such model"));
  const auto s = parse_anthropic(body);
  EXPECT_EQ(s.message, "no such model");
  EXPECT_EQ(s.type, "not_found_error");
}

TEST(Errors, AnthropicIgnoresCodeAndHonoursType) {
  const std::string body = pl::error_body(Flavour::Anthropic, make(503, "busy", "overloaded_error", "ignored"));
  const auto s = parse_anthropic(body);  // checks there is no "code" key
  EXPECT_EQ(s.type, "overloaded_error");
  EXPECT_EQ(s.message, "busy");
}

TEST(Errors, DefaultTypesPerStatus) {
  struct Row {
    int status;
    const char* openai;
    const char* anthropic;
  };
  const Row rows[] = {
      {400, "invalid_request_error", "invalid_request_error"},
      {401, "authentication_error", "authentication_error"},
      {403, "permission_error", "permission_error"},
      {404, "not_found_error", "not_found_error"},
      {413, "invalid_request_error", "request_too_large"},
      {429, "rate_limit_exceeded", "rate_limit_error"},
      {500, "server_error", "api_error"},
      {502, "server_error", "api_error"},
      {503, "server_error", "api_error"},
      {504, "server_error", "api_error"},
      {529, "server_error", "overloaded_error"},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(row.status);
    EXPECT_EQ(pl::default_error_type(Flavour::OpenAI, row.status), row.openai);
    EXPECT_EQ(pl::default_error_type(Flavour::Anthropic, row.status), row.anthropic);
    // error_body uses the default when type is empty.
    EXPECT_EQ(parse_openai(pl::error_body(Flavour::OpenAI, make(row.status, "m"))).type, row.openai);
    EXPECT_EQ(parse_anthropic(pl::error_body(Flavour::Anthropic, make(row.status, "m"))).type, row.anthropic);
  }
}

TEST(Errors, MessageEscaping) {
  const std::vector<std::string> messages = {
      "say \"hi\"",
      "line1\nline2\r\n\ttab",
      "back\\slash and /slash",
      "caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87",  // é ✓ 😀 中文
      std::string("ctrl\x01\x1f\x7f end"),
      std::string("nul\0inside", 10),
      "</script><!--",
      "",
  };
  for (const auto& m : messages) {
    SCOPED_TRACE(m);
    const std::string oa = pl::error_body(Flavour::OpenAI, make(500, m));
    EXPECT_EQ(oa.find('\n'), std::string::npos) << "raw newline in " << oa;
    EXPECT_EQ(parse_openai(oa).message, m);
    const std::string an = pl::error_body(Flavour::Anthropic, make(500, m));
    EXPECT_EQ(an.find('\n'), std::string::npos) << "raw newline in " << an;
    EXPECT_EQ(parse_anthropic(an).message, m);
  }
}

TEST(Errors, InvalidUtf8StillYieldsValidJson) {
  const std::string bad = "bad \xFF\xFE byte \xC3";  // invalid bytes and a truncated sequence
  const auto s = parse_openai(pl::error_body(Flavour::OpenAI, make(502, bad)));
  EXPECT_EQ(s.message.rfind("bad ", 0), 0u);
  EXPECT_NE(s.message.find(" byte "), std::string::npos);
  EXPECT_NE(s.message.find("\xEF\xBF\xBD"), std::string::npos);  // replaced by U+FFFD
  const auto a = parse_anthropic(pl::error_body(Flavour::Anthropic, make(502, bad)));
  EXPECT_NE(a.message.find("\xEF\xBF\xBD"), std::string::npos);
}

TEST(Errors, TypeAndCodeAreEscapedToo) {
  const auto s = parse_openai(pl::error_body(Flavour::OpenAI, make(400, "m", "t\"ype", "c\nde")));
  EXPECT_EQ(s.type, "t\"ype");
  EXPECT_EQ(s.code, "c\nde");
}

TEST(Errors, SseEventAnthropic) {
  const ApiError e = make(529, "overloaded \"now\"\nretry");
  const std::string ev = pl::sse_error_event(Flavour::Anthropic, e);
  const std::string prefix = "event: error\ndata: ";
  ASSERT_EQ(ev.rfind(prefix, 0), 0u) << ev;
  ASSERT_GE(ev.size(), prefix.size() + 2);
  EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
  const std::string data = ev.substr(prefix.size(), ev.size() - prefix.size() - 2);
  EXPECT_EQ(data.find('\n'), std::string::npos) << "the data must be one line";
  EXPECT_EQ(data, pl::error_body(Flavour::Anthropic, e));
  const auto s = parse_anthropic(data);
  EXPECT_EQ(s.type, "overloaded_error");
  EXPECT_EQ(s.message, "overloaded \"now\"\nretry");
}

TEST(Errors, SseEventOpenAi) {
  const ApiError e = make(502, "upstream went away\n\n", "", "upstream_error");
  const std::string ev = pl::sse_error_event(Flavour::OpenAI, e);
  ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
  EXPECT_EQ(ev.find("event:"), std::string::npos);
  EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
  const std::string data = ev.substr(6, ev.size() - 8);
  EXPECT_EQ(data.find('\n'), std::string::npos) << "the data must be one line";
  EXPECT_EQ(data, pl::error_body(Flavour::OpenAI, e));
  const auto s = parse_openai(data);
  EXPECT_EQ(s.type, "server_error");
  EXPECT_EQ(s.code, "upstream_error");
  EXPECT_EQ(s.message, "upstream went away\n\n");
}
