#pragma once
// The embedded backend: the state lives in memory (MemoryStore, so reads never touch the disk) and
// is persisted behind the requests to one SQLite file in WAL mode (Poco::Data::SQLite).
//
// Write-behind: a background thread writes every change within [store] flush_interval, or sooner
// once flush_batch updates are pending, in one transaction (values are absolute, so a retried
// batch is harmless). A clean shutdown flushes everything. After kill -9 at most the updates of
// the last flush_interval are lost (WAL with synchronous=NORMAL: a committed flush survives a
// process crash; a power loss may also lose the last flushes).
//
// The schema is versioned with PRAGMA user_version and migrated forward at start; a file written
// by a newer glm-proxy is refused rather than misread. One process owns the file at a time (a lock
// file next to it), since each process serves reads from its own memory.
#include <condition_variable>
#include <mutex>
#include <thread>

#include "store/memory_store.hpp"

namespace Poco::Data {
class Session;
}

namespace glmp::core::store {

class SqliteStore final : public MemoryStore {
public:
  // Opens (creating directories and the file), migrates and loads. Throws std::runtime_error.
  SqliteStore(const config::StoreConfig& cfg, prometheus::Registry* registry);
  ~SqliteStore() override;  // stops the thread and flushes

  void flush() override;
  std::string describe() const override { return "sqlite " + path_; }
  bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }

  static constexpr int kSchemaVersion = 1;

private:
  void migrate();
  void load();
  void flush_loop();
  bool write(const Changes& changes);  // one transaction; false on failure (logged)

  const std::string path_;
  const std::chrono::milliseconds interval_;
  const size_t batch_;
  int lock_fd_ = -1;
  std::unique_ptr<Poco::Data::Session> session_;
  std::mutex flush_mutex_;  // one writer at a time (thread or flush())
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool batch_full_ = false;
  std::atomic<bool> healthy_{true};
  std::thread thread_;
  Millis last_prune_ = 0;
};

}  // namespace glmp::core::store
