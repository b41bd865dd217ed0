// dashboard: a live performance page at /dashboard and the JSON metrics endpoints. Every proxied
// request feeds a ring of per-second buckets from on_complete (history.hpp: lock-free atomic adds);
// a sampler thread reads the core's metrics once a second (ABI 1.7 metrics_collect: pools, streams,
// process, caches, coalescing, tokens by model) and the process's CPU time. The endpoints turn both
// into JSON; the page (web/, embedded at build time with uPlot) draws them. README.md documents
// the endpoints, the fields and their units.
//
// The ring belongs to the plugin instance: the core loads a private copy of the library for every
// chain it builds, so nothing of a plugin's memory outlives a reload (README: what survives).
#include <glmproxy/sdk.hpp>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "assets.hpp"
#include "history.hpp"
#include "metrics_view.hpp"

namespace glmp::plugins::dashboard {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kKeyIdAttribute = "auth.key_id";
// What the page's own files are served with: nothing but this origin, no inline code, no framing.
constexpr std::string_view kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
constexpr std::string_view kBaselineNamespace = "dashboard";
constexpr std::string_view kBaselineKey = "baseline";

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// The second a request ended in: the coarse clock is a few ns (vDSO) and a few ms coarse.
std::int64_t coarse_second() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return ts.tv_sec;
}

Json opt(std::optional<double> v) { return v ? Json(*v) : Json(nullptr); }
Json round3(double v) { return std::round(v * 1000.0) / 1000.0; }
Json opt3(std::optional<double> v) { return v ? round3(*v) : Json(nullptr); }

struct Baseline {
  std::optional<double> p50, p95, p99, requests_per_second, error_rate, cpu_percent, memory_mb, ttft_p50;
  bool any() const { return p50 || p95 || p99 || requests_per_second || error_rate || cpu_percent || memory_mb || ttft_p50; }
};

// The settings' names of the baseline figures, and the JSON's.
struct BaselineField {
  const char* setting;
  const char* json;
  std::optional<double> Baseline::*member;
};
constexpr BaselineField kBaselineFields[] = {
    {"p50", "p50", &Baseline::p50},
    {"p95", "p95", &Baseline::p95},
    {"p99", "p99", &Baseline::p99},
    {"requests_per_second", "requestsPerSecond", &Baseline::requests_per_second},
    {"error_rate", "errorRate", &Baseline::error_rate},
    {"cpu_percent", "cpuUsagePercent", &Baseline::cpu_percent},
    {"memory_mb", "memoryUsageMB", &Baseline::memory_mb},
    {"ttft_p50", "ttftP50", &Baseline::ttft_p50},
};

struct Settings {
  std::int64_t history_s = 3600;
  std::int64_t summary_window_s = 60;
  std::int64_t usage_window_ms = 5 * 3600 * 1000;
  std::size_t top_keys = 10;
  std::int64_t top_keys_refresh_ms = 10'000;
  std::size_t top_keys_scan = 10'000;
  std::int64_t slow_window_s = 15 * 60;
  std::size_t slowest = 10;
  std::size_t top_errors = 20;
  Baseline baseline;
};

Settings read_settings(const glmp::Settings& s) {
  s.allow_only({"history", "summary_window", "usage_window", "top_keys", "top_keys_refresh", "top_keys_scan", "slow_window",
                "slowest", "top_errors", "baseline"});
  Settings out;
  auto seconds = [&](const char* key, std::int64_t fallback_s, std::int64_t min_s, std::int64_t max_s) {
    const std::int64_t ms = s.get_duration(key, std::chrono::seconds(fallback_s)).count();
    if (ms < min_s * 1000 || ms > max_s * 1000)
      throw glmp::SettingsError(std::string(key) + " must be between " + std::to_string(min_s) + " s and " +
                                std::to_string(max_s) + " s");
    return ms / 1000;
  };
  auto count = [&](const char* key, std::int64_t fallback, std::int64_t min, std::int64_t max) {
    const std::int64_t v = s.get_int(key, fallback);
    if (v < min || v > max)
      throw glmp::SettingsError(std::string(key) + " must be between " + std::to_string(min) + " and " + std::to_string(max));
    return static_cast<std::size_t>(v);
  };
  out.history_s = seconds("history", 3600, 60, 86'400);
  out.summary_window_s = seconds("summary_window", 60, 1, 3600);
  if (out.summary_window_s >= out.history_s) throw glmp::SettingsError("summary_window must be shorter than history");
  out.usage_window_ms = seconds("usage_window", 5 * 3600, 60, 7 * 86'400) * 1000;
  out.top_keys = count("top_keys", 10, 0, 1000);
  out.top_keys_refresh_ms = seconds("top_keys_refresh", 10, 1, 3600) * 1000;
  out.top_keys_scan = count("top_keys_scan", 10'000, 1, 1'000'000);
  out.slow_window_s = seconds("slow_window", 15 * 60, 60, static_cast<std::int64_t>(History::kSlowMinutes - 1) * 60);
  out.slowest = count("slowest", 10, 0, 100);
  out.top_errors = count("top_errors", 20, 0, static_cast<std::int64_t>(History::kTopErrorRows));
  if (const auto* b = s.json().contains("baseline") ? &s.json()["baseline"] : nullptr) {
    if (!b->is_object()) throw glmp::SettingsError("baseline must be a table of figures (p50 = 120, ...)");
    for (const auto& [key, value] : b->items()) {
      const auto* field = std::find_if(std::begin(kBaselineFields), std::end(kBaselineFields),
                                       [&](const BaselineField& f) { return key == f.setting; });
      if (field == std::end(kBaselineFields))
        throw glmp::SettingsError("unknown baseline figure \"" + key +
                                  "\" (known: p50, p95, p99, requests_per_second, error_rate, cpu_percent, memory_mb, ttft_p50)");
      if (!value.is_number() || value.get<double>() < 0)
        throw glmp::SettingsError("baseline." + key + " must be a number >= 0");
      out.baseline.*(field->member) = value.get<double>();
    }
  }
  return out;
}

// --- the collector ---------------------------------------------------------------------------------

// The history and the once-a-second sampler of one plugin instance. The instance owns it and
// destroys it (joining the thread) in its destructor, while its host is still valid.
class Collector {
public:
  Collector(std::size_t seconds, glmp::Host host) : history(seconds, glmp::unix_ms()), host_(std::move(host)) {
    thread_ = std::thread([this] { run(); });
  }
  ~Collector() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  History history;

  struct Latest {
    MetricsView view;
    std::int64_t at_ms = 0;
    double cpu_percent = -1;
  };
  Latest latest() const {
    std::lock_guard lock(mutex_);
    return latest_;
  }

  // Takes one sample now (the thread does it once a second; tests and the first request may too).
  void sample_now() {
    const std::int64_t at = glmp::unix_ms();
    MetricsView view = read_metrics(host_.metrics("glmp_"));
    const double cpu_s = view.cpu_seconds;
    const double wall_s = static_cast<double>(at) / 1000.0;
    Gauges g;
    g.in_flight = static_cast<std::int64_t>(view.in_flight);
    g.streams = static_cast<std::int64_t>(view.streams);
    g.rss_bytes = static_cast<std::int64_t>(view.rss_bytes);
    if (!view.pools.empty()) {
      g.pool_in_use = g.pool_idle = g.pool_waiting = 0;
      for (const PoolView& p : view.pools) {
        g.pool_in_use += static_cast<std::int64_t>(p.figure("in_use"));
        g.pool_idle += static_cast<std::int64_t>(p.figure("idle"));
        g.pool_waiting += static_cast<std::int64_t>(p.figure("waiting"));
      }
    }
    std::lock_guard lock(mutex_);
    // The process's CPU percentage: its CPU seconds counter over the wall time since the last sample.
    if (cpu_s >= 0 && last_cpu_s_ >= 0 && wall_s > last_wall_s_)
      g.cpu_percent = std::max(0.0, (cpu_s - last_cpu_s_) / (wall_s - last_wall_s_) * 100.0);
    last_cpu_s_ = cpu_s;
    last_wall_s_ = wall_s;
    history.sample(at / 1000, g);
    latest_.view = std::move(view);
    latest_.at_ms = at;
    if (g.cpu_percent >= 0) latest_.cpu_percent = g.cpu_percent;
  }

private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      // Shortly after the next second starts, so each sample lands in its own second.
      const auto now = std::chrono::system_clock::now();
      const auto next = std::chrono::ceil<std::chrono::seconds>(now) + std::chrono::milliseconds(50);
      if (wake_.wait_until(lock, next, [this] { return stop_; })) break;
      lock.unlock();
      sample_now();
      lock.lock();
    }
  }

  mutable std::mutex mutex_;  // stop_, latest_, the CPU reading
  std::condition_variable wake_;
  bool stop_ = false;
  Latest latest_;
  double last_cpu_s_ = -1, last_wall_s_ = 0;  // the previous sample's (-1: none)
  const glmp::Host host_;
  std::thread thread_;
};

}  // namespace

class Dashboard final : public glmp::Plugin {
public:
  // on_request_headers and on_complete only compute (atomic adds; a short lock for errors and the
  // slowest requests).
  static constexpr bool nonblocking = true;

  Dashboard(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host), settings_(read_settings(settings)), collector_(std::make_unique<Collector>(static_cast<std::size_t>(settings_.history_s), host)) {
    if (host.host_abi_minor() < 7 || !host.has_metrics_collect())
      throw glmp::SettingsError("the dashboard plugin needs a host that hands out its metrics (ABI 1.7)");
    for (std::size_t i = 0; i < kAssetCount; ++i) {
      const Asset* a = &kAssets[i];
      host.register_route("GET", a->path, glmp::Access::Public, [a](glmp::Request& r) { serve_asset(r, *a); });
    }
    host.register_route("GET", "/api/metrics/system", glmp::Access::Admin, [this](glmp::Request& r) { system(r); });
    host.register_route("GET", "/api/metrics/json", glmp::Access::Admin, [this](glmp::Request& r) { json(r); });
    host.register_route("GET", "/api/metrics/health", glmp::Access::Admin, [this](glmp::Request& r) { health(r); });
    host.register_route("PUT", "/api/metrics/baseline", glmp::Access::Admin, [this](glmp::Request& r) { save_baseline(r); });
    host.register_route("DELETE", "/api/metrics/baseline", glmp::Access::Admin, [this](glmp::Request& r) { clear_baseline(r); });
  }

  // Implemented only so that on_complete also runs for requests a later plugin refuses from their
  // headers (auth's 401s).
  glmp::Status on_request_headers(glmp::Request&) override { return glmp::Status::Continue; }

  void on_complete(glmp::Request& r) override {
    const std::optional<glmp::Profile> p = r.profile();
    if (!p || p->route.empty()) return;  // only proxied API traffic ([[routes]]), not plugin or core routes
    Sample s;
    s.second = coarse_second();
    s.status = p->status;
    s.upstream_status = p->upstream_status;
    s.duration_us = p->elapsed_ns > 0 ? static_cast<std::uint64_t>(p->elapsed_ns / 1000) : 0;
    s.ttfb_us = p->ttfb_ns >= 0 && r.streaming() ? p->ttfb_ns / 1000 : -1;
    s.bytes_in = p->bytes_in;
    s.bytes_out = p->bytes_out;
    const glmp::Usage u = r.usage();
    if (u.seen) {
      s.tokens_in = u.input_tokens;
      s.tokens_out = u.output_tokens;
    }
    const glmp::Origin origin = r.origin();
    s.origin = origin == glmp::Origin::Cache ? Origin::Cache : origin == glmp::Origin::Coalesced ? Origin::Coalesced : Origin::Upstream;
    History& h = collector_->history;
    h.record(s);
    if (const auto c = classify(s.status, s.upstream_status)) h.add_error(s.status, *c, p->error, p->route, glmp::unix_ms());
    if (h.is_slow_candidate(s.second, s.duration_us)) {
      SlowRow row;
      row.request_id = r.id().substr(0, 200);
      row.method = r.method().substr(0, 16);
      row.path = r.path().substr(0, 200);
      row.model = r.model().substr(0, 200);
      if (const auto key = r.attribute(kKeyIdAttribute)) row.key_id = key->substr(0, 100);
      row.at_ms = glmp::unix_ms();
      row.status = s.status;
      row.duration_us = s.duration_us;
      row.ttfb_us = s.ttfb_us;
      row.origin = s.origin;
      h.add_slow(s.second, std::move(row));
    }
  }

private:
  static void serve_asset(glmp::Request& r, const Asset& a) {
    r.set_response_header("Content-Security-Policy", kCsp);
    r.set_response_header("X-Content-Type-Options", "nosniff");
    r.set_response_header("X-Frame-Options", "DENY");
    r.set_response_header("Referrer-Policy", "no-referrer");
    r.set_response_header("Cache-Control", "no-cache");
    r.respond(200, std::string(a.content_type) + "; charset=utf-8", a.body);
  }

  static void answer(glmp::Request& r, const Json& body) {
    r.set_response_header("Cache-Control", "no-store");
    r.set_response_header("X-Content-Type-Options", "nosniff");
    r.respond(200, "application/json", dump(body));
  }

  // --- the sections -----------------------------------------------------------------------------

  Json system_json(std::int64_t now, const Collector::Latest& latest) const {
    const History& h = collector_->history;
    const std::int64_t now_s = now / 1000;
    const Aggregate w = h.aggregate(now_s, settings_.summary_window_s);
    const double span = static_cast<double>(w.seconds);
    auto ms = [](std::optional<double> us) -> Json { return us ? round3(*us / 1000.0) : Json(nullptr); };
    // Percentiles never leave the window's exact extremes (a bin is up to 25 % wide).
    const double lo = static_cast<double>(w.latency_min_us), hi = static_cast<double>(w.latency_max_us);
    auto latency_q = [&](double q) { return ms(LatencyBins::quantile_us(w.latency, q, lo, hi)); };
    auto rate = [&](std::uint64_t n) { return round3(static_cast<double>(n) / span); };
    auto percent = [](std::uint64_t part, std::uint64_t whole) -> Json {
      return whole == 0 ? Json(nullptr) : round3(100.0 * static_cast<double>(part) / static_cast<double>(whole));
    };

    Json requests = {
        {"totalRequests", h.total_requests()},
        {"successfulRequests", h.total_success()},
        {"failedRequests", h.total_errors()},
        {"requestRate", rate(w.requests)},
        {"errorRate", percent(w.errors, w.requests)},
        {"p50", latency_q(0.50)},
        {"p95", latency_q(0.95)},
        {"p99", latency_q(0.99)},
        {"avg", w.requests ? round3(static_cast<double>(w.latency_sum_us) / static_cast<double>(w.requests) / 1000.0) : Json(nullptr)},
        {"min", w.requests ? round3(static_cast<double>(w.latency_min_us) / 1000.0) : Json(nullptr)},
        {"max", w.requests ? round3(static_cast<double>(w.latency_max_us) / 1000.0) : Json(nullptr)},
        {"ttftP50", ms(LatencyBins::quantile_us(w.ttft, 0.50))},
        {"ttftP95", ms(LatencyBins::quantile_us(w.ttft, 0.95))},
        {"windowSeconds", w.seconds},
        {"timestamp", now},
    };
    Json throughput = {
        {"requestsPerSecond", rate(w.requests)},
        {"bytesPerSecond", rate(w.bytes_in + w.bytes_out)},
        {"avgRequestSize", w.requests ? round3(static_cast<double>(w.bytes_in) / static_cast<double>(w.requests)) : Json(nullptr)},
        {"avgResponseSize", w.requests ? round3(static_cast<double>(w.bytes_out) / static_cast<double>(w.requests)) : Json(nullptr)},
        {"peakRequestsPerSecond", h.peak_requests(now_s, settings_.history_s)},
        {"tokensInPerSecond", rate(w.tokens_in)},
        {"tokensOutPerSecond", rate(w.tokens_out)},
    };
    Json pools = Json::array();
    for (const PoolView& p : latest.view.pools) {
      const double max = p.figure("max");
      pools.push_back({{"name", p.name},
                       {"size", p.figure("size")},
                       {"idle", p.figure("idle")},
                       {"inUse", p.figure("in_use")},
                       {"waiting", p.figure("waiting")},
                       {"max", max},
                       {"created", p.figure("created")},
                       {"reused", p.figure("reused")},
                       {"failed", p.figure("failed")},
                       {"expired", p.figure("expired")},
                       {"timeouts", p.figure("timeouts")},
                       {"healthy", p.figure("healthy") != 0},
                       {"utilization", max > 0 ? round3(100.0 * p.figure("in_use") / max) : Json(nullptr)}});
    }
    Json caches = Json::array();
    for (const CacheView& c : latest.view.caches) {
      const double lookups = c.hits + c.misses;
      Json row = {{"name", c.name},
                  {"plugin", c.plugin},
                  {"hits", c.hits},
                  {"misses", c.misses},
                  {"hitRate", lookups > 0 ? round3(100.0 * c.hits / lookups) : Json(nullptr)}};
      for (const auto& [k, v] : c.extra) row[k] = v;
      caches.push_back(std::move(row));
    }
    Json coalescing = nullptr;
    if (const auto& c = latest.view.coalescing)
      coalescing = {{"coalescedRequests", c->coalesced_requests}, {"flights", c->flights},   {"followers", c->followers},
                    {"fallbacks", c->fallbacks},                  {"bytesShared", c->bytes_shared}, {"activeFlights", c->active_flights}};
    Json by_type = Json::object();
    for (std::size_t c = 0; c < kErrorClasses; ++c)
      by_type[std::string(error_class_name(static_cast<ErrorClass>(c)))] = h.total_by_class(static_cast<ErrorClass>(c));
    Json by_status = Json::object();
    for (const auto& [status, n] : h.errors_by_status()) by_status[std::to_string(status)] = n;
    Json top = Json::array();
    for (const ErrorRow& e : h.top_errors(settings_.top_errors))
      top.push_back({{"status", e.status},
                     {"type", error_class_name(e.type)},
                     {"message", e.message},
                     {"route", e.route},
                     {"count", e.count},
                     {"lastSeen", e.last_seen_ms}});
    Json errors = {{"totalErrors", h.total_errors()},
                   {"errorsByType", std::move(by_type)},
                   {"errorsByStatus", std::move(by_status)},
                   {"errorRate", percent(w.errors, w.requests)},
                   {"topErrors", std::move(top)}};
    auto number_or_null = [](double v) -> Json { return v < 0 ? Json(nullptr) : Json(v); };
    Json resources = {
        {"memoryUsageMB", latest.view.rss_bytes < 0 ? Json(nullptr) : round3(latest.view.rss_bytes / (1024.0 * 1024.0))},
        {"peakMemoryUsageMB", latest.view.peak_rss_bytes < 0 ? Json(nullptr) : round3(latest.view.peak_rss_bytes / (1024.0 * 1024.0))},
        {"memoryGrowthRate", opt3(h.memory_growth_mb_per_hour(now_s))},
        {"cpuUsagePercent", latest.cpu_percent < 0 ? Json(nullptr) : round3(latest.cpu_percent)},
        {"threads", number_or_null(latest.view.threads)},
        {"openFds", number_or_null(latest.view.open_fds)},
        {"inFlight", number_or_null(latest.view.in_flight)},
        {"activeStreams", number_or_null(latest.view.streams)},
        {"cpuCores", std::thread::hardware_concurrency()},
        {"sampledAt", latest.at_ms},
    };
    return {{"requests", std::move(requests)},   {"throughput", std::move(throughput)}, {"connectionPools", std::move(pools)},
            {"caches", std::move(caches)},       {"coalescing", std::move(coalescing)}, {"errors", std::move(errors)},
            {"resources", std::move(resources)}, {"timestamp", now}};
  }

  static Json series_json(const Series& s) {
    auto nums = [](const auto& v) {
      Json a = Json::array();
      for (const auto& x : v) a.push_back(x);
      return a;
    };
    auto opts = [](const std::vector<std::optional<double>>& v) {
      Json a = Json::array();
      for (const auto& x : v) a.push_back(opt3(x));
      return a;
    };
    Json out = {{"interval_s", 1}, {"t", nums(s.t)}, {"requests", nums(s.requests)}, {"errors", nums(s.errors)}};
    const char* classes[kErrorClasses] = {"err_rejected", "err_upstream_4xx", "err_upstream_5xx", "err_gateway", "err_internal"};
    for (std::size_t c = 0; c < kErrorClasses; ++c) out[classes[c]] = nums(s.by_class[c]);
    out["tokens_in"] = nums(s.tokens_in);
    out["tokens_out"] = nums(s.tokens_out);
    out["bytes_in"] = nums(s.bytes_in);
    out["bytes_out"] = nums(s.bytes_out);
    out["cache_hits"] = nums(s.cache_hits);
    out["coalesced"] = nums(s.coalesced);
    out["p50_ms"] = opts(s.p50);
    out["p95_ms"] = opts(s.p95);
    out["p99_ms"] = opts(s.p99);
    out["ttft_p50_ms"] = opts(s.ttft_p50);
    out["ttft_p95_ms"] = opts(s.ttft_p95);
    out["in_flight"] = opts(s.in_flight);
    out["streams"] = opts(s.streams);
    out["pool_in_use"] = opts(s.pool_in_use);
    out["pool_idle"] = opts(s.pool_idle);
    out["pool_waiting"] = opts(s.pool_waiting);
    out["rss_mb"] = opts(s.rss_mb);
    out["cpu_percent"] = opts(s.cpu_percent);
    return out;
  }

  // The tokens each key used in the usage window (the ratelimit plugin's window counters
  // "tokens:<id>" over auth's key records), the most first. Recomputed at most every
  // top_keys_refresh: it reads the store once per key.
  Json top_keys_json(std::int64_t now) {
    std::lock_guard lock(top_keys_mutex_);
    if (top_keys_at_ != 0 && now - top_keys_at_ < settings_.top_keys_refresh_ms) return top_keys_;
    Json out = {{"windowSeconds", settings_.usage_window_ms / 1000}, {"keys", Json::array()}, {"error", nullptr}, {"computedAt", now}};
    if (settings_.top_keys == 0) {
      top_keys_ = out;
      top_keys_at_ = now;
      return out;
    }
    const glmp::Store store = host().store();
    struct Row {
      std::string id, name;
      std::int64_t tokens;
    };
    std::vector<Row> rows;
    std::string after;
    std::size_t scanned = 0;
    bool truncated = false;
    while (true) {
      const std::size_t want = std::min<std::size_t>(500, settings_.top_keys_scan - scanned);
      const glmp::StorePage page = store.list("keys", "", after, want);
      if (!page.ok()) {
        out["error"] = page.status == glmp::StoreStatus::Degraded ? "the store is degraded" : "the store is unavailable";
        break;
      }
      for (const glmp::StoreRecord& rec : page.records) {
        const auto used = store.window_sum("tokens:" + rec.key, std::chrono::milliseconds(settings_.usage_window_ms), now);
        if (used.status == glmp::StoreStatus::Invalid) {
          out["error"] = "the store refused usage_window (longer than [store] max_window?)";
          break;
        }
        if (used.ok() && used.value > 0) {
          std::string name;
          const Json j = Json::parse(rec.value, nullptr, false);
          if (j.is_object() && j.contains("name") && j["name"].is_string()) name = j["name"].get<std::string>();
          rows.push_back({rec.key, std::move(name), used.value});
        }
      }
      scanned += page.records.size();
      if (!out["error"].is_null() || !page.more || page.records.empty()) break;
      if (scanned >= settings_.top_keys_scan) {
        truncated = true;
        break;
      }
      after = page.records.back().key;
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.tokens > b.tokens; });
    if (rows.size() > settings_.top_keys) rows.resize(settings_.top_keys);
    for (const Row& row : rows) out["keys"].push_back({{"id", row.id}, {"name", row.name}, {"tokens", row.tokens}});
    out["scanned"] = scanned;
    if (truncated) out["error"] = "only the first " + std::to_string(scanned) + " keys were scanned (top_keys_scan)";
    top_keys_ = out;
    top_keys_at_ = now;
    return out;
  }

  Json slowest_json(std::int64_t now) const {
    Json out = Json::array();
    for (const SlowRow& s : collector_->history.slowest(now / 1000, settings_.slow_window_s, settings_.slowest))
      out.push_back({{"requestId", s.request_id},
                     {"at", s.at_ms},
                     {"method", s.method},
                     {"path", s.path},
                     {"status", s.status},
                     {"durationMs", round3(static_cast<double>(s.duration_us) / 1000.0)},
                     {"ttfbMs", s.ttfb_us < 0 ? Json(nullptr) : round3(static_cast<double>(s.ttfb_us) / 1000.0)},
                     {"model", s.model},
                     {"keyId", s.key_id.empty() ? Json(nullptr) : Json(s.key_id)},
                     {"origin", s.origin == Origin::Cache ? "cache" : s.origin == Origin::Coalesced ? "coalesced" : "upstream"}});
    return out;
  }

  // The saved snapshot (store: dashboard/baseline), else the settings' figures, else null.
  Json baseline_json() const {
    const auto saved = host().store().get(kBaselineNamespace, kBaselineKey);
    if (saved.ok()) {
      Json j = Json::parse(saved.value, nullptr, false);
      if (j.is_object()) return j;
    }
    if (!settings_.baseline.any()) return nullptr;
    Json out = {{"source", "settings"}, {"savedAt", nullptr}};
    for (const BaselineField& f : kBaselineFields) out[f.json] = opt(settings_.baseline.*(f.member));
    return out;
  }

  Collector::Latest latest() const {
    Collector::Latest l = collector_->latest();
    if (l.at_ms == 0) {  // no sample yet (the plugin just started): take one now
      collector_->sample_now();
      l = collector_->latest();
    }
    return l;
  }

  // --- the endpoints ----------------------------------------------------------------------------

  void system(glmp::Request& r) {
    const std::int64_t now = glmp::unix_ms();
    answer(r, system_json(now, latest()));
  }

  void json(glmp::Request& r) {
    std::int64_t since = 0;
    if (const auto v = glmp::query_param(r.query(), "since"); v && !v->empty()) {
      char* end = nullptr;
      since = std::strtoll(v->c_str(), &end, 10);
      if (end == v->c_str() || *end != '\0' || since < 0) {
        r.respond_error(400, "since must be a Unix time in seconds", "invalid_request_error");
        return;
      }
    }
    const std::int64_t now = glmp::unix_ms();
    const Collector::Latest l = latest();
    // A second counts as complete 100 ms after it ended: on_complete files a request by the coarse
    // clock (a few ms behind), and one that read the clock just before the second turned may add
    // a moment later. Without the margin the page could fetch a second before its last request.
    const std::int64_t complete_s = (now - 100) / 1000;
    Json models = Json::array();
    for (const ModelView& m : l.view.models)
      models.push_back({{"model", m.model}, {"flavour", m.flavour}, {"tokensIn", m.tokens_in}, {"tokensOut", m.tokens_out}});
    const History& h = collector_->history;
    answer(r, Json{{"timestamp", now},
                   {"uptime_s", (now - h.started_ms()) / 1000},
                   {"settings",
                    {{"history_s", settings_.history_s},
                     {"summary_window_s", settings_.summary_window_s},
                     {"usage_window_s", settings_.usage_window_ms / 1000}}},
                   {"system", system_json(now, l)},
                   {"series", series_json(h.series(since, complete_s))},
                   {"models", std::move(models)},
                   {"topKeys", top_keys_json(now)},
                   {"slowest", slowest_json(now)},
                   {"baseline", baseline_json()}});
  }

  void health(glmp::Request& r) {
    const std::int64_t now = glmp::unix_ms();
    const Collector::Latest l = collector_->latest();
    // Healthy while the sampler keeps up (a sample within the last 5 s) and every pool is healthy.
    bool healthy = l.at_ms == 0 || now - l.at_ms < 5000;
    for (const PoolView& p : l.view.pools) healthy = healthy && p.figure("healthy") != 0;
    answer(r, Json{{"healthy", healthy}, {"uptime_s", (now - collector_->history.started_ms()) / 1000}, {"timestamp", now}});
  }

  // PUT /api/metrics/baseline: the current summary-window figures become the baseline, saved in
  // the store (shared by replicas, kept across restarts).
  void save_baseline(glmp::Request& r) {
    const std::int64_t now = glmp::unix_ms();
    const Json sys = system_json(now, latest());
    Json b = {{"source", "snapshot"},
              {"savedAt", now},
              {"p50", sys["requests"]["p50"]},
              {"p95", sys["requests"]["p95"]},
              {"p99", sys["requests"]["p99"]},
              {"requestsPerSecond", sys["throughput"]["requestsPerSecond"]},
              {"errorRate", sys["errors"]["errorRate"]},
              {"cpuUsagePercent", sys["resources"]["cpuUsagePercent"]},
              {"memoryUsageMB", sys["resources"]["memoryUsageMB"]},
              {"ttftP50", sys["requests"]["ttftP50"]}};
    const glmp::StoreStatus st = host().store().put(kBaselineNamespace, kBaselineKey, dump(b));
    if (st != glmp::StoreStatus::Ok) {
      r.respond_error(503, "the store could not save the baseline", "api_error");
      return;
    }
    answer(r, Json{{"baseline", std::move(b)}});
  }

  void clear_baseline(glmp::Request& r) {
    const glmp::StoreStatus st = host().store().remove(kBaselineNamespace, kBaselineKey);
    if (st != glmp::StoreStatus::Ok && st != glmp::StoreStatus::NotFound) {
      r.respond_error(503, "the store could not remove the baseline", "api_error");
      return;
    }
    answer(r, Json{{"baseline", baseline_json()}});
  }

  const Settings settings_;
  const std::unique_ptr<Collector> collector_;
  std::mutex top_keys_mutex_;
  Json top_keys_;
  std::int64_t top_keys_at_ = 0;
};

}  // namespace glmp::plugins::dashboard

GLMP_PLUGIN(glmp::plugins::dashboard::Dashboard, "dashboard", "1.0.0");
