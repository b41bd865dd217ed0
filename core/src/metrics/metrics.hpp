#pragma once
// Core Prometheus metrics (prometheus-cpp) and their text exposition for GET /metrics.
//
// Per-request updates happen once, after the request finished (never on the relay loop). The
// request counter is cached per (route, status) in lock-free slots after its first use; token
// counters are keyed by model and go through prometheus-cpp's family lookup (a short lock).

#include <array>
#include <functional>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "metrics/plugin_metrics.hpp"
#include "pipeline/proxy.hpp"  // Pools
#include "pipeline/request_context.hpp"
#include "server/tls.hpp"  // TlsOutcome

namespace glmp::core::metrics {

class Metrics {
public:
  // `route_prefixes`: the configured routes, so their counters can be cached in fixed slots.
  explicit Metrics(const std::vector<std::string>& route_prefixes);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void request_started() { in_flight_->Increment(); }
  // Records a finished request: count, durations (total, upstream, overhead, ttfb), tokens.
  void request_finished(const pipeline::RequestContext& ctx);
  void reload(bool ok) { (ok ? reload_ok_ : reload_failed_)->Increment(); }
  // The TLS listener: how each connection's start went (glmp_tls_handshakes_total{result}), and
  // the expiry of the certificate new connections get (glmp_tls_certificate_not_after_seconds;
  // the series exists only while TLS is on, so a plain proxy never looks expired).
  void tls_handshake(server::TlsOutcome outcome) {
    (outcome == server::TlsOutcome::Ok ? tls_ok_ : outcome == server::TlsOutcome::Failed ? tls_failed_ : tls_plain_)->Increment();
  }
  void set_tls_certificate(int64_t not_after_unix);

  // Sets the scrape-time gauges: pools, streams, process, recordings.
  void refresh(const pipeline::Pools& pools, int active_streams);
  // What refreshes them before every collect(): set once by the server, before anything collects.
  void set_refresher(std::function<void()> refresher) { refresher_ = std::move(refresher); }
  // Every family of the registry (the core's, the store's, the plugins'), gauges refreshed first.
  // GET /metrics and the host API's metrics_collect (ABI 1.7) read this.
  std::vector<prometheus::MetricFamily> collect();
  // The Prometheus text format (version 0.0.4) of collect().
  std::string scrape();

  // Where the store's and the plugins' metrics are registered too.
  prometheus::Registry& registry() { return *registry_; }
  PluginMetrics& plugin_metrics() { return plugin_metrics_; }

private:
  prometheus::Counter& request_counter(const pipeline::RequestContext& ctx);

  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> refresher_;
  PluginMetrics plugin_metrics_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* duration_;
  prometheus::Family<prometheus::Histogram>* upstream_;
  prometheus::Family<prometheus::Histogram>* overhead_;
  prometheus::Family<prometheus::Histogram>* ttfb_;
  prometheus::Family<prometheus::Counter>* tokens_;
  // Per flavour (none, openai, anthropic), created up front: no lookup per request.
  struct ByFlavour {
    prometheus::Histogram* duration;
    prometheus::Histogram* upstream;
    prometheus::Histogram* overhead;
    prometheus::Histogram* ttfb;
  };
  std::array<ByFlavour, 3> by_flavour_{};
  prometheus::Family<prometheus::Gauge>* pool_;
  // HTTP/2: open streams per upstream connection; the series of closed connections are removed at
  // the next scrape (the gauges set last time, under refresh_mutex_).
  prometheus::Family<prometheus::Gauge>* h2_connection_streams_;
  std::vector<prometheus::Gauge*> h2_connection_gauges_;
  prometheus::Gauge* in_flight_;
  prometheus::Gauge* active_streams_;
  prometheus::Counter* reload_ok_;
  prometheus::Counter* reload_failed_;
  prometheus::Counter* tls_ok_;
  prometheus::Counter* tls_failed_;
  prometheus::Counter* tls_plain_;
  prometheus::Family<prometheus::Gauge>* tls_not_after_;
  prometheus::Gauge* rss_;
  prometheus::Gauge* fds_;
  prometheus::Gauge* threads_;
  prometheus::Gauge* peak_rss_;
  prometheus::Counter* cpu_seconds_;
  std::mutex refresh_mutex_;  // refresh() from a scrape and a plugin's metrics_collect at once
  double cpu_counted_ = 0;    // CPU seconds already added to cpu_seconds_ (under refresh_mutex_)
  prometheus::Counter* recorded_cache_;
  prometheus::Counter* recorded_coalesced_;
  prometheus::Gauge* recordings_;
  prometheus::Gauge* recording_bytes_;

  // Token counters per (flavour, model): an open-addressing table of immutable entries, read
  // without a lock; new entries are added under add_mutex_ (models are few per deployment).
  struct TokenSlot {
    std::string model;
    size_t flavour;
    prometheus::Counter* in;
    prometheus::Counter* out;
  };
  static constexpr size_t kTokenSlots = 128;
  std::array<std::atomic<TokenSlot*>, kTokenSlots> token_slots_{};
  std::mutex add_mutex_;
  const TokenSlot* token_slot(size_t flavour, const std::string& model);

  static constexpr int kStatuses = 600;
  std::map<std::string, size_t> route_index_;  // read-only after construction; "" = no route
  std::vector<std::unique_ptr<std::array<std::atomic<prometheus::Counter*>, kStatuses>>> slots_;
};

}  // namespace glmp::core::metrics
