// cache: everything testable without the ABI's request functions — settings, Cache-Control request
// directives, what may be stored, and the store itself (an LRU bounded by bytes and entries, with a
// ttl). Compiled into the plugin and into the unit tests. Semantics: README.md.
#pragma once

#include <glmproxy/sdk.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace glmp::plugins::cache {

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct CacheSettings {
  std::int64_t ttl_ms = 5 * 60'000;
  std::size_t max_entries = 1000;
  std::size_t max_entry_bytes = std::size_t{1} << 20;  // 1 MiB
  std::size_t max_bytes = std::size_t{256} << 20;      // 256 MiB
  bool global_scope = false;                           // scope = "global" (default "key")
  std::vector<std::string> exclude_fields;
  bool charge_hits = false;
  std::vector<std::string> paths{"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/embeddings"};
};

// Reads and validates the plugin's settings; throws glmp::SettingsError naming the setting (an
// unknown key is an error too).
CacheSettings read_settings(const glmp::Settings& settings);

// ---------------------------------------------------------------------------------------------
// Cache-Control request directives
// ---------------------------------------------------------------------------------------------

struct CacheControl {
  bool no_cache = false;                    // skip the lookup; the response refreshes the entry
  bool no_store = false;                    // do not write the response
  std::optional<std::int64_t> max_age_s;    // accept only entries younger than this many seconds
};

// Folds one Cache-Control header value into `cc` (call it once per value the client sent).
// Directives are comma-separated and case-insensitive, with optional whitespace; a value may be
// quoted (max-age="60"). Unknown directives, and a max-age that is not a non-negative integer, are
// ignored; a max-age too large to represent saturates; several max-age directives keep the
// smallest.
void parse_cache_control(std::string_view value, CacheControl& cc);
inline CacheControl parse_cache_control(std::string_view value) {
  CacheControl cc;
  parse_cache_control(value, cc);
  return cc;
}

// ---------------------------------------------------------------------------------------------
// What may be stored
// ---------------------------------------------------------------------------------------------

// Why a finished response must not be stored, or nullptr when it may be. Reasons (also the
// "not_stored" keys of GET /admin/cache): "not_upstream" (it was itself replayed or coalesced),
// "failed" (it did not complete), "status" (not 200), "incomplete" (a body or stream that did not
// end normally), "too_large" (more than max_entry_bytes, or not every byte kept).
const char* not_storable_reason(const glmp::RecordingInfo& info, glmp::Origin origin, std::size_t max_entry_bytes);

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

// What one entry costs besides its body bytes: the recording's status line and headers, the
// entry's strings (key, key id, model) and the index nodes. An estimate (a typical LLM API
// response has 0.5-1 KiB of headers); it makes many tiny responses count too.
inline constexpr std::size_t kEntryOverhead = 1024;

struct CacheLimits {
  std::int64_t ttl_ms = 5 * 60'000;
  std::size_t max_entries = 1000;
  std::size_t max_bytes = std::size_t{256} << 20;
};

// Why entries left the store (the evictions metric's "reason").
enum class Removal { Size, Ttl, Admin };

// Called (under the store's lock: keep them cheap and non-blocking, e.g. metric updates) whenever
// the store changes: `changed` with the deltas of entries and bytes, `removed` with how many
// entries left for a reason. Either may be empty.
struct StoreObserver {
  std::function<void(std::int64_t entries_delta, std::int64_t bytes_delta)> changed;
  std::function<void(Removal reason, std::size_t count)> removed;
};

struct StoreStats {
  std::size_t entries = 0;
  std::size_t bytes = 0;
  std::uint64_t evictions = 0;  // removed to make room (LRU)
  std::uint64_t expired = 0;    // removed because older than ttl
  std::uint64_t deleted = 0;    // removed by DELETE /admin/cache
};

// A thread-safe LRU of recordings by key, bounded by bytes and entry count, whose entries expire
// `ttl_ms` after their response finished. Entries hold a shared reference to the recording:
// removing one never releases the recording under the store's lock (the last reference is dropped
// by whoever holds it, outside), and a replay in progress keeps its own reference.
class CacheStore {
public:
  using RecordingPtr = std::shared_ptr<const glmp::Recording>;

  explicit CacheStore(CacheLimits limits, StoreObserver observer = {});
  ~CacheStore();
  CacheStore(const CacheStore&) = delete;
  CacheStore& operator=(const CacheStore&) = delete;

  struct Hit {
    RecordingPtr recording;
    std::int64_t finished_ms = 0;  // when its response finished (Unix ms): Age counts from here
  };

  // The entry for `key` if it is younger than ttl and, when max_age_ms is given, younger than that
  // (age = now_ms - finished_ms). A hit becomes the most recently used. An entry older than ttl is
  // removed (Removal::Ttl); one that is only older than max_age_ms stays.
  std::optional<Hit> lookup(const std::string& key, std::int64_t now_ms, std::optional<std::int64_t> max_age_ms = {});

  // Removes the entry for `key` if it still holds `recording` (e.g. it turned out not to be
  // followable). No removal reason is reported. Returns whether it did.
  bool drop(const std::string& key, const RecordingPtr& recording);

  enum class PutResult { Stored, TooLarge };
  // Stores (or replaces) the entry for `key`, of `bytes` (body bytes plus kEntryOverhead: the
  // caller adds it), finished at finished_ms (clamped to now_ms). Evicts least recently used
  // entries (Removal::Size) until it fits within max_entries and max_bytes. An entry larger than
  // max_bytes is never stored (TooLarge; the store is unchanged).
  PutResult put(const std::string& key, std::string key_id, std::string model, RecordingPtr recording,
                std::size_t bytes, std::int64_t finished_ms, std::int64_t now_ms);

  // Removes every entry older than ttl (Removal::Ttl); returns how many.
  std::size_t sweep(std::int64_t now_ms);
  // sweep(), at most once per `interval_ms` (cheap to call from every request).
  std::size_t maybe_sweep(std::int64_t now_ms, std::int64_t interval_ms = 1000);

  // Removes the entries whose key id and model match (an absent filter matches everything; both
  // given: both must match) (Removal::Admin). Returns how many.
  std::size_t erase(const std::optional<std::string>& key_id, const std::optional<std::string>& model);

  StoreStats stats() const;
  const CacheLimits& limits() const noexcept { return limits_; }

private:
  struct Entry;
  using Lru = std::list<Entry>;  // front = most recently used
  using ByAge = std::multimap<std::int64_t, Lru::iterator>;
  struct Entry {
    std::string key;
    std::string key_id;
    std::string model;
    RecordingPtr recording;
    std::size_t bytes = 0;
    std::int64_t finished_ms = 0;
    ByAge::iterator by_age;
  };

  // Unlinks `it` and moves its recording into `garbage` (released after the lock is dropped).
  void remove_locked(Lru::iterator it, std::vector<RecordingPtr>& garbage);
  std::size_t sweep_locked(std::int64_t now_ms, std::vector<RecordingPtr>& garbage);
  void notify_removed(Removal reason, std::size_t count) const;
  void notify_changed(std::int64_t entries, std::int64_t bytes) const;

  const CacheLimits limits_;
  const StoreObserver observer_;
  mutable std::mutex mutex_;
  Lru lru_;
  std::unordered_map<std::string, Lru::iterator> index_;
  ByAge by_age_;  // finished_ms -> entry: the oldest first, for the sweep
  std::size_t bytes_ = 0;
  std::uint64_t evictions_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t deleted_ = 0;
  std::atomic<std::int64_t> last_sweep_ms_{0};
};

}  // namespace glmp::plugins::cache
