// The store contract, run against every backend (memory, sqlite, redis): records, paging, window
// edges and ageing, atomic add-and-sum, counters, concurrency, argument checks and restart
// persistence. Backend-specific behaviour lives in test_store_sqlite.cpp / test_store_redis.cpp.
#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "../support/redis_server.hpp"
#include "store/store.hpp"

namespace glmp::core::store {
namespace {

using config::StoreBackend;
constexpr Millis kMinute = 60'000;
constexpr Millis kHour = 60 * kMinute;
constexpr Millis kBase = 1'800'000'000'000;  // a bucket-aligned instant (2027-01-15)

std::string backend_name(StoreBackend b) {
  switch (b) {
    case StoreBackend::Memory: return "memory";
    case StoreBackend::Sqlite: return "sqlite";
    case StoreBackend::Redis: return "redis";
  }
  return "?";
}

class StoreContract : public ::testing::TestWithParam<StoreBackend> {
protected:
  static void SetUpTestSuite() {
    if (!redis_) redis_ = std::make_unique<test::RedisServer>();
  }
  static void TearDownTestSuite() { redis_.reset(); }

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string id = std::string(info->name());
    for (char& c : id)
      if (c == '/') c = '_';
    dir_ = std::filesystem::temp_directory_path() / ("glmp-store-" + std::to_string(::getpid()) + "-" + id);
    std::filesystem::remove_all(dir_);
    cfg_.backend = GetParam();
    cfg_.path = (dir_ / "state.db").string();
    cfg_.url = redis_->url();
    cfg_.prefix = "t:" + id + ":" + std::to_string(::getpid()) + ":";
    cfg_.timeout = std::chrono::milliseconds(1000);
    cfg_.max_window = std::chrono::milliseconds(24 * kHour);
    store_ = make_store(cfg_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void reopen() {
    store_.reset();
    store_ = make_store(cfg_, nullptr);
  }
  int64_t sum(std::string_view name, Millis window, Millis now) {
    int64_t s = -1;
    EXPECT_EQ(store_->window_sum(name, window, now, s), Status::Ok);
    return s;
  }

  static inline std::unique_ptr<test::RedisServer> redis_;
  std::filesystem::path dir_;
  config::StoreConfig cfg_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreContract, RecordsRoundTrip) {
  std::string v;
  EXPECT_EQ(store_->get("keys", "k1", v), Status::NotFound);
  EXPECT_EQ(store_->put("keys", "k1", R"({"name":"alice","n":1})"), Status::Ok);
  EXPECT_EQ(store_->get("keys", "k1", v), Status::Ok);
  EXPECT_EQ(v, R"({"name":"alice","n":1})");
  EXPECT_EQ(store_->put("keys", "k1", R"({"name":"bob"})"), Status::Ok);
  EXPECT_EQ(store_->get("keys", "k1", v), Status::Ok);
  EXPECT_EQ(v, R"({"name":"bob"})");
  // Namespaces are separate.
  EXPECT_EQ(store_->get("other", "k1", v), Status::NotFound);
  EXPECT_EQ(store_->remove("keys", "k1"), Status::Ok);
  EXPECT_EQ(store_->get("keys", "k1", v), Status::NotFound);
  EXPECT_EQ(store_->remove("keys", "k1"), Status::NotFound);
}

TEST_P(StoreContract, RejectsInvalidArguments) {
  std::string v;
  int64_t n = 0;
  EXPECT_EQ(store_->put("keys", "k", "{not json"), Status::Invalid);
  EXPECT_EQ(store_->put("keys", "k", ""), Status::Invalid);
  EXPECT_EQ(store_->put("", "k", "{}"), Status::Invalid);
  EXPECT_EQ(store_->put("keys", "", "{}"), Status::Invalid);
  EXPECT_EQ(store_->put("keys", std::string(kMaxNameBytes + 1, 'k'), "{}"), Status::Invalid);
  EXPECT_EQ(store_->put("keys", "k", std::string("{\"a\":\"") + std::string(kMaxValueBytes, 'x') + "\"}"), Status::Invalid);
  EXPECT_EQ(store_->get("keys", "k", v), Status::NotFound) << "a refused put must not store anything";
  EXPECT_EQ(store_->window_add("w", 1, 25 * kHour, kBase, nullptr), Status::Invalid) << "window > max_window";
  EXPECT_EQ(store_->window_sum("w", 0, kBase, n), Status::Invalid);
  EXPECT_EQ(store_->counter_add("", 1, nullptr), Status::Invalid);
  Page page;
  EXPECT_EQ(store_->list("keys", "", "", 0, page), Status::Invalid);
  EXPECT_EQ(store_->list("keys", "", "", kMaxListLimit + 1, page), Status::Invalid);
  // Records are documents: objects or arrays, not bare scalars.
  EXPECT_EQ(store_->put("keys", "n", "42"), Status::Invalid);
  EXPECT_EQ(store_->put("keys", "a", "[1,2]"), Status::Ok);
}

// "[i]" (built step by step: GCC 12 warns falsely, -Wrestrict, on "[" + std::to_string(i) + "]").
std::string array_of(int i) {
  std::string s = "[";
  s += std::to_string(i);
  s += ']';
  return s;
}

TEST_P(StoreContract, ListsByPrefixInKeyOrderWithPaging) {
  std::set<std::string> expected;
  for (int i = 0; i < 25; ++i) {
    char key[16];
    std::snprintf(key, sizeof key, "a%02d", i);
    expected.insert(key);
    ASSERT_EQ(store_->put("ns", key, array_of(i)), Status::Ok);
  }
  ASSERT_EQ(store_->put("ns", "b1", "{}"), Status::Ok);
  ASSERT_EQ(store_->put("ns", "Z", "{}"), Status::Ok);
  ASSERT_EQ(store_->put("other", "a99", "{}"), Status::Ok);

  std::vector<std::string> seen;
  std::string after;
  int pages = 0;
  for (;;) {
    Page page;
    ASSERT_EQ(store_->list("ns", "a", after, 10, page), Status::Ok);
    ++pages;
    for (const auto& r : page.records) {
      seen.push_back(r.key);
      EXPECT_EQ(r.value, array_of(std::stoi(r.key.substr(1))));
    }
    if (!page.more) break;
    ASSERT_FALSE(page.records.empty());
    after = page.records.back().key;
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, std::vector<std::string>(expected.begin(), expected.end()));

  Page all;
  ASSERT_EQ(store_->list("ns", "", "", 100, all), Status::Ok);
  ASSERT_EQ(all.records.size(), 27u);
  EXPECT_EQ(all.records.front().key, "Z");
  EXPECT_EQ(all.records.back().key, "b1");
  EXPECT_FALSE(all.more);
  Page none;
  ASSERT_EQ(store_->list("ns", "a", "a24", 10, none), Status::Ok);
  EXPECT_TRUE(none.records.empty());
  EXPECT_FALSE(none.more);
  Page missing;
  ASSERT_EQ(store_->list("nothing-here", "", "", 10, missing), Status::Ok);
  EXPECT_TRUE(missing.records.empty());
}

// The ratelimit contract: usage exactly `window` old is excluded; usage one bucket younger is in.
TEST_P(StoreContract, WindowEdges) {
  const Millis window = 5 * kHour;
  for (Millis offset : {Millis{0}, Millis{30'000}, Millis{59'999}}) {  // now aligned, mid-bucket, end of bucket
    const std::string name = "edge" + std::to_string(offset);
    const Millis now = kBase + offset;
    ASSERT_EQ(store_->window_add(name, 5, window, now - window, nullptr), Status::Ok);
    EXPECT_EQ(sum(name, window, now), 0) << "usage exactly 5 h old must be excluded (offset " << offset << ")";
    ASSERT_EQ(store_->window_add(name, 7, window, now - window + kMinute, nullptr), Status::Ok);
    EXPECT_EQ(sum(name, window, now), 7) << "usage 5 h minus one bucket old must count (offset " << offset << ")";
    ASSERT_EQ(store_->window_add(name, 11, window, now, nullptr), Status::Ok);
    EXPECT_EQ(sum(name, window, now), 18);
  }
}

TEST_P(StoreContract, BucketsAgeOutOfTheWindow) {
  const Millis window = kHour;
  const Millis t0 = kBase + 12'345;
  int64_t after = 0;
  ASSERT_EQ(store_->window_add("age", 10, window, t0, &after), Status::Ok);
  EXPECT_EQ(after, 10);
  ASSERT_EQ(store_->window_add("age", 3, window, t0 + 20 * kMinute, &after), Status::Ok);
  EXPECT_EQ(after, 13);
  const Millis b0 = store_->bucket_of(t0);
  EXPECT_EQ(b0, kBase);
  EXPECT_EQ(sum("age", window, b0 + window - 1), 13) << "still inside: the bucket started less than a window ago";
  EXPECT_EQ(sum("age", window, b0 + window), 3) << "the first bucket ages out exactly one window after it started";
  EXPECT_EQ(sum("age", window, b0 + 20 * kMinute + window), 0);
  // A shorter window over the same buckets.
  EXPECT_EQ(sum("age", 15 * kMinute, t0 + 20 * kMinute), 3);
  EXPECT_EQ(sum("age", 30 * kMinute, t0 + 20 * kMinute), 13);
  // Buckets, oldest first.
  std::vector<Bucket> buckets;
  ASSERT_EQ(store_->window_buckets("age", window, t0 + 20 * kMinute, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 2u);
  EXPECT_EQ(buckets[0].start, kBase);
  EXPECT_EQ(buckets[0].amount, 10);
  EXPECT_EQ(buckets[1].start, kBase + 20 * kMinute);
  EXPECT_EQ(buckets[1].amount, 3);
  EXPECT_EQ(sum("never-written", window, t0), 0);
}

TEST_P(StoreContract, NegativeAmountsAndSameBucket) {
  int64_t after = 0;
  ASSERT_EQ(store_->window_add("w", 100, kHour, kBase + 1000, &after), Status::Ok);
  ASSERT_EQ(store_->window_add("w", -40, kHour, kBase + 2000, &after), Status::Ok);  // a reservation returned
  EXPECT_EQ(after, 60);
  std::vector<Bucket> buckets;
  ASSERT_EQ(store_->window_buckets("w", kHour, kBase + 3000, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].amount, 60);
}

TEST_P(StoreContract, LifetimeCounters) {
  int64_t v = -1;
  EXPECT_EQ(store_->counter_get("c", v), Status::Ok);
  EXPECT_EQ(v, 0);
  EXPECT_EQ(store_->counter_add("c", 5, &v), Status::Ok);
  EXPECT_EQ(v, 5);
  EXPECT_EQ(store_->counter_add("c", -2, nullptr), Status::Ok);
  EXPECT_EQ(store_->counter_get("c", v), Status::Ok);
  EXPECT_EQ(v, 3);
}

// Many threads adding at once: nothing lost, and add-and-sum is atomic (every returned sum is
// distinct, and the largest is the total).
TEST_P(StoreContract, ConcurrentAddsFromManyThreads) {
  constexpr int kThreads = 8;
  const int per_thread = GetParam() == StoreBackend::Redis ? 150 : 2000;
  const Millis now = kBase + 5000;
  std::vector<std::vector<int64_t>> sums(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        int64_t s = 0;
        if (store_->window_add("hot", 1, kHour, now, &s) == Status::Ok) sums[t].push_back(s);
        store_->counter_add("hot", 2, nullptr);
      }
    });
  for (auto& th : threads) th.join();
  const int64_t total = int64_t{kThreads} * per_thread;
  EXPECT_EQ(sum("hot", kHour, now), total);
  int64_t c = 0;
  ASSERT_EQ(store_->counter_get("hot", c), Status::Ok);
  EXPECT_EQ(c, 2 * total);
  std::set<int64_t> distinct;
  for (const auto& v : sums) distinct.insert(v.begin(), v.end());
  EXPECT_EQ(static_cast<int64_t>(distinct.size()), total) << "two adds saw the same sum: add-and-sum is not atomic";
  EXPECT_EQ(*distinct.rbegin(), total);
}

TEST_P(StoreContract, SurvivesRestart) {
  const Millis now = Store::now_ms();
  ASSERT_EQ(store_->put("keys", "k", R"({"v":1})"), Status::Ok);
  ASSERT_EQ(store_->put("keys", "gone", R"({"v":2})"), Status::Ok);
  ASSERT_EQ(store_->remove("keys", "gone"), Status::Ok);
  ASSERT_EQ(store_->window_add("usage", 42, 5 * kHour, now - 2 * kHour, nullptr), Status::Ok);
  ASSERT_EQ(store_->window_add("usage", 8, 5 * kHour, now, nullptr), Status::Ok);
  ASSERT_EQ(store_->counter_add("lifetime", 50, nullptr), Status::Ok);
  reopen();
  std::string v;
  int64_t c = 0;
  if (GetParam() == StoreBackend::Memory) {  // nothing persisted, by definition
    EXPECT_EQ(store_->get("keys", "k", v), Status::NotFound);
    EXPECT_EQ(sum("usage", 5 * kHour, now), 0);
    return;
  }
  EXPECT_EQ(store_->get("keys", "k", v), Status::Ok);
  EXPECT_EQ(v, R"({"v":1})");
  EXPECT_EQ(store_->get("keys", "gone", v), Status::NotFound);
  EXPECT_EQ(sum("usage", 5 * kHour, now), 50);
  EXPECT_EQ(sum("usage", kHour, now), 8);
  ASSERT_EQ(store_->counter_get("lifetime", c), Status::Ok);
  EXPECT_EQ(c, 50);
}

TEST_P(StoreContract, DescribeNamesTheBackend) {
  EXPECT_EQ(store_->describe().rfind(backend_name(GetParam()), 0), 0u) << store_->describe();
  EXPECT_TRUE(store_->healthy());
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreContract,
                         ::testing::Values(StoreBackend::Memory, StoreBackend::Sqlite, StoreBackend::Redis),
                         [](const auto& p) { return backend_name(p.param); });

}  // namespace
}  // namespace glmp::core::store
