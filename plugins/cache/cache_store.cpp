// cache: settings, Cache-Control, storability and the LRU store. See cache_store.hpp.
#include "cache_store.hpp"

#include <algorithm>
#include <limits>
#include <utility>

namespace glmp::plugins::cache {

namespace {

char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::size_t size_setting(const glmp::Settings& s, std::string_view key, std::size_t fallback) {
  const std::uint64_t size = s.get_size(key, fallback);
  if (size == 0) throw glmp::SettingsError("setting \"" + std::string(key) + "\" must be greater than 0");
  if (size > std::numeric_limits<std::size_t>::max()) throw glmp::SettingsError("setting \"" + std::string(key) + "\" is too large");
  return static_cast<std::size_t>(size);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------


CacheSettings read_settings(const glmp::Settings& s) {
  s.allow_only({"ttl", "max_entries", "max_entry_bytes", "max_bytes", "scope", "exclude_fields", "charge_hits", "paths"});
  CacheSettings c;
  c.ttl_ms = s.get_duration("ttl", std::chrono::milliseconds(c.ttl_ms)).count();
  if (c.ttl_ms <= 0) throw glmp::SettingsError("setting \"ttl\" must be longer than 0");

  const std::int64_t entries = s.get_int("max_entries", static_cast<std::int64_t>(c.max_entries));
  if (entries < 1) throw glmp::SettingsError("setting \"max_entries\" must be at least 1");
  c.max_entries = static_cast<std::size_t>(entries);

  c.max_entry_bytes = size_setting(s, "max_entry_bytes", c.max_entry_bytes);
  c.max_bytes = size_setting(s, "max_bytes", c.max_bytes);
  if (c.max_entry_bytes > c.max_bytes)
    throw glmp::SettingsError("setting \"max_entry_bytes\" must not be larger than \"max_bytes\"");

  const std::string scope = s.get_string("scope", "key");
  if (scope == "global") c.global_scope = true;
  else if (scope != "key") throw glmp::SettingsError("setting \"scope\" must be \"key\" or \"global\", not \"" + scope + "\"");

  c.exclude_fields = s.get_string_list("exclude_fields");
  for (const auto& f : c.exclude_fields) {
    if (f.empty()) throw glmp::SettingsError("setting \"exclude_fields\" must not contain an empty name");
    // A streamed and a non-streamed response are different formats: one must never answer the other.
    if (f == "stream") throw glmp::SettingsError("setting \"exclude_fields\" must not contain \"stream\"");
  }

  c.charge_hits = s.get_bool("charge_hits", c.charge_hits);

  if (s.has("paths")) {
    c.paths = s.get_string_list("paths");
    if (c.paths.empty()) throw glmp::SettingsError("setting \"paths\" must not be empty (remove the plugin instead)");
    for (const auto& p : c.paths)
      if (p.empty() || p.front() != '/')
        throw glmp::SettingsError("setting \"paths\": \"" + p + "\" must start with '/'");
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

void parse_cache_control(std::string_view value, CacheControl& cc) {
  while (!value.empty()) {
    // One directive: up to the next comma outside a quoted string.
    std::size_t end = 0;
    bool quoted = false;
    for (; end < value.size(); ++end) {
      const char c = value[end];
      if (quoted && c == '\\') {
        ++end;
        continue;
      }
      if (c == '"') quoted = !quoted;
      else if (c == ',' && !quoted) break;
    }
    const std::string_view directive = trim(value.substr(0, std::min(end, value.size())));
    value.remove_prefix(std::min(end + 1, value.size()));

    const std::size_t eq = directive.find('=');
    const std::string_view name = trim(directive.substr(0, eq));
    std::string_view arg = eq == std::string_view::npos ? std::string_view() : trim(directive.substr(eq + 1));
    if (arg.size() >= 2 && arg.front() == '"' && arg.back() == '"') arg = arg.substr(1, arg.size() - 2);

    if (iequals(name, "no-cache")) {
      cc.no_cache = true;
    } else if (iequals(name, "no-store")) {
      cc.no_store = true;
    } else if (iequals(name, "max-age")) {
      if (arg.empty() || !std::all_of(arg.begin(), arg.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
      std::int64_t seconds = 0;
      for (const char c : arg) {
        if (seconds > (std::numeric_limits<std::int64_t>::max() / 1000 - 9) / 10) {
          seconds = std::numeric_limits<std::int64_t>::max() / 1000;  // saturate (a ms value must still fit)
          break;
        }
        seconds = seconds * 10 + (c - '0');
      }
      cc.max_age_s = cc.max_age_s ? std::min(*cc.max_age_s, seconds) : seconds;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Storability
// ---------------------------------------------------------------------------------------------

const char* not_storable_reason(const glmp::RecordingInfo& info, glmp::Origin origin, std::size_t max_entry_bytes) {
  if (origin != glmp::Origin::Upstream) return "not_upstream";
  if (info.state != glmp::RecordingInfo::State::Complete) return "failed";
  if (info.status != 200) return "status";
  if (!info.ended_normally) return "incomplete";
  if (!info.replayable || info.body_bytes < 0 || static_cast<std::uint64_t>(info.body_bytes) > max_entry_bytes)
    return "too_large";
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// CacheStore
// ---------------------------------------------------------------------------------------------

CacheStore::CacheStore(CacheLimits limits, StoreObserver observer) : limits_(limits), observer_(std::move(observer)) {}

CacheStore::~CacheStore() {
  // The entries go with the store: take them out of the gauges (other instances, e.g. after a
  // reload, report their own).
  notify_changed(-static_cast<std::int64_t>(lru_.size()), -static_cast<std::int64_t>(bytes_));
}

void CacheStore::notify_removed(Removal reason, std::size_t count) const {
  if (count != 0 && observer_.removed) observer_.removed(reason, count);
}

void CacheStore::notify_changed(std::int64_t entries, std::int64_t bytes) const {
  if ((entries != 0 || bytes != 0) && observer_.changed) observer_.changed(entries, bytes);
}

void CacheStore::remove_locked(Lru::iterator it, std::vector<RecordingPtr>& garbage) {
  garbage.push_back(std::move(it->recording));
  bytes_ -= it->bytes;
  notify_changed(-1, -static_cast<std::int64_t>(it->bytes));
  by_age_.erase(it->by_age);
  index_.erase(it->key);
  lru_.erase(it);
}

std::optional<CacheStore::Hit> CacheStore::lookup(const std::string& key, std::int64_t now_ms,
                                                  std::optional<std::int64_t> max_age_ms) {
  std::vector<RecordingPtr> garbage;  // declared before the lock: released after it is dropped
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = index_.find(key);
  if (found == index_.end()) return std::nullopt;
  const Lru::iterator it = found->second;
  const std::int64_t age = now_ms - it->finished_ms;
  if (age >= limits_.ttl_ms) {
    remove_locked(it, garbage);
    ++expired_;
    notify_removed(Removal::Ttl, 1);
    return std::nullopt;
  }
  if (max_age_ms && age >= *max_age_ms) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it);
  return Hit{it->recording, it->finished_ms};
}

bool CacheStore::drop(const std::string& key, const RecordingPtr& recording) {
  std::vector<RecordingPtr> garbage;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = index_.find(key);
  if (found == index_.end() || found->second->recording != recording) return false;
  remove_locked(found->second, garbage);
  return true;
}

CacheStore::PutResult CacheStore::put(const std::string& key, std::string key_id, std::string model,
                                      RecordingPtr recording, std::size_t bytes, std::int64_t finished_ms,
                                      std::int64_t now_ms) {
  if (bytes > limits_.max_bytes) return PutResult::TooLarge;
  std::vector<RecordingPtr> garbage;
  std::lock_guard<std::mutex> lock(mutex_);
  if (const auto found = index_.find(key); found != index_.end()) remove_locked(found->second, garbage);  // replaced
  std::size_t evicted = 0;
  while (!lru_.empty() && (lru_.size() + 1 > limits_.max_entries || bytes_ + bytes > limits_.max_bytes)) {
    remove_locked(std::prev(lru_.end()), garbage);
    ++evicted;
  }
  evictions_ += evicted;
  notify_removed(Removal::Size, evicted);

  const std::int64_t finished = finished_ms > 0 ? std::min(finished_ms, now_ms) : now_ms;
  lru_.push_front(Entry{key, std::move(key_id), std::move(model), std::move(recording), bytes, finished, by_age_.end()});
  const Lru::iterator it = lru_.begin();
  it->by_age = by_age_.emplace(finished, it);
  index_.emplace(key, it);
  bytes_ += bytes;
  notify_changed(1, static_cast<std::int64_t>(bytes));
  return PutResult::Stored;
}

std::size_t CacheStore::sweep_locked(std::int64_t now_ms, std::vector<RecordingPtr>& garbage) {
  std::size_t n = 0;
  while (!by_age_.empty() && now_ms - by_age_.begin()->first >= limits_.ttl_ms) {
    remove_locked(by_age_.begin()->second, garbage);
    ++n;
  }
  expired_ += n;
  notify_removed(Removal::Ttl, n);
  return n;
}

std::size_t CacheStore::sweep(std::int64_t now_ms) {
  std::vector<RecordingPtr> garbage;
  std::lock_guard<std::mutex> lock(mutex_);
  return sweep_locked(now_ms, garbage);
}

std::size_t CacheStore::maybe_sweep(std::int64_t now_ms, std::int64_t interval_ms) {
  std::int64_t last = last_sweep_ms_.load(std::memory_order_relaxed);
  if (now_ms - last < interval_ms) return 0;
  // One caller per interval does it; the others go on at once.
  if (!last_sweep_ms_.compare_exchange_strong(last, now_ms, std::memory_order_relaxed)) return 0;
  return sweep(now_ms);
}

std::size_t CacheStore::erase(const std::optional<std::string>& key_id, const std::optional<std::string>& model) {
  std::vector<RecordingPtr> garbage;
  std::lock_guard<std::mutex> lock(mutex_);
  std::size_t n = 0;
  for (auto it = lru_.begin(); it != lru_.end();) {
    const auto next = std::next(it);
    if ((!key_id || it->key_id == *key_id) && (!model || it->model == *model)) {
      remove_locked(it, garbage);
      ++n;
    }
    it = next;
  }
  deleted_ += n;
  notify_removed(Removal::Admin, n);
  return n;
}

StoreStats CacheStore::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return StoreStats{lru_.size(), bytes_, evictions_, expired_, deleted_};
}

}  // namespace glmp::plugins::cache
