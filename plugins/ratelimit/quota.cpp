#include "quota.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace glmp::plugins::ratelimit {

int64_t estimate_tokens(const BodyMember& member, size_t body_size, const QuotaSettings& s) {
  int64_t max_tokens = -1;
  for (const char* k : {"max_tokens", "max_completion_tokens"}) {
    const std::optional<std::string_view> raw = member(k);
    if (!raw) continue;
    const nlohmann::json v = nlohmann::json::parse(*raw, nullptr, false);
    if (v.is_number_integer() && v.get<int64_t>() > 0) {
      max_tokens = v.get<int64_t>();
      break;
    }
  }
  // Each part is capped before the sum, so a huge max_tokens cannot overflow into a tiny estimate.
  const int64_t cap = std::max<int64_t>(1, s.max_reservation);
  const int64_t input = std::min<int64_t>(static_cast<int64_t>(body_size / 4), cap);
  const int64_t estimate = max_tokens > 0 ? std::min(max_tokens, cap) + input : s.default_reservation;
  return std::clamp<int64_t>(estimate, 1, std::max<int64_t>(1, s.max_reservation));
}

bool can_generate(std::string_view method, std::string_view path) {
  if (method != "POST") return false;
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  constexpr std::string_view kCount = "/count_tokens";
  return !(path.size() >= kCount.size() && path.substr(path.size() - kCount.size()) == kCount);
}

int64_t charge_tokens(const ReportedUsage& u, bool anthropic, int status, bool generation, int64_t reserved,
                      const QuotaSettings& s) {
  if (u.seen) {
    if (!anthropic && u.total_tokens > 0) return u.total_tokens;
    int64_t t = u.input_tokens + u.output_tokens;
    // OpenAI's cached_tokens are part of prompt_tokens already: only Anthropic's are separate.
    if (anthropic && s.count_cache_tokens) t += u.cache_read_input_tokens + u.cache_creation_input_tokens;
    return std::max<int64_t>(0, t);
  }
  const bool success = status >= 200 && status < 300;
  if (u.output_tokens > 0) return success && generation ? std::max(u.output_tokens, reserved) : u.output_tokens;
  return success && generation ? -1 : 0;
}

Millis admit_again_at(const std::vector<QuotaStore::Bucket>& buckets, int64_t sum, int64_t limit, Millis window, Millis now) {
  if (sum < limit) return now;
  for (const auto& b : buckets) {  // oldest first
    sum -= b.amount;
    if (sum < limit) return std::max(now, b.start + window);
  }
  return now + window;  // only reservations of requests in flight: they settle within the window
}

namespace {

int64_t seconds_until(Millis t, Millis now) { return std::max<int64_t>(1, (t - now + 999) / 1000); }

}  // namespace

// A refusal by a window: the reservation is gone, and the caller may come back when enough of the
// window's usage has aged out to bring `used` below `limit`.
void Quota::refuse(Admission& a, Verdict verdict, const std::string& window, int64_t used, int64_t limit) {
  std::vector<QuotaStore::Bucket> buckets;
  store_.window_buckets(window, s_.window, a.at, buckets);
  a.verdict = verdict;
  a.reset_at = admit_again_at(buckets, used, limit, s_.window, a.at);
  a.retry_after_s = seconds_until(a.reset_at, a.at);
  a.reserved = 0;
  a.remaining = 0;
}

Admission Quota::admit(const std::string& key, std::optional<int64_t> key_limit, int64_t estimate) {
  Admission a;
  a.at = clock_();
  a.limit = key_limit ? *key_limit : s_.default_limit;
  using R = QuotaStore::Result;
  if (key_limit && *key_limit <= 0) {  // a key allowed no tokens at all
    a.verdict = Verdict::TokensExceeded;
    a.limit = 0;
    a.reset_at = a.at + s_.window;
    a.retry_after_s = seconds_until(a.reset_at, a.at);
    return a;
  }

  if (s_.requests_per_minute > 0) {
    int64_t count = 0;
    const R r = store_.window_add(requests_name(key), 1, 60'000, a.at, &count);
    if (r == R::Unavailable) {
      a.verdict = Verdict::StoreUnavailable;
      return a;
    }
    if (r == R::Ok && count > s_.requests_per_minute) {
      a.verdict = Verdict::RequestsExceeded;
      // The minute's bucket ages out one window after it started.
      a.reset_at = a.at - a.at % store_.bucket_ms() + std::max<Millis>(60'000, store_.bucket_ms());
      a.retry_after_s = seconds_until(a.reset_at, a.at);
      return a;
    }
  }

  const std::string window = window_name(key);
  const bool per_key = a.limit > 0;
  if (per_key || s_.global_limit > 0) a.reserved = estimate;
  // Takes this request's reservation back out of the key's window (a refusal or a failure later on).
  auto take_back = [&] {
    if (per_key) store_.window_add(window, -a.reserved, s_.window, a.at, nullptr);
  };
  if (per_key) {
    int64_t sum = 0;
    const R r = store_.window_add(window, a.reserved, s_.window, a.at, &sum);
    if (r == R::Unavailable) {
      a.verdict = Verdict::StoreUnavailable;
      a.reserved = 0;  // not recorded (or queued for replay: the reconcile below undoes it either way)
      return a;
    }
    a.used = std::max<int64_t>(0, sum - a.reserved);
    if (r == R::Ok && a.used >= a.limit) {
      take_back();
      refuse(a, Verdict::TokensExceeded, window, a.used, a.limit);
      return a;
    }
    a.remaining = std::max<int64_t>(0, a.limit - a.used - a.reserved);
    std::vector<QuotaStore::Bucket> buckets;
    store_.window_buckets(window, s_.window, a.at, buckets);
    a.reset_at = (buckets.empty() ? a.at : buckets.front().start) + s_.window;
  }

  if (s_.global_limit > 0) {
    int64_t sum = 0;
    const R r = store_.window_add(kGlobal, a.reserved, s_.window, a.at, &sum);
    if (r == R::Unavailable) {  // the key's reservation is taken back: nothing admitted, nothing charged
      take_back();
      a.verdict = Verdict::StoreUnavailable;
      a.reserved = 0;
      return a;
    }
    if (r == R::Ok && sum - a.reserved >= s_.global_limit) {
      store_.window_add(kGlobal, -a.reserved, s_.window, a.at, nullptr);
      take_back();
      refuse(a, Verdict::GlobalExceeded, kGlobal, sum - a.reserved, s_.global_limit);
      return a;
    }
  }
  return a;
}

void Quota::reconcile(const std::string& key, const Admission& a, int64_t actual) {
  if (a.verdict != Verdict::Admitted) return;
  const int64_t charged = actual < 0 ? a.reserved : actual;
  const int64_t delta = charged - a.reserved;
  if (a.limit > 0 && delta != 0) store_.window_add(window_name(key), delta, s_.window, a.at, nullptr);
  if (s_.global_limit > 0 && delta != 0) store_.window_add(kGlobal, delta, s_.window, a.at, nullptr);
  // Keys without a limit still have their usage in the window, for /stats.
  if (a.limit <= 0 && charged != 0) store_.window_add(window_name(key), charged, s_.window, a.at, nullptr);
  if (charged > 0) store_.counter_add(lifetime_name(key), charged);
}

WindowView Quota::view(const std::string& key) {
  WindowView v;
  const Millis now = clock_();
  std::vector<QuotaStore::Bucket> buckets;
  store_.window_buckets(window_name(key), s_.window, now, buckets);
  for (const auto& b : buckets) v.used += b.amount;
  v.started_at = buckets.empty() ? now : buckets.front().start;
  v.ends_at = v.started_at + s_.window;
  store_.counter_get(lifetime_name(key), v.lifetime);
  return v;
}

}  // namespace glmp::plugins::ratelimit
