// Unit tests for core/src/store/redis_store: the "redis" backend against a real, private
// redis-server (tests/support/redis_server.hpp). A missing redis-server makes these tests FAIL
// (RedisServer throws): scripts/test installs it.
//
// Two RedisStore objects on one server stand for two proxy replicas. Every wait is a polling loop
// with a deadline; the only fixed sleep checks that nothing is replayed twice.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <Poco/AutoPtr.h>
#include <Poco/Channel.h>
#include <Poco/Logger.h>
#include <Poco/Message.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Redis/Array.h>
#include <Poco/Redis/Client.h>
#include <prometheus/registry.h>

#include "../support/redis_server.hpp"
#include "store/redis_store.hpp"
#include "store/store.hpp"

namespace cfg = glmp::core::config;
using glmp::core::store::Bucket;
using glmp::core::store::Millis;
using glmp::core::store::Page;
using glmp::core::store::RedisStore;
using glmp::core::store::Status;
using glmp::core::store::Store;
using glmp::test::RedisServer;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr Millis kHour = 3'600'000;

// Polls `cond` every 10 ms until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 3000ms) {
  const auto deadline = SteadyClock::now() + timeout;
  while (SteadyClock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

std::string unique_prefix() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string("test:") + info->name() + ":" + std::to_string(SteadyClock::now().time_since_epoch().count()) + ":";
}

cfg::StoreConfig redis_config(const std::string& url, const std::string& prefix,
                              cfg::FailureMode mode = cfg::FailureMode::FailClosed) {
  cfg::StoreConfig c;
  c.backend = cfg::StoreBackend::Redis;
  c.url = url;
  c.prefix = prefix;
  c.timeout = 300ms;
  c.pool_size = 8;
  c.cache_ttl = 2000ms;
  c.failure_mode = mode;
  return c;
}

// One sample of a metric family, matched on (a subset of) its labels; -1 when absent.
double metric(prometheus::Registry& registry, const std::string& family, const std::map<std::string, std::string>& labels) {
  for (const auto& f : registry.Collect()) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      const bool match = std::all_of(labels.begin(), labels.end(), [&](const auto& want) {
        return std::any_of(m.label.begin(), m.label.end(),
                           [&](const auto& l) { return l.name == want.first && l.value == want.second; });
      });
      if (!match) continue;
      return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  return -1;
}

double ops(prometheus::Registry& r, const std::string& op, const std::string& result) {
  return metric(r, "glmp_store_operations_total", {{"op", op}, {"result", result}});
}
double cache_hits(prometheus::Registry& r) { return metric(r, "glmp_store_cache_total", {{"result", "hit"}}); }

// get() until it is served from the local cache (the subscriber must be connected first: before,
// nothing is cached as fresh).
bool cached(Store& store, prometheus::Registry& registry, const std::string& ns, const std::string& key,
            std::string& value) {
  return eventually([&] {
    store.get(ns, key, value);
    const double before = cache_hits(registry);
    store.get(ns, key, value);
    return cache_hits(registry) > before;
  });
}

// Collects the "store" logger's messages while alive.
class LogCapture {
public:
  LogCapture() : channel_(new Channel), logger_(Poco::Logger::get("store")) {
    old_channel_ = logger_.getChannel();
    old_level_ = logger_.getLevel();
    logger_.setChannel(channel_);
    logger_.setLevel(Poco::Message::PRIO_DEBUG);
  }
  ~LogCapture() {
    logger_.setChannel(old_channel_);
    logger_.setLevel(old_level_);
  }
  std::vector<std::string> lines() const {
    std::lock_guard lock(channel_->mutex);
    return channel_->lines;
  }

private:
  struct Channel : Poco::Channel {
    void log(const Poco::Message& msg) override {
      std::lock_guard lock(mutex);
      lines.push_back(msg.getText());
    }
    mutable std::mutex mutex;
    std::vector<std::string> lines;
  };
  Poco::AutoPtr<Channel> channel_;
  Poco::Logger& logger_;
  Poco::Channel::Ptr old_channel_;
  int old_level_ = 0;
};

}  // namespace

TEST(RedisStore, RecordsRoundTripAndListPages) {
  RedisServer server;
  RedisStore store(redis_config(server.url(), unique_prefix()), nullptr);
  std::string value;
  EXPECT_EQ(store.get("keys", "a", value), Status::NotFound);
  EXPECT_EQ(store.remove("keys", "a"), Status::NotFound);
  for (const char* k : {"b2", "a1", "b1", "b3", "c1", "b"}) ASSERT_EQ(store.put("keys", k, "{\"k\":\"" + std::string(k) + "\"}"), Status::Ok);
  ASSERT_EQ(store.put("other", "b1", "[42]"), Status::Ok);
  ASSERT_EQ(store.get("keys", "b1", value), Status::Ok);
  EXPECT_EQ(value, R"({"k":"b1"})");
  ASSERT_EQ(store.put("keys", "b1", "[1,2]"), Status::Ok);
  ASSERT_EQ(store.get("keys", "b1", value), Status::Ok);
  EXPECT_EQ(value, "[1,2]");
  EXPECT_EQ(store.put("keys", "x", "not json"), Status::Invalid);

  Page page;
  ASSERT_EQ(store.list("keys", "b", "", 2, page), Status::Ok);
  ASSERT_EQ(page.records.size(), 2u);
  EXPECT_EQ(page.records[0].key, "b");
  EXPECT_EQ(page.records[1].key, "b1");
  EXPECT_EQ(page.records[1].value, "[1,2]");
  EXPECT_TRUE(page.more);
  ASSERT_EQ(store.list("keys", "b", page.records.back().key, 2, page), Status::Ok);
  ASSERT_EQ(page.records.size(), 2u);
  EXPECT_EQ(page.records[0].key, "b2");
  EXPECT_EQ(page.records[1].key, "b3");
  EXPECT_FALSE(page.more);
  ASSERT_EQ(store.list("keys", "", "b3", 10, page), Status::Ok);
  ASSERT_EQ(page.records.size(), 1u);
  EXPECT_EQ(page.records[0].key, "c1");
  ASSERT_EQ(store.list("keys", "", "", 10, page), Status::Ok);
  EXPECT_EQ(page.records.size(), 6u);
  EXPECT_FALSE(page.more);

  EXPECT_EQ(store.remove("keys", "b1"), Status::Ok);
  EXPECT_EQ(store.get("keys", "b1", value), Status::NotFound);
  EXPECT_EQ(store.remove("keys", "b1"), Status::NotFound);
  ASSERT_EQ(store.list("keys", "b", "", 10, page), Status::Ok);
  EXPECT_EQ(page.records.size(), 3u);

  int64_t v = 0;
  EXPECT_EQ(store.counter_get("n", v), Status::Ok);
  EXPECT_EQ(v, 0);
  EXPECT_EQ(store.counter_add("n", 5, &v), Status::Ok);
  EXPECT_EQ(store.counter_add("n", -2, &v), Status::Ok);
  EXPECT_EQ(v, 3);
  EXPECT_EQ(store.counter_get("n", v), Status::Ok);
  EXPECT_EQ(v, 3);
  EXPECT_TRUE(store.healthy());
  EXPECT_EQ(store.describe(), "redis " + server.url());
}

// The window contract of store.hpp: a bucket counts while bucket_start > now - window.
TEST(RedisStore, WindowBucketsAgeOutByTheContract) {
  RedisServer server;
  auto c = redis_config(server.url(), unique_prefix());
  c.bucket = 1000ms;
  c.max_window = 10'000ms;
  RedisStore store(c, nullptr);
  int64_t sum = 0;
  ASSERT_EQ(store.window_add("w", 2, 3000, 10'000, &sum), Status::Ok);
  EXPECT_EQ(sum, 2);
  ASSERT_EQ(store.window_add("w", 3, 3000, 11'500, &sum), Status::Ok);
  EXPECT_EQ(sum, 5);
  ASSERT_EQ(store.window_add("w", 0, 3000, 11'600, &sum), Status::Ok);
  EXPECT_EQ(sum, 5);
  ASSERT_EQ(store.window_sum("w", 3000, 12'999, sum), Status::Ok);
  EXPECT_EQ(sum, 5);  // bucket 10000 > 12999 - 3000
  ASSERT_EQ(store.window_sum("w", 3000, 13'000, sum), Status::Ok);
  EXPECT_EQ(sum, 3);  // bucket 10000 is out
  ASSERT_EQ(store.window_sum("w", 3000, 9'999, sum), Status::Ok);
  EXPECT_EQ(sum, 0);  // a clock set back does not count future buckets
  std::vector<Bucket> buckets;
  ASSERT_EQ(store.window_buckets("w", 3000, 12'000, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 2u);
  EXPECT_EQ(buckets[0].start, 10'000);
  EXPECT_EQ(buckets[0].amount, 2);
  EXPECT_EQ(buckets[1].start, 11'000);
  EXPECT_EQ(buckets[1].amount, 3);
  ASSERT_EQ(store.window_add("w", -3, 3000, 11'900, &sum), Status::Ok);  // back to 0: no bucket
  EXPECT_EQ(sum, 2);
  ASSERT_EQ(store.window_buckets("w", 3000, 12'000, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 1u);
  // An add far later drops what max_window can no longer see.
  ASSERT_EQ(store.window_add("w", 1, 10'000, 30'000, &sum), Status::Ok);
  EXPECT_EQ(sum, 1);
  ASSERT_EQ(store.window_buckets("w", 10'000, 10'500, buckets), Status::Ok);
  EXPECT_TRUE(buckets.empty());
  EXPECT_EQ(store.window_add("w", 1, 10'001, 30'000, &sum), Status::Invalid);
}

TEST(RedisStore, TwoInstancesShareOneWindowExactly) {
  RedisServer server;
  const auto c = redis_config(server.url(), unique_prefix());
  RedisStore a(c, nullptr), b(c, nullptr);
  const Millis now = Store::now_ms();
  constexpr int kThreads = 4, kAdds = 150;
  std::mutex mutex;
  std::vector<int64_t> sums;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (Store* s : {static_cast<Store*>(&a), static_cast<Store*>(&b)})
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, s] {
        std::vector<int64_t> mine;
        for (int i = 0; i < kAdds; ++i) {
          int64_t sum = 0;
          if (s->window_add("tokens", 1, kHour, now, &sum) != Status::Ok) ++failures;
          mine.push_back(sum);
        }
        std::lock_guard lock(mutex);
        sums.insert(sums.end(), mine.begin(), mine.end());
      });
  for (auto& t : threads) t.join();
  const int64_t total = 2 * kThreads * kAdds;
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(std::set<int64_t>(sums.begin(), sums.end()).size(), sums.size()) << "every add saw its own sum";
  EXPECT_EQ(*std::max_element(sums.begin(), sums.end()), total);
  int64_t sum_a = 0, sum_b = 0;
  ASSERT_EQ(a.window_sum("tokens", kHour, now, sum_a), Status::Ok);
  ASSERT_EQ(b.window_sum("tokens", kHour, now, sum_b), Status::Ok);
  EXPECT_EQ(sum_a, total);
  EXPECT_EQ(sum_b, total);
}

TEST(RedisStore, AdmissionRaceAdmitsExactlyTheLimit) {
  RedisServer server;
  const auto c = redis_config(server.url(), unique_prefix());
  RedisStore a(c, nullptr), b(c, nullptr);
  constexpr int64_t kLimit = 60;
  std::atomic<int64_t> admitted{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (Store* s : {static_cast<Store*>(&a), static_cast<Store*>(&b)})
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, s] {
        for (;;) {
          int64_t sum = 0;
          if (s->window_add("requests", 1, kHour, 0, &sum) != Status::Ok) {
            ++failures;
            return;
          }
          if (sum > kLimit) return;
          ++admitted;
        }
      });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(admitted.load(), kLimit);
}

TEST(RedisStore, CacheIsInvalidatedAcrossInstancesByPubSub) {
  RedisServer server;
  auto c = redis_config(server.url(), unique_prefix());
  c.cache_ttl = 30'000ms;  // far beyond the test: only the invalidation message can refresh B
  prometheus::Registry reg_a, reg_b;
  RedisStore a(c, &reg_a), b(c, &reg_b);
  ASSERT_EQ(a.put("keys", "k1", R"({"v":1})"), Status::Ok);
  std::string value;
  ASSERT_TRUE(cached(b, reg_b, "keys", "k1", value));
  EXPECT_EQ(value, R"({"v":1})");

  ASSERT_EQ(a.put("keys", "k1", R"({"v":2})"), Status::Ok);
  EXPECT_TRUE(eventually([&] { return b.get("keys", "k1", value) == Status::Ok && value == R"({"v":2})"; }, 2000ms));
  ASSERT_TRUE(cached(b, reg_b, "keys", "k1", value));
  EXPECT_EQ(value, R"({"v":2})");

  ASSERT_EQ(a.remove("keys", "k1"), Status::Ok);
  EXPECT_TRUE(eventually([&] { return b.get("keys", "k1", value) == Status::NotFound; }, 2000ms));
  // Negative lookups are cached too, and invalidated the same way.
  ASSERT_TRUE(eventually([&] {
    const double before = cache_hits(reg_b);
    return b.get("keys", "k1", value) == Status::NotFound && cache_hits(reg_b) > before;
  }));
  ASSERT_EQ(a.put("keys", "k1", R"({"v":3})"), Status::Ok);
  EXPECT_TRUE(eventually([&] { return b.get("keys", "k1", value) == Status::Ok && value == R"({"v":3})"; }, 2000ms));

  EXPECT_GE(metric(reg_b, "glmp_store_invalidations_total", {}), 3);
  // The writer's own cache follows its writes at once (and its own messages do not count).
  ASSERT_EQ(a.put("keys", "k2", "[true]"), Status::Ok);
  ASSERT_EQ(a.get("keys", "k2", value), Status::Ok);
  EXPECT_EQ(value, "[true]");
  EXPECT_EQ(metric(reg_a, "glmp_store_invalidations_total", {}), 0);
}

TEST(RedisStore, CacheEntriesExpireAfterTheTtl) {
  RedisServer server;
  const std::string prefix = unique_prefix();
  auto c = redis_config(server.url(), prefix);
  c.cache_ttl = 500ms;
  prometheus::Registry registry;
  RedisStore store(c, &registry);
  ASSERT_EQ(store.put("keys", "k", "[1]"), Status::Ok);
  std::string value;
  ASSERT_TRUE(cached(store, registry, "keys", "k", value));
  const auto cached_at = SteadyClock::now();

  // Change it behind the store's back: no invalidation message, only the TTL can tell.
  Poco::Redis::Client raw("127.0.0.1", server.port());
  Poco::Redis::Array hset;
  hset << "HSET" << prefix + "r:keys" << "k" << "[2]";
  raw.execute<Poco::Int64>(hset);
  ASSERT_EQ(store.get("keys", "k", value), Status::Ok);
  if (SteadyClock::now() - cached_at < 250ms) {
    EXPECT_EQ(value, "[1]") << "served from the cache";
  }
  EXPECT_TRUE(eventually([&] { return store.get("keys", "k", value) == Status::Ok && value == "[2]"; }, 2000ms));
}

TEST(RedisStore, ZeroCacheTtlReadsThrough) {
  RedisServer server;
  const std::string prefix = unique_prefix();
  auto c = redis_config(server.url(), prefix);
  c.cache_ttl = 0ms;
  prometheus::Registry registry;
  RedisStore store(c, &registry);
  ASSERT_EQ(store.put("keys", "k", "[1]"), Status::Ok);
  std::string value;
  ASSERT_EQ(store.get("keys", "k", value), Status::Ok);
  Poco::Redis::Client raw("127.0.0.1", server.port());
  Poco::Redis::Array hset;
  hset << "HSET" << prefix + "r:keys" << "k" << "[2]";
  raw.execute<Poco::Int64>(hset);
  ASSERT_EQ(store.get("keys", "k", value), Status::Ok);
  EXPECT_EQ(value, "[2]");
  EXPECT_EQ(cache_hits(registry), 0);
}

// redis-server dies mid-test (SIGKILL) and comes back empty: reads fail closed / degrade, adds
// are queued and replayed exactly once on their original bucket, the same store objects recover.
TEST(RedisStore, SurvivesRedisKillAndReplaysQueuedAdds) {
  RedisServer server;
  const std::string prefix = unique_prefix();
  prometheus::Registry reg_closed, reg_open;
  RedisStore closed(redis_config(server.url(), prefix, cfg::FailureMode::FailClosed), &reg_closed);
  RedisStore open(redis_config(server.url(), prefix, cfg::FailureMode::FailOpen), &reg_open);
  const Millis now = Store::now_ms();
  const Millis earlier = now - 5 * 60'000;  // queued adds must land in their own bucket
  int64_t sum = 0;
  ASSERT_EQ(closed.window_add("w", 5, kHour, now, &sum), Status::Ok);
  ASSERT_EQ(open.window_add("w", 1, kHour, now, &sum), Status::Ok);
  EXPECT_EQ(sum, 6);
  ASSERT_EQ(open.put("keys", "k", R"({"v":1})"), Status::Ok);
  std::string value;
  ASSERT_TRUE(cached(open, reg_open, "keys", "k", value));
  EXPECT_TRUE(closed.healthy());
  EXPECT_EQ(metric(reg_closed, "glmp_store_up", {}), 1);

  server.stop();
  EXPECT_EQ(closed.window_sum("w", kHour, now, sum), Status::Unavailable);
  EXPECT_EQ(open.window_sum("w", kHour, now, sum), Status::Degraded);
  EXPECT_EQ(sum, 0);
  EXPECT_FALSE(closed.healthy());
  EXPECT_FALSE(open.healthy());
  EXPECT_EQ(metric(reg_closed, "glmp_store_up", {}), 0);

  EXPECT_EQ(closed.window_add("w", 3, kHour, earlier, &sum), Status::Unavailable);
  EXPECT_EQ(open.window_add("w", 4, kHour, earlier, &sum), Status::Degraded);
  EXPECT_EQ(sum, 0);
  EXPECT_EQ(closed.counter_add("c", 7, nullptr), Status::Unavailable);
  int64_t count = -1;
  EXPECT_EQ(open.counter_get("c", count), Status::Degraded);
  EXPECT_EQ(count, 0);
  std::vector<Bucket> buckets;
  EXPECT_EQ(closed.window_buckets("w", kHour, now, buckets), Status::Unavailable);
  EXPECT_EQ(open.window_buckets("w", kHour, now, buckets), Status::Degraded);
  EXPECT_TRUE(buckets.empty());
  EXPECT_EQ(closed.get("keys", "k", value), Status::Unavailable);
  // fail_open answers the stale cached record once the cache is no longer trusted.
  EXPECT_TRUE(eventually([&] { return open.get("keys", "k", value) == Status::Degraded; }, 2000ms));
  EXPECT_EQ(value, R"({"v":1})");
  EXPECT_EQ(open.put("keys", "k", "[2]"), Status::Unavailable);
  EXPECT_EQ(open.remove("keys", "k"), Status::Unavailable);
  Page page;
  EXPECT_EQ(open.list("keys", "", "", 10, page), Status::Unavailable);
  EXPECT_EQ(metric(reg_closed, "glmp_store_pending_writes", {}), 2);
  EXPECT_EQ(metric(reg_open, "glmp_store_pending_writes", {}), 1);

  // While down, calls fail fast instead of each waiting for a connect.
  const auto t0 = SteadyClock::now();
  for (int i = 0; i < 200; ++i) closed.window_sum("w", kHour, now, sum);
  EXPECT_LT(SteadyClock::now() - t0, 1500ms);

  EXPECT_GE(ops(reg_closed, "window_sum", "unavailable"), 1);
  EXPECT_GE(ops(reg_closed, "window_add", "unavailable"), 1);
  EXPECT_GE(ops(reg_open, "window_sum", "degraded"), 1);
  EXPECT_GE(ops(reg_open, "window_add", "degraded"), 1);
  EXPECT_GE(ops(reg_open, "get", "degraded"), 1);

  server.start();  // empty: nothing persisted, scripts unknown (NOSCRIPT → EVAL)
  EXPECT_TRUE(eventually([&] {
    int64_t a = 0, b = 0;
    return closed.window_sum("w", kHour, now, a) == Status::Ok && a == 7 &&
           open.window_sum("w", kHour, now, b) == Status::Ok && b == 7;
  }, 5000ms)) << "the 3 + 4 queued while down, replayed";
  EXPECT_TRUE(closed.healthy());
  EXPECT_TRUE(open.healthy());
  EXPECT_EQ(metric(reg_closed, "glmp_store_up", {}), 1);
  ASSERT_EQ(closed.window_buckets("w", kHour, now, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].start, closed.bucket_of(earlier));
  EXPECT_EQ(buckets[0].amount, 7);
  EXPECT_TRUE(eventually([&] { return closed.counter_get("c", count) == Status::Ok && count == 7; }));
  ASSERT_EQ(open.window_add("w", 10, kHour, now, &sum), Status::Ok);
  EXPECT_EQ(sum, 17);

  // Nothing is replayed twice (the background thread runs every ~500 ms).
  std::this_thread::sleep_for(1200ms);
  ASSERT_EQ(closed.window_sum("w", kHour, now, sum), Status::Ok);
  EXPECT_EQ(sum, 17);
  ASSERT_EQ(closed.counter_get("c", count), Status::Ok);
  EXPECT_EQ(count, 7);
  EXPECT_EQ(metric(reg_closed, "glmp_store_pending_writes", {}), 0);
  EXPECT_EQ(metric(reg_open, "glmp_store_pending_writes", {}), 0);
  ASSERT_EQ(open.put("keys", "k", R"({"v":2})"), Status::Ok);
  ASSERT_EQ(closed.get("keys", "k", value), Status::Ok);
  EXPECT_EQ(value, R"({"v":2})");
}

// The proxy starts while Redis is down: the store is created anyway, calls answer Unavailable,
// and work as soon as Redis listens.
TEST(RedisStore, StartsWhileRedisIsDown) {
  RedisServer server;
  server.stop();
  prometheus::Registry registry;
  std::unique_ptr<Store> store;
  const auto t0 = SteadyClock::now();
  ASSERT_NO_THROW(store = glmp::core::store::make_store(redis_config(server.url(), unique_prefix()), &registry));
  EXPECT_LT(SteadyClock::now() - t0, 200ms) << "connects lazily";
  int64_t sum = 0;
  std::string value;
  EXPECT_EQ(store->window_add("w", 1, kHour, 0, &sum), Status::Unavailable);
  EXPECT_EQ(store->get("keys", "k", value), Status::Unavailable);
  EXPECT_EQ(store->put("keys", "k", "[1]"), Status::Unavailable);
  EXPECT_TRUE(eventually([&] { return !store->healthy(); }));

  server.start();
  EXPECT_TRUE(eventually([&] { return store->put("keys", "k", "[1]") == Status::Ok; }, 5000ms));
  EXPECT_EQ(store->get("keys", "k", value), Status::Ok);
  EXPECT_EQ(value, "[1]");
  EXPECT_TRUE(eventually([&] { return store->window_sum("w", kHour, 0, sum) == Status::Ok && sum == 1; }))
      << "the add made while down was replayed";
  EXPECT_TRUE(store->healthy());
}

TEST(RedisStore, NeverShowsThePassword) {
  RedisServer server;  // no requirepass: AUTH fails, which must not escape as an exception
  const std::string url = "redis://:s3cr3tpw@127.0.0.1:" + std::to_string(server.port()) + "/0";
  LogCapture logs;
  {
    RedisStore store(redis_config(url, unique_prefix()), nullptr);
    EXPECT_EQ(store.describe(), "redis redis://***@127.0.0.1:" + std::to_string(server.port()) + "/0");
    int64_t sum = 0;
    std::string value;
    EXPECT_NO_THROW({
      EXPECT_EQ(store.window_add("w", 1, kHour, 0, &sum), Status::Unavailable);
      EXPECT_EQ(store.get("keys", "k", value), Status::Unavailable);
    });
    EXPECT_FALSE(store.healthy());
  }
  const auto lines = logs.lines();
  EXPECT_FALSE(lines.empty()) << "the down transition is logged";
  for (const auto& line : lines) {
    EXPECT_EQ(line.find("s3cr3tpw"), std::string::npos) << line;
    EXPECT_EQ(line.find("ERRFMT"), std::string::npos) << line;
  }
  EXPECT_THROW(RedisStore(redis_config("http://127.0.0.1:1/0", "x:"), nullptr), std::invalid_argument);
}

TEST(RedisStore, DestructorIsPrompt) {
  RedisServer server;
  auto t0 = SteadyClock::now();
  {
    RedisStore store(redis_config(server.url(), unique_prefix()), nullptr);
    ASSERT_EQ(store.put("keys", "k", "[1]"), Status::Ok);
    server.stop();
    std::string value;
    store.get("keys", "other", value);
    t0 = SteadyClock::now();
  }
  EXPECT_LT(SteadyClock::now() - t0, 500ms);

  // Background threads blocked reading from a peer that never answers are woken up too.
  Poco::Net::ServerSocket hung(Poco::Net::SocketAddress("127.0.0.1", 0));  // listens, never accepts
  auto c = redis_config("redis://127.0.0.1:" + std::to_string(hung.address().port()) + "/0", unique_prefix());
  c.timeout = 5000ms;
  {
    RedisStore store(c, nullptr);
    std::this_thread::sleep_for(200ms);  // the keeper's PING and the SUBSCRIBE are waiting by now
    t0 = SteadyClock::now();
  }
  EXPECT_LT(SteadyClock::now() - t0, 500ms);
}

// A peer that accepts connections and never answers (a hung Redis, a half-dead network): every
// call gives up after `timeout` instead of blocking, and the destructor is still prompt.
TEST(RedisStore, HungServerTimesOut) {
  Poco::Net::ServerSocket hung(Poco::Net::SocketAddress("127.0.0.1", 0));  // listens, never accepts
  const std::string url = "redis://127.0.0.1:" + std::to_string(hung.address().port()) + "/0";
  const auto t0 = SteadyClock::now();
  {
    RedisStore store(redis_config(url, unique_prefix()), nullptr);
    int64_t sum = 0;
    const auto t1 = SteadyClock::now();
    EXPECT_EQ(store.window_add("w", 1, kHour, 0, &sum), Status::Unavailable);
    EXPECT_LT(SteadyClock::now() - t1, 2000ms);
    EXPECT_FALSE(store.healthy());
  }
  EXPECT_LT(SteadyClock::now() - t0, 3000ms);
}

// The replay queue is bounded: beyond 100000 adds the oldest are dropped; the rest are replayed
// (pipelined) once Redis is back. Adds to the same bucket in a row are merged into one.
TEST(RedisStore, ReplayQueueIsBoundedAndMergesRepeats) {
  LogCapture logs;
  RedisServer server;
  prometheus::Registry registry;
  RedisStore store(redis_config(server.url(), unique_prefix()), &registry);
  const Millis now = Store::now_ms();
  int64_t sum = 0;
  ASSERT_EQ(store.window_add("a", 1, kHour, now, &sum), Status::Ok);
  server.stop();
  for (int i = 0; i < 1000; ++i) store.window_add("a", 1, kHour, now, nullptr);
  EXPECT_EQ(metric(registry, "glmp_store_pending_writes", {}), 1);
  for (int i = 0; i < 100'000; ++i) store.window_add(i % 2 ? "a" : "b", 1, kHour, now, nullptr);
  EXPECT_EQ(metric(registry, "glmp_store_pending_writes", {}), 100'000);  // the merged 1000 + 1 were dropped
  server.start();
  EXPECT_TRUE(eventually([&] {
    int64_t a = 0, b = 0;
    return store.window_sum("a", kHour, now, a) == Status::Ok && store.window_sum("b", kHour, now, b) == Status::Ok &&
           a == 50'000 && b == 50'000;
  }, 10'000ms));
  EXPECT_EQ(metric(registry, "glmp_store_pending_writes", {}), 0);
  auto logged = [&](const std::string& text) {
    const auto lines = logs.lines();
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(text) != std::string::npos; });
  };
  EXPECT_TRUE(logged("replay queue is full"));
  EXPECT_TRUE(eventually([&] { return logged("replayed 100000 queued"); }));  // once, not per batch
}
