// Unit tests of glmproxy/request_key.hpp: the hashed text's format (a golden value: cache and
// batching must agree, and a change must bump the format version), that every part counts and
// parts cannot run into each other, and request_key's scope and bypass reasons over a fake host.
#include <gtest/gtest.h>

#include <glmproxy/request_key.hpp>

#include <set>
#include <string>

#include "recording_fakes.hpp"

namespace {

using glmp::request_key_of;

bool is_lower_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (const char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

const std::string kBody = R"({"messages":[{"content":"hi","role":"user"}],"model":"glm-4.7"})";

TEST(RequestKeyOf, GoldenValue) {
  // sha256("19:glmp.request_key.v1,11:key:key_abc,1:0,20:/v1/chat/completions,7:glm-4.7,63:<body>,")
  EXPECT_EQ(request_key_of("key:key_abc", 0, "/v1/chat/completions", "glm-4.7", kBody),
            "07db3139d1fed2931303b7fe53f607ab4e5e02a86554c9e549d751acbf7cdf32");
  // All parts empty still hashes the version and the netstring frames.
  EXPECT_EQ(request_key_of("", 0, "", "", ""), "1633e672b12390ad21655887356c39df61c7d9b2f6b1927bf73fb205e7592a3c");
}

TEST(RequestKeyOf, LowercaseHexAndDeterministic) {
  const std::string a = request_key_of("global", 1, "/v1/messages", "claude", kBody);
  EXPECT_TRUE(is_lower_hex64(a)) << a;
  EXPECT_EQ(a, request_key_of("global", 1, "/v1/messages", "claude", kBody));
}

TEST(RequestKeyOf, EveryPartCounts) {
  const std::string base = request_key_of("key:a", 0, "/v1/chat/completions", "m", kBody);
  std::set<std::string> keys{base};
  keys.insert(request_key_of("key:b", 0, "/v1/chat/completions", "m", kBody));
  keys.insert(request_key_of("global", 0, "/v1/chat/completions", "m", kBody));
  keys.insert(request_key_of("key:a", 1, "/v1/chat/completions", "m", kBody));
  keys.insert(request_key_of("key:a", 0, "/v1/completions", "m", kBody));
  keys.insert(request_key_of("key:a", 0, "/v1/chat/completions", "n", kBody));
  keys.insert(request_key_of("key:a", 0, "/v1/chat/completions", "m", kBody + " "));
  keys.insert(request_key_of("key:a", 0, "/v1/chat/completions", "m", R"({"stream":true})"));
  keys.insert(request_key_of("key:a", 0, "/v1/chat/completions", "m", R"({"stream":false})"));
  EXPECT_EQ(keys.size(), 9u);
}

TEST(RequestKeyOf, PartsCannotRunIntoEachOther) {
  // The same concatenated bytes split differently between parts.
  EXPECT_NE(request_key_of("key:ab", 0, "/p", "m", "x"), request_key_of("key:a", 0, "b/p", "m", "x"));
  EXPECT_NE(request_key_of("s", 0, "/p", "mx", ""), request_key_of("s", 0, "/p", "m", "x"));
  EXPECT_NE(request_key_of("s", 0, "/p", "", "m"), request_key_of("s", 0, "/p", "m", ""));
  // A part containing the frame syntax cannot fake a boundary.
  EXPECT_NE(request_key_of("s", 0, "/p", "m,1:x", ""), request_key_of("s", 0, "/p", "m", "x"));
}

// request_key over a fake host (request_canonical_body from recording_fakes.hpp).
class RequestKey : public ::testing::Test {
protected:
  void SetUp() override {
    cache_test::Recordings::instance().reset();
    cache_test::Recordings::install(host);
  }
  std::optional<std::string> key(glmp::testing::FakeRequest& r, const glmp::RequestKeyOptions& o,
                                 const char** reason = nullptr) {
    const glmp::Request request(host.api(), r.handle());
    return glmp::request_key(request, o, reason);
  }
  static glmp::testing::FakeRequest request(const std::string& key_id, const std::string& body = kBody) {
    glmp::testing::FakeRequest r;
    r.model = "glm-4.7";
    r.body = body;
    if (!key_id.empty()) r.attributes["auth.key_id"] = key_id;
    return r;
  }
  glmp::testing::FakeHost host;
};

TEST_F(RequestKey, PerKeyScopeUsesTheKeyId) {
  auto r = request("key_abc");
  const auto k = key(r, {});
  ASSERT_TRUE(k);
  EXPECT_EQ(*k, request_key_of("key:key_abc", 0, "/v1/chat/completions", "glm-4.7", kBody));
  auto other = request("key_xyz");
  EXPECT_NE(*key(other, {}), *k);
}

TEST_F(RequestKey, GlobalScopeIgnoresTheKeyIdAndNeedsNone) {
  glmp::RequestKeyOptions o;
  o.global_scope = true;
  auto a = request("key_abc");
  auto b = request("key_xyz");
  auto none = request("");
  const auto k = key(a, o);
  ASSERT_TRUE(k);
  EXPECT_EQ(*k, request_key_of("global", 0, "/v1/chat/completions", "glm-4.7", kBody));
  EXPECT_EQ(key(b, o), k);
  EXPECT_EQ(key(none, o), k);
  // A key whose id is "global" does not share the global scope's entries.
  auto named_global = request("global");
  EXPECT_NE(*key(named_global, {}), *k);
}

TEST_F(RequestKey, Reasons) {
  const char* reason = nullptr;
  auto no_key = request("");
  EXPECT_FALSE(key(no_key, {}, &reason));
  EXPECT_STREQ(reason, "no_key_id");
  auto empty_key = request("");
  empty_key.attributes["auth.key_id"] = "";
  reason = nullptr;
  EXPECT_FALSE(key(empty_key, {}, &reason));
  EXPECT_STREQ(reason, "no_key_id");
  auto not_json = request("key_abc", "not json {");
  reason = nullptr;
  EXPECT_FALSE(key(not_json, {}, &reason));
  EXPECT_STREQ(reason, "not_json");
  EXPECT_FALSE(key(not_json, {}));  // reason may be null
}

TEST_F(RequestKey, FlavourPathAndModelCount) {
  auto a = request("k");
  auto b = request("k");
  b.flavour = GLMP_FLAVOUR_ANTHROPIC;
  auto c = request("k");
  c.path = "/v1/messages";
  auto d = request("k");
  d.model = "glm-4.5";
  std::set<std::string> keys{*key(a, {}), *key(b, {}), *key(c, {}), *key(d, {})};
  EXPECT_EQ(keys.size(), 4u);
}

TEST_F(RequestKey, ExcludeFieldsAreLeftOut) {
  glmp::RequestKeyOptions o;
  o.exclude_fields = {"user", "metadata"};
  auto a = request("k", R"({"model":"glm-4.7","user":"alice","metadata":{"x":1},"messages":[]})");
  auto b = request("k", R"({"messages":[],"model":"glm-4.7","user":"bob"})");
  auto c = request("k", R"({"messages":[],"model":"glm-4.7","temperature":0})");
  EXPECT_EQ(key(a, o), key(b, o));
  EXPECT_NE(key(a, o), key(c, o));
  EXPECT_NE(key(a, {}), key(b, {}));  // without the exclusions they differ
}

TEST_F(RequestKey, OlderHostIsNotJson) {
  host.mutable_api().request_canonical_body = nullptr;
  auto r = request("k");
  const char* reason = nullptr;
  EXPECT_FALSE(key(r, {}, &reason));
  EXPECT_STREQ(reason, "not_json");
}

}  // namespace
