#pragma once
// The ratelimit plugin's logic, free of the plugin ABI so it can be tested with an injected
// clock and any store: a true sliding window of tokens per key (the core's window counters), with
// reserve-then-reconcile admission. See README.md for the semantics and the overshoot bound.
//
// Store names (shared with the auth plugin's import): window "tokens:<key id>", lifetime counter
// "tokens:lifetime:<key id>", request window "requests:<key id>", global window "tokens:*".
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace glmp::plugins::ratelimit {

using Millis = int64_t;

// The store operations the quota needs, so tests can pass the core's memory store (or a fake).
class QuotaStore {
public:
  enum class Result { Ok, Unavailable, Degraded };
  struct Bucket {
    Millis start;
    int64_t amount;
  };
  virtual ~QuotaStore() = default;
  virtual Result window_add(const std::string& name, int64_t amount, Millis window, Millis now, int64_t* sum) = 0;
  virtual Result window_buckets(const std::string& name, Millis window, Millis now, std::vector<Bucket>& out) = 0;
  virtual Result counter_add(const std::string& name, int64_t amount) = 0;
  virtual Result counter_get(const std::string& name, int64_t& value) = 0;
  virtual Millis bucket_ms() const = 0;
};

struct QuotaSettings {
  Millis window = 5 * 3600'000;
  int64_t default_limit = 100'000;       // tokens per window for keys without token_limit_per_5h; 0 = unlimited
  int64_t default_reservation = 4'096;   // estimate when the request has no max_tokens
  int64_t max_reservation = 32'768;      // estimates are capped here
  int64_t requests_per_minute = 0;       // per key; 0 = off
  int64_t global_limit = 0;              // tokens per window over all keys; 0 = off
  bool count_cache_tokens = true;        // Anthropic cache read/creation tokens count towards the quota
};

// Why a request was refused (or not).
enum class Verdict { Admitted, TokensExceeded, RequestsExceeded, GlobalExceeded, StoreUnavailable };

struct Admission {
  Verdict verdict = Verdict::Admitted;
  int64_t limit = 0;       // 0 = unlimited
  int64_t used = 0;        // in the window before this request: usage plus other requests' reservations
  int64_t remaining = 0;   // limit - used - this reservation, never below 0
  int64_t reserved = 0;    // this request's reservation (to reconcile)
  Millis at = 0;           // when it was reserved (the bucket the correction goes to)
  Millis reset_at = 0;     // when enough usage ages out to admit again (refusals), or the window's end
  int64_t retry_after_s = 0;
};

// What /stats shows.
struct WindowView {
  int64_t used = 0;
  Millis started_at = 0;  // the oldest usage still in the window (now when none)
  Millis ends_at = 0;     // started_at + window
  int64_t lifetime = 0;
};

// Whether a request can make the upstream generate tokens: a POST, except token counting (a path
// ending in /count_tokens). Other requests (GET /v1/models, count_tokens, ...) reserve nothing.
bool can_generate(std::string_view method, std::string_view path);

// A response's usage as the core reported it (glmp::Usage, without the plugin ABI). When the
// upstream's own usage did not arrive (a stream cut short), the core reports output_tokens as at
// least the content deltas relayed — with seen = false when no usage object came at all.
struct ReportedUsage {
  bool seen = false;  // the upstream reported usage
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cache_read_input_tokens = 0;
  int64_t cache_creation_input_tokens = 0;
  int64_t total_tokens = 0;  // OpenAI total_tokens when given, else 0
};

// The tokens to charge for a finished request (README.md, "Charging"); -1 = keep the reservation.
//   - usage reported: that usage (OpenAI total_tokens, else input + output, plus Anthropic cache
//     tokens with count_cache_tokens) — the real usage, whatever the estimate was;
//   - no usage but content relayed (output_tokens > 0): at least that; for a successful generation
//     request max(relayed, reservation), since the input tokens are unknown;
//   - nothing: a successful generation request keeps its reservation (-1); anything else 0.
int64_t charge_tokens(const ReportedUsage& u, bool anthropic, int status, bool generation, int64_t reserved,
                      const QuotaSettings& s);

// The raw JSON text of the request body's top-level member `name`, nullopt when absent or when the
// body is not a JSON object (glmp::Request::body_member: the core's scan, no parse of the body).
using BodyMember = std::function<std::optional<std::string_view>(std::string_view name)>;

// Tokens a request may use, from its JSON body: max_tokens (or max_completion_tokens) plus a rough
// input estimate (body bytes / 4), or `default_reservation` without max_tokens; capped. Only the
// values of those two top-level members are parsed.
int64_t estimate_tokens(const BodyMember& member, size_t body_size, const QuotaSettings& s);

// When, after `now`, the window's sum drops below `limit` as buckets age out (bucket b leaves at
// b.start + window). `sum` is the current sum. Returns `now` if it already is below.
Millis admit_again_at(const std::vector<QuotaStore::Bucket>& buckets, int64_t sum, int64_t limit, Millis window, Millis now);

class Quota {
public:
  Quota(QuotaSettings settings, QuotaStore& store, std::function<Millis()> clock)
      : s_(settings), store_(store), clock_(std::move(clock)) {}

  // Reserves `estimate` for `key` against `limit` (nullopt: default_limit, where 0 = unlimited; a
  // key limit of 0 refuses everything). Refuses when the usage
  // plus other in-flight reservations already reach the limit; the refused reservation is undone.
  Admission admit(const std::string& key, std::optional<int64_t> limit, int64_t estimate);

  // Replaces the reservation with the real usage (at the reservation's bucket) and adds it to the
  // lifetime counter. `actual` < 0 = unknown: the estimate stays charged.
  void reconcile(const std::string& key, const Admission& a, int64_t actual);

  WindowView view(const std::string& key);
  const QuotaSettings& settings() const { return s_; }
  Millis now() const { return clock_(); }

  static std::string window_name(const std::string& key) { return "tokens:" + key; }
  static std::string lifetime_name(const std::string& key) { return "tokens:lifetime:" + key; }
  static std::string requests_name(const std::string& key) { return "requests:" + key; }
  static constexpr const char* kGlobal = "tokens:*";

private:
  void refuse(Admission& a, Verdict verdict, const std::string& window, int64_t used, int64_t limit);

  QuotaSettings s_;
  QuotaStore& store_;
  std::function<Millis()> clock_;
};

}  // namespace glmp::plugins::ratelimit
