#include "store/store_metrics.hpp"

namespace glmp::core::store {

StoreMetrics::StoreMetrics(const char* backend, prometheus::Registry* registry) {
  if (!registry) {
    own_ = std::make_shared<prometheus::Registry>();
    registry = own_.get();
  }
  static constexpr std::array<const char*, kOps> kOpNames{"get", "put", "delete", "list", "window_add",
                                                          "window_sum", "window_buckets", "counter_add", "counter_get"};
  static constexpr std::array<const char*, kStatuses> kResults{"ok", "not_found", "unavailable", "degraded", "invalid"};
  auto& ops = prometheus::BuildCounter()
                  .Name("glmp_store_operations_total")
                  .Help("State store operations by backend, operation and result (unavailable/degraded = backend failures)")
                  .Register(*registry);
  for (size_t o = 0; o < kOps; ++o)
    for (size_t s = 0; s < kStatuses; ++s)
      ops_[o][s] = &ops.Add({{"backend", backend}, {"op", kOpNames[o]}, {"result", kResults[s]}});

  flush_seconds_ = &prometheus::BuildHistogram()
                        .Name("glmp_store_flush_seconds")
                        .Help("Time to persist one write-behind batch (sqlite)")
                        .Register(*registry)
                        .Add({{"backend", backend}},
                             prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                                     0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
  auto& flushes = prometheus::BuildCounter()
                      .Name("glmp_store_flushes_total")
                      .Help("Write-behind flushes by result (a failed batch is retried on the next flush)")
                      .Register(*registry);
  flush_ok_ = &flushes.Add({{"backend", backend}, {"result", "ok"}});
  flush_failed_ = &flushes.Add({{"backend", backend}, {"result", "failed"}});
  pending_ = &prometheus::BuildGauge()
                  .Name("glmp_store_pending_writes")
                  .Help("Updates applied in memory and not yet persisted (sqlite) or waiting to be replayed (redis)")
                  .Register(*registry)
                  .Add({{"backend", backend}});
  up_ = &prometheus::BuildGauge()
             .Name("glmp_store_up")
             .Help("1 when the store backend is reachable and persisting, else 0")
             .Register(*registry)
             .Add({{"backend", backend}});
  up_->Set(1);
  auto& cache = prometheus::BuildCounter()
                    .Name("glmp_store_cache_total")
                    .Help("Local record cache lookups of the redis backend, by result")
                    .Register(*registry);
  cache_hit_ = &cache.Add({{"backend", backend}, {"result", "hit"}});
  cache_miss_ = &cache.Add({{"backend", backend}, {"result", "miss"}});
  invalidations_ = &prometheus::BuildCounter()
                        .Name("glmp_store_invalidations_total")
                        .Help("Record cache invalidations received from other instances (redis pub/sub)")
                        .Register(*registry)
                        .Add({{"backend", backend}});
}

}  // namespace glmp::core::store
