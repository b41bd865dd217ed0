#include "metrics/plugin_metrics.hpp"

#include <algorithm>
#include <cmath>

#include <prometheus/check_names.h>

namespace glmp::core::metrics {

PluginMetric* PluginMetrics::create(glmp_metric_kind kind, const std::string& name, const std::string& help,
                                    const std::vector<std::pair<std::string, std::string>>& labels,
                                    const std::vector<double>& buckets, std::string& error) {
  if (kind != GLMP_METRIC_COUNTER && kind != GLMP_METRIC_GAUGE && kind != GLMP_METRIC_HISTOGRAM) {
    error = "unknown metric kind " + std::to_string(static_cast<int>(kind));
    return nullptr;
  }
  if (!prometheus::CheckMetricName(name)) {
    error = "\"" + name + "\" is not a valid Prometheus metric name";
    return nullptr;
  }
  // The core's own families (glmp_requests_total, glmp_store_*, …) stay the core's.
  static const char* const kCorePrefixes[] = {"glmp_request", "glmp_upstream", "glmp_proxy_", "glmp_time_to_first",
                                              "glmp_tokens", "glmp_plugin_reloads", "glmp_store_", "glmp_process_",
                                              "glmp_active_streams", "glmp_plugin_hook", "glmp_recording",
                                              "glmp_recorded"};
  for (const char* p : kCorePrefixes)
    if (name.rfind(p, 0) == 0) {
      error = "\"" + name + "\" is reserved for the core's metrics (name plugin metrics glmp_<plugin>_…)";
      return nullptr;
    }
  prometheus::Labels label_map;
  for (const auto& [k, v] : labels) {
    if (!prometheus::CheckLabelName(k) || k == "le" || k == "quantile") {
      error = "\"" + k + "\" is not a valid label name";
      return nullptr;
    }
    if (!label_map.emplace(k, v).second) {
      error = "label \"" + k + "\" given twice";
      return nullptr;
    }
  }
  if (kind == GLMP_METRIC_HISTOGRAM) {
    for (size_t i = 0; i < buckets.size(); ++i)
      if (!std::isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])) {
        error = "histogram buckets must be finite and strictly increasing";
        return nullptr;
      }
  }

  std::string key = name;
  for (const auto& [k, v] : label_map) key += '\0' + k + '=' + v;

  std::lock_guard lock(mutex_);
  if (auto it = by_key_.find(key); it != by_key_.end()) {
    if (it->second->kind != kind) {
      error = "\"" + name + "\" already exists as another kind of metric";
      return nullptr;
    }
    return it->second.get();
  }
  if (auto it = kinds_.find(name); it != kinds_.end() && it->second != kind) {
    error = "\"" + name + "\" already exists as another kind of metric";
    return nullptr;
  }
  auto metric = std::make_unique<PluginMetric>();
  metric->kind = kind;
  try {
    switch (kind) {
      case GLMP_METRIC_COUNTER:
        metric->counter = &prometheus::BuildCounter().Name(name).Help(help).Register(registry_).Add(label_map);
        break;
      case GLMP_METRIC_GAUGE:
        metric->gauge = &prometheus::BuildGauge().Name(name).Help(help).Register(registry_).Add(label_map);
        break;
      case GLMP_METRIC_HISTOGRAM: {
        prometheus::Histogram::BucketBoundaries bounds =
            buckets.empty() ? prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
                            : buckets;
        metric->histogram = &prometheus::BuildHistogram().Name(name).Help(help).Register(registry_).Add(label_map, bounds);
        break;
      }
    }
  } catch (const std::exception& e) {
    error = "cannot register \"" + name + "\": " + e.what();
    return nullptr;
  }
  kinds_.emplace(name, kind);
  return by_key_.emplace(std::move(key), std::move(metric)).first->second.get();
}

std::array<prometheus::Histogram*, 5> PluginMetrics::hook_histograms(const std::string& plugin,
                                                                     const std::array<const char*, 5>& hooks) {
  // From 1 µs to 1 s: most hooks take microseconds; a store round trip or a slow plugin shows.
  static const prometheus::Histogram::BucketBoundaries kBuckets{1e-6,   2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4,
                                                                5e-4,   1e-3,   2.5e-3, 5e-3, 0.01, 0.025, 0.1, 1};
  std::lock_guard lock(mutex_);
  if (!hook_family_)
    hook_family_ = &prometheus::BuildHistogram()
                        .Name("glmp_plugin_hook_duration_seconds")
                        .Help("Time spent in each plugin hook, measured by the core, one observation per request and hook "
                              "(on_response_body: its sum over the response's chunks)")
                        .Register(registry_);
  std::array<prometheus::Histogram*, 5> out{};
  for (size_t h = 0; h < hooks.size(); ++h)
    if (hooks[h]) out[h] = &hook_family_->Add({{"plugin", plugin}, {"hook", hooks[h]}}, kBuckets);
  return out;
}

}  // namespace glmp::core::metrics
