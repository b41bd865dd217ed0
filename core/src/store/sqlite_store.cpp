#include "store/sqlite_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/File.h>
#include <Poco/Logger.h>
#include <Poco/Path.h>

#include "store/store_metrics.hpp"

namespace glmp::core::store {

using namespace Poco::Data::Keywords;

namespace {

// Schema migrations, in order: migration i brings user_version from i to i + 1. Append only.
const std::vector<std::vector<std::string>> kMigrations = {
    {
        "CREATE TABLE records (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
        "PRIMARY KEY (ns, key)) WITHOUT ROWID",
        "CREATE TABLE window_buckets (name TEXT NOT NULL, bucket INTEGER NOT NULL, amount INTEGER NOT NULL, "
        "PRIMARY KEY (name, bucket)) WITHOUT ROWID",
        "CREATE TABLE counters (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    },
};

Poco::Logger& log() { return Poco::Logger::get("store"); }

}  // namespace

SqliteStore::SqliteStore(const config::StoreConfig& cfg, prometheus::Registry* registry)
    : MemoryStore(cfg, registry, "sqlite"),
      path_(cfg.path),
      interval_(cfg.flush_interval),
      batch_(static_cast<size_t>(cfg.flush_batch)) {
  static_assert(kSchemaVersion == 1, "add the migration to kMigrations");
  try {
    const Poco::Path parent = Poco::Path(path_).makeParent();
    if (!parent.toString().empty()) Poco::File(parent).createDirectories();
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("store: cannot create the directory of \"" + path_ + "\": " + e.displayText());
  }
  lock_fd_ = ::open((path_ + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) throw std::runtime_error("store: cannot create \"" + path_ + ".lock\": " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    throw std::runtime_error("store: \"" + path_ + "\" is in use by another glm-proxy (each instance needs its own "
                             "sqlite file; use backend = \"redis\" to share state)");
  }
  try {
    Poco::Data::SQLite::Connector::registerConnector();
    session_ = std::make_unique<Poco::Data::Session>("SQLite", path_);
    std::string mode;
    *session_ << "PRAGMA journal_mode=WAL", into(mode), now;
    *session_ << "PRAGMA synchronous=NORMAL", now;
    *session_ << "PRAGMA busy_timeout=5000", now;
    migrate();
    load();
  } catch (const Poco::Exception& e) {
    session_.reset();
    ::close(lock_fd_);
    throw std::runtime_error("store: cannot open \"" + path_ + "\": " + e.displayText());
  } catch (...) {
    session_.reset();
    ::close(lock_fd_);
    throw;
  }
  track_changes([this](size_t pending) {
    if (pending >= batch_) {
      {
        std::lock_guard lock(wake_mutex_);
        batch_full_ = true;
      }
      wake_.notify_one();
    }
  });
  thread_ = std::thread([this] { flush_loop(); });
}

SqliteStore::~SqliteStore() {
  {
    std::lock_guard lock(wake_mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  flush();
  if (pending() > 0) log().error("%z update(s) could not be written to %s at shutdown", pending(), path_);
  session_.reset();
  ::close(lock_fd_);
}

void SqliteStore::migrate() {
  int version = 0;
  *session_ << "PRAGMA user_version", into(version), now;
  if (version > kSchemaVersion)
    throw std::runtime_error("store: \"" + path_ + "\" has schema version " + std::to_string(version) +
                             ", written by a newer glm-proxy (this one knows up to " + std::to_string(kSchemaVersion) +
                             "); refusing to read it");
  for (int v = version; v < kSchemaVersion; ++v) {
    session_->begin();
    try {
      for (const std::string& sql : kMigrations[static_cast<size_t>(v)]) *session_ << sql, now;
      *session_ << "PRAGMA user_version = " + std::to_string(v + 1), now;
      session_->commit();
    } catch (...) {
      session_->rollback();
      throw;
    }
    log().information("%s migrated to schema version %d", path_, v + 1);
  }
}

void SqliteStore::load() {
  Poco::Int64 cutoff = now_ms() - max_window_ms_;
  *session_ << "DELETE FROM window_buckets WHERE bucket <= ?", use(cutoff), now;
  {
    std::vector<std::string> ns, key, value;
    *session_ << "SELECT ns, key, value FROM records", into(ns), into(key), into(value), now;
    for (size_t i = 0; i < ns.size(); ++i) load_record(std::move(ns[i]), std::move(key[i]), std::move(value[i]));
  }
  {
    std::vector<std::string> name;
    std::vector<Poco::Int64> bucket, amount;
    *session_ << "SELECT name, bucket, amount FROM window_buckets", into(name), into(bucket), into(amount), now;
    for (size_t i = 0; i < name.size(); ++i) load_bucket(name[i], bucket[i], amount[i]);
  }
  {
    std::vector<std::string> name;
    std::vector<Poco::Int64> value;
    *session_ << "SELECT name, value FROM counters", into(name), into(value), now;
    for (size_t i = 0; i < name.size(); ++i) load_counter(name[i], value[i]);
  }
}

void SqliteStore::flush_loop() {
  std::unique_lock lock(wake_mutex_);
  while (!stop_) {
    wake_.wait_for(lock, interval_, [this] { return stop_ || batch_full_; });
    if (stop_) break;
    batch_full_ = false;
    lock.unlock();
    flush();
    lock.lock();
  }
}

void SqliteStore::flush() {
  std::lock_guard lock(flush_mutex_);
  Changes changes = take_changes();
  const Millis now = now_ms();
  const bool prune_due = now - last_prune_ >= 60'000;
  if (changes.empty() && !prune_due) {
    metrics().pending(static_cast<double>(pending()));
    return;
  }
  const auto started = std::chrono::steady_clock::now();
  bool ok = write(changes);
  if (ok && prune_due) {
    try {
      Poco::Int64 cutoff = now - max_window_ms_;
      *session_ << "DELETE FROM window_buckets WHERE bucket <= ?", use(cutoff), now;
      prune(now);
      last_prune_ = now;
    } catch (const Poco::Exception& e) {
      log().warning("pruning old window buckets in %s failed: %s", path_, e.displayText());
    }
  }
  if (!ok) requeue(changes);
  if (!changes.empty())
    metrics().flushed(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), ok);
  if (ok != healthy_.exchange(ok)) {
    metrics().up(ok);
    if (ok) log().information("writing to %s again", path_);
  }
  metrics().pending(static_cast<double>(pending()));
}

bool SqliteStore::write(const Changes& changes) {
  if (changes.empty()) return true;
  try {
    session_->begin();
    std::vector<std::string> put_ns, put_key, put_value, del_ns, del_key;
    for (const auto& r : changes.records) {
      if (r.value) {
        put_ns.push_back(r.ns);
        put_key.push_back(r.key);
        put_value.push_back(*r.value);
      } else {
        del_ns.push_back(r.ns);
        del_key.push_back(r.key);
      }
    }
    if (!put_ns.empty())
      *session_ << "INSERT INTO records (ns, key, value) VALUES (?, ?, ?) "
                   "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
          use(put_ns), use(put_key), use(put_value), now;
    if (!del_ns.empty()) *session_ << "DELETE FROM records WHERE ns = ? AND key = ?", use(del_ns), use(del_key), now;
    if (!changes.buckets.empty()) {
      std::vector<std::string> name;
      std::vector<Poco::Int64> bucket, amount;
      for (const auto& b : changes.buckets) {
        name.push_back(b.name);
        bucket.push_back(b.start);
        amount.push_back(b.amount);
      }
      *session_ << "INSERT INTO window_buckets (name, bucket, amount) VALUES (?, ?, ?) "
                   "ON CONFLICT (name, bucket) DO UPDATE SET amount = excluded.amount",
          use(name), use(bucket), use(amount), now;
    }
    if (!changes.counters.empty()) {
      std::vector<std::string> name;
      std::vector<Poco::Int64> value;
      for (const auto& [n, v] : changes.counters) {
        name.push_back(n);
        value.push_back(v);
      }
      *session_ << "INSERT INTO counters (name, value) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
          use(name), use(value), now;
    }
    session_->commit();
    return true;
  } catch (const Poco::Exception& e) {
    try {
      session_->rollback();
    } catch (const Poco::Exception&) {
    }
    log().error("writing %z update(s) to %s failed (kept in memory, retried): %s", changes.updates, path_,
                e.displayText());
    return false;
  }
}

}  // namespace glmp::core::store
