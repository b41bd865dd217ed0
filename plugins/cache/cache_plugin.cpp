// cache: a response cache on the core's recordings (ABI 1.5). A miss records its response while it
// is relayed; a later identical request (same tenant, same key) replays it without an upstream
// call. Semantics, bounds and settings: README.md.
#include <glmproxy/request_key.hpp>
#include <glmproxy/sdk.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache_store.hpp"

namespace glmp::plugins::cache {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kPendingAttribute = "cache.pending";
constexpr std::string_view kStatusHeader = "X-Cache-Status";

// The bypass and not-stored reasons, in the order the stats list them.
constexpr std::array<const char*, 2> kBypassReasons{"not_json", "no_key_id"};
constexpr std::array<const char*, 7> kNotStoredReasons{"no_store", "not_recorded", "not_upstream", "failed",
                                                       "status",   "incomplete",   "too_large"};

template <std::size_t N>
std::size_t index_of(const std::array<const char*, N>& names, std::string_view name) {
  for (std::size_t i = 0; i < N; ++i)
    if (name == names[i]) return i;
  return N;  // unknown: not counted
}


}  // namespace

class Cache final : public glmp::Plugin {
public:
  // Hooks only compute (a hash, a map lookup under a short lock) and use the host API.
  static constexpr bool nonblocking = true;

  Cache(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        settings_(read_settings(settings)),
        key_options_{settings_.global_scope, settings_.exclude_fields},
        metrics_(make_metrics(host)),
        store_(CacheLimits{settings_.ttl_ms, settings_.max_entries, settings_.max_bytes}, observer(metrics_)) {
    if (!host.has_recordings())
      throw glmp::SettingsError("the cache plugin needs a host with recordings (ABI 1.5)");
    host.register_route("GET", "/admin/cache", glmp::Access::Admin, [this](glmp::Request& r) { get_stats(r); });
    host.register_route("DELETE", "/admin/cache", glmp::Access::Admin, [this](glmp::Request& r) { delete_entries(r); });
  }

  glmp::Status on_request(glmp::Request& r) override {
    if (r.method() != "POST" || !cacheable(r.path())) return glmp::Status::Continue;

    CacheControl cc;
    for (std::size_t i = 0;; ++i) {
      const auto value = r.client_header("Cache-Control", i);
      if (!value) break;
      parse_cache_control(*value, cc);
    }
    r.remove_header("Cache-Control");  // the client's cache directives are for this cache only

    const std::int64_t now = glmp::unix_ms();
    store_.maybe_sweep(now);

    const char* reason = "not_json";
    const std::optional<std::string> key = glmp::request_key(r, key_options_, &reason);
    if (!key) {
      r.set_response_header(kStatusHeader, "BYPASS");
      metrics_.bypass.inc();
      const std::size_t i = index_of(kBypassReasons, reason);
      if (i < kBypassReasons.size()) {
        bypasses_[i].fetch_add(1, std::memory_order_relaxed);
        metrics_.bypass_reason[i].inc();
      }
      return glmp::Status::Continue;
    }

    if (!cc.no_cache) {
      std::optional<std::int64_t> max_age_ms;
      if (cc.max_age_s) max_age_ms = *cc.max_age_s * 1000;  // parse_cache_control keeps it within range
      if (auto hit = store_.lookup(*key, now, max_age_ms)) {
        const std::string age = std::to_string(std::max<std::int64_t>(0, now - hit->finished_ms) / 1000);
        if (r.follow(*hit->recording, glmp::Origin::Cache, false, {{kStatusHeader, "HIT"}, {"Age", age}})) {
          if (!settings_.charge_hits) r.set_charge(false);
          hits_.fetch_add(1, std::memory_order_relaxed);
          metrics_.hit.inc();
          return glmp::Status::Responded;
        }
        store_.drop(*key, hit->recording);  // no longer followable: go on as a miss
      }
    }

    r.set_response_header(kStatusHeader, "MISS");
    misses_.fetch_add(1, std::memory_order_relaxed);
    metrics_.miss.inc();
    if (cc.no_store) {
      count_not_stored("no_store");
      return glmp::Status::Continue;
    }
    glmp::Recording recording = r.record(settings_.max_entry_bytes);
    if (!recording) {
      count_not_stored("not_recorded");
      return glmp::Status::Continue;
    }
    std::string key_id(r.attribute("auth.key_id").value_or(""));
    std::string model(r.model());
    const std::string token = std::to_string(next_token_.fetch_add(1, std::memory_order_relaxed));
    {
      std::lock_guard<std::mutex> lock(pending_mutex_);
      pending_.emplace(token, Pending{std::move(recording), *key, std::move(key_id), std::move(model)});
    }
    r.set_attribute(kPendingAttribute, token);
    return glmp::Status::Continue;
  }

  void on_complete(glmp::Request& r) override {
    const glmp::Origin origin = r.origin();
    if (origin == glmp::Origin::Cache) {
      const glmp::Usage u = r.usage();
      const std::int64_t tokens = u.total_tokens > 0 ? u.total_tokens : u.input_tokens + u.output_tokens;
      if (tokens > 0) {
        tokens_saved_.fetch_add(tokens, std::memory_order_relaxed);
        metrics_.tokens_saved.add(static_cast<double>(tokens));
      }
    }

    const auto token = r.attribute(kPendingAttribute);
    if (!token) return;
    std::optional<Pending> pending;
    {
      std::lock_guard<std::mutex> lock(pending_mutex_);
      auto it = pending_.find(std::string(*token));
      if (it == pending_.end()) return;
      pending.emplace(std::move(it->second));
      pending_.erase(it);
    }
    const glmp::RecordingInfo info = pending->recording.info();
    if (const char* why = not_storable_reason(info, origin, settings_.max_entry_bytes)) {
      count_not_stored(why);
      return;
    }
    const std::size_t bytes = static_cast<std::size_t>(info.body_bytes) + kEntryOverhead;
    auto recording = std::make_shared<const glmp::Recording>(std::move(pending->recording));
    const auto result = store_.put(pending->key, std::move(pending->key_id), std::move(pending->model),
                                   std::move(recording), bytes, info.finished_ms, glmp::unix_ms());
    if (result == CacheStore::PutResult::TooLarge) {
      count_not_stored("too_large");
      return;
    }
    stored_.fetch_add(1, std::memory_order_relaxed);
    metrics_.stored.inc();
  }

private:
  struct Pending {
    glmp::Recording recording;
    std::string key;
    std::string key_id;
    std::string model;
  };

  struct Metrics {
    glmp::Counter hit, miss, bypass;
    std::array<glmp::Counter, kBypassReasons.size()> bypass_reason;
    glmp::Gauge entries, bytes;
    glmp::Counter evicted_size, evicted_ttl, evicted_admin;
    glmp::Counter tokens_saved, stored;
    std::array<glmp::Counter, kNotStoredReasons.size()> not_stored;
  };

  static Metrics make_metrics(const glmp::Host& host) {
    Metrics m;
    constexpr std::string_view lookups_help = "Cache lookups on cacheable routes, by result";
    m.hit = host.counter("glmp_cache_lookups_total", lookups_help, {{"result", "hit"}});
    m.miss = host.counter("glmp_cache_lookups_total", lookups_help, {{"result", "miss"}});
    m.bypass = host.counter("glmp_cache_lookups_total", lookups_help, {{"result", "bypass"}});
    for (std::size_t i = 0; i < kBypassReasons.size(); ++i)
      m.bypass_reason[i] = host.counter("glmp_cache_bypass_total", "Requests the cache could not key, by reason",
                                        {{"reason", kBypassReasons[i]}});
    m.entries = host.gauge("glmp_cache_entries", "Responses held by the cache");
    m.bytes = host.gauge("glmp_cache_bytes", "Bytes held by the cache (body bytes plus a per-entry overhead estimate)");
    constexpr std::string_view evictions_help = "Entries removed from the cache, by reason";
    m.evicted_size = host.counter("glmp_cache_evictions_total", evictions_help, {{"reason", "size"}});
    m.evicted_ttl = host.counter("glmp_cache_evictions_total", evictions_help, {{"reason", "ttl"}});
    m.evicted_admin = host.counter("glmp_cache_evictions_total", evictions_help, {{"reason", "admin"}});
    m.tokens_saved = host.counter("glmp_cache_tokens_saved_total", "Tokens (input + output) of responses served from the cache");
    m.stored = host.counter("glmp_cache_stored_total", "Responses stored in the cache");
    for (std::size_t i = 0; i < kNotStoredReasons.size(); ++i)
      m.not_stored[i] = host.counter("glmp_cache_not_stored_total", "Cache misses whose response was not stored, by reason",
                                     {{"reason", kNotStoredReasons[i]}});
    return m;
  }

  static StoreObserver observer(const Metrics& m) {
    StoreObserver o;
    o.changed = [entries = m.entries, bytes = m.bytes](std::int64_t de, std::int64_t db) {
      entries.add(static_cast<double>(de));
      bytes.add(static_cast<double>(db));
    };
    o.removed = [size = m.evicted_size, ttl = m.evicted_ttl, admin = m.evicted_admin](Removal why, std::size_t n) {
      (why == Removal::Size ? size : why == Removal::Ttl ? ttl : admin).add(static_cast<double>(n));
    };
    return o;
  }

  bool cacheable(std::string_view path) const {
    for (const auto& p : settings_.paths)
      if (p == path) return true;
    return false;
  }

  void count_not_stored(std::string_view reason) {
    const std::size_t i = index_of(kNotStoredReasons, reason);
    if (i == kNotStoredReasons.size()) return;
    not_stored_[i].fetch_add(1, std::memory_order_relaxed);
    metrics_.not_stored[i].inc();
  }

  // GET /admin/cache
  void get_stats(glmp::Request& r) const {
    const StoreStats s = store_.stats();
    const std::uint64_t hits = hits_.load(std::memory_order_relaxed);
    const std::uint64_t misses = misses_.load(std::memory_order_relaxed);
    Json bypasses = Json::object();
    for (std::size_t i = 0; i < kBypassReasons.size(); ++i)
      bypasses[kBypassReasons[i]] = bypasses_[i].load(std::memory_order_relaxed);
    Json not_stored = Json::object();
    for (std::size_t i = 0; i < kNotStoredReasons.size(); ++i)
      not_stored[kNotStoredReasons[i]] = not_stored_[i].load(std::memory_order_relaxed);
    const Json body = {
        {"entries", s.entries},
        {"bytes", s.bytes},
        {"max_entries", settings_.max_entries},
        {"max_bytes", settings_.max_bytes},
        {"max_entry_bytes", settings_.max_entry_bytes},
        {"ttl_ms", settings_.ttl_ms},
        {"scope", settings_.global_scope ? "global" : "key"},
        {"hits", hits},
        {"misses", misses},
        {"bypasses", bypasses},
        {"evictions", s.evictions},
        {"expired", s.expired},
        {"deleted", s.deleted},
        {"stored", stored_.load(std::memory_order_relaxed)},
        {"not_stored", not_stored},
        {"tokens_saved", tokens_saved_.load(std::memory_order_relaxed)},
        {"hit_ratio", hits + misses == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(hits + misses)},
    };
    r.respond(200, "application/json", body.dump());
  }

  // DELETE /admin/cache[?key_id=X][&model=Y]
  void delete_entries(glmp::Request& r) {
    std::optional<std::string> key_id;
    std::optional<std::string> model;
    std::string_view query = r.query();
    while (!query.empty()) {
      const std::size_t amp = query.find('&');
      const std::string_view pair = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (pair.empty()) continue;
      const std::size_t eq = pair.find('=');
      const std::string name = glmp::percent_decode(pair.substr(0, eq));
      const std::string value = eq == std::string_view::npos ? std::string() : glmp::percent_decode(pair.substr(eq + 1));
      std::optional<std::string>* slot = name == "key_id" ? &key_id : name == "model" ? &model : nullptr;
      if (slot == nullptr) {
        // A typo ("keyid=") must not delete everything.
        r.respond_error(400, "unknown query parameter \"" + name + "\" (allowed: key_id, model)", "invalid_request_error");
        return;
      }
      if (value.empty()) {
        r.respond_error(400, "query parameter \"" + name + "\" must not be empty", "invalid_request_error");
        return;
      }
      *slot = value;
    }
    const std::size_t deleted = store_.erase(key_id, model);
    r.respond(200, "application/json", Json{{"deleted", deleted}}.dump());
  }

  const CacheSettings settings_;
  const glmp::RequestKeyOptions key_options_;
  const Metrics metrics_;
  CacheStore store_;

  std::mutex pending_mutex_;
  std::unordered_map<std::string, Pending> pending_;  // cache.pending token -> the miss being recorded
  std::atomic<std::uint64_t> next_token_{1};

  std::atomic<std::uint64_t> hits_{0}, misses_{0}, stored_{0};
  std::atomic<std::int64_t> tokens_saved_{0};
  std::array<std::atomic<std::uint64_t>, kBypassReasons.size()> bypasses_{};
  std::array<std::atomic<std::uint64_t>, kNotStoredReasons.size()> not_stored_{};
};

}  // namespace glmp::plugins::cache

GLMP_PLUGIN(glmp::plugins::cache::Cache, "cache", "1.0.0");
