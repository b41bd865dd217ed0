// The dashboard's memory without the ABI (history.hpp: every time is passed in): the latency bins
// and their quantiles, the error classes, the per-second buckets (counts, tokens, bytes, origins,
// error classes, latency and TTFT quantiles, gaps, the current second, `after`), the ring's
// rollover and late samples, the sampled gauges, the window aggregates, the memory growth rate,
// the slowest requests per minute, the top-errors table and the errors by status, and exact totals
// when several threads feed the same seconds.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "history.hpp"

namespace {

using namespace glmp::plugins::dashboard;

constexpr std::int64_t kT0 = 1'700'000'040;  // Unix seconds, the start of a minute
constexpr std::uint64_t kMsUs = 1000;        // µs per ms
constexpr double kMiB = 1024.0 * 1024.0;

// "prefix" + std::to_string(n), without the operator+(const char*, std::string&&) that GCC 12's
// -Wrestrict misreads.
std::string numbered(std::string prefix, long n) { return prefix += std::to_string(n); }

using Bins = std::array<std::uint64_t, LatencyBins::kBins>;

Bins bins_of(const std::vector<std::uint64_t>& values_us) {
  Bins b{};
  for (std::uint64_t v : values_us) ++b[LatencyBins::bin_of(v)];
  return b;
}

// A finished request ending in `second`.
Sample at(std::int64_t second, std::uint64_t duration_ms = 10, int status = 200, int upstream_status = -1) {
  Sample s;
  s.second = second;
  s.status = status;
  s.upstream_status = upstream_status < 0 ? status : upstream_status;
  s.duration_us = duration_ms * kMsUs;
  return s;
}

std::size_t cls(ErrorClass c) { return static_cast<std::size_t>(c); }

template <class T>
T sum(const std::vector<T>& v) {
  return std::accumulate(v.begin(), v.end(), T{});
}

// Every per-second vector of a Series has one entry per t.
void expect_aligned(const Series& s) {
  const std::size_t n = s.t.size();
  for (const auto* v : {&s.requests, &s.errors, &s.tokens_in, &s.tokens_out, &s.bytes_in, &s.bytes_out,
                        &s.cache_hits, &s.coalesced})
    EXPECT_EQ(v->size(), n);
  for (const auto& v : s.by_class) EXPECT_EQ(v.size(), n);
  for (const auto* v : {&s.p50, &s.p95, &s.p99, &s.ttft_p50, &s.ttft_p95, &s.in_flight, &s.streams, &s.pool_in_use,
                        &s.pool_idle, &s.pool_waiting, &s.rss_mb, &s.cpu_percent})
    EXPECT_EQ(v->size(), n);
  for (std::size_t i = 1; i < n; ++i) EXPECT_EQ(s.t[i], s.t[i - 1] + 1) << "one entry per second, no gaps";
}

// The index of second `t` in s.t (fails the test when absent).
std::size_t index_of(const Series& s, std::int64_t t) {
  const auto it = std::find(s.t.begin(), s.t.end(), t);
  EXPECT_NE(it, s.t.end()) << "second " << t << " not in the series";
  return it == s.t.end() ? 0 : static_cast<std::size_t>(it - s.t.begin());
}

// --- bins --------------------------------------------------------------------------------------

TEST(LatencyBins, EveryValueLiesInItsBin) {
  std::vector<std::uint64_t> values;
  for (std::uint64_t v = 0; v < 5000; ++v) values.push_back(v);
  for (int p = 2; p < 33; ++p)
    for (std::int64_t d = -3; d <= 3; ++d) values.push_back(static_cast<std::uint64_t>((std::int64_t{1} << p) + d));
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::uint64_t> any(0, (std::uint64_t{1} << 33) - 1);
  for (int i = 0; i < 20'000; ++i) values.push_back(any(rng));
  for (std::uint64_t v : values) {
    const std::size_t b = LatencyBins::bin_of(v);
    ASSERT_LT(b, LatencyBins::kBins) << v;
    EXPECT_LE(LatencyBins::lower_us(b), static_cast<double>(v)) << v;
    EXPECT_LT(static_cast<double>(v), LatencyBins::upper_us(b)) << v;
  }
}

TEST(LatencyBins, BinsAreContiguousMonotonicAndNarrow) {
  for (std::size_t b = 0; b + 1 < LatencyBins::kBins; ++b) {
    EXPECT_EQ(LatencyBins::upper_us(b), LatencyBins::lower_us(b + 1)) << b;
    EXPECT_LT(LatencyBins::lower_us(b), LatencyBins::upper_us(b)) << b;
  }
  for (std::size_t b = 0; b < static_cast<std::size_t>(LatencyBins::kSub); ++b) {
    EXPECT_EQ(LatencyBins::lower_us(b), static_cast<double>(b)) << "exact below 4 µs";
    EXPECT_EQ(LatencyBins::upper_us(b), static_cast<double>(b + 1));
  }
  for (std::size_t b = LatencyBins::kSub; b < LatencyBins::kBins; ++b)
    EXPECT_LE(LatencyBins::upper_us(b) - LatencyBins::lower_us(b), 0.25 * LatencyBins::lower_us(b) + 1e-9)
        << "bin " << b << " wider than 25 %";
  std::size_t prev = 0;
  for (std::uint64_t v = 0; v < 300'000; v += 7) {
    const std::size_t b = LatencyBins::bin_of(v);
    EXPECT_GE(b, prev) << v;
    prev = b;
  }
}

TEST(LatencyBins, LongDurationsClampToTheLastBin) {
  const std::uint64_t top = std::uint64_t{1} << 33;  // 2.4 h in µs
  EXPECT_EQ(LatencyBins::upper_us(LatencyBins::kBins - 1), static_cast<double>(top));
  EXPECT_EQ(LatencyBins::bin_of(top - 1), LatencyBins::kBins - 1);
  EXPECT_EQ(LatencyBins::bin_of(top), LatencyBins::kBins - 1);
  EXPECT_EQ(LatencyBins::bin_of(top * 1000), LatencyBins::kBins - 1);
  EXPECT_EQ(LatencyBins::bin_of(UINT64_MAX), LatencyBins::kBins - 1);
  EXPECT_EQ(LatencyBins::bin_of(0), 0u);
}

TEST(LatencyBins, QuantilesOfKnownDistributions) {
  EXPECT_EQ(LatencyBins::quantile_us(Bins{}, 0.5), std::nullopt) << "no values";

  // 1..100 ms: each quantile lies in the bin of the exact answer.
  std::vector<std::uint64_t> ms;
  for (std::uint64_t i = 1; i <= 100; ++i) ms.push_back(i * kMsUs);
  const Bins b = bins_of(ms);
  for (const auto& [q, exact] : std::vector<std::pair<double, std::uint64_t>>{
           {0.01, 1000}, {0.25, 25'000}, {0.5, 50'000}, {0.9, 90'000}, {0.95, 95'000}, {0.99, 99'000}, {1.0, 100'000}}) {
    const auto v = LatencyBins::quantile_us(b, q);
    ASSERT_TRUE(v) << q;
    const std::size_t bin = LatencyBins::bin_of(exact);
    EXPECT_GE(*v, LatencyBins::lower_us(bin)) << "q=" << q;
    EXPECT_LE(*v, LatencyBins::upper_us(bin)) << "q=" << q;
  }
  const double p50 = *LatencyBins::quantile_us(b, 0.5);
  const std::size_t b50 = LatencyBins::bin_of(50'000);
  EXPECT_LE(std::abs(p50 - 50'000), LatencyBins::upper_us(b50) - LatencyBins::lower_us(b50)) << p50;
  EXPECT_NEAR(*LatencyBins::quantile_us(b, 0.99), 99'000, 0.25 * 99'000);
  // Non-decreasing in q.
  double last = 0;
  for (double q = 0.01; q <= 1.0; q += 0.01) {
    const double v = *LatencyBins::quantile_us(b, q);
    EXPECT_GE(v, last) << q;
    last = v;
  }

  // One value: every quantile is in its bin.
  const Bins one = bins_of({1234});
  for (double q : {0.01, 0.5, 1.0}) {
    const double v = *LatencyBins::quantile_us(one, q);
    EXPECT_GE(v, LatencyBins::lower_us(LatencyBins::bin_of(1234)));
    EXPECT_LE(v, LatencyBins::upper_us(LatencyBins::bin_of(1234)));
  }
  // The exact bins answer exactly.
  const Bins tiny = bins_of({0, 1, 2, 3});
  EXPECT_EQ(*LatencyBins::quantile_us(tiny, 0.25), 0);
  EXPECT_EQ(*LatencyBins::quantile_us(tiny, 0.5), 1);
  EXPECT_EQ(*LatencyBins::quantile_us(tiny, 1.0), 3);
  // 99 fast and 1 slow: p50 is fast, p99 fast, p100 slow.
  std::vector<std::uint64_t> skew(99, 2 * kMsUs);
  skew.push_back(5'000 * kMsUs);
  const Bins s = bins_of(skew);
  EXPECT_LT(*LatencyBins::quantile_us(s, 0.5), 2.5 * kMsUs);
  EXPECT_LT(*LatencyBins::quantile_us(s, 0.99), 2.5 * kMsUs);
  EXPECT_GT(*LatencyBins::quantile_us(s, 1.0), 4'000 * kMsUs);
}

// --- classes -----------------------------------------------------------------------------------

TEST(ErrorClasses, ClassifyEveryCase) {
  EXPECT_EQ(classify(200, 200), std::nullopt);
  EXPECT_EQ(classify(204, 0), std::nullopt);
  EXPECT_EQ(classify(304, 304), std::nullopt);
  EXPECT_EQ(classify(399, 0), std::nullopt);
  // Refused by the proxy or a plugin (no upstream answer, or not the upstream's status).
  for (int s : {400, 401, 403, 404, 413, 429}) EXPECT_EQ(classify(s, 0), ErrorClass::Rejected) << s;
  EXPECT_EQ(classify(429, 200), ErrorClass::Rejected) << "a plugin replaced the upstream's 200";
  // The upstream's own error, passed through.
  for (int s : {400, 401, 404, 429}) EXPECT_EQ(classify(s, s), ErrorClass::UpstreamClient) << s;
  for (int s : {500, 502, 503, 504, 529}) EXPECT_EQ(classify(s, s), ErrorClass::UpstreamServer) << s;
  // Made by the proxy: gateway failures, then anything else 5xx.
  for (int s : {502, 503, 504}) {
    EXPECT_EQ(classify(s, 0), ErrorClass::Gateway) << s;
    EXPECT_EQ(classify(s, 200), ErrorClass::Gateway) << s << " (upstream answered, proxy failed after)";
  }
  EXPECT_EQ(classify(502, 500), ErrorClass::Gateway);
  for (int s : {500, 501, 507}) EXPECT_EQ(classify(s, 0), ErrorClass::Internal) << s;
}

TEST(ErrorClasses, Names) {
  EXPECT_EQ(error_class_name(ErrorClass::Rejected), "rejected");
  EXPECT_EQ(error_class_name(ErrorClass::UpstreamClient), "upstream_4xx");
  EXPECT_EQ(error_class_name(ErrorClass::UpstreamServer), "upstream_5xx");
  EXPECT_EQ(error_class_name(ErrorClass::Gateway), "gateway");
  EXPECT_EQ(error_class_name(ErrorClass::Internal), "internal");
}

// --- the buckets -------------------------------------------------------------------------------

TEST(HistorySeries, PerSecondCountsAndQuantiles) {
  History h(3600, (kT0 - 100) * 1000);
  // kT0: two successes (one streamed, one from the cache) and an upstream 5xx (coalesced).
  Sample a = at(kT0, 10);
  a.ttfb_us = 2 * kMsUs;
  a.bytes_in = 100;
  a.bytes_out = 1000;
  a.tokens_in = 5;
  a.tokens_out = 7;
  Sample b = at(kT0, 20);
  b.bytes_in = 50;
  b.bytes_out = 500;
  b.tokens_in = 3;
  b.tokens_out = 4;
  b.origin = Origin::Cache;
  Sample c = at(kT0, 30, 500, 500);
  c.bytes_in = 10;
  c.origin = Origin::Coalesced;
  c.tokens_in = -1;  // unknown: not counted
  for (const Sample& s : {a, b, c}) h.record(s);
  // kT0 + 2: a refusal and a gateway error; kT0 + 3: an internal error.
  h.record(at(kT0 + 2, 1, 429, 0));
  h.record(at(kT0 + 2, 3, 502, 0));
  h.record(at(kT0 + 3, 5, 500, 0));

  const Series s = h.series(kT0 - 1, kT0 + 4);
  expect_aligned(s);
  EXPECT_EQ(s.t, (std::vector<std::int64_t>{kT0, kT0 + 1, kT0 + 2, kT0 + 3}));
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{3, 0, 2, 1}));
  EXPECT_EQ(s.errors, (std::vector<std::uint64_t>{1, 0, 2, 1}));
  EXPECT_EQ(s.by_class[cls(ErrorClass::UpstreamServer)], (std::vector<std::uint64_t>{1, 0, 0, 0}));
  EXPECT_EQ(s.by_class[cls(ErrorClass::Rejected)], (std::vector<std::uint64_t>{0, 0, 1, 0}));
  EXPECT_EQ(s.by_class[cls(ErrorClass::Gateway)], (std::vector<std::uint64_t>{0, 0, 1, 0}));
  EXPECT_EQ(s.by_class[cls(ErrorClass::Internal)], (std::vector<std::uint64_t>{0, 0, 0, 1}));
  EXPECT_EQ(s.by_class[cls(ErrorClass::UpstreamClient)], (std::vector<std::uint64_t>{0, 0, 0, 0}));
  EXPECT_EQ(s.tokens_in, (std::vector<std::uint64_t>{8, 0, 0, 0}));
  EXPECT_EQ(s.tokens_out, (std::vector<std::uint64_t>{11, 0, 0, 0}));
  EXPECT_EQ(s.bytes_in, (std::vector<std::uint64_t>{160, 0, 0, 0}));
  EXPECT_EQ(s.bytes_out, (std::vector<std::uint64_t>{1500, 0, 0, 0}));
  EXPECT_EQ(s.cache_hits, (std::vector<std::uint64_t>{1, 0, 0, 0}));
  EXPECT_EQ(s.coalesced, (std::vector<std::uint64_t>{1, 0, 0, 0}));

  // Latency in ms: kT0 holds 10, 20 and 30 ms.
  ASSERT_TRUE(s.p50[0] && s.p95[0] && s.p99[0]);
  EXPECT_GE(*s.p50[0], LatencyBins::lower_us(LatencyBins::bin_of(20'000)) / 1000.0);
  EXPECT_LE(*s.p50[0], LatencyBins::upper_us(LatencyBins::bin_of(20'000)) / 1000.0);
  EXPECT_GE(*s.p99[0], LatencyBins::lower_us(LatencyBins::bin_of(30'000)) / 1000.0);
  EXPECT_LE(*s.p99[0], LatencyBins::upper_us(LatencyBins::bin_of(30'000)) / 1000.0);
  EXPECT_LE(*s.p50[0], *s.p95[0]);
  EXPECT_LE(*s.p95[0], *s.p99[0]);
  // TTFT only from the streamed one (2 ms).
  ASSERT_TRUE(s.ttft_p50[0] && s.ttft_p95[0]);
  EXPECT_GE(*s.ttft_p50[0], 2.0 * 0.8);
  EXPECT_LE(*s.ttft_p95[0], 2.0 * 1.25);
  // An idle second: zeros and nulls; seconds with requests but no streams: no TTFT.
  EXPECT_EQ(s.p50[1], std::nullopt);
  EXPECT_EQ(s.p99[1], std::nullopt);
  EXPECT_EQ(s.ttft_p50[1], std::nullopt);
  EXPECT_TRUE(s.p50[2].has_value());
  EXPECT_EQ(s.ttft_p50[2], std::nullopt);
  EXPECT_EQ(s.ttft_p95[3], std::nullopt);
  // Nothing was sampled.
  for (std::size_t i = 0; i < s.t.size(); ++i) {
    EXPECT_EQ(s.in_flight[i], std::nullopt);
    EXPECT_EQ(s.rss_mb[i], std::nullopt);
    EXPECT_EQ(s.cpu_percent[i], std::nullopt);
  }

  // Lifetime totals.
  EXPECT_EQ(h.total_requests(), 6u);
  EXPECT_EQ(h.total_success(), 2u);
  EXPECT_EQ(h.total_errors(), 4u);
  EXPECT_EQ(h.total_by_class(ErrorClass::UpstreamServer), 1u);
  EXPECT_EQ(h.total_by_class(ErrorClass::Rejected), 1u);
  EXPECT_EQ(h.total_by_class(ErrorClass::Gateway), 1u);
  EXPECT_EQ(h.total_by_class(ErrorClass::Internal), 1u);
  EXPECT_EQ(h.total_by_class(ErrorClass::UpstreamClient), 0u);
}

TEST(HistorySeries, TheCurrentSecondIsNeverIncluded) {
  History h(3600, (kT0 - 100) * 1000);
  h.record(at(kT0));
  h.record(at(kT0 + 1));
  Series s = h.series(kT0 - 1, kT0 + 1);  // now = kT0 + 1: still filling
  EXPECT_EQ(s.t, (std::vector<std::int64_t>{kT0}));
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{1}));
  s = h.series(kT0 - 1, kT0 + 2);
  EXPECT_EQ(s.t, (std::vector<std::int64_t>{kT0, kT0 + 1}));
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{1, 1}));
  EXPECT_TRUE(h.series(kT0 - 1, kT0).t.empty());
}

TEST(HistorySeries, AfterKeepsOnlyLaterSecondsWithoutGaps) {
  History h(3600, (kT0 - 100) * 1000);
  for (int i = 0; i < 10; ++i)
    for (int k = 0; k <= i; k += 3) h.record(at(kT0 + i));
  const Series all = h.series(kT0 - 1, kT0 + 10);
  expect_aligned(all);
  ASSERT_EQ(all.t.size(), 10u);
  const Series later = h.series(kT0 + 6, kT0 + 10);
  expect_aligned(later);
  EXPECT_EQ(later.t, (std::vector<std::int64_t>{kT0 + 7, kT0 + 8, kT0 + 9}));
  EXPECT_EQ(later.requests, std::vector<std::uint64_t>(all.requests.begin() + 7, all.requests.end()));
  EXPECT_TRUE(h.series(kT0 + 9, kT0 + 10).t.empty()) << "nothing after the last complete second";
  EXPECT_TRUE(h.series(kT0 + 100, kT0 + 10).t.empty());
  // `after` = 0: everything the ring holds since collecting began.
  const Series whole = h.series(0, kT0 + 10);
  expect_aligned(whole);
  EXPECT_EQ(whole.t.front(), kT0 - 100);
  EXPECT_EQ(whole.t.back(), kT0 + 9);
  EXPECT_EQ(sum(whole.requests), sum(all.requests));
}

TEST(HistorySeries, NeverStartsBeforeCollectingBegan) {
  History h(3600, kT0 * 1000 + 500);  // began in the middle of kT0
  h.record(at(kT0 + 1));
  const Series s = h.series(0, kT0 + 3);
  EXPECT_EQ(s.t, (std::vector<std::int64_t>{kT0, kT0 + 1, kT0 + 2}));
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{0, 1, 0}));
  EXPECT_EQ(h.started_ms(), kT0 * 1000 + 500);
}

TEST(HistoryRing, OldDataIsGoneAndAReusedSlotStartsFromZero) {
  History h(60, (kT0 - 1000) * 1000);
  EXPECT_EQ(h.capacity(), 60u);
  EXPECT_EQ(History(10, 0).capacity(), 60u) << "at least 60 s";
  Sample big = at(kT0, 50);
  big.tokens_in = 100;
  big.tokens_out = 200;
  big.bytes_in = 1000;
  big.ttfb_us = 1000;
  h.record(big);
  h.record(at(kT0, 50, 503, 503));
  h.sample(kT0, Gauges{5, 2, 1, 1, 0, 64 << 20, 50.0});

  // Within the ring: kept; the series covers at most capacity - 1 complete seconds.
  Series s = h.series(0, kT0 + 30);
  EXPECT_EQ(s.t.front(), kT0 + 30 - 59);
  EXPECT_EQ(s.requests[index_of(s, kT0)], 2u);
  s = h.series(0, kT0 + 59);
  EXPECT_EQ(s.t.front(), kT0);
  EXPECT_EQ(s.requests[index_of(s, kT0)], 2u);
  // 60 s later the ring no longer reaches it.
  s = h.series(0, kT0 + 60);
  EXPECT_EQ(s.t.front(), kT0 + 1);
  EXPECT_EQ(sum(s.requests), 0u);

  // kT0 + 60 reuses kT0's slot: it starts from zero (counts, classes, tokens, bins, gauges).
  h.record(at(kT0 + 60, 1));
  s = h.series(kT0 + 59, kT0 + 61);
  ASSERT_EQ(s.t, (std::vector<std::int64_t>{kT0 + 60}));
  EXPECT_EQ(s.requests[0], 1u);
  EXPECT_EQ(s.errors[0], 0u);
  EXPECT_EQ(s.by_class[cls(ErrorClass::UpstreamServer)][0], 0u);
  EXPECT_EQ(s.tokens_in[0], 0u);
  EXPECT_EQ(s.tokens_out[0], 0u);
  EXPECT_EQ(s.bytes_in[0], 0u);
  EXPECT_EQ(s.ttft_p50[0], std::nullopt);
  EXPECT_LE(*s.p99[0], 1.25) << "the 50 ms requests of kT0 are not in its bins";
  EXPECT_EQ(s.in_flight[0], std::nullopt) << "kT0's gauges are not kT0 + 60's";
  EXPECT_EQ(s.rss_mb[0], std::nullopt);
  const Aggregate a = h.aggregate(kT0 + 61, 59);
  EXPECT_EQ(a.requests, 1u);
  EXPECT_EQ(a.latency_max_us, 1 * kMsUs);
  // A query that still names kT0 does not see kT0 + 60's figures as kT0's.
  s = h.series(kT0 - 1, kT0 + 1);
  ASSERT_EQ(s.t, (std::vector<std::int64_t>{kT0}));
  EXPECT_EQ(s.requests[0], 0u);
}

TEST(HistoryRing, ALateSampleForAnOlderSecondIsDropped) {
  History h(60, (kT0 - 1000) * 1000);
  h.record(at(kT0 + 60));
  h.record(at(kT0, 10));  // a writer preempted for longer than the ring: its slot holds kT0 + 60
  h.sample(kT0, Gauges{9, 9, 9, 9, 9, 9, 9});
  Series s = h.series(kT0 + 59, kT0 + 61);
  ASSERT_EQ(s.t, (std::vector<std::int64_t>{kT0 + 60}));
  EXPECT_EQ(s.requests[0], 1u) << "the late request must not land in kT0 + 60";
  EXPECT_EQ(s.in_flight[0], std::nullopt) << "nor the late gauges";
  EXPECT_EQ(h.total_requests(), 2u) << "the lifetime totals still count it";
  // Seconds between are idle, not stale.
  h.record(at(kT0 + 61));
  s = h.series(kT0 + 59, kT0 + 62);
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{1, 1}));
}

TEST(HistoryGauges, SampledPerSecondAndNullOtherwise) {
  History h(3600, (kT0 - 100) * 1000);
  h.record(at(kT0 + 1));
  Gauges g;
  g.in_flight = 3;
  g.streams = 1;
  g.pool_in_use = 2;
  g.pool_idle = 5;
  g.pool_waiting = 0;
  g.rss_bytes = 100 << 20;
  g.cpu_percent = 12.3456;
  h.sample(kT0 + 1, g);
  h.record(at(kT0 + 1));  // a request after the sample keeps the gauges
  Gauges partial;         // unknowns stay null
  partial.in_flight = 0;
  partial.cpu_percent = 250.0;  // 2.5 cores
  h.sample(kT0 + 2, partial);

  const Series s = h.series(kT0 - 1, kT0 + 3);
  expect_aligned(s);
  ASSERT_EQ(s.t, (std::vector<std::int64_t>{kT0, kT0 + 1, kT0 + 2}));
  EXPECT_EQ(s.requests, (std::vector<std::uint64_t>{0, 2, 0})) << "sampling does not reset the counts";
  EXPECT_EQ(s.in_flight[0], std::nullopt);
  EXPECT_EQ(s.cpu_percent[0], std::nullopt);
  EXPECT_EQ(s.in_flight[1], 3.0);
  EXPECT_EQ(s.streams[1], 1.0);
  EXPECT_EQ(s.pool_in_use[1], 2.0);
  EXPECT_EQ(s.pool_idle[1], 5.0);
  EXPECT_EQ(s.pool_waiting[1], 0.0);
  ASSERT_TRUE(s.rss_mb[1]);
  EXPECT_DOUBLE_EQ(*s.rss_mb[1], 100.0);
  ASSERT_TRUE(s.cpu_percent[1]);
  EXPECT_NEAR(*s.cpu_percent[1], 12.35, 1e-9) << "kept to 0.01";
  EXPECT_EQ(s.in_flight[2], 0.0);
  EXPECT_EQ(s.streams[2], std::nullopt);
  EXPECT_EQ(s.pool_in_use[2], std::nullopt);
  EXPECT_EQ(s.rss_mb[2], std::nullopt);
  EXPECT_NEAR(*s.cpu_percent[2], 250.0, 1e-9);
  EXPECT_EQ(s.p50[2], std::nullopt) << "a sampled second without requests has no latency";
}

TEST(HistoryAggregate, WindowSumsMinMaxAvgAndPeak) {
  History h(3600, (kT0 - 100) * 1000);
  // Second kT0 + i holds i + 1 requests of (i + 1) ms, each with 1 token in and 2 out.
  for (int i = 0; i < 10; ++i)
    for (int k = 0; k <= i; ++k) {
      Sample s = at(kT0 + i, static_cast<std::uint64_t>(i + 1));
      s.tokens_in = 1;
      s.tokens_out = 2;
      s.bytes_in = 10;
      s.bytes_out = 20;
      s.origin = k == 0 ? Origin::Cache : Origin::Upstream;
      h.record(s);
    }
  h.record(at(kT0 + 3, 7, 401, 0));
  h.record(at(kT0 + 10, 999));  // the current second: not in the window

  Aggregate a = h.aggregate(kT0 + 10, 10);
  EXPECT_EQ(a.seconds, 10);
  EXPECT_EQ(a.requests, 56u);
  EXPECT_EQ(a.success, 55u);
  EXPECT_EQ(a.errors, 1u);
  EXPECT_EQ(a.by_class[cls(ErrorClass::Rejected)], 1u);
  EXPECT_EQ(a.tokens_in, 55u);
  EXPECT_EQ(a.tokens_out, 110u);
  EXPECT_EQ(a.bytes_in, 550u);
  EXPECT_EQ(a.bytes_out, 1100u);
  EXPECT_EQ(a.cache_hits, 10u);
  EXPECT_EQ(h.peak_requests(kT0 + 10, 10), 10u);
  EXPECT_EQ(a.latency_min_us, 1 * kMsUs);
  EXPECT_EQ(a.latency_max_us, 10 * kMsUs);
  EXPECT_EQ(a.latency_sum_us, (385 + 7) * kMsUs);  // Σ (i+1)² ms, plus the 401
  EXPECT_EQ(std::accumulate(a.latency.begin(), a.latency.end(), std::uint64_t{0}), 56u);
  EXPECT_EQ(std::accumulate(a.ttft.begin(), a.ttft.end(), std::uint64_t{0}), 0u);

  // The last 5 seconds only.
  a = h.aggregate(kT0 + 10, 5);
  EXPECT_EQ(a.seconds, 5);
  EXPECT_EQ(a.requests, 6u + 7 + 8 + 9 + 10);
  EXPECT_EQ(a.latency_min_us, 6 * kMsUs);
  EXPECT_EQ(a.errors, 0u);

  // An idle window.
  a = h.aggregate(kT0 + 100, 30);
  EXPECT_EQ(a.requests, 0u);
  EXPECT_EQ(h.peak_requests(kT0 + 100, 30), 0u);
  EXPECT_EQ(a.latency_sum_us, 0u);
  EXPECT_EQ(LatencyBins::quantile_us(a.latency, 0.5), std::nullopt);

  // A window longer than the ring is clamped to what it holds.
  History small(60, (kT0 - 100) * 1000);
  EXPECT_EQ(small.aggregate(kT0, 100'000).seconds, 59);
  EXPECT_EQ(small.aggregate(kT0, 0).seconds, 1);
}

TEST(HistoryMemory, GrowthRateOfALinearRamp) {
  History h(600, (kT0 - 1000) * 1000);
  // +1 KiB per second = 3.515625 MB per hour.
  for (int s = 0; s < 120; ++s) {
    Gauges g;
    g.rss_bytes = (100 << 20) + s * 1024;
    h.sample(kT0 + s, g);
  }
  const auto rate = h.memory_growth_mb_per_hour(kT0 + 120);
  ASSERT_TRUE(rate);
  EXPECT_NEAR(*rate, 1024.0 * 3600.0 / kMiB, 1e-6);

  History flat(600, (kT0 - 1000) * 1000);
  History down(600, (kT0 - 1000) * 1000);
  for (int s = 0; s < 90; ++s) {
    Gauges g;
    g.rss_bytes = 50 << 20;
    flat.sample(kT0 + s, g);
    g.rss_bytes = (200 << 20) - s * 2048;
    down.sample(kT0 + s, g);
    if (s % 3 == 0) down.sample(kT0 + s, g);  // sampled twice: same figure
  }
  EXPECT_NEAR(*flat.memory_growth_mb_per_hour(kT0 + 90), 0.0, 1e-9);
  EXPECT_NEAR(*down.memory_growth_mb_per_hour(kT0 + 90), -2048.0 * 3600.0 / kMiB, 1e-6);
}

TEST(HistoryMemory, FewerThanThirtySamplesGiveNothing) {
  History h(600, (kT0 - 1000) * 1000);
  EXPECT_EQ(h.memory_growth_mb_per_hour(kT0), std::nullopt);
  for (int s = 0; s < 29; ++s) {
    Gauges g;
    g.rss_bytes = (100 << 20) + s * 4096;
    h.sample(kT0 + s, g);
  }
  EXPECT_EQ(h.memory_growth_mb_per_hour(kT0 + 29), std::nullopt);
  // Seconds sampled without an RSS do not count either.
  h.sample(kT0 + 29, Gauges{});
  EXPECT_EQ(h.memory_growth_mb_per_hour(kT0 + 30), std::nullopt);
  Gauges g;
  g.rss_bytes = (100 << 20) + 30 * 4096;
  h.sample(kT0 + 30, g);
  EXPECT_TRUE(h.memory_growth_mb_per_hour(kT0 + 31).has_value());
}

// --- slowest requests --------------------------------------------------------------------------

SlowRow slow_row(const std::string& id, std::int64_t second, std::uint64_t duration_ms) {
  SlowRow r;
  r.request_id = id;
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.model = "glm-4.7";
  r.at_ms = second * 1000 + 500;
  r.status = 200;
  r.duration_us = duration_ms * kMsUs;
  return r;
}

// Feeds a request the way on_complete does: details only for a candidate.
void feed_slow(History& h, const std::string& id, std::int64_t second, std::uint64_t duration_ms) {
  if (h.is_slow_candidate(second, duration_ms * kMsUs)) h.add_slow(second, slow_row(id, second, duration_ms));
}

std::vector<std::string> slow_ids(const std::vector<SlowRow>& rows) {
  std::vector<std::string> out;
  for (const auto& r : rows) out.push_back(r.request_id);
  return out;
}

TEST(HistorySlowest, KeepsTheTenSlowestOfEachMinute) {
  History h(3600, (kT0 - 100) * 1000);
  EXPECT_TRUE(h.is_slow_candidate(kT0, 0)) << "the minute's first request always is";
  // 15 requests in the minute of kT0, 1..15 ms, in a shuffled order.
  std::vector<int> order{7, 3, 15, 1, 9, 12, 2, 14, 5, 11, 8, 13, 4, 10, 6};
  for (int d : order) feed_slow(h, numbered("r", d), kT0 + d, static_cast<std::uint64_t>(d));
  const auto rows = h.slowest(kT0 + 59, 120, 100);
  EXPECT_EQ(slow_ids(rows), (std::vector<std::string>{"r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "r7", "r6"}));
  // The threshold is now the 10th slowest (6 ms): equal is not slower.
  EXPECT_FALSE(h.is_slow_candidate(kT0 + 30, 5 * kMsUs));
  EXPECT_FALSE(h.is_slow_candidate(kT0 + 30, 6 * kMsUs));
  EXPECT_TRUE(h.is_slow_candidate(kT0 + 30, 6 * kMsUs + 1));
  // The next minute starts afresh.
  EXPECT_TRUE(h.is_slow_candidate(kT0 + 60, 1));
  // add_slow alone also keeps only ten, slowest first.
  History direct(3600, (kT0 - 100) * 1000);
  for (int d = 1; d <= 12; ++d) direct.add_slow(kT0 + 1, slow_row(numbered("d", d), kT0 + 1, static_cast<std::uint64_t>(d)));
  const auto kept = direct.slowest(kT0 + 2, 60, 100);
  ASSERT_EQ(kept.size(), History::kSlowPerMinute);
  EXPECT_EQ(kept.front().request_id, "d12");
  EXPECT_EQ(kept.back().request_id, "d3");
}

TEST(HistorySlowest, MergesMinutesWithinTheWindowSortedAndLimited) {
  History h(3600, (kT0 - 1000) * 1000);
  feed_slow(h, "m0-a", kT0 + 5, 40);
  feed_slow(h, "m0-b", kT0 + 6, 10);
  feed_slow(h, "m1-a", kT0 + 65, 100);
  feed_slow(h, "m1-b", kT0 + 66, 20);
  feed_slow(h, "m2-a", kT0 + 125, 30);
  feed_slow(h, "before", kT0 - 55, 500);  // the minute before kT0's

  EXPECT_EQ(slow_ids(h.slowest(kT0 + 130, 300, 100)),
            (std::vector<std::string>{"before", "m1-a", "m0-a", "m2-a", "m1-b", "m0-b"}));
  EXPECT_EQ(slow_ids(h.slowest(kT0 + 130, 300, 2)), (std::vector<std::string>{"before", "m1-a"}));
  EXPECT_TRUE(h.slowest(kT0 + 130, 300, 0).empty());
  // A 70 s window from kT0 + 130: rows at or after kT0 + 60 s only.
  EXPECT_EQ(slow_ids(h.slowest(kT0 + 130, 70, 100)), (std::vector<std::string>{"m1-a", "m2-a", "m1-b"}));
  // Rows of minutes after `now` are not listed.
  EXPECT_EQ(slow_ids(h.slowest(kT0 + 30, 300, 100)), (std::vector<std::string>{"before", "m0-a", "m0-b"}));
  // The row keeps its details.
  const auto rows = h.slowest(kT0 + 130, 300, 1);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].method, "POST");
  EXPECT_EQ(rows[0].path, "/v1/chat/completions");
  EXPECT_EQ(rows[0].model, "glm-4.7");
  EXPECT_EQ(rows[0].duration_us, 500 * kMsUs);
  EXPECT_EQ(rows[0].at_ms, (kT0 - 55) * 1000 + 500);
}

TEST(HistorySlowest, AMinuteSlotReusedAnHourLaterForgetsTheOldRows) {
  History h(3600, (kT0 - 100) * 1000);
  for (int d = 1; d <= 10; ++d) feed_slow(h, numbered("old", d), kT0 + d, 100 + static_cast<std::uint64_t>(d));
  const std::int64_t hour = kT0 + 60 * static_cast<std::int64_t>(History::kSlowMinutes);  // same slot
  EXPECT_TRUE(h.is_slow_candidate(hour + 1, 1)) << "a new minute: the old threshold does not apply";
  feed_slow(h, "new", hour + 1, 1);
  EXPECT_EQ(slow_ids(h.slowest(hour + 10, 600, 100)), (std::vector<std::string>{"new"}));
  // A late row for the old minute is dropped.
  h.add_slow(kT0 + 5, slow_row("late", kT0 + 5, 999));
  EXPECT_EQ(slow_ids(h.slowest(hour + 10, 600, 100)), (std::vector<std::string>{"new"}));
}

// --- errors ------------------------------------------------------------------------------------

TEST(HistoryErrors, TopErrorsAggregateByStatusTypeMessageAndRoute) {
  History h(3600, 0);
  h.add_error(401, ErrorClass::Rejected, "", "/v1/", 1000);
  h.add_error(401, ErrorClass::Rejected, "", "/v1/", 3000);
  h.add_error(401, ErrorClass::Rejected, "", "/v1/", 2000);  // out of order: lastSeen stays 3000
  h.add_error(401, ErrorClass::Rejected, "", "/v1/messages", 4000);
  h.add_error(502, ErrorClass::Gateway, "upstream unreachable", "/v1/", 5000);
  h.add_error(502, ErrorClass::Gateway, "upstream timed out", "/v1/", 6000);
  h.add_error(502, ErrorClass::UpstreamServer, "", "/v1/", 500);

  const auto rows = h.top_errors(100);
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0].status, 401);
  EXPECT_EQ(rows[0].type, ErrorClass::Rejected);
  EXPECT_EQ(rows[0].route, "/v1/");
  EXPECT_EQ(rows[0].message, "");
  EXPECT_EQ(rows[0].count, 3u);
  EXPECT_EQ(rows[0].last_seen_ms, 3000);
  // Then the ones seen once, the most recent first.
  EXPECT_EQ(rows[1].message, "upstream timed out");
  EXPECT_EQ(rows[2].message, "upstream unreachable");
  EXPECT_EQ(rows[2].type, ErrorClass::Gateway);
  EXPECT_EQ(rows[3].route, "/v1/messages");
  EXPECT_EQ(rows[4].type, ErrorClass::UpstreamServer);
  for (std::size_t i = 1; i < rows.size(); ++i) EXPECT_EQ(rows[i].count, 1u);
  EXPECT_EQ(h.top_errors(2).size(), 2u);
  EXPECT_TRUE(h.top_errors(0).empty());
}

// A message or route longer than what a row keeps (300 / 200 characters) is stored cut: the
// next occurrence of the same error must still count in that row.
TEST(HistoryErrors, LongMessagesAndRoutesStillAggregate) {
  History h(3600, 0);
  const std::string message(400, 'm');
  const std::string route = "/" + std::string(250, 'r');
  h.add_error(502, ErrorClass::Gateway, message, "/v1/", 1000);
  h.add_error(502, ErrorClass::Gateway, message, "/v1/", 2000);
  h.add_error(404, ErrorClass::Rejected, "", route, 3000);
  h.add_error(404, ErrorClass::Rejected, "", route, 4000);
  const auto rows = h.top_errors(100);
  ASSERT_EQ(rows.size(), 2u) << "one row per distinct error";
  for (const auto& r : rows) {
    EXPECT_EQ(r.count, 2u) << r.status;
    EXPECT_LE(r.message.size(), 300u);
    EXPECT_LE(r.route.size(), 200u);
  }
}

TEST(HistoryErrors, TheTableIsBoundedAndEvictsTheLeastSeen) {
  History h(3600, 0);
  for (int i = 0; i < static_cast<int>(History::kTopErrorRows); ++i)
    h.add_error(500, ErrorClass::Internal, numbered("m", i), "/v1/", 1000 + i);
  for (int k = 0; k < 4; ++k) h.add_error(500, ErrorClass::Internal, "m0", "/v1/", 100'000);  // m0: 5 times
  h.add_error(500, ErrorClass::Internal, "fresh", "/v1/", 200'000);
  const auto rows = h.top_errors(1000);
  EXPECT_EQ(rows.size(), History::kTopErrorRows);
  auto has = [&](const std::string& m) {
    return std::any_of(rows.begin(), rows.end(), [&](const ErrorRow& r) { return r.message == m; });
  };
  EXPECT_TRUE(has("fresh"));
  EXPECT_TRUE(has("m0")) << "seen most: kept";
  EXPECT_FALSE(has("m1")) << "seen once and the oldest such: evicted";
  EXPECT_TRUE(has("m2"));
  EXPECT_EQ(rows.front().message, "m0");
  EXPECT_EQ(rows.front().count, 5u);
}

TEST(HistoryErrors, ErrorsByStatusCountEveryFailedRequest) {
  History h(3600, (kT0 - 100) * 1000);
  h.record(at(kT0, 1, 200));
  h.record(at(kT0, 1, 401, 0));
  h.record(at(kT0, 1, 401, 0));
  h.record(at(kT0 + 1, 1, 502, 0));
  h.record(at(kT0 + 1, 1, 500, 500));
  h.record(at(kT0 + 1, 1, 404, 404));
  h.record(at(kT0 + 1, 1, 302));
  EXPECT_EQ(h.errors_by_status(),
            (std::vector<std::pair<int, std::uint64_t>>{{401, 2}, {404, 1}, {500, 1}, {502, 1}}));
  EXPECT_EQ(h.total_errors(), 5u);
  EXPECT_EQ(h.total_success(), 2u);
  EXPECT_EQ(h.total_by_class(ErrorClass::UpstreamClient), 1u);
}

// --- concurrency -------------------------------------------------------------------------------

// Several threads feed the same seconds (the first use of each second races its rollover) while
// another reads: the totals are exact.
TEST(HistoryConcurrency, ExactTotalsFromManyThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20'000;
  constexpr int kSeconds = 8;
  History h(60, (kT0 - 100) * 1000);
  // The ring held older seconds in these slots: every second below is a rollover.
  for (int i = 0; i < kSeconds; ++i) h.record(at(kT0 - 60 + i));
  const std::uint64_t before = h.total_requests();
  std::atomic<bool> go{false}, done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kPerThread; ++i) {
        Sample s = at(kT0 + (i % kSeconds), static_cast<std::uint64_t>(1 + (i + t) % 50));
        s.tokens_in = 1;
        s.tokens_out = 2;
        s.bytes_out = 3;
        if (i % 10 == 0) {
          s.status = 503;
          s.upstream_status = 0;
        }
        if (i % 4 == 0) s.ttfb_us = 1000;
        h.record(s);
        if (i % 1000 < kSeconds) h.sample(kT0 + (i % kSeconds), Gauges{1, 1, 1, 1, 1, 1 << 20, 1.0});
      }
    });
  std::thread reader([&] {
    while (!go.load()) std::this_thread::yield();
    while (!done.load()) {
      const Series s = h.series(kT0 - 1, kT0 + kSeconds);
      (void)h.aggregate(kT0 + kSeconds, kSeconds);
      ASSERT_LE(sum(s.requests), std::uint64_t{kThreads} * kPerThread);
    }
  });
  go = true;
  for (auto& th : threads) th.join();
  done = true;
  reader.join();

  constexpr std::uint64_t kTotal = std::uint64_t{kThreads} * kPerThread;
  EXPECT_EQ(h.total_requests() - before, kTotal);
  const Series s = h.series(kT0 - 1, kT0 + kSeconds);
  ASSERT_EQ(s.t.size(), static_cast<std::size_t>(kSeconds));
  for (int i = 0; i < kSeconds; ++i) EXPECT_EQ(s.requests[static_cast<std::size_t>(i)], kTotal / kSeconds) << i;
  EXPECT_EQ(sum(s.errors), kTotal / 10);
  EXPECT_EQ(sum(s.by_class[cls(ErrorClass::Gateway)]), kTotal / 10);
  EXPECT_EQ(sum(s.tokens_in), kTotal);
  EXPECT_EQ(sum(s.tokens_out), 2 * kTotal);
  EXPECT_EQ(sum(s.bytes_out), 3 * kTotal);
  const Aggregate a = h.aggregate(kT0 + kSeconds, kSeconds);
  EXPECT_EQ(a.requests, kTotal);
  EXPECT_EQ(std::accumulate(a.latency.begin(), a.latency.end(), std::uint64_t{0}), kTotal);
  EXPECT_EQ(std::accumulate(a.ttft.begin(), a.ttft.end(), std::uint64_t{0}), kTotal / 4);
  EXPECT_EQ(a.latency_min_us, 1 * kMsUs);
  EXPECT_EQ(a.latency_max_us, 50 * kMsUs);
  for (std::size_t i = 0; i < s.t.size(); ++i) EXPECT_EQ(s.in_flight[i], 1.0) << i;
}

}  // namespace
