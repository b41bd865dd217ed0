// The auth plugin's warm path, as on_request runs it for a key found in the cache: pick the
// credential from the headers, SHA-256 it, look it up in the LRU, check enabled/expiry. (The host
// API calls around it — reading two headers, setting a few attributes — are measured by the
// integration benchmark, scripts/bench --auth.)
#include <benchmark/benchmark.h>

#include "key_logic.hpp"

namespace {

using namespace glmp::plugins::auth;

void BM_AuthWarmPath(benchmark::State& state) {
  static KeyCache cache(10'000, std::chrono::minutes(5));
  const std::string key = generate_key();
  const std::string header = "Bearer " + key;
  if (state.thread_index() == 0) {
    auto info = std::make_shared<KeyInfo>();
    info->id = "key_0123456789abcdef";
    info->enabled = true;
    cache.put(sha256_hex(key), info, now_ms());
    for (int i = 0; i < 5000; ++i) cache.put(sha256_hex(generate_key()), info, now_ms());  // a realistic cache
  }
  const Millis now = now_ms();
  for (auto _ : state) {
    const Credential c = extract_credential(header, std::nullopt, std::nullopt);
    const std::string hash = sha256_hex(c.key);
    auto hit = cache.get(hash, now);
    benchmark::DoNotOptimize(hit && hit->info && hit->info->enabled && !(hit->info->expires && *hit->info->expires <= now));
  }
}
BENCHMARK(BM_AuthWarmPath)->Threads(1)->Threads(2);

void BM_AuthSha256(benchmark::State& state) {
  const std::string key = generate_key();
  for (auto _ : state) benchmark::DoNotOptimize(sha256_hex(key));
}
BENCHMARK(BM_AuthSha256);

}  // namespace
