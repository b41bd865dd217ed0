// profiling: everything testable without the ABI's request functions — settings, the interned
// phase names, the record, the store with its retention bounds, sampling, the summary maths and
// the JSON answers. Compiled into the plugin and into the unit tests. Semantics: README.md.
#pragma once

#include <glmproxy/sdk.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace glmp::plugins::profiling {

using Json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct ProfilingSettings {
  std::size_t max_records = 1000;
  std::int64_t max_age_ms = 15 * 60'000;
  std::size_t per_key_max = 200;
  double sample_rate = 1.0;
  std::int64_t slow_threshold_ms = 2000;
  bool server_timing = false;
  std::size_t top = 10;
};

// The largest max_records accepted: a record is about 1 KiB, so this bounds the store near 100 MiB.
inline constexpr std::int64_t kMaxRecordsLimit = 100'000;

// Reads and validates the plugin's settings; throws glmp::SettingsError naming the setting (an
// unknown key is an error too).
ProfilingSettings read_settings(const glmp::Settings& settings);

// The settings as GET /profiling reports them.
Json settings_json(const ProfilingSettings& settings);

// ---------------------------------------------------------------------------------------------
// Phase names
// ---------------------------------------------------------------------------------------------

// Interns the names of timed spans — a core phase ("receive", hook "") or a plugin hook (name
// "auth", hook "on_request", shown as "auth.on_request") — as small ids, so a record keeps 2 bytes
// per phase name instead of a string. Lookups of a known name take no lock: each hook (and the
// core phases) has its own append-only table that readers scan; only a new name takes a mutex.
// Names are never removed: a chain has a handful of plugins and the core times at most 16 of them,
// so the tables stay tiny. Thread-safe.
class PhaseNames {
public:
  static constexpr std::uint16_t kNone = 0xFFFF;  // a table was full: the span is left out

  PhaseNames() = default;
  PhaseNames(const PhaseNames&) = delete;
  PhaseNames& operator=(const PhaseNames&) = delete;

  // The id of the span `name` / `hook` ("" for a core phase); kNone when its table is full.
  std::uint16_t intern(std::string_view name, std::string_view hook);
  // "receive", "auth.on_request"; "" for kNone or an id never handed out. Valid as long as this.
  std::string_view display(std::uint16_t id) const;

private:
  // Core phases, the five hooks, and any other hook a newer core may report.
  static constexpr std::size_t kGroups = 7;
  static constexpr std::size_t kPerGroup = 64;
  static std::size_t group_of(std::string_view hook) noexcept;

  struct Entry {
    std::string name;
    std::string hook;
    std::string display;
  };
  // slots_[g][0, used_[g]) are published: a slot is written before used_ moves past it (release).
  std::array<std::array<std::atomic<const Entry*>, kPerGroup>, kGroups> slots_{};
  std::array<std::atomic<std::size_t>, kGroups> used_{};
  std::mutex add_mutex_;
  std::vector<std::unique_ptr<const Entry>> owned_;  // guarded by add_mutex_
};

// ---------------------------------------------------------------------------------------------
// The record
// ---------------------------------------------------------------------------------------------

// One timed span of a request: nanoseconds from the request's start.
struct Phase {
  std::uint16_t name = PhaseNames::kNone;
  std::int64_t start_ns = 0;
  std::int64_t dur_ns = 0;
};

struct TokenUsage {
  bool seen = false;  // the upstream reported usage
  std::int64_t input = 0;
  std::int64_t output = 0;
  std::int64_t cache_read = 0;
  std::int64_t cache_creation = 0;
};

// The fixed-size part of a record.
struct Figures {
  int status = 0;           // sent to the client (0: none was)
  int upstream_status = 0;  // 0: no upstream response
  bool streamed = false;    // the request asked for a stream
  bool cached = false;      // replayed from a recording (Origin::Cache)
  bool coalesced = false;   // followed another request's response (Origin::Coalesced)
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  TokenUsage usage;
  std::int64_t started_unix_us = 0;
  std::int64_t total_ns = 0;     // start → the last byte handed to the client's socket
  std::int64_t ttft_ns = -1;     // start → the first response byte; -1: none
  std::int64_t upstream_ns = 0;  // waiting on the upstream
};

// A record as on_complete sees it: views of host-owned bytes, copied by ProfileStore::insert.
struct RecordView {
  std::string_view request_id, key_id, method, path, route, model, error;
  Figures figures;
  std::span<const Phase> phases;
};

// A stored record.
struct Record {
  std::string request_id, key_id, method, path, route, model, error;
  Figures figures;
  std::vector<Phase> phases;
  std::int64_t stored_ms = 0;  // Unix ms when it was stored (its request had completed): its age counts from here

  RecordView view() const {
    return RecordView{request_id, key_id, method, path, route, model, error, figures, phases};
  }
};

// total − upstream wait, never negative.
std::int64_t overhead_ns(const Figures& f) noexcept;

// Whether a request with this id is kept at `rate` (0 < rate ≤ 1): a hash of the id, so the
// decision needs no shared state (no lock, no contended random generator) and is the same for the
// same id. Errors and slow requests are kept whatever this says (the caller decides that).
bool sampled_in(std::string_view request_id, double rate) noexcept;

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

struct StoreLimits {
  std::size_t max_records = 1000;
  std::int64_t max_age_ms = 15 * 60'000;
  std::size_t per_key_max = 200;
};

// Why records left the store (the evictions metric's "reason"). DELETE is not an eviction.
enum class Eviction { Age, MaxRecords, PerKey };

// Called under the store's lock (keep them cheap and non-blocking, e.g. metric updates): `changed`
// with the change of the record count, `evicted` with how many records left for a reason. Either
// may be empty.
struct StoreObserver {
  std::function<void(std::int64_t records_delta)> changed;
  std::function<void(Eviction reason, std::size_t count)> evicted;
};

// The records of one configuration instance, in the order they were stored, bounded by
// max_records (the oldest goes), per_key_max (a key at its cap loses its own oldest, so one key
// cannot push everyone else out) and max_age (older records are dropped on every insert and
// read). Requests without a key id count as one key (""). Thread-safe: one mutex, held for a
// bounded amount of work (a few unlinks and one copy of the record); records removed by the bounds
// keep their buffers in a small spare list, so a store that is full inserts without allocating.
class ProfileStore {
public:
  explicit ProfileStore(StoreLimits limits, StoreObserver observer = {});
  ~ProfileStore();
  ProfileStore(const ProfileStore&) = delete;
  ProfileStore& operator=(const ProfileStore&) = delete;

  void insert(const RecordView& record, std::int64_t now_ms);

  // Copies of the records (of `key_id` when given), oldest first, after dropping the aged ones.
  std::vector<Record> records(const std::optional<std::string>& key_id, std::int64_t now_ms);
  // The newest record with this request id (and of `key_id` when given).
  std::optional<Record> find(std::string_view request_id, const std::optional<std::string>& key_id,
                             std::int64_t now_ms);
  // Removes the records of `key_id` (all when not given); returns how many.
  std::size_t erase(const std::optional<std::string>& key_id);

  std::size_t size() const;
  const StoreLimits& limits() const noexcept { return limits_; }

private:
  using List = std::list<Record>;
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  // A key's records, oldest first. The global list and every key's queue are both in store order,
  // so the oldest record overall is always the front of its key's queue too.
  using ByKey = std::unordered_map<std::string, std::deque<List::iterator>, StringHash, std::equal_to<>>;

  // Unlinks the front record of its key's queue (`it` must be that front) into the spare list.
  void remove_locked(List::iterator it);
  std::size_t drop_aged_locked(std::int64_t now_ms);
  void notify_evicted(Eviction reason, std::size_t count) const;
  void notify_changed(std::int64_t delta) const;

  static constexpr std::size_t kMaxSpare = 64;

  const StoreLimits limits_;
  const StoreObserver observer_;
  mutable std::mutex mutex_;
  List records_;  // oldest first
  List spare_;    // removed records whose buffers the next inserts reuse
  ByKey by_key_;
};

// ---------------------------------------------------------------------------------------------
// Summary maths and JSON
// ---------------------------------------------------------------------------------------------

// Milliseconds with microsecond precision (rounded to 3 decimals).
double to_ms(std::int64_t ns) noexcept;

// The nearest-rank percentile of sorted values: the value at rank ceil(p/100 × n) (1-based).
// p50 of 1..100 is 50, p95 is 95, p99 is 99; of a single value, that value. `sorted` must not be
// empty.
std::int64_t nearest_rank(const std::vector<std::int64_t>& sorted, int p) noexcept;

// {p50, p95, p99, avg, max} in ms of the values in ns (sorted here); all null when there are none.
Json distribution_json(std::vector<std::int64_t> values_ns);

// One record as the endpoints show it.
Json record_json(const Record& record, const PhaseNames& names);

// The answer of GET /profiling for `records` (oldest first): window, summary, the `top` slowest
// and most recent records, and the settings.
Json listing_json(const std::vector<Record>& records, const ProfilingSettings& settings, const PhaseNames& names);

}  // namespace glmp::plugins::profiling
