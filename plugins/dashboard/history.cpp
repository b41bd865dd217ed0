#include "history.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace glmp::plugins::dashboard {

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

template <class T>
void atomic_min(std::atomic<T>& a, T v) noexcept {
  T cur = a.load(kRelaxed);
  while (v < cur && !a.compare_exchange_weak(cur, v, kRelaxed)) {
  }
}
template <class T>
void atomic_max(std::atomic<T>& a, T v) noexcept {
  T cur = a.load(kRelaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, kRelaxed)) {
  }
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

std::size_t ring_index(std::int64_t second, std::size_t n) noexcept {
  const auto m = static_cast<std::int64_t>(n);
  return static_cast<std::size_t>(((second % m) + m) % m);
}

}  // namespace

// --- bins ---------------------------------------------------------------------------------------

std::size_t LatencyBins::bin_of(std::uint64_t us) noexcept {
  if (us < kSub) return static_cast<std::size_t>(us);
  const int msb = 63 - std::countl_zero(us);  // >= 2
  const int shift = msb - 2;
  const std::size_t bin = static_cast<std::size_t>(msb - 1) * kSub + static_cast<std::size_t>((us >> shift) & (kSub - 1));
  return std::min(bin, kBins - 1);
}

double LatencyBins::lower_us(std::size_t bin) noexcept {
  if (bin < static_cast<std::size_t>(kSub)) return static_cast<double>(bin);
  const std::size_t octave = bin / kSub, sub = bin % kSub;
  return std::ldexp(static_cast<double>(kSub + sub), static_cast<int>(octave) - 1);
}

double LatencyBins::upper_us(std::size_t bin) noexcept {
  if (bin < static_cast<std::size_t>(kSub)) return static_cast<double>(bin + 1);
  const std::size_t octave = bin / kSub, sub = bin % kSub;
  return std::ldexp(static_cast<double>(kSub + sub + 1), static_cast<int>(octave) - 1);
}

std::optional<double> LatencyBins::quantile_us(const std::array<std::uint64_t, kBins>& counts, double q, double min_us,
                                               double max_us) noexcept {
  std::uint64_t total = 0;
  for (std::uint64_t c : counts) total += c;
  if (total == 0) return std::nullopt;
  q = std::clamp(q, 0.0, 1.0);
  auto bounded = [&](double v) { return max_us >= min_us ? std::clamp(v, min_us, max_us) : v; };
  // The rank of the quantile among the sorted values (1-based, nearest rank), then where in its bin.
  const double rank = std::max(1.0, std::ceil(q * static_cast<double>(total)));
  std::uint64_t below = 0;
  for (std::size_t b = 0; b < kBins; ++b) {
    if (counts[b] == 0) continue;
    if (static_cast<double>(below + counts[b]) >= rank) {
      if (b < static_cast<std::size_t>(kSub)) return bounded(lower_us(b));  // exact bins
      const double within = (rank - static_cast<double>(below) - 0.5) / static_cast<double>(counts[b]);
      return bounded(lower_us(b) + within * (upper_us(b) - lower_us(b)));
    }
    below += counts[b];
  }
  return bounded(lower_us(kBins - 1));
}

// --- classes ------------------------------------------------------------------------------------

std::string_view error_class_name(ErrorClass c) noexcept {
  switch (c) {
    case ErrorClass::Rejected: return "rejected";
    case ErrorClass::UpstreamClient: return "upstream_4xx";
    case ErrorClass::UpstreamServer: return "upstream_5xx";
    case ErrorClass::Gateway: return "gateway";
    case ErrorClass::Internal: return "internal";
  }
  return "internal";
}

std::optional<ErrorClass> classify(int status, int upstream_status) noexcept {
  if (status < 400) return std::nullopt;
  // The client got what the upstream answered.
  if (upstream_status >= 400 && upstream_status == status)
    return upstream_status < 500 ? ErrorClass::UpstreamClient : ErrorClass::UpstreamServer;
  if (status == 502 || status == 503 || status == 504) return ErrorClass::Gateway;
  if (status < 500) return ErrorClass::Rejected;
  return ErrorClass::Internal;
}

// --- the ring -----------------------------------------------------------------------------------

History::History(std::size_t seconds, std::int64_t started_ms) : slots_(std::max<std::size_t>(seconds, 60)), started_ms_(started_ms) {
  for (auto& m : slow_minute_) m.store(-1, kRelaxed);
}

History::Slot* History::slot_for_write(std::int64_t second) noexcept {
  Slot& slot = slots_[ring_index(second, slots_.size())];
  const std::int64_t held = slot.second.load(std::memory_order_acquire);
  if (held == second) return &slot;
  if (held > second) return nullptr;
  std::lock_guard lock(roll_mutex_);
  const std::int64_t again = slot.second.load(std::memory_order_acquire);
  if (again == second) return &slot;
  if (again > second) return nullptr;
  // Clear, then publish the second: a writer of `second` that sees it sees the zeros first.
  for (auto* a : {&slot.requests, &slot.success, &slot.errors, &slot.cache_hits, &slot.coalesced}) a->store(0, kRelaxed);
  for (auto& a : slot.by_class) a.store(0, kRelaxed);
  for (auto* a : {&slot.tokens_in, &slot.tokens_out, &slot.bytes_in, &slot.bytes_out, &slot.latency_sum_us, &slot.latency_max_us})
    a->store(0, kRelaxed);
  slot.latency_min_us.store(UINT64_MAX, kRelaxed);
  for (auto& a : slot.latency) a.store(0, kRelaxed);
  for (auto& a : slot.ttft) a.store(0, kRelaxed);
  for (auto* a : {&slot.in_flight, &slot.streams, &slot.pool_in_use, &slot.pool_idle, &slot.pool_waiting, &slot.rss_bytes,
                  &slot.cpu_centi})
    a->store(-1, kRelaxed);
  slot.second.store(second, std::memory_order_release);
  return &slot;
}

const History::Slot* History::slot_for_read(std::int64_t second) const noexcept {
  const Slot& slot = slots_[ring_index(second, slots_.size())];
  return slot.second.load(std::memory_order_acquire) == second ? &slot : nullptr;
}

void History::record(const Sample& s) noexcept {
  total_.fetch_add(1, kRelaxed);
  const std::optional<ErrorClass> error = classify(s.status, s.upstream_status);
  if (error) {
    failed_.fetch_add(1, kRelaxed);
    by_class_[static_cast<std::size_t>(*error)].fetch_add(1, kRelaxed);
    if (s.status >= 0 && s.status < static_cast<int>(by_status_.size())) by_status_[static_cast<std::size_t>(s.status)].fetch_add(1, kRelaxed);
  } else {
    success_.fetch_add(1, kRelaxed);
  }
  Slot* slot = slot_for_write(s.second);
  if (slot == nullptr) return;
  slot->requests.fetch_add(1, kRelaxed);
  if (error) {
    slot->errors.fetch_add(1, kRelaxed);
    slot->by_class[static_cast<std::size_t>(*error)].fetch_add(1, kRelaxed);
  } else {
    slot->success.fetch_add(1, kRelaxed);
  }
  if (s.tokens_in > 0) slot->tokens_in.fetch_add(static_cast<std::uint64_t>(s.tokens_in), kRelaxed);
  if (s.tokens_out > 0) slot->tokens_out.fetch_add(static_cast<std::uint64_t>(s.tokens_out), kRelaxed);
  if (s.bytes_in > 0) slot->bytes_in.fetch_add(s.bytes_in, kRelaxed);
  if (s.bytes_out > 0) slot->bytes_out.fetch_add(s.bytes_out, kRelaxed);
  if (s.origin == Origin::Cache) slot->cache_hits.fetch_add(1, kRelaxed);
  else if (s.origin == Origin::Coalesced) slot->coalesced.fetch_add(1, kRelaxed);
  slot->latency_sum_us.fetch_add(s.duration_us, kRelaxed);
  atomic_min(slot->latency_min_us, s.duration_us);
  atomic_max(slot->latency_max_us, s.duration_us);
  slot->latency[LatencyBins::bin_of(s.duration_us)].fetch_add(1, kRelaxed);
  if (s.ttfb_us >= 0) slot->ttft[LatencyBins::bin_of(static_cast<std::uint64_t>(s.ttfb_us))].fetch_add(1, kRelaxed);
}

void History::sample(std::int64_t second, const Gauges& g) noexcept {
  Slot* slot = slot_for_write(second);
  if (slot == nullptr) return;
  slot->in_flight.store(g.in_flight, kRelaxed);
  slot->streams.store(g.streams, kRelaxed);
  slot->pool_in_use.store(g.pool_in_use, kRelaxed);
  slot->pool_idle.store(g.pool_idle, kRelaxed);
  slot->pool_waiting.store(g.pool_waiting, kRelaxed);
  slot->rss_bytes.store(g.rss_bytes, kRelaxed);
  slot->cpu_centi.store(g.cpu_percent < 0 ? -1 : static_cast<std::int64_t>(std::llround(g.cpu_percent * 100)), kRelaxed);
}

Series History::series(std::int64_t after, std::int64_t now_s) const {
  Series out;
  const std::int64_t last = now_s - 1;
  if (after >= last) return out;  // nothing newer (and after + 1 cannot overflow below)
  const std::int64_t oldest = std::max<std::int64_t>(now_s - static_cast<std::int64_t>(slots_.size()) + 1,
                                                     floor_div(started_ms_, 1000));
  const std::int64_t first = std::max(after + 1, oldest);
  if (first > last) return out;
  const auto n = static_cast<std::size_t>(last - first + 1);
  out.t.reserve(n);
  std::array<std::uint64_t, LatencyBins::kBins> bins{};
  auto ms = [](std::optional<double> us) -> std::optional<double> {
    if (!us) return std::nullopt;
    return *us / 1000.0;
  };
  auto gauge = [](const std::atomic<std::int64_t>& a, double scale) -> std::optional<double> {
    const std::int64_t v = a.load(kRelaxed);
    if (v < 0) return std::nullopt;
    return static_cast<double>(v) * scale;
  };
  for (std::int64_t sec = first; sec <= last; ++sec) {
    out.t.push_back(sec);
    const Slot* slot = slot_for_read(sec);
    auto count = [&](const std::atomic<std::uint32_t>& a) -> std::uint64_t { return slot ? a.load(kRelaxed) : 0; };
    auto count64 = [&](const std::atomic<std::uint64_t>& a) -> std::uint64_t { return slot ? a.load(kRelaxed) : 0; };
    out.requests.push_back(slot ? count(slot->requests) : 0);
    out.errors.push_back(slot ? count(slot->errors) : 0);
    for (std::size_t c = 0; c < kErrorClasses; ++c) out.by_class[c].push_back(slot ? count(slot->by_class[c]) : 0);
    out.tokens_in.push_back(slot ? count64(slot->tokens_in) : 0);
    out.tokens_out.push_back(slot ? count64(slot->tokens_out) : 0);
    out.bytes_in.push_back(slot ? count64(slot->bytes_in) : 0);
    out.bytes_out.push_back(slot ? count64(slot->bytes_out) : 0);
    out.cache_hits.push_back(slot ? count(slot->cache_hits) : 0);
    out.coalesced.push_back(slot ? count(slot->coalesced) : 0);
    if (slot) {
      for (std::size_t b = 0; b < LatencyBins::kBins; ++b) bins[b] = slot->latency[b].load(kRelaxed);
      const auto lo = static_cast<double>(slot->latency_min_us.load(kRelaxed));
      const auto hi = static_cast<double>(slot->latency_max_us.load(kRelaxed));
      out.p50.push_back(ms(LatencyBins::quantile_us(bins, 0.50, lo, hi)));
      out.p95.push_back(ms(LatencyBins::quantile_us(bins, 0.95, lo, hi)));
      out.p99.push_back(ms(LatencyBins::quantile_us(bins, 0.99, lo, hi)));
      for (std::size_t b = 0; b < LatencyBins::kBins; ++b) bins[b] = slot->ttft[b].load(kRelaxed);
      out.ttft_p50.push_back(ms(LatencyBins::quantile_us(bins, 0.50)));
      out.ttft_p95.push_back(ms(LatencyBins::quantile_us(bins, 0.95)));
      out.in_flight.push_back(gauge(slot->in_flight, 1));
      out.streams.push_back(gauge(slot->streams, 1));
      out.pool_in_use.push_back(gauge(slot->pool_in_use, 1));
      out.pool_idle.push_back(gauge(slot->pool_idle, 1));
      out.pool_waiting.push_back(gauge(slot->pool_waiting, 1));
      out.rss_mb.push_back(gauge(slot->rss_bytes, 1.0 / (1024.0 * 1024.0)));
      out.cpu_percent.push_back(gauge(slot->cpu_centi, 0.01));
    } else {
      for (auto* v : {&out.p50, &out.p95, &out.p99, &out.ttft_p50, &out.ttft_p95, &out.in_flight, &out.streams,
                      &out.pool_in_use, &out.pool_idle, &out.pool_waiting, &out.rss_mb, &out.cpu_percent})
        v->push_back(std::nullopt);
    }
  }
  return out;
}

Aggregate History::aggregate(std::int64_t now_s, std::int64_t seconds) const {
  Aggregate a;
  seconds = std::clamp<std::int64_t>(seconds, 1, static_cast<std::int64_t>(slots_.size()) - 1);
  a.seconds = seconds;
  for (std::int64_t sec = now_s - seconds; sec <= now_s - 1; ++sec) {
    const Slot* slot = slot_for_read(sec);
    if (slot == nullptr) continue;
    const std::uint64_t requests = slot->requests.load(kRelaxed);
    a.requests += requests;
    a.success += slot->success.load(kRelaxed);
    a.errors += slot->errors.load(kRelaxed);
    for (std::size_t c = 0; c < kErrorClasses; ++c) a.by_class[c] += slot->by_class[c].load(kRelaxed);
    a.tokens_in += slot->tokens_in.load(kRelaxed);
    a.tokens_out += slot->tokens_out.load(kRelaxed);
    a.bytes_in += slot->bytes_in.load(kRelaxed);
    a.bytes_out += slot->bytes_out.load(kRelaxed);
    a.cache_hits += slot->cache_hits.load(kRelaxed);
    a.coalesced += slot->coalesced.load(kRelaxed);
    if (requests == 0) continue;
    a.latency_sum_us += slot->latency_sum_us.load(kRelaxed);
    a.latency_min_us = std::min(a.latency_min_us, slot->latency_min_us.load(kRelaxed));
    a.latency_max_us = std::max(a.latency_max_us, slot->latency_max_us.load(kRelaxed));
    for (std::size_t b = 0; b < LatencyBins::kBins; ++b) {
      a.latency[b] += slot->latency[b].load(kRelaxed);
      a.ttft[b] += slot->ttft[b].load(kRelaxed);
    }
  }
  return a;
}

std::uint64_t History::peak_requests(std::int64_t now_s, std::int64_t seconds) const {
  seconds = std::clamp<std::int64_t>(seconds, 1, static_cast<std::int64_t>(slots_.size()) - 1);
  std::uint64_t peak = 0;
  for (std::int64_t sec = now_s - seconds; sec <= now_s - 1; ++sec)
    if (const Slot* slot = slot_for_read(sec)) peak = std::max<std::uint64_t>(peak, slot->requests.load(kRelaxed));
  return peak;
}

std::optional<double> History::memory_growth_mb_per_hour(std::int64_t now_s) const {
  // Least squares of RSS (MB) over time (hours) across the samples the ring holds.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  const auto span = static_cast<std::int64_t>(slots_.size()) - 1;
  for (std::int64_t sec = now_s - span; sec <= now_s - 1; ++sec) {
    const Slot* slot = slot_for_read(sec);
    if (slot == nullptr) continue;
    const std::int64_t rss = slot->rss_bytes.load(kRelaxed);
    if (rss < 0) continue;
    const double x = static_cast<double>(sec - now_s) / 3600.0;
    const double y = static_cast<double>(rss) / (1024.0 * 1024.0);
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  if (n < 30) return std::nullopt;
  const double d = n * sxx - sx * sx;
  if (d <= 0) return std::nullopt;
  return (n * sxy - sx * sy) / d;
}

// --- slowest requests ---------------------------------------------------------------------------

bool History::is_slow_candidate(std::int64_t second, std::uint64_t duration_us) const noexcept {
  const std::int64_t minute = floor_div(second, 60);
  const std::size_t i = ring_index(minute, kSlowMinutes);
  if (slow_minute_[i].load(kRelaxed) != minute) return true;  // the minute's first request
  return duration_us > slow_threshold_[i].load(kRelaxed);
}

void History::add_slow(std::int64_t second, SlowRow row) {
  const std::int64_t minute = floor_div(second, 60);
  const std::size_t i = ring_index(minute, kSlowMinutes);
  std::lock_guard lock(table_mutex_);
  SlowMinute& m = slow_[i];
  if (m.minute != minute) {
    if (m.minute > minute) return;  // older than the ring
    m.minute = minute;
    m.rows.clear();
    slow_threshold_[i].store(0, kRelaxed);
    slow_minute_[i].store(minute, kRelaxed);
  }
  const auto pos = std::find_if(m.rows.begin(), m.rows.end(), [&](const SlowRow& r) { return r.duration_us < row.duration_us; });
  if (m.rows.size() >= kSlowPerMinute && pos == m.rows.end()) return;
  m.rows.insert(pos, std::move(row));
  if (m.rows.size() > kSlowPerMinute) m.rows.pop_back();
  if (m.rows.size() == kSlowPerMinute) slow_threshold_[i].store(m.rows.back().duration_us, kRelaxed);
}

std::vector<SlowRow> History::slowest(std::int64_t now_s, std::int64_t window_s, std::size_t limit) const {
  std::vector<SlowRow> out;
  const std::int64_t from_ms = (now_s - window_s) * 1000;
  {
    std::lock_guard lock(table_mutex_);
    const std::int64_t now_minute = floor_div(now_s, 60);
    for (const SlowMinute& m : slow_) {
      if (m.minute < 0 || m.minute > now_minute || m.minute < floor_div(now_s - window_s, 60)) continue;
      for (const SlowRow& r : m.rows)
        if (r.at_ms >= from_ms) out.push_back(r);
    }
  }
  std::sort(out.begin(), out.end(), [](const SlowRow& a, const SlowRow& b) { return a.duration_us > b.duration_us; });
  if (out.size() > limit) out.resize(limit);
  return out;
}

// --- errors -------------------------------------------------------------------------------------

void History::add_error(int status, ErrorClass type, std::string_view message, std::string_view route, std::int64_t at_ms) {
  // Rows keep at most 300 bytes of the message and 200 of the route: compare what is kept.
  message = message.substr(0, 300);
  route = route.substr(0, 200);
  std::lock_guard lock(table_mutex_);
  for (ErrorRow& row : top_errors_) {
    if (row.status == status && row.type == type && row.message == message && row.route == route) {
      ++row.count;
      row.last_seen_ms = std::max(row.last_seen_ms, at_ms);
      return;
    }
  }
  ErrorRow fresh{status, type, std::string(message), std::string(route), 1, at_ms};
  if (top_errors_.size() < kTopErrorRows) {
    top_errors_.push_back(std::move(fresh));
    return;
  }
  // Full: the row seen least (the oldest among equals) makes room.
  auto victim = std::min_element(top_errors_.begin(), top_errors_.end(), [](const ErrorRow& a, const ErrorRow& b) {
    return a.count != b.count ? a.count < b.count : a.last_seen_ms < b.last_seen_ms;
  });
  *victim = std::move(fresh);
}

std::vector<ErrorRow> History::top_errors(std::size_t limit) const {
  std::vector<ErrorRow> out;
  {
    std::lock_guard lock(table_mutex_);
    out = top_errors_;
  }
  std::sort(out.begin(), out.end(), [](const ErrorRow& a, const ErrorRow& b) {
    return a.count != b.count ? a.count > b.count : a.last_seen_ms > b.last_seen_ms;
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

std::vector<std::pair<int, std::uint64_t>> History::errors_by_status() const {
  std::vector<std::pair<int, std::uint64_t>> out;
  for (std::size_t s = 0; s < by_status_.size(); ++s) {
    const std::uint64_t n = by_status_[s].load(kRelaxed);
    if (n > 0) out.emplace_back(static_cast<int>(s), n);
  }
  return out;
}

}  // namespace glmp::plugins::dashboard
