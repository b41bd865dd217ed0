// The ratelimit plugin's admission path, as on_request / on_complete run it for a key with a
// limit: reserve the estimate (one atomic window add-and-sum), read the window's buckets (the reset
// time for the response headers), then reconcile the reservation with the real usage and add it to
// the lifetime counter. Against the core's memory store (what the sqlite backend serves from),
// with the 5 h window already holding 300 full one-minute buckets.
#include <benchmark/benchmark.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quota.hpp"
#include "store/store.hpp"

namespace {

using namespace glmp::plugins::ratelimit;
namespace store = glmp::core::store;
namespace config = glmp::core::config;

// QuotaStore over the core store, as the plugin's host-API adapter does.
class CoreQuotaStore : public QuotaStore {
public:
  CoreQuotaStore() {
    config::StoreConfig cfg;
    cfg.backend = config::StoreBackend::Memory;
    store_ = store::make_store(cfg, nullptr);
  }
  Result window_add(const std::string& name, int64_t amount, Millis window, Millis now, int64_t* sum) override {
    return map(store_->window_add(name, amount, window, now, sum));
  }
  Result window_buckets(const std::string& name, Millis window, Millis now, std::vector<Bucket>& out) override {
    std::vector<store::Bucket> buckets;
    const Result r = map(store_->window_buckets(name, window, now, buckets));
    out.reserve(out.size() + buckets.size());
    for (const auto& b : buckets) out.push_back({b.start, b.amount});
    return r;
  }
  Result counter_add(const std::string& name, int64_t amount) override {
    return map(store_->counter_add(name, amount, nullptr));
  }
  Result counter_get(const std::string& name, int64_t& value) override { return map(store_->counter_get(name, value)); }
  Millis bucket_ms() const override { return store_->bucket_ms(); }

private:
  static Result map(store::Status s) {
    switch (s) {
      case store::Status::Ok:
      case store::Status::NotFound: return Result::Ok;
      case store::Status::Degraded: return Result::Degraded;
      default: return Result::Unavailable;
    }
  }
  std::unique_ptr<store::Store> store_;
};

constexpr Millis kWindow = 5 * 3600'000;
constexpr Millis kBase = 1'800'000'000'000;
const std::string kKey = "key_0123456789abcdef";

void BM_RatelimitAdmission(benchmark::State& state) {
  static std::unique_ptr<CoreQuotaStore> s;
  static std::unique_ptr<Quota> quota;
  if (state.thread_index() == 0) {
    s = std::make_unique<CoreQuotaStore>();
    for (Millis t = kBase - kWindow + 60'000; t <= kBase; t += 60'000)
      s->window_add(Quota::window_name(kKey), 100, kWindow, t, nullptr);  // 300 full buckets
    QuotaSettings settings;
    settings.window = kWindow;
    settings.default_limit = 0;
    quota = std::make_unique<Quota>(settings, *s, [] { return kBase + 1'000; });
  }
  // The limit stays far above the usage: every request is admitted (the common path).
  const std::optional<int64_t> limit = int64_t{1} << 50;
  int64_t refused = 0;
  for (auto _ : state) {
    const Admission a = quota->admit(kKey, limit, 1'200);
    if (a.verdict != Verdict::Admitted) ++refused;
    benchmark::DoNotOptimize(a.remaining);
    quota->reconcile(kKey, a, 900);
  }
  if (refused) state.SkipWithError("a request was refused");
  if (state.thread_index() == 0) state.counters["buckets"] = static_cast<double>(kWindow / 60'000);
}
BENCHMARK(BM_RatelimitAdmission)->Threads(1)->Threads(2);

}  // namespace
