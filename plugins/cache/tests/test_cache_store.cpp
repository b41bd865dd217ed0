// Unit tests of the cache's pure logic (cache_store.hpp): settings, sizes, Cache-Control request
// directives, what may be stored, and the LRU store with an injected clock — ttl and max-age, LRU
// by entries and by bytes (memory stays within max_bytes), replacement, filtered deletes, the
// sweep, the observer (gauges), and that every recording reference is given back.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache_store.hpp"

namespace {
// "k" + std::to_string(i) trips GCC 12's -Wrestrict false positive at -O3.
template <class N>
std::string glue(const char* prefix, N n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}


using namespace glmp::plugins::cache;

// ---------------------------------------------------------------------------------------------
// Settings and sizes
// ---------------------------------------------------------------------------------------------

CacheSettings settings(const std::string& json) { return read_settings(glmp::Settings(json)); }

std::string refusal(const std::string& json) {
  try {
    settings(json);
  } catch (const glmp::SettingsError& e) {
    return e.what();
  }
  return "";
}

TEST(CacheSettings, Defaults) {
  const CacheSettings s = settings("{}");
  EXPECT_EQ(s.ttl_ms, 300'000);
  EXPECT_EQ(s.max_entries, 1000u);
  EXPECT_EQ(s.max_entry_bytes, 1024u * 1024u);
  EXPECT_EQ(s.max_bytes, 256u * 1024u * 1024u);
  EXPECT_FALSE(s.global_scope);
  EXPECT_TRUE(s.exclude_fields.empty());
  EXPECT_FALSE(s.charge_hits);
  EXPECT_EQ(s.paths, (std::vector<std::string>{"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/embeddings"}));
}

TEST(CacheSettings, AllSet) {
  const CacheSettings s = settings(R"({"ttl":"90s","max_entries":5,"max_entry_bytes":"64KiB","max_bytes":1000000,
    "scope":"global","exclude_fields":["user"],"charge_hits":true,"paths":["/v1/messages"]})");
  EXPECT_EQ(s.ttl_ms, 90'000);
  EXPECT_EQ(s.max_entries, 5u);
  EXPECT_EQ(s.max_entry_bytes, 65536u);
  EXPECT_EQ(s.max_bytes, 1'000'000u);
  EXPECT_TRUE(s.global_scope);
  EXPECT_EQ(s.exclude_fields, std::vector<std::string>{"user"});
  EXPECT_TRUE(s.charge_hits);
  EXPECT_EQ(s.paths, std::vector<std::string>{"/v1/messages"});
  EXPECT_EQ(settings(R"({"ttl":1500})").ttl_ms, 1500);
  EXPECT_FALSE(settings(R"({"scope":"key"})").global_scope);
}

TEST(CacheSettings, Refusals) {
  EXPECT_NE(refusal(R"({"ttl_ms":1})").find("unknown setting \"ttl_ms\""), std::string::npos);
  EXPECT_NE(refusal(R"({"ttl":"0s"})").find("ttl"), std::string::npos);
  EXPECT_NE(refusal(R"({"ttl":"five minutes"})").find("ttl"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_entries":0})").find("max_entries"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_entries":"10"})").find("max_entries"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_bytes":"12 parsecs"})").find("max_bytes"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_bytes":0})").find("max_bytes"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_bytes":-5})").find("max_bytes"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_bytes":1.5})").find("max_bytes"), std::string::npos);
  EXPECT_NE(refusal(R"({"max_entry_bytes":"2MiB","max_bytes":"1MiB"})").find("max_entry_bytes"), std::string::npos);
  EXPECT_NE(refusal(R"({"scope":"tenant"})").find("scope"), std::string::npos);
  EXPECT_NE(refusal(R"({"exclude_fields":"user"})").find("exclude_fields"), std::string::npos);
  EXPECT_NE(refusal(R"({"exclude_fields":[""]})").find("exclude_fields"), std::string::npos);
  EXPECT_NE(refusal(R"({"exclude_fields":["user","stream"]})").find("\"stream\""), std::string::npos);
  EXPECT_NE(refusal(R"({"charge_hits":"yes"})").find("charge_hits"), std::string::npos);
  EXPECT_NE(refusal(R"({"paths":[]})").find("paths"), std::string::npos);
  EXPECT_NE(refusal(R"({"paths":["v1/messages"]})").find("paths"), std::string::npos);
  EXPECT_EQ(refusal(R"({"max_entry_bytes":"1MiB","max_bytes":"1MiB"})"), "");
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

TEST(CacheControl, Directives) {
  EXPECT_TRUE(parse_cache_control("no-cache").no_cache);
  EXPECT_TRUE(parse_cache_control("No-Cache").no_cache);
  EXPECT_TRUE(parse_cache_control("NO-STORE").no_store);
  const CacheControl cc = parse_cache_control("no-store, max-age=60");
  EXPECT_TRUE(cc.no_store);
  EXPECT_FALSE(cc.no_cache);
  EXPECT_EQ(cc.max_age_s, 60);
  EXPECT_EQ(parse_cache_control("MAX-AGE=0").max_age_s, 0);
  EXPECT_EQ(parse_cache_control(" max-age = 7 ").max_age_s, 7);
  EXPECT_EQ(parse_cache_control("max-age=\"30\"").max_age_s, 30);
  EXPECT_TRUE(parse_cache_control("no-cache=\"Set-Cookie\"").no_cache);
  const CacheControl none = parse_cache_control("");
  EXPECT_FALSE(none.no_cache);
  EXPECT_FALSE(none.no_store);
  EXPECT_FALSE(none.max_age_s);
}

TEST(CacheControl, GarbageIsTolerated) {
  for (const char* junk : {"max-age=", "max-age=abc", "max-age=-1", "max-age=1.5", "max-age", ",,, ,", "\"",
                           "private, public", "no-cachex", "xno-store", "max-age=\"12", "=no-cache"}) {
    const CacheControl cc = parse_cache_control(junk);
    EXPECT_FALSE(cc.no_cache) << junk;
    EXPECT_FALSE(cc.no_store) << junk;
    EXPECT_FALSE(cc.max_age_s) << junk;
  }
  // Valid directives survive garbage around them.
  const CacheControl cc = parse_cache_control("foo=\"a, no-store\", , max-age=abc,no-cache ,  max-age=5");
  EXPECT_FALSE(cc.no_store);  // inside a quoted string
  EXPECT_TRUE(cc.no_cache);
  EXPECT_EQ(cc.max_age_s, 5);
  EXPECT_EQ(parse_cache_control("x=\"a\\\"b, no-store\"").no_store, false);  // an escaped quote stays quoted
}

TEST(CacheControl, SeveralValuesAndMaxAges) {
  CacheControl cc;
  parse_cache_control("max-age=50", cc);
  parse_cache_control("no-cache", cc);
  parse_cache_control("max-age=10, max-age=20", cc);
  EXPECT_TRUE(cc.no_cache);
  EXPECT_EQ(cc.max_age_s, 10);  // the smallest
  // Huge values saturate, still representable in milliseconds.
  const CacheControl big = parse_cache_control("max-age=99999999999999999999999999");
  ASSERT_TRUE(big.max_age_s);
  EXPECT_GT(*big.max_age_s, 1'000'000'000'000);
  EXPECT_LE(*big.max_age_s, INT64_MAX / 1000);
}

// ---------------------------------------------------------------------------------------------
// What may be stored
// ---------------------------------------------------------------------------------------------

glmp::RecordingInfo good(std::int64_t bytes = 100) {
  glmp::RecordingInfo i;
  i.state = glmp::RecordingInfo::State::Complete;
  i.status = 200;
  i.ended_normally = true;
  i.replayable = true;
  i.body_bytes = bytes;
  i.finished_ms = 1;
  return i;
}

TEST(NotStorable, Reasons) {
  using glmp::Origin;
  EXPECT_EQ(not_storable_reason(good(), Origin::Upstream, 1000), nullptr);
  EXPECT_EQ(not_storable_reason(good(1000), Origin::Upstream, 1000), nullptr);
  EXPECT_STREQ(not_storable_reason(good(1001), Origin::Upstream, 1000), "too_large");
  EXPECT_STREQ(not_storable_reason(good(), Origin::Cache, 1000), "not_upstream");
  EXPECT_STREQ(not_storable_reason(good(), Origin::Coalesced, 1000), "not_upstream");
  auto i = good();
  i.state = glmp::RecordingInfo::State::Failed;
  EXPECT_STREQ(not_storable_reason(i, Origin::Upstream, 1000), "failed");
  i.state = glmp::RecordingInfo::State::Live;
  EXPECT_STREQ(not_storable_reason(i, Origin::Upstream, 1000), "failed");
  for (int status : {201, 204, 206, 301, 400, 429, 500}) {
    i = good();
    i.status = status;
    EXPECT_STREQ(not_storable_reason(i, Origin::Upstream, 1000), "status") << status;
  }
  i = good();
  i.ended_normally = false;  // a stream without its terminal event, an error event, a cut body
  EXPECT_STREQ(not_storable_reason(i, Origin::Upstream, 1000), "incomplete");
  i = good();
  i.replayable = false;
  EXPECT_STREQ(not_storable_reason(i, Origin::Upstream, 1000), "too_large");
}

// ---------------------------------------------------------------------------------------------
// CacheStore
// ---------------------------------------------------------------------------------------------

// Recording handles whose references are counted, so tests can see them given back. Declare them
// before the store: the store gives its references back when it is destroyed.
struct RefCounted {
  std::atomic<int> refs{0};
};
glmp_host_api& fake_api() {
  static glmp_host_api api = [] {
    glmp_host_api a{};
    a.struct_size = sizeof a;
    a.abi_major = GLMP_ABI_MAJOR;
    a.abi_minor = GLMP_ABI_MINOR;
    a.recording_retain = [](glmp_recording_host_ptr* h) { ++reinterpret_cast<RefCounted*>(h)->refs; };
    a.recording_release = [](glmp_recording_host_ptr* h) { --reinterpret_cast<RefCounted*>(h)->refs; };
    return a;
  }();
  return api;
}
// One reference to `rc` (as request_record would hand out), shared like the plugin shares it.
CacheStore::RecordingPtr rec(RefCounted& rc) {
  ++rc.refs;
  return std::make_shared<const glmp::Recording>(&fake_api(), reinterpret_cast<glmp_recording_host_ptr*>(&rc));
}

constexpr std::int64_t kT0 = 1'800'000'000'000;
constexpr std::int64_t kTtl = 60'000;

struct Observed {
  std::int64_t entries = 0, bytes = 0;
  std::uint64_t size = 0, ttl = 0, admin = 0;
  StoreObserver observer() {
    StoreObserver o;
    o.changed = [this](std::int64_t e, std::int64_t b) {
      entries += e;
      bytes += b;
    };
    o.removed = [this](Removal r, std::size_t n) { (r == Removal::Size ? size : r == Removal::Ttl ? ttl : admin) += n; };
    return o;
  }
};

TEST(CacheStore, MissThenHit) {
  RefCounted a;
  CacheStore store({kTtl, 10, 100'000});
  EXPECT_FALSE(store.lookup("k", kT0));
  const auto r = rec(a);
  EXPECT_EQ(store.put("k", "key_1", "m", r, 2000, kT0 - 500, kT0), CacheStore::PutResult::Stored);
  const auto hit = store.lookup("k", kT0 + 1000);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->recording, r);
  EXPECT_EQ(hit->finished_ms, kT0 - 500);
  EXPECT_FALSE(store.lookup("other", kT0));
  const StoreStats s = store.stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, 2000u);
}

TEST(CacheStore, FinishedTimeIsClampedToNow) {
  RefCounted a, b;
  CacheStore store({kTtl, 10, 100'000});
  store.put("future", "", "", rec(a), 10, kT0 + 5000, kT0);
  store.put("unknown", "", "", rec(b), 10, 0, kT0);
  EXPECT_EQ(store.lookup("future", kT0)->finished_ms, kT0);
  EXPECT_EQ(store.lookup("unknown", kT0)->finished_ms, kT0);
}

TEST(CacheStore, TtlExpiresOnLookup) {
  Observed seen;
  RefCounted a;
  CacheStore store({kTtl, 10, 100'000}, seen.observer());
  store.put("k", "", "", rec(a), 100, kT0, kT0);
  EXPECT_TRUE(store.lookup("k", kT0 + kTtl - 1));
  EXPECT_EQ(a.refs, 1);
  EXPECT_FALSE(store.lookup("k", kT0 + kTtl));
  EXPECT_EQ(a.refs, 0);  // the entry's reference is given back
  const StoreStats s = store.stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(seen.ttl, 1u);
  EXPECT_EQ(seen.entries, 0);
  EXPECT_EQ(seen.bytes, 0);
}

TEST(CacheStore, MaxAgeRefusesOlderEntriesButKeepsThem) {
  RefCounted a;
  CacheStore store({kTtl, 10, 100'000});
  store.put("k", "", "", rec(a), 100, kT0, kT0);
  EXPECT_TRUE(store.lookup("k", kT0 + 4999, 5000));
  EXPECT_FALSE(store.lookup("k", kT0 + 5000, 5000));  // "younger than N"
  EXPECT_FALSE(store.lookup("k", kT0, 0));            // max-age=0 never hits
  EXPECT_TRUE(store.lookup("k", kT0 + 5000));         // still there for others
  EXPECT_EQ(store.stats().expired, 0u);
}

TEST(CacheStore, LruByEntries) {
  Observed seen;
  RefCounted r[4];
  CacheStore store({kTtl, 3, 100'000}, seen.observer());
  store.put("a", "", "", rec(r[0]), 10, kT0, kT0);
  store.put("b", "", "", rec(r[1]), 10, kT0, kT0);
  store.put("c", "", "", rec(r[2]), 10, kT0, kT0);
  EXPECT_TRUE(store.lookup("a", kT0));  // a is now the most recently used: b is the least
  store.put("d", "", "", rec(r[3]), 10, kT0, kT0);
  EXPECT_TRUE(store.lookup("a", kT0));
  EXPECT_FALSE(store.lookup("b", kT0));
  EXPECT_TRUE(store.lookup("c", kT0));
  EXPECT_TRUE(store.lookup("d", kT0));
  EXPECT_EQ(r[1].refs, 0);
  EXPECT_EQ(store.stats().entries, 3u);
  EXPECT_EQ(store.stats().evictions, 1u);
  EXPECT_EQ(seen.size, 1u);
}

TEST(CacheStore, LruByBytes) {
  RefCounted r[5];
  CacheStore store({kTtl, 100, 10'000});
  for (int i = 0; i < 3; ++i) store.put(glue("k", i), "", "", rec(r[i]), 3000, kT0, kT0);
  EXPECT_EQ(store.stats().bytes, 9000u);
  store.put("k3", "", "", rec(r[3]), 3000, kT0, kT0);  // 12000 > 10000: k0 goes
  EXPECT_FALSE(store.lookup("k0", kT0));
  EXPECT_EQ(store.stats().bytes, 9000u);
  store.put("k4", "", "", rec(r[4]), 7000, kT0, kT0);  // needs two more to go: k1, k2
  EXPECT_FALSE(store.lookup("k1", kT0));
  EXPECT_FALSE(store.lookup("k2", kT0));
  EXPECT_TRUE(store.lookup("k3", kT0));
  EXPECT_TRUE(store.lookup("k4", kT0));
  EXPECT_EQ(store.stats().bytes, 10'000u);
  EXPECT_EQ(store.stats().evictions, 3u);
}

TEST(CacheStore, EntryLargerThanMaxBytesIsNeverStored) {
  RefCounted a, b;
  CacheStore store({kTtl, 100, 10'000});
  store.put("small", "", "", rec(a), 5000, kT0, kT0);
  {
    auto big = rec(b);
    EXPECT_EQ(store.put("big", "", "", big, 10'001, kT0, kT0), CacheStore::PutResult::TooLarge);
  }
  EXPECT_EQ(b.refs, 0);
  EXPECT_TRUE(store.lookup("small", kT0));  // nothing was evicted for it
  EXPECT_EQ(store.stats().evictions, 0u);
  EXPECT_EQ(store.put("exact", "", "", rec(b), 10'000, kT0, kT0), CacheStore::PutResult::Stored);
  EXPECT_EQ(store.stats().entries, 1u);
}

TEST(CacheStore, PutReplacesTheSameKey) {
  Observed seen;
  RefCounted a, b;
  CacheStore store({kTtl, 10, 100'000}, seen.observer());
  store.put("k", "key_1", "m", rec(a), 100, kT0, kT0);
  const auto newer = rec(b);
  store.put("k", "key_1", "m", newer, 300, kT0 + 10, kT0 + 10);
  EXPECT_EQ(a.refs, 0);
  EXPECT_EQ(store.lookup("k", kT0 + 10)->recording, newer);
  EXPECT_EQ(store.stats().entries, 1u);
  EXPECT_EQ(store.stats().bytes, 300u);
  EXPECT_EQ(store.stats().evictions, 0u);  // a refresh is not an eviction
  EXPECT_EQ(seen.entries, 1);
  EXPECT_EQ(seen.bytes, 300);
  // Its age counts from the new response.
  EXPECT_TRUE(store.lookup("k", kT0 + 10 + kTtl - 1));
}

TEST(CacheStore, DropOnlyTheSameRecording) {
  RefCounted a, b;
  CacheStore store({kTtl, 10, 100'000});
  const auto old = rec(a);
  store.put("k", "", "", old, 100, kT0, kT0);
  store.put("k", "", "", rec(b), 100, kT0, kT0);  // refreshed meanwhile
  EXPECT_FALSE(store.drop("k", old));
  EXPECT_TRUE(store.lookup("k", kT0));
  const auto current = store.lookup("k", kT0)->recording;
  EXPECT_TRUE(store.drop("k", current));
  EXPECT_FALSE(store.lookup("k", kT0));
  EXPECT_FALSE(store.drop("k", current));
}

TEST(CacheStore, SweepRemovesOnlyExpiredEntries) {
  Observed seen;
  RefCounted r[4];
  CacheStore store({kTtl, 100, 100'000}, seen.observer());
  store.put("old1", "", "", rec(r[0]), 10, kT0, kT0);
  store.put("new", "", "", rec(r[1]), 10, kT0 + 30'000, kT0 + 30'000);
  store.put("old2", "", "", rec(r[2]), 10, kT0 + 1, kT0 + 30'000);  // stored later, finished early
  store.put("newer", "", "", rec(r[3]), 10, kT0 + 40'000, kT0 + 40'000);
  EXPECT_EQ(store.sweep(kT0 + kTtl), 1u);
  EXPECT_EQ(store.sweep(kT0 + kTtl + 1), 1u);
  EXPECT_EQ(store.sweep(kT0 + kTtl + 2), 0u);
  EXPECT_EQ(r[0].refs, 0);
  EXPECT_EQ(r[2].refs, 0);
  EXPECT_TRUE(store.lookup("new", kT0 + kTtl + 2));
  EXPECT_EQ(store.sweep(kT0 + 30'000 + kTtl), 1u);
  EXPECT_EQ(store.stats().entries, 1u);
  EXPECT_EQ(store.stats().expired, 3u);
  EXPECT_EQ(seen.ttl, 3u);
}

TEST(CacheStore, MaybeSweepRunsAtMostOncePerInterval) {
  RefCounted r[3];
  CacheStore store({kTtl, 100, 100'000});
  EXPECT_EQ(store.maybe_sweep(kT0), 0u);  // first call sweeps (nothing there)
  store.put("a", "", "", rec(r[0]), 10, kT0 - kTtl, kT0);
  store.put("b", "", "", rec(r[1]), 10, kT0 - kTtl + 500, kT0);
  EXPECT_EQ(store.maybe_sweep(kT0 + 999), 0u);  // within the interval: skipped
  EXPECT_EQ(store.stats().entries, 2u);
  EXPECT_EQ(store.maybe_sweep(kT0 + 1000), 2u);
  store.put("c", "", "", rec(r[2]), 10, kT0 - kTtl, kT0 + 1000);
  EXPECT_EQ(store.maybe_sweep(kT0 + 1500), 0u);
  EXPECT_EQ(store.maybe_sweep(kT0 + 2000), 1u);
}

TEST(CacheStore, EraseByKeyIdAndModel) {
  Observed seen;
  RefCounted r[6];
  CacheStore store({kTtl, 100, 100'000}, seen.observer());
  store.put("1", "alice", "glm-4.7", rec(r[0]), 10, kT0, kT0);
  store.put("2", "alice", "glm-4.5", rec(r[1]), 10, kT0, kT0);
  store.put("3", "bob", "glm-4.7", rec(r[2]), 10, kT0, kT0);
  store.put("4", "bob", "glm-4.5", rec(r[3]), 10, kT0, kT0);
  store.put("5", "", "glm-4.7", rec(r[4]), 10, kT0, kT0);
  store.put("6", "carol", "glm-4.7", rec(r[5]), 10, kT0, kT0);
  EXPECT_EQ(store.erase(std::string("alice"), std::string("glm-4.7")), 1u);
  EXPECT_FALSE(store.lookup("1", kT0));
  EXPECT_EQ(store.erase(std::string("nobody"), std::nullopt), 0u);
  EXPECT_EQ(store.erase(std::string("bob"), std::nullopt), 2u);
  EXPECT_EQ(store.erase(std::nullopt, std::string("glm-4.7")), 2u);
  EXPECT_TRUE(store.lookup("2", kT0));
  EXPECT_EQ(store.erase(std::nullopt, std::nullopt), 1u);
  EXPECT_EQ(store.stats().entries, 0u);
  EXPECT_EQ(store.stats().deleted, 6u);
  EXPECT_EQ(seen.admin, 6u);
  for (auto& rc : r) EXPECT_EQ(rc.refs, 0);
}

TEST(CacheStore, DestructionGivesEverythingBack) {
  Observed seen;
  RefCounted r[3];
  CacheStore::RecordingPtr held;
  {
    CacheStore store({kTtl, 100, 100'000}, seen.observer());
    for (int i = 0; i < 3; ++i) store.put(std::to_string(i), "", "", rec(r[i]), 100, kT0, kT0);
    held = store.lookup("1", kT0)->recording;  // a replay in progress keeps its recording
    EXPECT_EQ(seen.entries, 3);
  }
  EXPECT_EQ(seen.entries, 0);  // the gauges drop with the store
  EXPECT_EQ(seen.bytes, 0);
  EXPECT_EQ(r[0].refs, 0);
  EXPECT_EQ(r[1].refs, 1);
  EXPECT_EQ(r[2].refs, 0);
  held.reset();
  EXPECT_EQ(r[1].refs, 0);
}

// Random operations: the bounds hold after every one, and the observer's running sums match the
// store's own figures.
TEST(CacheStore, BoundsHoldUnderRandomOperations) {
  Observed seen;
  const CacheLimits limits{kTtl, 50, 64 * 1024};
  std::vector<std::unique_ptr<RefCounted>> handles;
  CacheStore store(limits, seen.observer());
  std::mt19937 rng(1234);
  std::int64_t now = kT0;
  for (int i = 0; i < 20'000; ++i) {
    now += static_cast<std::int64_t>(rng() % 50);
    const std::string key = glue("k", rng() % 200);
    switch (rng() % 10) {
      case 0: store.maybe_sweep(now); break;
      case 1:
        if (rng() % 50 == 0) store.erase(std::nullopt, glue("m", rng() % 3));
        break;
      case 2:
      case 3:
      case 4: store.lookup(key, now, rng() % 2 ? std::optional<std::int64_t>(rng() % 20'000) : std::nullopt); break;
      default: {
        handles.push_back(std::make_unique<RefCounted>());
        const std::size_t bytes = kEntryOverhead + rng() % (70 * 1024);
        store.put(key, "", glue("m", rng() % 3), rec(*handles.back()), bytes, now - rng() % 1000, now);
      }
    }
    const StoreStats s = store.stats();
    ASSERT_LE(s.bytes, limits.max_bytes);
    ASSERT_LE(s.entries, limits.max_entries);
    ASSERT_EQ(seen.entries, static_cast<std::int64_t>(s.entries));
    ASSERT_EQ(seen.bytes, static_cast<std::int64_t>(s.bytes));
  }
  int held = 0;
  for (const auto& h : handles) held += h->refs.load();
  EXPECT_EQ(held, static_cast<int>(store.stats().entries));  // exactly one reference per entry
}

TEST(CacheStore, ConcurrentUse) {
  Observed seen;
  std::mutex seen_mutex;  // the observer runs under the store's lock; this only orders the final read
  const CacheLimits limits{kTtl, 20, 20 * 1024};
  std::vector<std::unique_ptr<RefCounted>> handles(8 * 2000);
  for (auto& h : handles) h = std::make_unique<RefCounted>();
  {
    CacheStore store(limits, seen.observer());
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(t));
        for (int i = 0; i < 2000; ++i) {
          const std::int64_t now = kT0 + i * 10;
          const std::string key = glue("k", rng() % 40);
          if (i % 3 == 0) {
            store.put(key, "", "", rec(*handles[static_cast<std::size_t>(t * 2000 + i)]), 1024 + rng() % 2048, now, now);
          } else if (auto hit = store.lookup(key, now)) {
            if (rng() % 10 == 0) store.drop(key, hit->recording);
          }
          if (i % 100 == 0) store.maybe_sweep(now);
          const StoreStats s = store.stats();
          EXPECT_LE(s.bytes, limits.max_bytes);
          EXPECT_LE(s.entries, limits.max_entries);
        }
      });
    }
    for (auto& th : threads) th.join();
    std::lock_guard<std::mutex> lock(seen_mutex);
    EXPECT_EQ(seen.entries, static_cast<std::int64_t>(store.stats().entries));
  }
  int held = 0;
  for (const auto& h : handles) held += h->refs.load();
  EXPECT_EQ(held, 0);
  EXPECT_EQ(seen.entries, 0);
}

}  // namespace
