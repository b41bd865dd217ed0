#pragma once
// The core services plugins reach through the host API: the state store and the metrics
// registry. Owned by the server (process lifetime); plugins only ever see them through
// glmp_host_api.
namespace glmp::core::store {
class Store;
}
namespace glmp::core::metrics {
class PluginMetrics;
class Metrics;
}

namespace glmp::core::plugins {

struct Services {
  store::Store* store = nullptr;             // null: store calls answer GLMP_STORE_UNAVAILABLE
  metrics::PluginMetrics* metrics = nullptr;  // null: metric_new answers NULL
  metrics::Metrics* all_metrics = nullptr;    // null: metrics_collect hands out nothing
};

}  // namespace glmp::core::plugins
