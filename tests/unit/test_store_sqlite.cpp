// The sqlite backend's own promises: write-behind within flush_interval or flush_batch pending items,
// a clean shutdown flushes, the schema is versioned (newer files refused), one process per file,
// and its metrics.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "store/sqlite_store.hpp"

namespace glmp::core::store {
namespace {

using namespace std::chrono_literals;
using namespace Poco::Data::Keywords;

class SqliteStoreTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("glmp-sqlite-" + std::to_string(::getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    cfg_.backend = config::StoreBackend::Sqlite;
    cfg_.path = (dir_ / "sub" / "state.db").string();  // the directory is created
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // What another process would read from the file right now (WAL: readers see committed data).
  int64_t counter_in_file(const std::string& name) {
    Poco::Data::SQLite::Connector::registerConnector();
    Poco::Data::Session s("SQLite", cfg_.path);
    std::vector<Poco::Int64> v;
    std::string n = name;
    s << "SELECT value FROM counters WHERE name = ?", use(n), into(v), now;
    return v.empty() ? -1 : v.front();
  }
  int user_version() {
    Poco::Data::Session s("SQLite", cfg_.path);
    int v = -1;
    s << "PRAGMA user_version", into(v), now;
    return v;
  }
  // Polls until the file shows `want` for counter `name`, up to `limit`.
  bool file_reaches(const std::string& name, int64_t want, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (counter_in_file(name) == want) return true;
      std::this_thread::sleep_for(10ms);
    }
    return counter_in_file(name) == want;
  }

  std::filesystem::path dir_;
  config::StoreConfig cfg_;
};

TEST_F(SqliteStoreTest, WritesBehindWithinTheFlushInterval) {
  cfg_.flush_interval = 300ms;
  SqliteStore store(cfg_, nullptr);
  ASSERT_EQ(store.counter_add("c", 7, nullptr), Status::Ok);
  int64_t v = 0;
  ASSERT_EQ(store.counter_get("c", v), Status::Ok);
  EXPECT_EQ(v, 7) << "reads are served from memory at once";
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(file_reaches("c", 7, 3s)) << "not persisted within the flush interval";
  // Persisted behind the request: not instantly, and within about one interval.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

// A batch is flush_batch distinct pending items (records, window buckets, counters): repeated
// updates to one item fold into it, so a hot key does not turn every few requests into a flush.
TEST_F(SqliteStoreTest, FlushesEarlyOnceTheBatchIsFull) {
  cfg_.flush_interval = std::chrono::hours(1);
  cfg_.flush_batch = 100;
  SqliteStore store(cfg_, nullptr);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(store.counter_add("hot", 1, nullptr), Status::Ok);  // one item
  for (int i = 0; i < 98; ++i) ASSERT_EQ(store.counter_add("c" + std::to_string(i), 1, nullptr), Status::Ok);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(counter_in_file("hot"), -1) << "99 pending items < flush_batch must wait for the interval";
  ASSERT_EQ(store.counter_add("c98", 1, nullptr), Status::Ok);  // the 100th distinct item
  EXPECT_TRUE(file_reaches("hot", 1000, 3s)) << "the 100th pending item must trigger a flush";
  EXPECT_EQ(counter_in_file("c98"), 1);
}

TEST_F(SqliteStoreTest, CleanShutdownFlushesEverything) {
  cfg_.flush_interval = std::chrono::hours(1);
  {
    SqliteStore store(cfg_, nullptr);
    ASSERT_EQ(store.counter_add("s", 3, nullptr), Status::Ok);
    ASSERT_EQ(store.window_add("w", 9, 3600'000, 0, nullptr), Status::Ok);
    ASSERT_EQ(store.put("ns", "k", "{\"a\":1}"), Status::Ok);
    EXPECT_EQ(counter_in_file("s"), -1);
  }
  EXPECT_EQ(counter_in_file("s"), 3);
  SqliteStore reopened(cfg_, nullptr);
  int64_t sum = 0;
  ASSERT_EQ(reopened.window_sum("w", 3600'000, 0, sum), Status::Ok);
  EXPECT_EQ(sum, 9);
  std::string v;
  EXPECT_EQ(reopened.get("ns", "k", v), Status::Ok);
}

TEST_F(SqliteStoreTest, SchemaIsVersionedAndNewerFilesAreRefused) {
  { SqliteStore store(cfg_, nullptr); }
  EXPECT_EQ(user_version(), SqliteStore::kSchemaVersion);
  { SqliteStore again(cfg_, nullptr); }  // reopening an up-to-date file migrates nothing
  EXPECT_EQ(user_version(), SqliteStore::kSchemaVersion);
  {
    Poco::Data::Session s("SQLite", cfg_.path);
    s << "PRAGMA user_version = 99", now;
  }
  try {
    SqliteStore store(cfg_, nullptr);
    FAIL() << "a file from a newer version must be refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 99"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("newer glm-proxy"), std::string::npos) << e.what();
  }
}

TEST_F(SqliteStoreTest, OneProcessPerFile) {
  SqliteStore first(cfg_, nullptr);
  try {
    SqliteStore second(cfg_, nullptr);
    FAIL() << "two stores on one file would each serve stale memory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another glm-proxy"), std::string::npos) << e.what();
  }
}

TEST_F(SqliteStoreTest, UnusablePathIsAClearError) {
  cfg_.path = "/proc/glmp-cannot-write-here/state.db";
  try {
    SqliteStore store(cfg_, nullptr);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/glmp-cannot-write-here"), std::string::npos) << e.what();
  }
}

TEST_F(SqliteStoreTest, OldBucketsArePrunedAtLoad) {
  cfg_.max_window = std::chrono::hours(6);
  const Millis t = Store::now_ms();
  {
    SqliteStore store(cfg_, nullptr);
    ASSERT_EQ(store.window_add("w", 5, 6 * 3600'000, t - 7 * 3600'000, nullptr), Status::Ok);
    ASSERT_EQ(store.window_add("w", 1, 6 * 3600'000, t, nullptr), Status::Ok);
  }
  SqliteStore store(cfg_, nullptr);
  std::vector<Bucket> buckets;
  ASSERT_EQ(store.window_buckets("w", 6 * 3600'000, t, buckets), Status::Ok);
  ASSERT_EQ(buckets.size(), 1u);
  Poco::Data::Session s("SQLite", cfg_.path);
  int rows = -1;
  s << "SELECT COUNT(*) FROM window_buckets", into(rows), now;
  EXPECT_EQ(rows, 1) << "buckets older than max_window are deleted from the file";
}

TEST_F(SqliteStoreTest, MetricsCountOperationsAndFlushes) {
  prometheus::Registry registry;
  cfg_.flush_interval = 50ms;
  {
    SqliteStore store(cfg_, &registry);
    std::string v;
    store.get("ns", "missing", v);
    store.put("ns", "k", "not json");
    store.counter_add("c", 1, nullptr);
    store.flush();
  }
  std::ostringstream os;
  prometheus::TextSerializer().Serialize(os, registry.Collect());
  const std::string text = os.str();
  EXPECT_NE(text.find(R"(glmp_store_operations_total{backend="sqlite",op="get",result="not_found"} 1)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(glmp_store_operations_total{backend="sqlite",op="put",result="invalid"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(glmp_store_operations_total{backend="sqlite",op="counter_add",result="ok"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(glmp_store_flushes_total{backend="sqlite",result="ok"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(glmp_store_flush_seconds_count{backend="sqlite"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(glmp_store_pending_writes{backend="sqlite"} 0)"), std::string::npos);
  EXPECT_NE(text.find(R"(glmp_store_up{backend="sqlite"} 1)"), std::string::npos);
}

}  // namespace
}  // namespace glmp::core::store

namespace glmp::core::store {
namespace {

// Adds racing with flushes never leave the pending count (and its gauge) drifting above zero.
TEST_F(SqliteStoreTest, PendingCountSettlesAtZeroUnderConcurrentFlushes) {
  prometheus::Registry registry;
  cfg_.flush_interval = 5ms;
  cfg_.flush_batch = 3;
  {
    SqliteStore store(cfg_, &registry);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 3000; ++i) {
          std::string name = "c";
          name += std::to_string((i + t) % 17);
          store.counter_add(name, 1, nullptr);
          store.window_add("w", 1, 3600'000, 0, nullptr);
        }
      });
    for (auto& th : threads) th.join();
    store.flush();
    std::ostringstream os;
    prometheus::TextSerializer().Serialize(os, registry.Collect());
    EXPECT_NE(os.str().find(R"(glmp_store_pending_writes{backend="sqlite"} 0)"), std::string::npos) << os.str();
  }
  int64_t total = 0;
  for (int i = 0; i < 17; ++i) {
    std::string name = "c";  // step by step: GCC 12 warns falsely (-Wrestrict) on "c" + to_string()
    name += std::to_string(i);
    total += counter_in_file(name);
  }
  EXPECT_EQ(total, 4 * 3000) << "every add reached the file";
}

}  // namespace
}  // namespace glmp::core::store
