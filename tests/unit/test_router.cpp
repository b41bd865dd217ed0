// Unit tests for core/src/pipeline/router: longest-prefix matching on segment boundaries,
// upstream path rewriting and the flavour guess for unmatched paths.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "pipeline/router.hpp"

namespace cfg = glmp::core::config;
using glmp::core::pipeline::Flavour;
using glmp::core::pipeline::Router;

namespace {

cfg::RouteConfig route(std::string prefix, Flavour flavour, std::string upstream, std::string strip = "") {
  cfg::RouteConfig r;
  r.prefix = std::move(prefix);
  r.flavour = flavour;
  r.upstream = std::move(upstream);
  r.strip_prefix = std::move(strip);
  return r;
}

// The prefix of the matched route, or "<none>".
std::string matched(const Router& router, std::string_view path) {
  const cfg::RouteConfig* r = router.match(path);
  return r ? r->prefix : "<none>";
}

// The shipped default routes, in config order (shorter prefix last here on purpose in one test,
// first in the other).
std::vector<cfg::RouteConfig> default_routes(bool short_first) {
  std::vector<cfg::RouteConfig> v{route("/v1/messages", Flavour::Anthropic, "anthropic"),
                                  route("/v1/", Flavour::OpenAI, "openai", "/v1")};
  if (short_first) std::swap(v[0], v[1]);
  return v;
}

}  // namespace

TEST(Router, LongestPrefixWinsRegardlessOfOrder) {
  for (bool short_first : {false, true}) {
    const Router router(default_routes(short_first));
    SCOPED_TRACE(short_first ? "short prefix first" : "long prefix first");
    const auto* r = router.match("/v1/messages");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->prefix, "/v1/messages");
    EXPECT_EQ(r->flavour, Flavour::Anthropic);
    EXPECT_EQ(r->upstream, "anthropic");
    r = router.match("/v1/chat/completions");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->prefix, "/v1/");
    EXPECT_EQ(r->flavour, Flavour::OpenAI);
    EXPECT_EQ(r->upstream, "openai");
  }
}

TEST(Router, ThreeLevelsInAnyOrder) {
  std::vector<cfg::RouteConfig> routes{route("/", Flavour::OpenAI, "root"), route("/a/b/c", Flavour::OpenAI, "abc"),
                                       route("/a", Flavour::Anthropic, "a"), route("/a/b", Flavour::OpenAI, "ab")};
  const Router router(routes);
  EXPECT_EQ(matched(router, "/a/b/c/d"), "/a/b/c");
  EXPECT_EQ(matched(router, "/a/b/c"), "/a/b/c");
  EXPECT_EQ(matched(router, "/a/b/cd"), "/a/b");
  EXPECT_EQ(matched(router, "/a/b"), "/a/b");
  EXPECT_EQ(matched(router, "/a/x"), "/a");
  EXPECT_EQ(matched(router, "/ab"), "/");
  EXPECT_EQ(matched(router, "/zzz"), "/");
  EXPECT_EQ(matched(router, "/"), "/");
}

TEST(Router, SegmentBoundary) {
  const Router router(default_routes(false));
  EXPECT_EQ(matched(router, "/v1/messages"), "/v1/messages");
  EXPECT_EQ(matched(router, "/v1/messages/"), "/v1/messages");
  EXPECT_EQ(matched(router, "/v1/messages/count_tokens"), "/v1/messages");
  EXPECT_EQ(matched(router, "/v1/messagesX"), "/v1/");
  EXPECT_EQ(matched(router, "/v1/messages-batch"), "/v1/");
  EXPECT_EQ(matched(router, "/v1/models"), "/v1/");
  EXPECT_EQ(matched(router, "/v1/"), "/v1/");
}

TEST(Router, CountTokensGoesToAnthropic) {
  const Router router(default_routes(true));
  const auto* r = router.match("/v1/messages/count_tokens");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->flavour, Flavour::Anthropic);
  EXPECT_EQ(r->upstream, "anthropic");
}

TEST(Router, NoMatch) {
  const Router router(default_routes(false));
  EXPECT_EQ(router.match("/health"), nullptr);
  EXPECT_EQ(router.match("/v1"), nullptr);  // "/v1/" needs the slash
  EXPECT_EQ(router.match("/v2/chat/completions"), nullptr);
  EXPECT_EQ(router.match(""), nullptr);
  EXPECT_EQ(router.match("/V1/messages"), nullptr);  // paths are case-sensitive
  const Router empty(std::vector<cfg::RouteConfig>{});
  EXPECT_EQ(empty.match("/v1/messages"), nullptr);
}

TEST(Router, ReturnsStableCopies) {
  std::vector<cfg::RouteConfig> routes = default_routes(false);
  const Router router(routes);
  routes.clear();  // the router owns its routes
  const auto* r = router.match("/v1/models");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->strip_prefix, "/v1");
  EXPECT_EQ(router.match("/v1/embeddings"), r);  // same route object each time
}

TEST(Router, UpstreamPath) {
  const auto openai = route("/v1/", Flavour::OpenAI, "openai", "/v1");
  EXPECT_EQ(Router::upstream_path(openai, "/v1/chat/completions"), "/chat/completions");
  EXPECT_EQ(Router::upstream_path(openai, "/v1/"), "/");
  EXPECT_EQ(Router::upstream_path(openai, "/v1/models/glm-4.7"), "/models/glm-4.7");

  const auto anthropic = route("/v1/messages", Flavour::Anthropic, "anthropic");
  EXPECT_EQ(Router::upstream_path(anthropic, "/v1/messages"), "/v1/messages");
  EXPECT_EQ(Router::upstream_path(anthropic, "/v1/messages/count_tokens"), "/v1/messages/count_tokens");

  // Stripping the whole path leaves "/".
  const auto exact = route("/v1", Flavour::OpenAI, "u", "/v1");
  EXPECT_EQ(Router::upstream_path(exact, "/v1"), "/");
  // A strip prefix with a trailing slash keeps the leading slash.
  const auto slash = route("/v1/", Flavour::OpenAI, "u", "/v1/");
  EXPECT_EQ(Router::upstream_path(slash, "/v1/chat/completions"), "/chat/completions");
  // A path that does not start with strip_prefix is left alone.
  EXPECT_EQ(Router::upstream_path(openai, "/v2/x"), "/v2/x");
}

TEST(Router, GuessFlavour) {
  EXPECT_EQ(Router::guess_flavour("/v1/messages"), Flavour::Anthropic);
  EXPECT_EQ(Router::guess_flavour("/v1/messages/count_tokens"), Flavour::Anthropic);
  EXPECT_EQ(Router::guess_flavour("/v1/messages/batches/x"), Flavour::Anthropic);
  EXPECT_EQ(Router::guess_flavour("/v1/messagesX"), Flavour::OpenAI);
  EXPECT_EQ(Router::guess_flavour("/v1/chat/completions"), Flavour::OpenAI);
  EXPECT_EQ(Router::guess_flavour("/v1"), Flavour::OpenAI);
  EXPECT_EQ(Router::guess_flavour("/"), Flavour::OpenAI);
  EXPECT_EQ(Router::guess_flavour(""), Flavour::OpenAI);
}

TEST(Router, FromParsedConfig) {
  const cfg::Config c = cfg::parse_config(
      "[upstreams.oa]\nbase_url = \"http://h1\"\n[upstreams.an]\nbase_url = \"http://h2\"\n"
      "[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"oa\"\nstrip_prefix = \"/v1\"\n"
      "[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"an\"\n",
      "r.toml");
  const Router router(c.routes);
  const auto* r = router.match("/v1/messages/count_tokens");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->upstream, "an");
  EXPECT_EQ(Router::upstream_path(*r, "/v1/messages/count_tokens"), "/v1/messages/count_tokens");
  r = router.match("/v1/chat/completions");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->upstream, "oa");
  EXPECT_EQ(Router::upstream_path(*r, "/v1/chat/completions"), "/chat/completions");
}
