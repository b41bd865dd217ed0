#pragma once
// The store's Prometheus metrics, shared by every backend. Every child is created up front, so an
// update is one atomic operation (no lookup, no lock, no allocation).
#include <array>
#include <memory>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "store/store.hpp"

namespace glmp::core::store {

enum class Op { Get, Put, Delete, List, WindowAdd, WindowSum, WindowBuckets, CounterAdd, CounterGet };
inline constexpr size_t kOps = 9;
inline constexpr size_t kStatuses = 5;

class StoreMetrics {
public:
  // `registry` null: the metrics go to a private registry (unit tests).
  StoreMetrics(const char* backend, prometheus::Registry* registry);

  void op(Op op, Status status) { ops_[static_cast<size_t>(op)][static_cast<size_t>(status)]->Increment(); }
  void flushed(double seconds, bool ok) {
    flush_seconds_->Observe(seconds);
    (ok ? flush_ok_ : flush_failed_)->Increment();
  }
  void pending(double n) { pending_->Set(n); }
  void up(bool is_up) { up_->Set(is_up ? 1 : 0); }
  void cache(bool hit) { (hit ? cache_hit_ : cache_miss_)->Increment(); }
  void invalidation() { invalidations_->Increment(); }

  // For tests: the count of (op, status).
  double count(Op op, Status status) const { return ops_[static_cast<size_t>(op)][static_cast<size_t>(status)]->Value(); }

private:
  std::shared_ptr<prometheus::Registry> own_;  // when no registry was given
  std::array<std::array<prometheus::Counter*, kStatuses>, kOps> ops_{};
  prometheus::Histogram* flush_seconds_;
  prometheus::Counter* flush_ok_;
  prometheus::Counter* flush_failed_;
  prometheus::Gauge* pending_;
  prometheus::Gauge* up_;
  prometheus::Counter* cache_hit_;
  prometheus::Counter* cache_miss_;
  prometheus::Counter* invalidations_;
};

}  // namespace glmp::core::store
