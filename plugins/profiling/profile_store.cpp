// profiling: settings, phase names, the store and the JSON answers. See profile_store.hpp.
#include "profile_store.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace glmp::plugins::profiling {

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

namespace {

std::int64_t count_setting(const glmp::Settings& s, std::string_view key, std::int64_t fallback, std::int64_t max) {
  const std::int64_t v = s.get_int(key, fallback);
  if (v < 1 || v > max)
    throw glmp::SettingsError("setting \"" + std::string(key) + "\" must be between 1 and " + std::to_string(max));
  return v;
}

}  // namespace

ProfilingSettings read_settings(const glmp::Settings& s) {
  s.allow_only({"max_records", "max_age", "per_key_max", "sample_rate", "slow_threshold", "server_timing", "top"});
  ProfilingSettings c;
  c.max_records = static_cast<std::size_t>(
      count_setting(s, "max_records", static_cast<std::int64_t>(c.max_records), kMaxRecordsLimit));
  c.per_key_max = static_cast<std::size_t>(
      count_setting(s, "per_key_max", static_cast<std::int64_t>(c.per_key_max), kMaxRecordsLimit));
  c.top = static_cast<std::size_t>(count_setting(s, "top", static_cast<std::int64_t>(c.top), 1000));

  c.max_age_ms = s.get_duration("max_age", std::chrono::milliseconds(c.max_age_ms)).count();
  if (c.max_age_ms <= 0) throw glmp::SettingsError("setting \"max_age\" must be longer than 0");
  c.slow_threshold_ms = s.get_duration("slow_threshold", std::chrono::milliseconds(c.slow_threshold_ms)).count();

  c.sample_rate = s.get_double("sample_rate", c.sample_rate);
  if (!(c.sample_rate > 0.0 && c.sample_rate <= 1.0))  // also refuses NaN
    throw glmp::SettingsError("setting \"sample_rate\" must be greater than 0 and at most 1");

  c.server_timing = s.get_bool("server_timing", c.server_timing);
  return c;
}

Json settings_json(const ProfilingSettings& s) {
  return Json{{"max_records", s.max_records},       {"max_age_ms", s.max_age_ms},
              {"per_key_max", s.per_key_max},       {"sample_rate", s.sample_rate},
              {"slow_threshold_ms", s.slow_threshold_ms}, {"server_timing", s.server_timing},
              {"top", s.top}};
}

// ---------------------------------------------------------------------------------------------
// PhaseNames
// ---------------------------------------------------------------------------------------------

std::size_t PhaseNames::group_of(std::string_view hook) noexcept {
  if (hook.empty()) return 0;
  if (hook == "on_request_headers") return 1;
  if (hook == "on_request") return 2;
  if (hook == "on_response_headers") return 3;
  if (hook == "on_response_body") return 4;
  if (hook == "on_complete") return 5;
  return 6;
}

std::uint16_t PhaseNames::intern(std::string_view name, std::string_view hook) {
  const std::size_t g = group_of(hook);
  const bool other = g == kGroups - 1;  // only there does the hook itself need comparing
  auto matches = [&](const Entry* e) { return e->name == name && (!other || e->hook == hook); };

  std::size_t seen = used_[g].load(std::memory_order_acquire);
  for (std::size_t i = 0; i < seen; ++i)
    if (matches(slots_[g][i].load(std::memory_order_relaxed))) return static_cast<std::uint16_t>(g * kPerGroup + i);

  std::lock_guard<std::mutex> lock(add_mutex_);
  const std::size_t used = used_[g].load(std::memory_order_relaxed);
  for (std::size_t i = seen; i < used; ++i)  // added by another thread meanwhile
    if (matches(slots_[g][i].load(std::memory_order_relaxed))) return static_cast<std::uint16_t>(g * kPerGroup + i);
  if (used == kPerGroup) return kNone;
  std::string display(name);
  if (!hook.empty()) display.append(".").append(hook);
  owned_.push_back(std::make_unique<const Entry>(Entry{std::string(name), std::string(hook), std::move(display)}));
  slots_[g][used].store(owned_.back().get(), std::memory_order_relaxed);
  used_[g].store(used + 1, std::memory_order_release);
  return static_cast<std::uint16_t>(g * kPerGroup + used);
}

std::string_view PhaseNames::display(std::uint16_t id) const {
  const std::size_t g = id / kPerGroup;
  const std::size_t i = id % kPerGroup;
  if (g >= kGroups || i >= used_[g].load(std::memory_order_acquire)) return {};
  return slots_[g][i].load(std::memory_order_relaxed)->display;
}

// ---------------------------------------------------------------------------------------------
// Record helpers
// ---------------------------------------------------------------------------------------------

std::int64_t overhead_ns(const Figures& f) noexcept { return std::max<std::int64_t>(0, f.total_ns - f.upstream_ns); }

bool sampled_in(std::string_view request_id, double rate) noexcept {
  if (rate >= 1.0) return true;
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then the splitmix64 finalizer to spread similar ids
  for (const char c : request_id) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return static_cast<double>(h >> 11) * 0x1.0p-53 < rate;
}

// ---------------------------------------------------------------------------------------------
// ProfileStore
// ---------------------------------------------------------------------------------------------

ProfileStore::ProfileStore(StoreLimits limits, StoreObserver observer)
    : limits_(limits), observer_(std::move(observer)) {}

ProfileStore::~ProfileStore() {
  // The records go with the store (a reload's new instance reports its own).
  notify_changed(-static_cast<std::int64_t>(records_.size()));
}

void ProfileStore::notify_evicted(Eviction reason, std::size_t count) const {
  if (count != 0 && observer_.evicted) observer_.evicted(reason, count);
}

void ProfileStore::notify_changed(std::int64_t delta) const {
  if (delta != 0 && observer_.changed) observer_.changed(delta);
}

void ProfileStore::remove_locked(List::iterator it) {
  const auto key = by_key_.find(it->key_id);
  key->second.pop_front();  // `it` is its front (see ByKey)
  if (key->second.empty()) by_key_.erase(key);
  if (spare_.size() < kMaxSpare) spare_.splice(spare_.end(), records_, it);
  else records_.erase(it);
}

std::size_t ProfileStore::drop_aged_locked(std::int64_t now_ms) {
  std::size_t n = 0;
  while (!records_.empty() && now_ms - records_.front().stored_ms >= limits_.max_age_ms) {
    remove_locked(records_.begin());
    ++n;
  }
  return n;
}

void ProfileStore::insert(const RecordView& v, std::int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::size_t aged = drop_aged_locked(now_ms);
  std::size_t per_key = 0;
  std::size_t oldest = 0;
  if (const auto key = by_key_.find(v.key_id); key != by_key_.end() && key->second.size() >= limits_.per_key_max) {
    remove_locked(key->second.front());
    per_key = 1;
  } else if (records_.size() >= limits_.max_records) {
    remove_locked(records_.begin());
    oldest = 1;
  }

  if (spare_.empty()) spare_.emplace_back();
  records_.splice(records_.end(), spare_, spare_.begin());
  const List::iterator it = std::prev(records_.end());
  Record& r = *it;  // assign() reuses the spare's buffers
  r.request_id.assign(v.request_id);
  r.key_id.assign(v.key_id);
  r.method.assign(v.method);
  r.path.assign(v.path);
  r.route.assign(v.route);
  r.model.assign(v.model);
  r.error.assign(v.error);
  r.figures = v.figures;
  r.phases.assign(v.phases.begin(), v.phases.end());
  r.stored_ms = now_ms;

  auto key = by_key_.find(v.key_id);
  if (key == by_key_.end()) key = by_key_.emplace(std::string(v.key_id), std::deque<List::iterator>()).first;
  key->second.push_back(it);

  notify_evicted(Eviction::Age, aged);
  notify_evicted(Eviction::PerKey, per_key);
  notify_evicted(Eviction::MaxRecords, oldest);
  notify_changed(1 - static_cast<std::int64_t>(aged + per_key + oldest));
}

std::vector<Record> ProfileStore::records(const std::optional<std::string>& key_id, std::int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::size_t aged = drop_aged_locked(now_ms);
  notify_evicted(Eviction::Age, aged);
  notify_changed(-static_cast<std::int64_t>(aged));
  std::vector<Record> out;
  if (!key_id) {
    out.assign(records_.begin(), records_.end());
  } else if (const auto key = by_key_.find(*key_id); key != by_key_.end()) {
    out.reserve(key->second.size());
    for (const List::iterator it : key->second) out.push_back(*it);
  }
  return out;
}

std::optional<Record> ProfileStore::find(std::string_view request_id, const std::optional<std::string>& key_id,
                                         std::int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::size_t aged = drop_aged_locked(now_ms);
  notify_evicted(Eviction::Age, aged);
  notify_changed(-static_cast<std::int64_t>(aged));
  for (auto it = records_.rbegin(); it != records_.rend(); ++it)
    if (it->request_id == request_id && (!key_id || it->key_id == *key_id)) return *it;
  return std::nullopt;
}

std::size_t ProfileStore::erase(const std::optional<std::string>& key_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::size_t n = 0;
  if (!key_id) {
    n = records_.size();
    records_.clear();
    spare_.clear();
    by_key_.clear();
  } else if (const auto key = by_key_.find(*key_id); key != by_key_.end()) {
    n = key->second.size();
    for (const List::iterator it : key->second) records_.erase(it);
    by_key_.erase(key);
  }
  notify_changed(-static_cast<std::int64_t>(n));
  return n;
}

std::size_t ProfileStore::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return records_.size();
}

// ---------------------------------------------------------------------------------------------
// Summary maths and JSON
// ---------------------------------------------------------------------------------------------

double to_ms(std::int64_t ns) noexcept { return static_cast<double>(std::llround(static_cast<double>(ns) / 1000.0)) / 1000.0; }

std::int64_t nearest_rank(const std::vector<std::int64_t>& sorted, int p) noexcept {
  const std::size_t n = sorted.size();
  const std::size_t rank = (static_cast<std::size_t>(p) * n + 99) / 100;  // ceil(p × n / 100)
  return sorted[std::clamp<std::size_t>(rank, 1, n) - 1];
}

Json distribution_json(std::vector<std::int64_t> values) {
  if (values.empty()) return Json{{"p50", nullptr}, {"p95", nullptr}, {"p99", nullptr}, {"avg", nullptr}, {"max", nullptr}};
  std::sort(values.begin(), values.end());
  long double sum = 0;
  for (const std::int64_t v : values) sum += static_cast<long double>(v);
  const auto avg = static_cast<std::int64_t>(std::llround(sum / static_cast<long double>(values.size())));
  return Json{{"p50", to_ms(nearest_rank(values, 50))},
              {"p95", to_ms(nearest_rank(values, 95))},
              {"p99", to_ms(nearest_rank(values, 99))},
              {"avg", to_ms(avg)},
              {"max", to_ms(values.back())}};
}

namespace {

Json iso_or_null(const Record* r) {
  if (r == nullptr) return nullptr;
  return glmp::format_rfc3339(r->figures.started_unix_us / 1000);
}

}  // namespace

Json record_json(const Record& r, const PhaseNames& names) {
  const Figures& f = r.figures;
  Json phases = Json::array();
  for (const Phase& p : r.phases)
    phases.push_back(Json{{"name", names.display(p.name)}, {"start_ms", to_ms(p.start_ns)}, {"dur_ms", to_ms(p.dur_ns)}});
  Json usage = nullptr;
  if (f.usage.seen)
    usage = Json{{"input", f.usage.input},
                 {"output", f.usage.output},
                 {"cache_read", f.usage.cache_read},
                 {"cache_creation", f.usage.cache_creation}};
  Json j{{"request_id", r.request_id},
         {"key_id", r.key_id},
         {"method", r.method},
         {"path", r.path},
         {"route", r.route},
         {"model", r.model},
         {"status", f.status},
         {"upstream_status", f.upstream_status},
         {"streamed", f.streamed},
         {"cached", f.cached},
         {"coalesced", f.coalesced},
         {"bytes_in", f.bytes_in},
         {"bytes_out", f.bytes_out},
         {"usage", std::move(usage)},
         {"started_at", glmp::format_rfc3339(f.started_unix_us / 1000)},
         {"total_ms", to_ms(f.total_ns)},
         {"ttft_ms", f.ttft_ns >= 0 ? Json(to_ms(f.ttft_ns)) : Json(nullptr)},
         {"overhead_ms", to_ms(overhead_ns(f))},
         {"phases", std::move(phases)}};
  if (!r.error.empty()) j["error"] = r.error;
  return j;
}

Json listing_json(const std::vector<Record>& records, const ProfilingSettings& settings, const PhaseNames& names) {
  // Window: by start time (records are stored when they complete, so store order may differ).
  const Record* oldest = nullptr;
  const Record* newest = nullptr;
  for (const Record& r : records) {
    if (oldest == nullptr || r.figures.started_unix_us < oldest->figures.started_unix_us) oldest = &r;
    if (newest == nullptr || r.figures.started_unix_us >= newest->figures.started_unix_us) newest = &r;
  }

  std::vector<std::int64_t> total, overhead, ttft;
  total.reserve(records.size());
  overhead.reserve(records.size());
  // Phases in the order they are first met, each with its durations.
  std::vector<std::pair<std::uint16_t, std::vector<std::int64_t>>> phases;
  for (const Record& r : records) {
    total.push_back(r.figures.total_ns);
    overhead.push_back(overhead_ns(r.figures));
    if (r.figures.ttft_ns >= 0) ttft.push_back(r.figures.ttft_ns);
    for (const Phase& p : r.phases) {
      auto it = std::find_if(phases.begin(), phases.end(), [&](const auto& e) { return e.first == p.name; });
      if (it == phases.end()) {
        phases.emplace_back(p.name, std::vector<std::int64_t>());
        it = std::prev(phases.end());
      }
      it->second.push_back(p.dur_ns);
    }
  }
  Json phase_summary = Json::object();
  for (auto& [name, durations] : phases) {
    std::sort(durations.begin(), durations.end());
    phase_summary[std::string(names.display(name))] = Json{{"p50", to_ms(nearest_rank(durations, 50))},
                                                           {"p95", to_ms(nearest_rank(durations, 95))},
                                                           {"count", durations.size()}};
  }

  // Slowest first (ties: the more recent first); most recent first.
  std::vector<const Record*> by_time;
  by_time.reserve(records.size());
  for (auto it = records.rbegin(); it != records.rend(); ++it) by_time.push_back(&*it);
  const std::size_t n = std::min(settings.top, records.size());
  std::vector<const Record*> slowest = by_time;
  std::stable_sort(slowest.begin(), slowest.end(),
                   [](const Record* a, const Record* b) { return a->figures.total_ns > b->figures.total_ns; });
  Json slow = Json::array();
  Json recent = Json::array();
  for (std::size_t i = 0; i < n; ++i) {
    slow.push_back(record_json(*slowest[i], names));
    recent.push_back(record_json(*by_time[i], names));
  }

  return Json{{"window", {{"count", records.size()}, {"oldest", iso_or_null(oldest)}, {"newest", iso_or_null(newest)}}},
              {"summary",
               {{"total_ms", distribution_json(std::move(total))},
                {"overhead_ms", distribution_json(std::move(overhead))},
                {"ttft_ms", distribution_json(std::move(ttft))},
                {"phases", std::move(phase_summary)}}},
              {"slowest", std::move(slow)},
              {"recent", std::move(recent)},
              {"settings", settings_json(settings)}};
}

}  // namespace glmp::plugins::profiling
