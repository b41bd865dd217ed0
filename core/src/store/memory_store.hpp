#pragma once
// The in-memory store: the whole state of the "memory" backend, and the read side of "sqlite"
// (which loads the file into it at start and persists its changes behind the requests).
//
// Hot path: a window add or sum takes a shared lock on one of 32 shards (to find the window by
// name, without allocating) and the window's own mutex; buckets are a sorted vector, appended at
// the end in the common case. Counters are atomics. Records sit in one map under a shared_mutex
// (they are read far more than written; auth caches them besides).
//
// Change tracking (for write-behind): when enabled, every changed record, window bucket and
// counter is remembered once until take_changes() collects the current values.
#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/store.hpp"

namespace glmp::core::store {

class MemoryStore : public Store {
public:
  MemoryStore(const config::StoreConfig& cfg, prometheus::Registry* registry, const char* backend = "memory");
  ~MemoryStore() override;
  std::string describe() const override { return "memory"; }

  // What changed since the last take_changes(), with current values (absolute, so writing them
  // twice is harmless).
  struct Changes {
    struct RecordChange {
      std::string ns, key;
      std::optional<std::string> value;  // nullopt = deleted
    };
    struct BucketChange {
      std::string name;
      Millis start;
      int64_t amount;
    };
    std::vector<RecordChange> records;
    std::vector<BucketChange> buckets;
    std::vector<std::pair<std::string, int64_t>> counters;
    size_t updates = 0;  // how many pending items these changes are
    bool empty() const { return records.empty() && buckets.empty() && counters.empty(); }
  };

protected:
  Status do_get(std::string_view ns, std::string_view key, std::string& value) override;
  Status do_put(std::string_view ns, std::string_view key, std::string_view value) override;
  Status do_remove(std::string_view ns, std::string_view key) override;
  Status do_list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page) override;
  Status do_window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) override;
  Status do_window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) override;
  Status do_window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) override;
  Status do_counter_add(std::string_view name, int64_t amount, int64_t* value) override;
  Status do_counter_get(std::string_view name, int64_t& value) override;

  // Loading persisted state (before serving; no change tracking).
  void load_record(std::string ns, std::string key, std::string value);
  void load_bucket(std::string_view name, Millis start, int64_t amount);
  void load_counter(std::string_view name, int64_t value);

  // Turns change tracking on; `on_change(pending)` is called whenever an item (record, window
  // bucket, counter) becomes dirty, with the number of dirty items not yet taken (the write-behind
  // thread wakes itself at its batch size). Repeated updates to a dirty item fold into it.
  void track_changes(std::function<void(size_t)> on_change);
  Changes take_changes();
  // Marks the items of `changes` changed again (a flush that failed is retried with current values).
  void requeue(const Changes& changes);
  size_t pending() const { return static_cast<size_t>(std::max<int64_t>(0, pending_.load(std::memory_order_relaxed))); }
  // Drops buckets that started at or before now - max_window (memory only; the caller prunes its file).
  void prune(Millis now);

private:
  struct Window {
    explicit Window(std::string n) : name(std::move(n)) {}
    const std::string name;
    std::mutex mutex;
    std::vector<Bucket> buckets;  // sorted by start
    std::vector<Millis> dirty;    // bucket starts changed since the last take (guarded by mutex)
    bool queued = false;          // in dirty_windows_ (guarded by mutex)
  };
  struct Counter {
    explicit Counter(std::string n) : name(std::move(n)) {}
    const std::string name;
    std::atomic<int64_t> value{0};
    std::atomic<bool> queued{false};
  };

  // Name → stable object, sharded; heterogeneous lookup (no allocation to find).
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  template <class T>
  class Sharded {
  public:
    T* find(std::string_view name) const;
    T& get(std::string_view name);  // creates on first use
    template <class F>
    void for_each(F&& f) const;

  private:
    static constexpr size_t kShards = 32;
    struct Shard {
      mutable std::shared_mutex mutex;
      std::unordered_map<std::string, std::unique_ptr<T>, Hash, std::equal_to<>> map;
    };
    std::array<Shard, kShards> shards_;
  };

  static void add_to(Window& w, Millis start, int64_t amount);
  void changed(size_t updates = 1);
  bool mark_window(Window& w, Millis start);  // w.mutex held; true when the bucket was not dirty yet
  bool mark_counter(Counter& c);              // true when the counter was not dirty yet
  void track_record(std::string_view ns, std::string_view key);

  Sharded<Window> windows_;
  Sharded<Counter> counters_;
  mutable std::shared_mutex records_mutex_;
  std::map<std::string, std::map<std::string, std::string, std::less<>>, std::less<>> records_;

  // Change tracking.
  bool tracking_ = false;
  std::function<void(size_t)> on_change_;
  std::mutex dirty_mutex_;
  std::vector<Window*> dirty_windows_;
  std::vector<Counter*> dirty_counters_;
  std::set<std::pair<std::string, std::string>> dirty_records_;
  std::atomic<int64_t> pending_{0};  // dirty items not yet taken (signed: see take_changes)
};

}  // namespace glmp::core::store
