// The profiling logic without the request ABI: settings, phase names, sampling, the store's
// retention bounds (max_records, max_age with an injected clock, per_key_max under a flood),
// the percentiles on known sets and the shape of the JSON answers.
#include <gtest/gtest.h>

#include <atomic>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "profile_store.hpp"

namespace {

using namespace glmp::plugins::profiling;

constexpr std::int64_t kT0 = 1'700'000'000'000;  // Unix ms
constexpr std::int64_t kMs = 1'000'000;           // ns

// "prefix" + std::to_string(n), without the operator+(const char*, std::string&&) that GCC 12's
// -Wrestrict misreads.
std::string numbered(std::string prefix, long n) { return prefix += std::to_string(n); }

ProfilingSettings parse(const std::string& json) { return read_settings(glmp::Settings(json)); }

// The SettingsError's message, or "" when the settings are accepted.
std::string refusal(const std::string& json) {
  try {
    parse(json);
  } catch (const glmp::SettingsError& e) {
    return e.what();
  }
  return "";
}

Record record(const std::string& id, const std::string& key, std::int64_t total_ms = 10) {
  Record r;
  r.request_id = id;
  r.key_id = key;
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.route = "/v1/";
  r.model = "glm-4.7";
  r.figures.status = 200;
  r.figures.upstream_status = 200;
  r.figures.started_unix_us = kT0 * 1000;
  r.figures.total_ns = total_ms * kMs;
  r.figures.ttft_ns = total_ms * kMs / 2;
  r.figures.upstream_ns = total_ms * kMs - kMs;
  return r;
}

std::vector<std::string> ids(const std::vector<Record>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.request_id);
  return out;
}

// --- settings --------------------------------------------------------------------------------

TEST(ProfilingSettings, Defaults) {
  const ProfilingSettings s = parse("{}");
  EXPECT_EQ(s.max_records, 1000u);
  EXPECT_EQ(s.max_age_ms, 15 * 60'000);
  EXPECT_EQ(s.per_key_max, 200u);
  EXPECT_EQ(s.sample_rate, 1.0);
  EXPECT_EQ(s.slow_threshold_ms, 2000);
  EXPECT_FALSE(s.server_timing);
  EXPECT_EQ(s.top, 10u);
}

TEST(ProfilingSettings, Values) {
  const ProfilingSettings s = parse(R"({"max_records":50,"max_age":"90s","per_key_max":5,"sample_rate":0.25,
                                        "slow_threshold":"1m30s","server_timing":true,"top":3})");
  EXPECT_EQ(s.max_records, 50u);
  EXPECT_EQ(s.max_age_ms, 90'000);
  EXPECT_EQ(s.per_key_max, 5u);
  EXPECT_EQ(s.sample_rate, 0.25);
  EXPECT_EQ(s.slow_threshold_ms, 90'000);
  EXPECT_TRUE(s.server_timing);
  EXPECT_EQ(s.top, 3u);
  EXPECT_EQ(parse(R"({"max_age":60000,"slow_threshold":0,"sample_rate":1})").max_age_ms, 60'000);
}

TEST(ProfilingSettings, RefusalsNameTheSetting) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {R"({"max_record":10})", "\"max_record\""},  // a typo is an unknown key
      {R"({"max_records":0})", "\"max_records\""},
      {R"({"max_records":100001})", "\"max_records\""},
      {R"({"max_records":"10"})", "\"max_records\""},
      {R"({"max_records":1.5})", "\"max_records\""},
      {R"({"per_key_max":0})", "\"per_key_max\""},
      {R"({"top":0})", "\"top\""},
      {R"({"max_age":"0s"})", "\"max_age\""},
      {R"({"max_age":"15 minutes"})", "\"max_age\""},
      {R"({"max_age":-5})", "\"max_age\""},
      {R"({"slow_threshold":"soon"})", "\"slow_threshold\""},
      {R"({"sample_rate":0})", "\"sample_rate\""},
      {R"({"sample_rate":1.5})", "\"sample_rate\""},
      {R"({"sample_rate":-0.1})", "\"sample_rate\""},
      {R"({"sample_rate":"all"})", "\"sample_rate\""},
      {R"({"server_timing":"yes"})", "\"server_timing\""},
  };
  for (const auto& [json, name] : cases) {
    const std::string why = refusal(json);
    EXPECT_NE(why.find(name), std::string::npos) << json << " -> \"" << why << "\"";
  }
}

// --- phase names -----------------------------------------------------------------------------

TEST(PhaseNames, InternsCorePhasesAndPluginHooks) {
  PhaseNames names;
  const std::uint16_t receive = names.intern("receive", "");
  const std::uint16_t auth_req = names.intern("auth", "on_request");
  const std::uint16_t auth_headers = names.intern("auth", "on_request_headers");
  const std::uint16_t odd = names.intern("auth", "on_something_new");
  EXPECT_EQ(names.intern("receive", ""), receive);
  EXPECT_EQ(names.intern("auth", "on_request"), auth_req);
  EXPECT_EQ(names.intern("auth", "on_something_new"), odd);
  EXPECT_NE(names.intern("auth", "on_other_new"), odd);
  EXPECT_NE(receive, auth_req);
  EXPECT_NE(auth_req, auth_headers);
  EXPECT_EQ(names.display(receive), "receive");
  EXPECT_EQ(names.display(auth_req), "auth.on_request");
  EXPECT_EQ(names.display(auth_headers), "auth.on_request_headers");
  EXPECT_EQ(names.display(odd), "auth.on_something_new");
  EXPECT_EQ(names.display(PhaseNames::kNone), "");
  EXPECT_EQ(names.display(static_cast<std::uint16_t>(auth_req + 5)), "");  // never handed out
}

TEST(PhaseNames, AFullTableGivesNone) {
  PhaseNames names;
  for (int i = 0; i < 64; ++i) EXPECT_NE(names.intern(numbered("p", i), "on_complete"), PhaseNames::kNone);
  EXPECT_EQ(names.intern("one_too_many", "on_complete"), PhaseNames::kNone);
  EXPECT_NE(names.intern("p3", "on_complete"), PhaseNames::kNone);  // known ones still resolve
  EXPECT_NE(names.intern("one_too_many", "on_request"), PhaseNames::kNone);  // other tables are separate
}

TEST(PhaseNames, ConcurrentInternsAgree) {
  PhaseNames names;
  std::vector<std::vector<std::uint16_t>> seen(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) seen[t].push_back(names.intern(numbered("plugin", i), "on_request"));
    });
  for (auto& th : threads) th.join();
  for (int t = 1; t < 4; ++t) EXPECT_EQ(seen[t], seen[0]);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(names.display(seen[0][i]), numbered("plugin", i) + ".on_request");
}

// --- sampling --------------------------------------------------------------------------------

TEST(Sampling, KeepsAboutTheRateDeterministically) {
  for (const double rate : {0.1, 0.5, 0.9}) {
    int kept = 0;
    for (int i = 0; i < 20'000; ++i) kept += sampled_in(numbered("req-", i), rate) ? 1 : 0;
    EXPECT_NEAR(kept / 20'000.0, rate, 0.02) << rate;
  }
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(sampled_in(numbered("req-", i), 1.0));
  EXPECT_EQ(sampled_in("some-id", 0.5), sampled_in("some-id", 0.5));
}

// --- the store -------------------------------------------------------------------------------

struct Counts {
  std::int64_t records = 0;
  std::size_t age = 0, max_records = 0, per_key = 0;
};

StoreObserver counting(Counts& c) {
  StoreObserver o;
  o.changed = [&c](std::int64_t d) { c.records += d; };
  o.evicted = [&c](Eviction why, std::size_t n) {
    (why == Eviction::Age ? c.age : why == Eviction::MaxRecords ? c.max_records : c.per_key) += n;
  };
  return o;
}

TEST(ProfileStore, MaxRecordsDropsTheOldest) {
  Counts c;
  ProfileStore store(StoreLimits{100, 60'000, 100}, counting(c));
  for (int i = 0; i < 250; ++i) {
    const Record r = record(numbered("r", i), numbered("key", i % 7));
    store.insert(r.view(), kT0);
    ASSERT_LE(store.size(), 100u);
  }
  const auto all = store.records(std::nullopt, kT0);
  ASSERT_EQ(all.size(), 100u);
  EXPECT_EQ(all.front().request_id, "r150");
  EXPECT_EQ(all.back().request_id, "r249");
  EXPECT_EQ(c.records, 100);
  EXPECT_EQ(c.max_records, 150u);
  EXPECT_EQ(c.per_key, 0u);
  // The per-key index stayed consistent with the list.
  std::size_t per_key_total = 0;
  for (int k = 0; k < 7; ++k) per_key_total += store.records(numbered("key", k), kT0).size();
  EXPECT_EQ(per_key_total, 100u);
}

TEST(ProfileStore, MaxAgeDropsOnInsertAndOnRead) {
  Counts c;
  ProfileStore store(StoreLimits{100, 1000, 100}, counting(c));
  store.insert(record("a", "k").view(), kT0);
  store.insert(record("b", "k").view(), kT0 + 400);
  store.insert(record("c", "other").view(), kT0 + 800);
  EXPECT_EQ(ids(store.records(std::nullopt, kT0 + 999)), (std::vector<std::string>{"a", "b", "c"}));
  // Read: a is 1000 ms old now.
  EXPECT_EQ(ids(store.records(std::nullopt, kT0 + 1000)), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(c.age, 1u);
  // Insert: b goes as d comes in; a find does the same for c.
  store.insert(record("d", "k").view(), kT0 + 1500);
  EXPECT_EQ(c.age, 2u);
  EXPECT_FALSE(store.find("c", std::nullopt, kT0 + 1800));
  EXPECT_EQ(c.age, 3u);
  EXPECT_EQ(ids(store.records("k", kT0 + 1800)), (std::vector<std::string>{"d"}));
  EXPECT_TRUE(store.records("other", kT0 + 1800).empty());
  EXPECT_TRUE(store.records(std::nullopt, kT0 + 2500).empty());
  EXPECT_EQ(c.records, 0);
  EXPECT_EQ(c.age, 4u);
}

TEST(ProfileStore, PerKeyMaxStopsAFloodFromEvictingOthers) {
  Counts c;
  ProfileStore store(StoreLimits{100, 60'000, 20}, counting(c));
  for (int i = 0; i < 10; ++i) store.insert(record(numbered("quiet-", i), "quiet").view(), kT0);
  for (int i = 0; i < 30; ++i) store.insert(record(numbered("calm-", i), "calm").view(), kT0);  // 10 over its cap
  for (int i = 0; i < 5000; ++i) store.insert(record(numbered("flood-", i), "flood").view(), kT0);
  const auto quiet = store.records("quiet", kT0);
  EXPECT_EQ(quiet.size(), 10u) << "the flood evicted another key's records";
  const auto calm = store.records("calm", kT0);
  ASSERT_EQ(calm.size(), 20u);
  EXPECT_EQ(calm.front().request_id, "calm-10");  // its own oldest went
  const auto flood = store.records("flood", kT0);
  ASSERT_EQ(flood.size(), 20u);
  EXPECT_EQ(flood.front().request_id, "flood-4980");
  EXPECT_EQ(flood.back().request_id, "flood-4999");
  EXPECT_EQ(store.size(), 50u);
  EXPECT_EQ(c.per_key, 10u + 4980u);
  EXPECT_EQ(c.max_records, 0u);
}

TEST(ProfileStore, ManyKeysStillRespectMaxRecords) {
  Counts c;
  ProfileStore store(StoreLimits{50, 60'000, 10}, counting(c));
  for (int i = 0; i < 1000; ++i) store.insert(record(numbered("r", i), numbered("k", i % 40)).view(), kT0);
  EXPECT_EQ(store.size(), 50u);
  for (int k = 0; k < 40; ++k) EXPECT_LE(store.records(numbered("k", k), kT0).size(), 10u);
  EXPECT_EQ(c.records, 50);
  EXPECT_EQ(c.max_records + c.per_key, 950u);
}

TEST(ProfileStore, RecordsWithoutKeyCountAsOneKey) {
  ProfileStore store(StoreLimits{100, 60'000, 3});
  for (int i = 0; i < 10; ++i) store.insert(record(numbered("anon-", i), "").view(), kT0);
  EXPECT_EQ(ids(store.records(std::string(), kT0)), (std::vector<std::string>{"anon-7", "anon-8", "anon-9"}));
}

TEST(ProfileStore, FindIsScopedToTheKey) {
  ProfileStore store(StoreLimits{100, 60'000, 100});
  store.insert(record("same", "alice", 5).view(), kT0);
  store.insert(record("same", "bob", 7).view(), kT0);
  store.insert(record("mine", "alice").view(), kT0);
  EXPECT_EQ(store.find("same", std::string("alice"), kT0)->key_id, "alice");
  EXPECT_EQ(store.find("same", std::string("bob"), kT0)->key_id, "bob");
  EXPECT_EQ(store.find("same", std::nullopt, kT0)->key_id, "bob");  // the newest
  EXPECT_FALSE(store.find("mine", std::string("bob"), kT0));
  EXPECT_FALSE(store.find("missing", std::nullopt, kT0));
}

TEST(ProfileStore, EraseByKeyOrAll) {
  Counts c;
  ProfileStore store(StoreLimits{100, 60'000, 100}, counting(c));
  for (int i = 0; i < 6; ++i) store.insert(record(numbered("r", i), i % 2 ? "alice" : "bob").view(), kT0);
  EXPECT_EQ(store.erase(std::string("alice")), 3u);
  EXPECT_EQ(store.erase(std::string("alice")), 0u);
  EXPECT_EQ(store.erase(std::string("nobody")), 0u);
  EXPECT_EQ(ids(store.records(std::nullopt, kT0)), (std::vector<std::string>{"r0", "r2", "r4"}));
  // Inserting after a partial erase keeps the bounds working.
  store.insert(record("r6", "alice").view(), kT0);
  EXPECT_EQ(store.erase(std::nullopt), 4u);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(c.records, 0);
  EXPECT_EQ(c.age + c.max_records + c.per_key, 0u);  // a DELETE is not an eviction
  store.insert(record("r7", "bob").view(), kT0);
  EXPECT_EQ(store.size(), 1u);
}

TEST(ProfileStore, RecordsAreCopiedWhole) {
  ProfileStore store(StoreLimits{2, 60'000, 2});
  PhaseNames names;
  Record r = record("x", "alice");
  r.error = "upstream timed out";
  r.phases = {Phase{names.intern("receive", ""), 0, 12'000}, Phase{names.intern("auth", "on_request"), 20'000, 4'000}};
  store.insert(r.view(), kT0);
  // Reused buffers: longer and shorter values than the record they replace.
  store.insert(record("y-with-a-much-longer-request-id-than-before", "bob").view(), kT0);
  store.insert(record("z", "carol").view(), kT0);
  const auto got = store.records(std::nullopt, kT0);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].request_id, "y-with-a-much-longer-request-id-than-before");
  EXPECT_TRUE(got[0].phases.empty());
  EXPECT_TRUE(got[0].error.empty());
  EXPECT_EQ(got[1].key_id, "carol");
  EXPECT_EQ(got[1].stored_ms, kT0);

  ProfileStore one(StoreLimits{5, 60'000, 5});
  one.insert(r.view(), kT0 + 3);
  const auto back = one.find("x", std::nullopt, kT0 + 3);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->error, "upstream timed out");
  ASSERT_EQ(back->phases.size(), 2u);
  EXPECT_EQ(back->phases[1].start_ns, 20'000);
  EXPECT_EQ(back->stored_ms, kT0 + 3);
}

TEST(ProfileStore, ConcurrentInsertsAndReads) {
  ProfileStore store(StoreLimits{200, 60'000, 30});
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop) {
      const auto all = store.records(std::nullopt, kT0);
      ASSERT_LE(all.size(), 200u);
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t)
    writers.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i)
        store.insert(record(numbered(numbered("t", t) + "-", i), numbered("k", (t * 7 + i) % 10)).view(), kT0);
    });
  for (auto& w : writers) w.join();
  stop = true;
  reader.join();
  EXPECT_EQ(store.size(), 200u);
  std::size_t sum = 0;
  for (int k = 0; k < 10; ++k) {
    const std::size_t n = store.records(numbered("k", k), kT0).size();
    EXPECT_LE(n, 30u);
    sum += n;
  }
  EXPECT_EQ(sum, 200u);
}

// --- percentiles and JSON ----------------------------------------------------------------------

TEST(Percentiles, NearestRankOnKnownSets) {
  std::vector<std::int64_t> hundred(100);
  std::iota(hundred.begin(), hundred.end(), 1);
  EXPECT_EQ(nearest_rank(hundred, 50), 50);
  EXPECT_EQ(nearest_rank(hundred, 95), 95);
  EXPECT_EQ(nearest_rank(hundred, 99), 99);
  EXPECT_EQ(nearest_rank(hundred, 100), 100);
  EXPECT_EQ(nearest_rank({7}, 50), 7);
  EXPECT_EQ(nearest_rank({7}, 99), 7);
  const std::vector<std::int64_t> ten{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(nearest_rank(ten, 50), 5);   // ceil(5) = rank 5
  EXPECT_EQ(nearest_rank(ten, 95), 10);  // ceil(9.5) = rank 10
  EXPECT_EQ(nearest_rank({1, 2, 3}, 50), 2);  // ceil(1.5) = rank 2

  std::vector<std::int64_t> ms;
  for (int i = 100; i >= 1; --i) ms.push_back(i * kMs);  // unsorted on purpose
  const Json d = distribution_json(ms);
  EXPECT_EQ(d["p50"], 50.0);
  EXPECT_EQ(d["p95"], 95.0);
  EXPECT_EQ(d["p99"], 99.0);
  EXPECT_EQ(d["avg"], 50.5);
  EXPECT_EQ(d["max"], 100.0);
  const Json none = distribution_json({});
  EXPECT_TRUE(none["p50"].is_null());
  EXPECT_TRUE(none["max"].is_null());
}

TEST(Json, MillisecondsWithMicrosecondPrecision) {
  EXPECT_EQ(to_ms(1'234'567), 1.235);
  EXPECT_EQ(to_ms(12'000), 0.012);
  EXPECT_EQ(to_ms(499), 0.0);
  EXPECT_EQ(to_ms(500'000'000), 500.0);
  EXPECT_EQ(Json(to_ms(12'345)).dump(), "0.012");
}

TEST(Json, RecordShape) {
  PhaseNames names;
  Record r = record("req-1", "key_a", 0);
  r.figures.status = 502;
  r.figures.upstream_status = 0;
  r.figures.streamed = true;
  r.figures.coalesced = true;
  r.figures.bytes_in = 321;
  r.figures.bytes_out = 654;
  r.figures.started_unix_us = 1'767'225'599'123'456;  // 2025-12-31T23:59:59.123456Z
  r.figures.total_ns = 1'234'567;
  r.figures.ttft_ns = -1;
  r.figures.upstream_ns = 2'000'000;  // more than the total: the overhead is never negative
  r.error = "upstream connect failed";
  r.phases = {Phase{names.intern("receive", ""), 0, 12'345}, Phase{names.intern("auth", "on_request"), 15'000, 4'321}};
  const Json j = record_json(r, names);
  const std::vector<std::string> keys{"request_id", "key_id",    "method",     "path",      "route",
                                      "model",      "status",    "upstream_status", "streamed", "cached",
                                      "coalesced",  "bytes_in",  "bytes_out",  "usage",     "started_at",
                                      "total_ms",   "ttft_ms",   "overhead_ms", "phases",   "error"};
  std::vector<std::string> got;
  for (const auto& [k, v] : j.items()) got.push_back(k);
  EXPECT_EQ(got, keys);
  EXPECT_EQ(j["request_id"], "req-1");
  EXPECT_EQ(j["key_id"], "key_a");
  EXPECT_EQ(j["status"], 502);
  EXPECT_EQ(j["upstream_status"], 0);
  EXPECT_EQ(j["streamed"], true);
  EXPECT_EQ(j["cached"], false);
  EXPECT_EQ(j["coalesced"], true);
  EXPECT_EQ(j["bytes_in"], 321);
  EXPECT_EQ(j["bytes_out"], 654);
  EXPECT_TRUE(j["usage"].is_null());
  EXPECT_EQ(j["started_at"], "2025-12-31T23:59:59.123Z");
  EXPECT_EQ(j["total_ms"], 1.235);
  EXPECT_TRUE(j["ttft_ms"].is_null());
  EXPECT_EQ(j["overhead_ms"], 0.0);
  EXPECT_EQ(j["error"], "upstream connect failed");
  ASSERT_EQ(j["phases"].size(), 2u);
  EXPECT_EQ(j["phases"][0], (Json{{"name", "receive"}, {"start_ms", 0.0}, {"dur_ms", 0.012}}));
  EXPECT_EQ(j["phases"][1], (Json{{"name", "auth.on_request"}, {"start_ms", 0.015}, {"dur_ms", 0.004}}));

  r.error.clear();
  r.figures.usage = TokenUsage{true, 10, 20, 3, 4};
  r.figures.ttft_ns = 1'000'000;
  r.figures.upstream_ns = 234'567;
  const Json k = record_json(r, names);
  EXPECT_FALSE(k.contains("error"));
  EXPECT_EQ(k["usage"], (Json{{"input", 10}, {"output", 20}, {"cache_read", 3}, {"cache_creation", 4}}));
  EXPECT_EQ(k["ttft_ms"], 1.0);
  EXPECT_EQ(k["overhead_ms"], 1.0);
}

TEST(Json, Listing) {
  PhaseNames names;
  const std::uint16_t receive = names.intern("receive", "");
  const std::uint16_t stream = names.intern("stream", "");
  std::vector<Record> records;
  for (int i = 1; i <= 20; ++i) {
    Record r = record(numbered("r", i), "k", 0);
    r.figures.started_unix_us = (kT0 + i * 1000) * 1000;
    r.figures.total_ns = ((i * 7) % 20 + 1) * kMs;  // 1..20 ms, shuffled
    r.figures.upstream_ns = 0;
    r.figures.ttft_ns = i % 2 == 0 ? i * kMs : -1;  // only the even ones have one
    r.phases.push_back(Phase{receive, 0, i * 1000});
    if (i > 10) r.phases.push_back(Phase{stream, 100, i * kMs});
    records.push_back(std::move(r));
  }
  ProfilingSettings settings;
  settings.top = 3;
  const Json j = listing_json(records, settings, names);
  EXPECT_EQ(j["window"]["count"], 20);
  EXPECT_EQ(j["window"]["oldest"], glmp::format_rfc3339(kT0 + 1000));
  EXPECT_EQ(j["window"]["newest"], glmp::format_rfc3339(kT0 + 20'000));
  EXPECT_EQ(j["summary"]["total_ms"]["p50"], 10.0);
  EXPECT_EQ(j["summary"]["total_ms"]["p95"], 19.0);
  EXPECT_EQ(j["summary"]["total_ms"]["p99"], 20.0);
  EXPECT_EQ(j["summary"]["total_ms"]["max"], 20.0);
  EXPECT_EQ(j["summary"]["total_ms"]["avg"], 10.5);
  EXPECT_EQ(j["summary"]["overhead_ms"]["max"], 20.0);
  // ttft over the 10 records that have one: 2, 4, …, 20.
  EXPECT_EQ(j["summary"]["ttft_ms"]["p50"], 10.0);
  EXPECT_EQ(j["summary"]["ttft_ms"]["max"], 20.0);
  EXPECT_EQ(j["summary"]["phases"]["receive"], (Json{{"p50", 0.01}, {"p95", 0.019}, {"count", 20}}));
  EXPECT_EQ(j["summary"]["phases"]["stream"]["count"], 10);
  EXPECT_EQ(j["summary"]["phases"]["stream"]["p50"], 15.0);
  ASSERT_EQ(j["slowest"].size(), 3u);
  EXPECT_EQ(j["slowest"][0]["total_ms"], 20.0);
  EXPECT_EQ(j["slowest"][1]["total_ms"], 19.0);
  EXPECT_EQ(j["slowest"][2]["total_ms"], 18.0);
  ASSERT_EQ(j["recent"].size(), 3u);
  EXPECT_EQ(j["recent"][0]["request_id"], "r20");
  EXPECT_EQ(j["recent"][2]["request_id"], "r18");
  EXPECT_EQ(j["settings"], settings_json(settings));
  EXPECT_EQ(j["settings"]["top"], 3);
  EXPECT_EQ(j["settings"]["max_age_ms"], 900'000);

  const Json empty = listing_json({}, settings, names);
  EXPECT_EQ(empty["window"], (Json{{"count", 0}, {"oldest", nullptr}, {"newest", nullptr}}));
  EXPECT_TRUE(empty["summary"]["total_ms"]["p50"].is_null());
  EXPECT_TRUE(empty["summary"]["phases"].empty());
  EXPECT_TRUE(empty["slowest"].empty());
  EXPECT_TRUE(empty["recent"].empty());
}

}  // namespace
