#pragma once
// The dashboard's memory: a ring of per-second buckets (one hour by default) fed by every proxied
// request's on_complete and by the once-a-second sampler, and the small bounded tables beside it
// (errors by status, the top errors, the slowest recent requests). Everything here is testable
// without the ABI: times are passed in, never read.
//
// Feeding (History::record) is lock-free and allocation-free: relaxed atomic adds into the bucket
// of the current second, and a short mutex only when a second's bucket is first used (once per
// second) or when a request is an error or one of the slowest of its minute.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace glmp::plugins::dashboard {

// Durations in microseconds, binned log-linearly: 4 bins per power of two (each bin at most 25 %
// wide), exact below 4 µs, up to 2^33 µs (2.4 h; longer ones count in the last bin).
struct LatencyBins {
  static constexpr int kSub = 4;
  static constexpr std::size_t kBins = 128;
  static std::size_t bin_of(std::uint64_t us) noexcept;
  static double lower_us(std::size_t bin) noexcept;  // the bin holds [lower_us, upper_us)
  static double upper_us(std::size_t bin) noexcept;
  // The q-quantile (0 < q <= 1) of `counts` (kBins values) in microseconds, interpolated linearly
  // inside its bin (the k-th of n values in a bin sits at (k - 0.5) / n of its width), then kept
  // within [min_us, max_us] when the caller knows the exact extremes; nullopt when the counts are
  // all zero.
  static std::optional<double> quantile_us(const std::array<std::uint64_t, kBins>& counts, double q,
                                           double min_us = 0, double max_us = -1) noexcept;
};

// What the dashboard keeps of a request that answered with an error (status >= 400).
enum class ErrorClass : std::size_t {
  Rejected = 0,     // 4xx answered by the proxy or a plugin: auth, quota, a bad request, a body too large
  UpstreamClient,   // the upstream answered 4xx
  UpstreamServer,   // the upstream answered 5xx
  Gateway,          // 502/503/504 made by the proxy: unreachable upstream, timeout, pool exhausted
  Internal,         // any other 5xx made by the proxy (e.g. a failing plugin)
};
constexpr std::size_t kErrorClasses = 5;
std::string_view error_class_name(ErrorClass c) noexcept;  // "rejected", "upstream_4xx", ...
// nullopt for a status below 400.
std::optional<ErrorClass> classify(int status, int upstream_status) noexcept;

enum class Origin : std::uint8_t { Upstream = 0, Cache = 1, Coalesced = 2 };

// One finished proxied request, as on_complete saw it.
struct Sample {
  std::int64_t second = 0;      // Unix second it ended in
  int status = 0;               // sent to the client
  int upstream_status = 0;      // 0: the upstream never answered
  std::uint64_t duration_us = 0;
  std::int64_t ttfb_us = -1;    // first response byte of a streamed response; -1: not a stream, or none
  std::uint64_t bytes_in = 0, bytes_out = 0;
  std::int64_t tokens_in = 0, tokens_out = 0;
  Origin origin = Origin::Upstream;
};

// Figures the sampler reads once a second (-1: unknown).
struct Gauges {
  std::int64_t in_flight = -1, streams = -1;
  std::int64_t pool_in_use = -1, pool_idle = -1, pool_waiting = -1;  // summed over the upstream pools
  std::int64_t rss_bytes = -1;
  double cpu_percent = -1;  // 100 = one core busy for the whole second
};

// The aggregate of a span of seconds (the summary window, or a whole series).
struct Aggregate {
  std::uint64_t requests = 0, success = 0, errors = 0;
  std::array<std::uint64_t, kErrorClasses> by_class{};
  std::uint64_t tokens_in = 0, tokens_out = 0, bytes_in = 0, bytes_out = 0;
  std::uint64_t cache_hits = 0, coalesced = 0;
  std::uint64_t latency_sum_us = 0;
  std::uint64_t latency_min_us = UINT64_MAX, latency_max_us = 0;
  std::array<std::uint64_t, LatencyBins::kBins> latency{};
  std::array<std::uint64_t, LatencyBins::kBins> ttft{};
  std::int64_t seconds = 0;         // how many seconds it spans
};

// Per-second values of every series over [from, to], one entry per second (no gaps). Latency
// quantiles are milliseconds, nullopt for a second without requests (without streams for TTFT);
// sampled gauges are nullopt for a second the sampler did not fill.
struct Series {
  std::vector<std::int64_t> t;
  std::vector<std::uint64_t> requests, errors, tokens_in, tokens_out, bytes_in, bytes_out, cache_hits, coalesced;
  std::array<std::vector<std::uint64_t>, kErrorClasses> by_class;
  std::vector<std::optional<double>> p50, p95, p99, ttft_p50, ttft_p95;
  std::vector<std::optional<double>> in_flight, streams, pool_in_use, pool_idle, pool_waiting, rss_mb, cpu_percent;
};

// A top-errors row.
struct ErrorRow {
  int status = 0;
  ErrorClass type = ErrorClass::Rejected;
  std::string message;  // why the proxy failed it ("" when a plugin or the upstream answered)
  std::string route;
  std::uint64_t count = 0;
  std::int64_t last_seen_ms = 0;
};

// A slowest-requests row.
struct SlowRow {
  std::string request_id, method, path, model, key_id;
  std::int64_t at_ms = 0;
  int status = 0;
  std::uint64_t duration_us = 0;
  std::int64_t ttfb_us = -1;
  Origin origin = Origin::Upstream;
};

class History {
public:
  // `seconds`: how many seconds the ring keeps (>= 60). `started_ms`: when collecting began.
  History(std::size_t seconds, std::int64_t started_ms);
  History(const History&) = delete;
  History& operator=(const History&) = delete;

  std::size_t capacity() const noexcept { return slots_.size(); }
  std::int64_t started_ms() const noexcept { return started_ms_; }

  // Feeds one finished request into its second's bucket and the lifetime totals.
  void record(const Sample& s) noexcept;
  // Sets the sampled gauges of `second`.
  void sample(std::int64_t second, const Gauges& g) noexcept;

  // Whether a request of `duration_us` ending in `second` is among the slowest of its minute so
  // far (then the caller gathers its details and calls add_slow). Lock-free.
  bool is_slow_candidate(std::int64_t second, std::uint64_t duration_us) const noexcept;
  void add_slow(std::int64_t second, SlowRow row);
  // The slowest requests that ended in the `window_s` seconds up to `now_s`, slowest first, at most `limit`.
  std::vector<SlowRow> slowest(std::int64_t now_s, std::int64_t window_s, std::size_t limit) const;

  // An error row (status >= 400): counted by status and in the top-errors table.
  void add_error(int status, ErrorClass type, std::string_view message, std::string_view route, std::int64_t at_ms);
  std::vector<ErrorRow> top_errors(std::size_t limit) const;
  std::vector<std::pair<int, std::uint64_t>> errors_by_status() const;

  // Lifetime totals (since collecting began).
  std::uint64_t total_requests() const noexcept { return total_.load(std::memory_order_relaxed); }
  std::uint64_t total_success() const noexcept { return success_.load(std::memory_order_relaxed); }
  std::uint64_t total_errors() const noexcept { return failed_.load(std::memory_order_relaxed); }
  std::uint64_t total_by_class(ErrorClass c) const noexcept {
    return by_class_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed);
  }

  // The complete seconds in (after, now_s - 1] that the ring still holds (the current second is
  // still filling and never included).
  Series series(std::int64_t after, std::int64_t now_s) const;
  // Sum of the complete seconds in [now_s - seconds, now_s - 1].
  Aggregate aggregate(std::int64_t now_s, std::int64_t seconds) const;
  // The most requests of one complete second in [now_s - seconds, now_s - 1] (reads only the
  // request counts, not the histograms an aggregate sums).
  std::uint64_t peak_requests(std::int64_t now_s, std::int64_t seconds) const;
  // The sampled RSS growth over the ring, in MB per hour (least squares); nullopt with fewer than
  // 30 samples.
  std::optional<double> memory_growth_mb_per_hour(std::int64_t now_s) const;

  static constexpr std::size_t kSlowPerMinute = 10;
  static constexpr std::size_t kSlowMinutes = 60;
  static constexpr std::size_t kTopErrorRows = 200;

private:
  struct Slot {
    std::atomic<std::int64_t> second{-1};
    std::atomic<std::uint32_t> requests{0}, success{0}, errors{0}, cache_hits{0}, coalesced{0};
    std::array<std::atomic<std::uint32_t>, kErrorClasses> by_class{};
    std::atomic<std::uint64_t> tokens_in{0}, tokens_out{0}, bytes_in{0}, bytes_out{0}, latency_sum_us{0};
    std::atomic<std::uint64_t> latency_min_us{UINT64_MAX}, latency_max_us{0};
    std::array<std::atomic<std::uint32_t>, LatencyBins::kBins> latency{};
    std::array<std::atomic<std::uint32_t>, LatencyBins::kBins> ttft{};
    std::atomic<std::int64_t> in_flight{-1}, streams{-1}, pool_in_use{-1}, pool_idle{-1}, pool_waiting{-1}, rss_bytes{-1};
    std::atomic<std::int64_t> cpu_centi{-1};  // percent × 100
  };
  // The slot of `second`, rolled over to it first when it still holds an older second; null when
  // it already holds a newer one (a writer that was preempted for longer than the ring).
  Slot* slot_for_write(std::int64_t second) noexcept;
  const Slot* slot_for_read(std::int64_t second) const noexcept;

  std::vector<Slot> slots_;
  const std::int64_t started_ms_;
  std::mutex roll_mutex_;
  std::atomic<std::uint64_t> total_{0}, success_{0}, failed_{0};
  std::array<std::atomic<std::uint64_t>, kErrorClasses> by_class_{};

  // Errors by status (100..599) for the lifetime.
  std::array<std::atomic<std::uint64_t>, 600> by_status_{};

  mutable std::mutex table_mutex_;
  std::vector<ErrorRow> top_errors_;  // at most kTopErrorRows; the least seen is replaced
  struct SlowMinute {
    std::int64_t minute = -1;
    std::vector<SlowRow> rows;  // at most kSlowPerMinute, slowest first
  };
  std::array<SlowMinute, kSlowMinutes> slow_{};
  // Per minute slot: the duration a request must exceed to enter (the kth slowest so far; 0 until full).
  std::array<std::atomic<std::uint64_t>, kSlowMinutes> slow_threshold_{};
  std::array<std::atomic<std::int64_t>, kSlowMinutes> slow_minute_{};
};

}  // namespace glmp::plugins::dashboard
