// The auth plugin's logic without the proxy: credential extraction (every source, precedence,
// malformed headers), key generation and hashing, RFC 3339 dates, field validation, the cache
// (TTL, LRU, invalidation) and the old apikeys.json import.
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "key_logic.hpp"

namespace glmp::plugins::auth {
namespace {

using std::nullopt;
using S = CredentialSource;

TEST(Credentials, EverySource) {
  EXPECT_EQ(extract_credential("Bearer pk_abc", nullopt, nullopt).key, "pk_abc");
  EXPECT_EQ(extract_credential("Bearer pk_abc", nullopt, nullopt).source, S::Bearer);
  EXPECT_EQ(extract_credential(nullopt, "pk_x", nullopt).source, S::XApiKey);
  EXPECT_EQ(extract_credential(nullopt, nullopt, "pk_q").source, S::Query);
  EXPECT_EQ(extract_credential(nullopt, nullopt, "pk_q").key, "pk_q");
  EXPECT_FALSE(extract_credential(nullopt, nullopt, nullopt).present());
}

TEST(Credentials, PrecedenceBearerThenHeaderThenQuery) {
  EXPECT_EQ(extract_credential("Bearer a", "b", "c").key, "a");
  EXPECT_EQ(extract_credential(nullopt, "b", "c").key, "b");
  // An empty source does not hide a later one that has a key.
  EXPECT_EQ(extract_credential("Bearer ", "b", nullopt).key, "b");
  EXPECT_EQ(extract_credential(nullopt, "  ", "c").key, "c");
}

TEST(Credentials, SchemeIsCaseInsensitiveAndWhitespaceTrimmed) {
  EXPECT_EQ(extract_credential("bearer   pk_1  ", nullopt, nullopt).key, "pk_1");
  EXPECT_EQ(extract_credential("BEARER\tpk_2", nullopt, nullopt).key, "pk_2");
  EXPECT_EQ(extract_credential(nullopt, " pk_3 ", nullopt).key, "pk_3");
}

TEST(Credentials, MalformedAuthorizationIsIgnored) {
  EXPECT_EQ(extract_credential("Basic dXNlcjpwYXNz", "pk_x", nullopt).key, "pk_x");
  EXPECT_FALSE(extract_credential("Basic dXNlcjpwYXNz", nullopt, nullopt).present());
  EXPECT_FALSE(extract_credential("Bearerpk_glued", nullopt, nullopt).present());
  EXPECT_FALSE(extract_credential("", nullopt, nullopt).present());
}

TEST(Credentials, PresentButEmptyIsReportedAsEmpty) {
  for (auto c : {extract_credential("Bearer ", nullopt, nullopt), extract_credential("Bearer", nullopt, nullopt),
                 extract_credential(nullopt, "", nullopt), extract_credential(nullopt, nullopt, "")}) {
    EXPECT_TRUE(c.present());
    EXPECT_TRUE(c.key.empty());
  }
}

TEST(Keys, GeneratedKeysAreLongRandomBase62) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    const std::string k = generate_key();
    ASSERT_EQ(k.rfind("pk_", 0), 0u);
    ASSERT_EQ(k.size(), 3u + 43u) << "32 random bytes need 43 base62 characters";
    for (char c : k.substr(3)) ASSERT_TRUE(std::isalnum(static_cast<unsigned char>(c))) << k;
    seen.insert(k);
  }
  EXPECT_EQ(seen.size(), 200u);
  const std::string id = generate_id();
  EXPECT_EQ(id.rfind("key_", 0), 0u);
  EXPECT_EQ(id.size(), 20u);
}

TEST(Keys, Sha256IsTheStandardDigest) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Keys, RecordsNeverHoldThePlainKey) {
  const std::string plain = "pk_SuperSecretValue1234567890";
  const Json r = new_record(plain, 1'800'000'000'000);
  EXPECT_EQ(r.dump().find("SuperSecretValue"), std::string::npos) << r.dump();
  EXPECT_EQ(r["hash"], sha256_hex(plain));
  const Json v = public_view(r);
  EXPECT_FALSE(v.contains("hash"));
  EXPECT_EQ(v["key_masked"], "pk_Supe\xE2\x80\xA6" "7890");
  // Short custom keys reveal proportionally less.
  const Json s = new_record("abcdefgh", 0);
  EXPECT_EQ(s["key_prefix"], "ab");
  EXPECT_EQ(s["key_suffix"], "gh");
}

TEST(Dates, StrictRfc3339) {
  EXPECT_EQ(parse_rfc3339("2026-12-31T23:59:59Z"), 1798761599000);
  EXPECT_EQ(parse_rfc3339("2026-12-31T23:59:59.5Z"), 1798761599500);
  EXPECT_EQ(parse_rfc3339("2027-01-01T01:59:59+02:00"), 1798761599000);
  for (const char* bad : {"2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-12-31", "2026-12-31T23:59:59",
                          "31/12/2026", "never", "", "2026-12-31T24:00:00Z", "2026-12-31T23:59:59+0200"})
    EXPECT_EQ(parse_rfc3339(bad), nullopt) << bad;
  EXPECT_EQ(format_rfc3339(1798761599500), "2026-12-31T23:59:59.500Z");
}

TEST(Validation, AcceptsEveryFieldAndNullClears) {
  Json rec = new_record("pk_test_key_123456", 0);
  ASSERT_FALSE(apply_fields(Json::parse(R"({"name":"alice","model":"glm-4.5","token_limit_per_5h":1000,
      "expiry_date":"2030-01-01T00:00:00Z","enabled":false,"allowed_models":["a","b"],"metadata":{"team":"x"}})"),
                            rec, false, nullptr));
  EXPECT_EQ(rec["name"], "alice");
  EXPECT_EQ(rec["token_limit_per_5h"], 1000);
  EXPECT_EQ(rec["enabled"], false);
  ASSERT_FALSE(apply_fields(Json::parse(R"({"model":null,"token_limit_per_5h":null,"expiry_date":null})"), rec, false, nullptr));
  EXPECT_TRUE(rec["model"].is_null());
  const KeyInfo k = key_info(rec);
  EXPECT_EQ(k.token_limit, nullopt);
  EXPECT_EQ(k.expires, nullopt);
  EXPECT_EQ(k.allowed_models, (std::vector<std::string>{"a", "b"}));
}

TEST(Validation, ErrorsNameTheFieldAndChangeNothing) {
  Json rec = new_record("pk_test_key_123456", 0);
  const Json before = rec;
  struct Case {
    const char* body;
    const char* field;
  } cases[] = {
      {R"({"expiry_date":"2026-13-45"})", "expiry_date"},
      {R"({"expiry_date":"tomorrow"})", "expiry_date"},
      {R"({"token_limit_per_5h":-1})", "token_limit_per_5h"},
      {R"({"token_limit_per_5h":"100"})", "token_limit_per_5h"},
      {R"({"name":""})", "name"},
      {R"({"enabled":"yes"})", "enabled"},
      {R"({"allowed_models":"glm"})", "allowed_models"},
      {R"({"allowed_models":[1]})", "allowed_models"},
      {R"({"metadata":[1]})", "metadata"},
      {R"({"colour":"red"})", "colour"},
      {R"({"key":"short"})", "key"},  // not allowed outside creation either
  };
  for (const auto& c : cases) {
    auto err = apply_fields(Json::parse(c.body), rec, false, nullptr);
    ASSERT_TRUE(err) << c.body;
    EXPECT_EQ(err->field, c.field) << c.body;
    EXPECT_EQ(rec, before) << c.body;
  }
  std::string custom;
  EXPECT_TRUE(apply_fields(Json::parse(R"({"key":"has space inside"})"), rec, true, &custom));
  EXPECT_FALSE(apply_fields(Json::parse(R"({"key":"pk_custom_12345"})"), rec, true, &custom));
  EXPECT_EQ(custom, "pk_custom_12345");
  EXPECT_TRUE(apply_fields(Json::parse("[1]"), rec, false, nullptr));
}

TEST(Validation, AStoredDateThatDoesNotParseMeansExpired) {
  Json rec = new_record("pk_test_key_123456", 0);
  rec["expiry_date"] = "not a date";  // e.g. edited by hand in an older file
  EXPECT_EQ(key_info(rec).expires, 0) << "must never be treated as 'never expires'";
}

TEST(Cache, HitsUntilTheTtl) {
  KeyCache cache(10, std::chrono::milliseconds(1000));
  auto info = std::make_shared<const KeyInfo>(KeyInfo{"id1", "n", "", "", "", "", {}, "", {}, true, {}});
  cache.put("h1", info, 5000);
  ASSERT_TRUE(cache.get("h1", 5999));
  EXPECT_EQ(cache.get("h1", 5999)->info->id, "id1");
  EXPECT_FALSE(cache.get("h1", 6000)) << "expired exactly at the TTL";
  EXPECT_EQ(cache.size(), 0u);
}

TEST(Cache, RemembersUnknownKeys) {
  KeyCache cache(10, std::chrono::milliseconds(1000));
  cache.put("bad", nullptr, 0);
  auto hit = cache.get("bad", 1);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->info, nullptr);
}

TEST(Cache, InvalidationAndLruEviction) {
  KeyCache cache(2, std::chrono::milliseconds(100'000));
  auto info = std::make_shared<const KeyInfo>();
  cache.put("a", info, 0);
  cache.put("b", info, 0);
  ASSERT_TRUE(cache.get("a", 1));  // a is now the most recent
  cache.put("c", info, 2);         // evicts b
  EXPECT_TRUE(cache.get("a", 3));
  EXPECT_FALSE(cache.get("b", 3));
  EXPECT_TRUE(cache.get("c", 3));
  cache.erase("a");
  EXPECT_FALSE(cache.get("a", 4));
  cache.clear();
  EXPECT_EQ(cache.size(), 0u);
  KeyCache off(0, std::chrono::milliseconds(1000));
  off.put("a", info, 0);
  EXPECT_FALSE(off.get("a", 0)) << "cache_size 0 turns the cache off";
}

TEST(Cache, ConcurrentUse) {
  KeyCache cache(64, std::chrono::milliseconds(100'000));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        std::string h = "h";  // appended step by step: GCC 12 warns falsely (-Wrestrict) on "h" + to_string()
        h += std::to_string((i * 7 + t) % 100);
        if (!cache.get(h, i)) cache.put(h, std::make_shared<const KeyInfo>(), i);
        if (i % 97 == 0) cache.erase(h);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_LE(cache.size(), 64u);
}

TEST(Import, OldFormatWithUsage) {
  const Millis now = 1'800'000'000'000;
  const Json doc = Json::parse(R"({"keys":[
    {"key":"pk_user_12345","name":"User","model":"glm-4.7","token_limit_per_5h":100000,
     "expiry_date":"2026-12-31T23:59:59Z","created_at":"2026-01-18T00:00:00Z","last_used":"2026-01-18T00:00:00Z",
     "total_lifetime_tokens":1234,"usage_windows":[{"window_start":"2026-01-18T00:00:00Z","tokens_used":50}]},
    {"key":"pk_bad_date_1","name":"Bad","expiry_date":"someday"},
    {"name":"no key"},
    {"key":"pk_minimal_1"}]})");
  const ImportResult r = parse_import(doc, now);
  ASSERT_EQ(r.keys.size(), 2u);
  const ImportedKey& u = r.keys[0];
  EXPECT_EQ(u.plain_key, "pk_user_12345");
  EXPECT_EQ(u.record["hash"], sha256_hex("pk_user_12345"));
  EXPECT_EQ(u.record["name"], "User");
  EXPECT_EQ(u.record["model"], "glm-4.7");
  EXPECT_EQ(u.record["token_limit_per_5h"], 100000);
  EXPECT_EQ(u.record["created_at"], "2026-01-18T00:00:00Z");
  EXPECT_EQ(u.lifetime_tokens, 1234);
  ASSERT_EQ(u.usage_windows.size(), 1u);
  EXPECT_EQ(u.usage_windows[0].second, 50);
  EXPECT_EQ(r.keys[1].record["name"], "pk_mini") << "a key without a name is named after its prefix";
  ASSERT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(r.errors[0].first, 1u);
  EXPECT_EQ(r.errors[0].second.field, "expiry_date") << "an invalid date is refused, never 'never expires'";
  EXPECT_EQ(r.errors[1].second.field, "key");
  EXPECT_THROW(parse_import(Json::parse(R"({"users":[]})"), now), std::runtime_error);
}

}  // namespace
}  // namespace glmp::plugins::auth
