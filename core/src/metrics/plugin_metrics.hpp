#pragma once
// Metrics created by plugins through the host API (metric_new): counters, gauges and histograms
// with fixed label values, registered in the core's Prometheus registry so GET /metrics shows
// them next to the core's. A handle lives until the process exits; asking again for the same
// name and labels (a plugin reloading) returns the same handle, so values carry across reloads.
// Updates go straight to prometheus-cpp's atomics: no lock, no allocation.
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "glmproxy/plugin_api.h"

namespace glmp::core::metrics {

// What a glmp_metric_host_ptr points at.
struct PluginMetric {
  glmp_metric_kind kind = GLMP_METRIC_COUNTER;
  prometheus::Counter* counter = nullptr;
  prometheus::Gauge* gauge = nullptr;
  prometheus::Histogram* histogram = nullptr;
};

class PluginMetrics {
public:
  explicit PluginMetrics(prometheus::Registry& registry) : registry_(registry) {}

  // Returns the metric, or null with `error` set (invalid name/label, a core metric's name, a kind
  // clash with an existing family, unsorted buckets).
  PluginMetric* create(glmp_metric_kind kind, const std::string& name, const std::string& help,
                       const std::vector<std::pair<std::string, std::string>>& labels, const std::vector<double>& buckets,
                       std::string& error);

  // The core's glmp_plugin_hook_duration_seconds{plugin,hook} histograms of one plugin, in
  // plugins::Hook order ("on_request_headers", "on_request", "on_response_headers",
  // "on_response_body", "on_complete"); null where `hooks` has null (a hook the plugin lacks).
  // The same ones again for the same name (a reload).
  std::array<prometheus::Histogram*, 5> hook_histograms(const std::string& plugin, const std::array<const char*, 5>& hooks);

private:
  prometheus::Registry& registry_;
  prometheus::Family<prometheus::Histogram>* hook_family_ = nullptr;  // created on first use
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<PluginMetric>> by_key_;  // name + labels → handle
  std::map<std::string, glmp_metric_kind> kinds_;                // family name → kind
};

}  // namespace glmp::core::metrics
