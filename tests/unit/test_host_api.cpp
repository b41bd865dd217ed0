// The host API's request_body_member (ABI 1.4): a top-level member of the request body as raw
// JSON, from the core's scan of the body, without a parse.
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "pipeline/json_body.hpp"
#include "pipeline/request_context.hpp"
#include "plugins/native_plugin.hpp"  // host_api()

namespace glmp::core::plugins {
namespace {

using pipeline::RequestContext;

glmp_request_host_ptr* handle(RequestContext& ctx) { return reinterpret_cast<glmp_request_host_ptr*>(&ctx); }

// The member's raw text, or "<absent>".
std::string member(RequestContext& ctx, std::string_view name) {
  const char* v = nullptr;
  size_t n = 0;
  if (host_api().request_body_member(handle(ctx), name.data(), name.size(), &v, &n) == 0) return "<absent>";
  return std::string(v, n);
}

TEST(HostApiBodyMember, RawTopLevelValuesOnly) {
  RequestContext ctx;
  ctx.body = R"({ "model" : "glm-\u0034.7", "max_tokens":64,"stream":true,
                 "messages":[{"role":"user","content":"hi","model":"nested"}],"tools":{"temperature":1},
                 "temperature": 0.5e1 })";
  EXPECT_EQ(member(ctx, "model"), R"("glm-\u0034.7")");  // exactly as written: quotes and escapes kept
  EXPECT_EQ(member(ctx, "max_tokens"), "64");
  EXPECT_EQ(member(ctx, "stream"), "true");
  EXPECT_EQ(member(ctx, "temperature"), "0.5e1");        // the top-level one, not the one in "tools"
  EXPECT_EQ(member(ctx, "tools"), R"({"temperature":1})");
  EXPECT_EQ(member(ctx, "role"), "<absent>");            // nested members are never returned
  EXPECT_EQ(member(ctx, "content"), "<absent>");
  EXPECT_EQ(member(ctx, "max_completion_tokens"), "<absent>");
  EXPECT_EQ(member(ctx, ""), "<absent>");
}

TEST(HostApiBodyMember, KeysComparedUnescapedAndTheLastDuplicateWins) {
  RequestContext ctx;
  ctx.body = R"({"max_tokens":10,"m\u0061x_tokens":20,"max_tokens":30})";
  EXPECT_EQ(member(ctx, "max_tokens"), "30");
  ctx.body = R"({"mod\u0065l":"x"})";
  ctx.body_scanned = false;
  EXPECT_EQ(member(ctx, "model"), R"("x")");
}

TEST(HostApiBodyMember, NothingWithoutAJsonObject) {
  for (const char* body : {"", "[1,2]", "\"model\"", "{\"model\":", "model=x&max_tokens=5", "{\"a\":1}{"}) {
    RequestContext ctx;
    ctx.body = body;
    EXPECT_EQ(member(ctx, "model"), "<absent>") << body;
    EXPECT_EQ(member(ctx, "a"), "<absent>") << body;
  }
}

// The headers phase runs before the body is read: nothing is found then, and nothing remembered,
// so the body read afterwards is found.
TEST(HostApiBodyMember, TheBodyReadAfterTheHeadersPhaseIsFound) {
  RequestContext ctx;
  EXPECT_EQ(member(ctx, "model"), "<absent>");
  ctx.body = R"({"model":"glm-4.7"})";
  EXPECT_EQ(member(ctx, "model"), R"("glm-4.7")");
}

TEST(HostApiBodyMember, DescribesABodyAPluginReplaced) {
  RequestContext ctx;
  ctx.body = R"({"model":"a","max_tokens":1})";
  EXPECT_EQ(member(ctx, "model"), R"("a")");
  const std::string replaced = R"({"max_tokens":2,"model":"bb"})";
  host_api().request_set_body(handle(ctx), replaced.data(), replaced.size());
  EXPECT_EQ(member(ctx, "model"), R"("bb")");
  EXPECT_EQ(member(ctx, "max_tokens"), "2");
}

// A scan the core stored (body_scanned) is used as it is: the body is not scanned again.
TEST(HostApiBodyMember, UsesTheScanTheCoreStored) {
  RequestContext ctx;
  ctx.body = R"({"a":"1","b":"2"})";
  ctx.body_scan = pipeline::scan_top_level(R"({"b":"1","a":"2"})");  // same offsets, names swapped
  ctx.body_scanned = true;
  EXPECT_EQ(member(ctx, "a"), R"("2")");
  EXPECT_EQ(member(ctx, "b"), R"("1")");
}

}  // namespace
}  // namespace glmp::core::plugins
