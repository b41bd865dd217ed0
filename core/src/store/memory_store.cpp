#include "store/memory_store.hpp"

#include <algorithm>

namespace glmp::core::store {

template <class T>
T* MemoryStore::Sharded<T>::find(std::string_view name) const {
  const Shard& shard = shards_[Hash{}(name) % kShards];
  std::shared_lock lock(shard.mutex);
  auto it = shard.map.find(name);
  return it == shard.map.end() ? nullptr : it->second.get();
}

template <class T>
T& MemoryStore::Sharded<T>::get(std::string_view name) {
  if (T* found = find(name)) return *found;
  Shard& shard = shards_[Hash{}(name) % kShards];
  std::unique_lock lock(shard.mutex);
  auto it = shard.map.find(name);
  if (it == shard.map.end()) it = shard.map.emplace(std::string(name), std::make_unique<T>(std::string(name))).first;
  return *it->second;
}

template <class T>
template <class F>
void MemoryStore::Sharded<T>::for_each(F&& f) const {
  for (const Shard& shard : shards_) {
    std::shared_lock lock(shard.mutex);
    for (const auto& [name, item] : shard.map) f(*item);
  }
}

MemoryStore::MemoryStore(const config::StoreConfig& cfg, prometheus::Registry* registry, const char* backend)
    : Store(cfg, backend, registry) {}

MemoryStore::~MemoryStore() = default;

// --- records ---

Status MemoryStore::do_get(std::string_view ns, std::string_view key, std::string& value) {
  std::shared_lock lock(records_mutex_);
  auto n = records_.find(ns);
  if (n == records_.end()) return Status::NotFound;
  auto it = n->second.find(key);
  if (it == n->second.end()) return Status::NotFound;
  value = it->second;
  return Status::Ok;
}

void MemoryStore::track_record(std::string_view ns, std::string_view key) {
  if (!tracking_) return;
  bool added = false;
  {
    std::lock_guard lock(dirty_mutex_);
    added = dirty_records_.emplace(std::string(ns), std::string(key)).second;
  }
  if (added) changed();
}

Status MemoryStore::do_put(std::string_view ns, std::string_view key, std::string_view value) {
  {
    std::unique_lock lock(records_mutex_);
    auto n = records_.find(ns);
    if (n == records_.end()) n = records_.emplace(std::string(ns), std::map<std::string, std::string, std::less<>>{}).first;
    n->second.insert_or_assign(std::string(key), std::string(value));
  }
  track_record(ns, key);
  return Status::Ok;
}

Status MemoryStore::do_remove(std::string_view ns, std::string_view key) {
  {
    std::unique_lock lock(records_mutex_);
    auto n = records_.find(ns);
    if (n == records_.end()) return Status::NotFound;
    auto it = n->second.find(key);
    if (it == n->second.end()) return Status::NotFound;
    n->second.erase(it);
  }
  track_record(ns, key);
  return Status::Ok;
}

Status MemoryStore::do_list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page) {
  std::shared_lock lock(records_mutex_);
  auto n = records_.find(ns);
  if (n == records_.end()) return Status::Ok;
  const auto& map = n->second;
  // Start at the first key > after and >= prefix.
  auto it = after.empty() || after < prefix ? map.lower_bound(prefix) : map.upper_bound(after);
  for (; it != map.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    if (page.records.size() == limit) {
      page.more = true;
      break;
    }
    page.records.push_back({it->first, it->second});
  }
  return Status::Ok;
}

// --- windows ---

void MemoryStore::add_to(Window& w, Millis start, int64_t amount) {
  auto& b = w.buckets;
  if (!b.empty() && b.back().start == start) {
    b.back().amount += amount;
  } else if (b.empty() || b.back().start < start) {
    b.push_back({start, amount});
  } else {
    auto it = std::lower_bound(b.begin(), b.end(), start, [](const Bucket& x, Millis s) { return x.start < s; });
    if (it != b.end() && it->start == start) it->amount += amount;
    else b.insert(it, {start, amount});
  }
}

namespace {
// Sum of the buckets with start > now - window (and start <= now: a clock set back must not count
// future buckets), walking from the newest.
int64_t sum_window(const std::vector<Bucket>& buckets, Millis window, Millis now) {
  int64_t sum = 0;
  for (auto it = buckets.rbegin(); it != buckets.rend() && it->start > now - window; ++it)
    if (it->start <= now) sum += it->amount;
  return sum;
}
}  // namespace

Status MemoryStore::do_window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) {
  Window& w = windows_.get(name);
  const Millis start = bucket_of(now);
  bool first_mark = false, newly_dirty = false;
  {
    std::lock_guard lock(w.mutex);
    add_to(w, start, amount);
    // Age out what no window can see any more, from the front (cheap: usually nothing).
    const Millis cutoff = now - max_window_ms_;
    auto keep = std::find_if(w.buckets.begin(), w.buckets.end(), [&](const Bucket& b) { return b.start > cutoff; });
    if (keep != w.buckets.begin()) w.buckets.erase(w.buckets.begin(), keep);
    if (sum) *sum = sum_window(w.buckets, window, now);
    if (tracking_) {
      first_mark = !w.queued;
      newly_dirty = mark_window(w, start);
    }
  }
  if (tracking_) {
    if (first_mark) {
      std::lock_guard lock(dirty_mutex_);
      dirty_windows_.push_back(&w);
    }
    if (newly_dirty) changed();
  }
  return Status::Ok;
}

bool MemoryStore::mark_window(Window& w, Millis start) {
  w.queued = true;
  if (std::find(w.dirty.begin(), w.dirty.end(), start) != w.dirty.end()) return false;
  w.dirty.push_back(start);
  return true;
}

Status MemoryStore::do_window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) {
  Window* w = windows_.find(name);
  if (!w) return Status::Ok;
  std::lock_guard lock(w->mutex);
  sum = sum_window(w->buckets, window, now);
  return Status::Ok;
}

Status MemoryStore::do_window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) {
  Window* w = windows_.find(name);
  if (!w) return Status::Ok;
  std::lock_guard lock(w->mutex);
  for (const Bucket& b : w->buckets)
    if (b.start > now - window && b.start <= now && b.amount != 0) out.push_back(b);
  return Status::Ok;
}

// --- counters ---

Status MemoryStore::do_counter_add(std::string_view name, int64_t amount, int64_t* value) {
  Counter& c = counters_.get(name);
  const int64_t after = c.value.fetch_add(amount, std::memory_order_relaxed) + amount;
  if (value) *value = after;
  if (tracking_ && mark_counter(c)) changed();
  return Status::Ok;
}

bool MemoryStore::mark_counter(Counter& c) {
  if (c.queued.exchange(true, std::memory_order_acq_rel)) return false;
  std::lock_guard lock(dirty_mutex_);
  dirty_counters_.push_back(&c);
  return true;
}

Status MemoryStore::do_counter_get(std::string_view name, int64_t& value) {
  Counter* c = counters_.find(name);
  value = c ? c->value.load(std::memory_order_relaxed) : 0;
  return Status::Ok;
}

// --- loading, tracking, persistence support ---

void MemoryStore::load_record(std::string ns, std::string key, std::string value) {
  std::unique_lock lock(records_mutex_);
  records_[std::move(ns)].insert_or_assign(std::move(key), std::move(value));
}

void MemoryStore::load_bucket(std::string_view name, Millis start, int64_t amount) {
  Window& w = windows_.get(name);
  std::lock_guard lock(w.mutex);
  add_to(w, start, amount);
}

void MemoryStore::load_counter(std::string_view name, int64_t value) {
  counters_.get(name).value.store(value, std::memory_order_relaxed);
}

void MemoryStore::track_changes(std::function<void(size_t)> on_change) {
  on_change_ = std::move(on_change);
  tracking_ = true;
}

void MemoryStore::changed(size_t updates) {
  const int64_t now_pending = pending_.fetch_add(static_cast<int64_t>(updates), std::memory_order_relaxed) +
                              static_cast<int64_t>(updates);
  if (on_change_) on_change_(static_cast<size_t>(std::max<int64_t>(0, now_pending)));
}

MemoryStore::Changes MemoryStore::take_changes() {
  Changes changes;
  std::vector<Window*> windows;
  std::vector<Counter*> counters;
  std::set<std::pair<std::string, std::string>> records;
  {
    std::lock_guard lock(dirty_mutex_);
    windows.swap(dirty_windows_);
    counters.swap(dirty_counters_);
    records.swap(dirty_records_);
  }
  for (Window* w : windows) {
    std::lock_guard lock(w->mutex);
    for (Millis start : w->dirty) {
      auto it = std::lower_bound(w->buckets.begin(), w->buckets.end(), start,
                                 [](const Bucket& x, Millis s) { return x.start < s; });
      // An aged-out bucket is written as 0; the file prunes old buckets anyway.
      const int64_t amount = it != w->buckets.end() && it->start == start ? it->amount : 0;
      changes.buckets.push_back({w->name, start, amount});
    }
    w->dirty.clear();
    w->queued = false;
  }
  for (Counter* c : counters) {
    c->queued.store(false, std::memory_order_release);
    // Read after clearing the flag: an add racing with us either is included here or re-queues.
    changes.counters.emplace_back(c->name, c->value.load(std::memory_order_relaxed));
  }
  {
    std::shared_lock lock(records_mutex_);
    for (auto& [ns, key] : records) {
      std::optional<std::string> value;
      auto n = records_.find(ns);
      if (n != records_.end()) {
        auto it = n->second.find(key);
        if (it != n->second.end()) value = it->second;
      }
      changes.records.push_back({ns, key, std::move(value)});
    }
  }
  // Each item was counted once when it became dirty; it leaves the count as it is taken. (An add
  // that marked an item just before this take may count it just after: the count dips below zero
  // for that instant and ends right, instead of drifting.)
  changes.updates = changes.buckets.size() + changes.counters.size() + changes.records.size();
  pending_.fetch_sub(static_cast<int64_t>(changes.updates), std::memory_order_relaxed);
  return changes;
}

void MemoryStore::requeue(const Changes& changes) {
  // Only what is not dirty again by now is counted again.
  size_t again = 0;
  for (const auto& b : changes.buckets) {
    Window& w = windows_.get(b.name);
    bool first_mark = false;
    {
      std::lock_guard lock(w.mutex);
      first_mark = !w.queued;
      if (mark_window(w, b.start)) ++again;
    }
    if (first_mark) {
      std::lock_guard lock(dirty_mutex_);
      dirty_windows_.push_back(&w);
    }
  }
  for (const auto& [name, value] : changes.counters)
    if (mark_counter(counters_.get(name))) ++again;
  {
    std::lock_guard lock(dirty_mutex_);
    for (const auto& r : changes.records)
      if (dirty_records_.emplace(r.ns, r.key).second) ++again;
  }
  pending_.fetch_add(static_cast<int64_t>(again), std::memory_order_relaxed);
}

void MemoryStore::prune(Millis now) {
  const Millis cutoff = now - max_window_ms_;
  windows_.for_each([&](Window& w) {
    std::lock_guard lock(w.mutex);
    auto keep = std::find_if(w.buckets.begin(), w.buckets.end(), [&](const Bucket& b) { return b.start > cutoff; });
    w.buckets.erase(w.buckets.begin(), keep);
  });
}

}  // namespace glmp::core::store
