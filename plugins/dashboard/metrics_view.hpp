#pragma once
// What the dashboard reads from the registry once a second (ABI 1.7 metrics_collect): the core's
// pool, stream and process gauges, the token counters by model, and the families of the plugins it
// knows (auth's key cache, cache, batching, the store's record cache). A family that is absent
// (its plugin not loaded) leaves its section out. Pure: built from samples, testable alone.
#include <glmproxy/sdk.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace glmp::plugins::dashboard {

struct PoolView {
  std::string name;
  std::map<std::string, double> figures;  // size, idle, in_use, waiting, max, created, reused, failed, expired, timeouts, healthy
  double figure(const std::string& f) const {
    const auto it = figures.find(f);
    return it == figures.end() ? 0 : it->second;
  }
};

struct CacheView {
  std::string name, plugin;
  double hits = 0, misses = 0;
  std::map<std::string, double> extra;  // entries, bytes, evictions, stored, tokensSaved
};

struct CoalescingView {
  double coalesced_requests = 0, flights = 0, followers = 0, fallbacks = 0, bytes_shared = 0, active_flights = 0;
};

struct ModelView {
  std::string model, flavour;
  double tokens_in = 0, tokens_out = 0;
};

struct MetricsView {
  std::vector<PoolView> pools;   // by name
  std::vector<CacheView> caches; // api_keys (auth), responses (cache), store_records (redis store)
  std::optional<CoalescingView> coalescing;  // batching loaded (its families exist)
  std::vector<ModelView> models;             // by tokens, most first
  double in_flight = -1, streams = -1, rss_bytes = -1, peak_rss_bytes = -1, threads = -1, open_fds = -1;
  double cpu_seconds = -1;  // the process's CPU time so far (glmp_process_cpu_seconds_total)
};

MetricsView read_metrics(const std::vector<glmp::MetricSample>& samples);

}  // namespace glmp::plugins::dashboard
