#include "metrics_view.hpp"

#include <algorithm>
#include <string_view>

namespace glmp::plugins::dashboard {

MetricsView read_metrics(const std::vector<glmp::MetricSample>& samples) {
  MetricsView v;
  std::map<std::string, PoolView> pools;
  std::map<std::pair<std::string, std::string>, ModelView> models;
  std::optional<CacheView> api_keys, responses, store_records;
  std::optional<CoalescingView> coalescing;
  double coalesced_requests = 0;  // the core's; shown only beside batching's own families
  auto cache = [](std::optional<CacheView>& c, const char* name, const char* plugin) -> CacheView& {
    if (!c) c = CacheView{name, plugin, 0, 0, {}};
    return *c;
  };
  auto batching = [&]() -> CoalescingView& {
    if (!coalescing) coalescing = CoalescingView{};
    return *coalescing;
  };
  for (const glmp::MetricSample& s : samples) {
    const std::string_view f = s.family;
    if (f == "glmp_upstream_pool") {
      PoolView& p = pools[std::string(s.label("upstream"))];
      p.name = s.label("upstream");
      p.figures[std::string(s.label("figure"))] = s.value;
    } else if (f == "glmp_requests_in_flight") {
      v.in_flight = s.value;
    } else if (f == "glmp_active_streams") {
      v.streams = s.value;
    } else if (f == "glmp_process_resident_memory_bytes") {
      v.rss_bytes = s.value;
    } else if (f == "glmp_process_peak_resident_memory_bytes") {
      v.peak_rss_bytes = s.value;
    } else if (f == "glmp_process_cpu_seconds_total") {
      v.cpu_seconds = s.value;
    } else if (f == "glmp_process_threads") {
      v.threads = s.value;
    } else if (f == "glmp_process_open_fds") {
      v.open_fds = s.value;
    } else if (f == "glmp_tokens_total") {
      ModelView& m = models[{std::string(s.label("model")), std::string(s.label("flavour"))}];
      m.model = s.label("model");
      m.flavour = s.label("flavour");
      (s.label("direction") == "in" ? m.tokens_in : m.tokens_out) += s.value;
    } else if (f == "glmp_auth_lookups_total") {
      CacheView& c = cache(api_keys, "api_keys", "auth");
      (s.label("result") == "cache_hit" ? c.hits : c.misses) += s.value;
    } else if (f == "glmp_cache_lookups_total") {
      CacheView& c = cache(responses, "responses", "cache");
      if (s.label("result") == "hit") c.hits += s.value;
      else if (s.label("result") == "miss") c.misses += s.value;
      else c.extra["bypassed"] += s.value;
    } else if (f == "glmp_cache_entries") {
      cache(responses, "responses", "cache").extra["entries"] = s.value;
    } else if (f == "glmp_cache_bytes") {
      cache(responses, "responses", "cache").extra["bytes"] = s.value;
    } else if (f == "glmp_cache_evictions_total") {
      cache(responses, "responses", "cache").extra["evictions"] += s.value;
    } else if (f == "glmp_cache_stored_total") {
      cache(responses, "responses", "cache").extra["stored"] = s.value;
    } else if (f == "glmp_cache_tokens_saved_total") {
      cache(responses, "responses", "cache").extra["tokensSaved"] = s.value;
    } else if (f == "glmp_store_cache_total" && s.label("backend") == "redis") {  // only redis caches records
      CacheView& c = cache(store_records, "store_records", "core");
      (s.label("result") == "hit" ? c.hits : c.misses) += s.value;
    } else if (f == "glmp_recorded_responses_total") {
      if (s.label("origin") == "coalesced") coalesced_requests = s.value;
    } else if (f == "glmp_batching_flights_total") {
      batching().flights = s.value;
    } else if (f == "glmp_batching_followers_total") {
      batching().followers = s.value;
    } else if (f == "glmp_batching_fallbacks_total") {
      batching().fallbacks += s.value;
    } else if (f == "glmp_batching_bytes_shared_total") {
      batching().bytes_shared = s.value;
    } else if (f == "glmp_batching_flights_active") {
      batching().active_flights = s.value;
    } else if (f.starts_with("glmp_batching_")) {
      batching();  // another of its families: the plugin is there
    }
  }
  for (auto& [name, p] : pools) v.pools.push_back(std::move(p));
  for (auto& [key, m] : models) v.models.push_back(std::move(m));
  std::sort(v.models.begin(), v.models.end(), [](const ModelView& a, const ModelView& b) {
    return a.tokens_in + a.tokens_out > b.tokens_in + b.tokens_out;
  });
  for (auto* c : {&api_keys, &responses, &store_records})
    if (*c) v.caches.push_back(std::move(**c));
  // glmp_recorded_responses_total is the core's and always there: coalescing is shown only when
  // batching's own families are (the plugin is or was loaded).
  if (coalescing) {
    coalescing->coalesced_requests = coalesced_requests;
    v.coalescing = coalescing;
  }
  return v;
}

}  // namespace glmp::plugins::dashboard
