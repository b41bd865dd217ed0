#pragma once
// The state store: what plugins keep across hot reloads, restarts and (with Redis) replicas.
//
//  - Records: small JSON documents in namespaces ("keys", …): get, put, delete, list by key prefix
//    in key order with paging.
//  - Window counters: add(name, amount, now) and sum(name, window, now) over time buckets of
//    [store] bucket (1 min by default). A bucket counts while now - window < bucket_start <= now,
//    so a usage ages out between window - bucket and window after it happened (never later), and
//    a clock set back never counts "future" buckets.
//  - Lifetime counters: add and get.
//
// Backends: "sqlite" (memory + write-behind to one WAL file), "redis" (shared by replicas; the
// window add-and-sum is one Lua script), "memory" (nothing persisted; tests, --check-plugins).
//
// The public calls are non-virtual: they validate arguments and count every operation and its
// result in the store metrics, then call the backend's do_* hook. All calls are thread-safe.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace prometheus {
class Registry;
}

namespace glmp::core::store {

// Same values as glmp_store_status in the plugin ABI.
enum class Status {
  Ok = 0,
  NotFound = 1,     // get/delete of a record that does not exist
  Unavailable = 2,  // the backend is down (fail_closed), or a record write failed
  Degraded = 3,     // the backend is down and failure_mode = fail_open: reads answer 0 / a stale cached record;
                    // adds (window_add, counter_add) were queued and answer 0
  Invalid = 4,      // bad arguments (empty or oversized name, value not JSON, window > max_window, …)
};
const char* to_string(Status s);

using Millis = int64_t;  // Unix time in milliseconds; 0 passed as `now` means "the store's clock"

struct Record {
  std::string key;
  std::string value;
};

struct Page {
  std::vector<Record> records;  // key order
  bool more = false;            // another call with after = records.back().key returns the rest
};

struct Bucket {
  Millis start = 0;
  int64_t amount = 0;
};

// Limits on arguments (Invalid beyond them).
inline constexpr size_t kMaxNameBytes = 512;     // namespace, key, counter name
inline constexpr size_t kMaxValueBytes = 1 << 20;  // one record
inline constexpr size_t kMaxListLimit = 1000;

class StoreMetrics;

class Store {
public:
  virtual ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // --- records ---
  Status get(std::string_view ns, std::string_view key, std::string& value);
  // `value` must be a JSON object or array (a document; bare scalars are refused as Invalid).
  Status put(std::string_view ns, std::string_view key, std::string_view value);
  Status remove(std::string_view ns, std::string_view key);
  // Records of `ns` whose key starts with `prefix` and sorts after `after` ("" = from the start),
  // at most `limit` (1 … kMaxListLimit).
  Status list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page);

  // --- window counters ---
  // Adds `amount` (may be negative) to the bucket holding `now`; when `sum` is given, it receives
  // the window's sum after the add, computed atomically with it (one Lua call on Redis).
  Status window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum);
  Status window_sum(std::string_view name, Millis window, Millis now, int64_t& sum);
  // The non-empty buckets inside the window, oldest first.
  Status window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out);

  // --- lifetime counters ---
  Status counter_add(std::string_view name, int64_t amount, int64_t* value);
  Status counter_get(std::string_view name, int64_t& value);

  // True when a call may wait on the network (Redis): hooks that use the store then run on
  // worker threads, never on an event loop. Memory and SQLite (write-behind) answer from memory.
  virtual bool may_block() const { return false; }
  // Persists everything pending and waits for it (clean shutdown, tests). Redis: no-op.
  virtual void flush() {}
  // "sqlite data/glm-proxy.db", "redis redis://***@host:6379/0", "memory" (no secrets).
  virtual std::string describe() const = 0;
  // False while the backend is unreachable (redis) or the last flush failed (sqlite).
  virtual bool healthy() const { return true; }

  Millis bucket_ms() const { return bucket_ms_; }
  Millis max_window_ms() const { return max_window_ms_; }
  static Millis now_ms();
  // The start of the bucket holding `t`.
  Millis bucket_of(Millis t) const { return t - (t % bucket_ms_ + bucket_ms_) % bucket_ms_; }

protected:
  // `backend` names the store in metrics ("sqlite", "redis", "memory"); `registry` may be null.
  Store(const config::StoreConfig& cfg, const char* backend, prometheus::Registry* registry);

  // Backend hooks: arguments are already validated, `now` is resolved.
  virtual Status do_get(std::string_view ns, std::string_view key, std::string& value) = 0;
  virtual Status do_put(std::string_view ns, std::string_view key, std::string_view value) = 0;
  virtual Status do_remove(std::string_view ns, std::string_view key) = 0;
  virtual Status do_list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page) = 0;
  virtual Status do_window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) = 0;
  virtual Status do_window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) = 0;
  virtual Status do_window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) = 0;
  virtual Status do_counter_add(std::string_view name, int64_t amount, int64_t* value) = 0;
  virtual Status do_counter_get(std::string_view name, int64_t& value) = 0;

  StoreMetrics& metrics() { return *metrics_; }

  const Millis bucket_ms_;
  const Millis max_window_ms_;

private:
  // The arguments every window call shares: a valid name, 0 < window <= max_window, now >= 0.
  bool valid_window(std::string_view name, Millis window, Millis now) const;

  std::unique_ptr<StoreMetrics> metrics_;
};

// Opens the configured backend (sqlite: opens/migrates the file and loads it into memory; redis:
// connects lazily, so a proxy starts even while Redis is down). Throws std::runtime_error with a
// precise message (bad path, newer schema, …).
std::unique_ptr<Store> make_store(const config::StoreConfig& cfg, prometheus::Registry* registry);

}  // namespace glmp::core::store
