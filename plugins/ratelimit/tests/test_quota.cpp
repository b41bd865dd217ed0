// Unit tests of the ratelimit quota logic (quota.hpp), with an injected clock, against the core's
// own in-memory store (the window semantics every backend serves: a bucket counts while
// now - window < bucket_start <= now). The plugin around it is tested through the real proxy in
// tests/integration/test_ratelimit.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "pipeline/json_body.hpp"
#include "quota.hpp"
#include "store/store.hpp"

// Readable verdicts in failure messages (found by ADL).
namespace glmp::plugins::ratelimit {
inline void PrintTo(Verdict v, std::ostream* os) {
  switch (v) {
    case Verdict::Admitted: *os << "Admitted"; return;
    case Verdict::TokensExceeded: *os << "TokensExceeded"; return;
    case Verdict::RequestsExceeded: *os << "RequestsExceeded"; return;
    case Verdict::GlobalExceeded: *os << "GlobalExceeded"; return;
    case Verdict::StoreUnavailable: *os << "StoreUnavailable"; return;
  }
  *os << "Verdict(" << static_cast<int>(v) << ")";
}
}  // namespace glmp::plugins::ratelimit

namespace {

using namespace glmp::plugins::ratelimit;
namespace store = glmp::core::store;
namespace config = glmp::core::config;

constexpr Millis kSecond = 1'000;
constexpr Millis kMinute = 60'000;
constexpr Millis kHour = 3'600'000;
constexpr Millis kWindow = 5 * kHour;
constexpr Millis kT0 = 1'800'000'000'000;  // a bucket boundary (a multiple of one minute)
static_assert(kT0 % kMinute == 0);

// QuotaStore over the core's store::Store (memory backend). Every call can be switched to answer
// Unavailable (Redis down with fail_closed), either for all names or for one name only; calls the
// core refused as Invalid are counted, so a test can assert the quota never sends bad arguments.
class CoreQuotaStore : public QuotaStore {
public:
  explicit CoreQuotaStore(Millis bucket = kMinute) {
    config::StoreConfig cfg;
    cfg.backend = config::StoreBackend::Memory;
    cfg.bucket = config::Duration(bucket);
    store_ = store::make_store(cfg, nullptr);
  }

  Result window_add(const std::string& name, int64_t amount, Millis window, Millis now, int64_t* sum) override {
    if (failing(name)) return Result::Unavailable;
    return map(store_->window_add(name, amount, window, now, sum));
  }
  Result window_buckets(const std::string& name, Millis window, Millis now, std::vector<Bucket>& out) override {
    if (failing(name)) return Result::Unavailable;
    std::vector<store::Bucket> buckets;
    const Result r = map(store_->window_buckets(name, window, now, buckets));
    for (const auto& b : buckets) out.push_back({b.start, b.amount});
    return r;
  }
  Result counter_add(const std::string& name, int64_t amount) override {
    if (failing(name)) return Result::Unavailable;
    return map(store_->counter_add(name, amount, nullptr));
  }
  Result counter_get(const std::string& name, int64_t& value) override {
    if (failing(name)) return Result::Unavailable;
    return map(store_->counter_get(name, value));
  }
  Millis bucket_ms() const override { return store_->bucket_ms(); }

  store::Store& core() { return *store_; }
  int invalid_calls() const { return invalid_.load(); }

  // The sum the core store itself reports (independent of the quota's view()).
  int64_t sum(const std::string& name, Millis window, Millis now) {
    int64_t s = 0;
    EXPECT_EQ(store_->window_sum(name, window, now, s), store::Status::Ok);
    return s;
  }
  // The amount in the bucket starting at `start` (0 when there is none).
  int64_t bucket_amount(const std::string& name, Millis start, Millis window, Millis now) {
    std::vector<store::Bucket> buckets;
    EXPECT_EQ(store_->window_buckets(name, window, now, buckets), store::Status::Ok);
    for (const auto& b : buckets)
      if (b.start == start) return b.amount;
    return 0;
  }

  std::atomic<bool> unavailable{false};  // every call fails
  std::string unavailable_name;          // only calls on this name fail (set before the test's calls)

private:
  bool failing(const std::string& name) const {
    return unavailable.load() || (!unavailable_name.empty() && name == unavailable_name);
  }
  Result map(store::Status s) {
    switch (s) {
      case store::Status::Ok:
      case store::Status::NotFound: return Result::Ok;
      case store::Status::Degraded: return Result::Degraded;
      case store::Status::Invalid: ++invalid_; return Result::Unavailable;
      case store::Status::Unavailable: return Result::Unavailable;
    }
    return Result::Unavailable;
  }

  std::unique_ptr<store::Store> store_;
  std::atomic<int> invalid_{0};
};

QuotaSettings settings(int64_t default_limit = 1'000) {
  QuotaSettings s;
  s.window = kWindow;
  s.default_limit = default_limit;
  s.default_reservation = 4'096;
  s.max_reservation = 32'768;
  return s;
}

// A quota over a fresh memory store, with a clock the test moves.
class QuotaTest : public ::testing::Test {
protected:
  void TearDown() override { EXPECT_EQ(store.invalid_calls(), 0) << "the quota sent arguments the core store refused"; }

  Quota make(QuotaSettings s) {
    return Quota(s, store, [this] { return now; });
  }
  // Usage `amount` of `key` at time `t`, through the quota (admitted without a limit, reconciled).
  void use(Quota& q, const std::string& key, int64_t amount, Millis t) {
    const Millis saved = now;
    now = t;
    const Admission a = q.admit(key, std::nullopt, 1);
    ASSERT_EQ(a.verdict, Verdict::Admitted);
    q.reconcile(key, a, amount);
    now = saved;
  }

  CoreQuotaStore store;
  Millis now = kT0;
};

// ---------------------------------------------------------------------------------------------
// estimate_tokens

// The estimate for a whole body, its members found the way the host's request_body_member finds
// them: the core's own top-level scan (glmp::Request::body_member hands the plugin these bytes).
int64_t estimate(std::string_view body, const QuotaSettings& s) {
  const glmp::core::pipeline::TopLevelScan scan = glmp::core::pipeline::scan_top_level(body);
  const BodyMember member = [&](std::string_view name) -> std::optional<std::string_view> {
    if (!scan.ok || !scan.is_object) return std::nullopt;
    const glmp::core::pipeline::JsonMember* m = scan.find(name);
    if (!m) return std::nullopt;
    return body.substr(m->value_begin, m->value_end - m->value_begin);
  };
  return estimate_tokens(member, body.size(), s);
}

TEST(QuotaEstimate, MaxTokensPlusInput) {
  const QuotaSettings s = settings();
  const std::string body = R"({"max_tokens":100})";
  EXPECT_EQ(estimate(body, s), 100 + static_cast<int64_t>(body.size() / 4));
}

TEST(QuotaEstimate, MaxCompletionTokens) {
  const QuotaSettings s = settings();
  const std::string body = R"({"model":"glm-4.7","max_completion_tokens":250})";
  EXPECT_EQ(estimate(body, s), 250 + static_cast<int64_t>(body.size() / 4));
}

TEST(QuotaEstimate, MaxTokensWinsOverMaxCompletionTokens) {
  const QuotaSettings s = settings();
  const std::string body = R"({"max_completion_tokens":250,"max_tokens":100})";
  EXPECT_EQ(estimate(body, s), 100 + static_cast<int64_t>(body.size() / 4));
}

TEST(QuotaEstimate, InputPartIsBodySizeOverFour) {
  const QuotaSettings s = settings();
  const std::string text(4'000, 'x');
  const std::string body = R"({"max_tokens":10,"messages":[{"role":"user","content":")" + text + R"("}]})";
  const int64_t input = static_cast<int64_t>(body.size() / 4);
  EXPECT_GE(input, 1'000);
  EXPECT_EQ(estimate(body, s), 10 + input);
  // Same max_tokens, a 4-byte-longer body: one more token.
  const std::string longer = R"({"max_tokens":10,"messages":[{"role":"user","content":")" + text + R"(abcd"}]})";
  EXPECT_EQ(estimate(longer, s), estimate(body, s) + 1);
}

TEST(QuotaEstimate, NoMaxTokensIsDefaultReservation) {
  QuotaSettings s = settings();
  s.default_reservation = 777;
  EXPECT_EQ(estimate(R"({"model":"glm-4.7","messages":[]})", s), 777);
  // The input part is not added without max_tokens.
  EXPECT_EQ(estimate(R"({"messages":[{"role":"user","content":")" + std::string(8'000, 'y') + R"("}]})", s), 777);
  // max_tokens that are not a positive integer do not count.
  EXPECT_EQ(estimate(R"({"max_tokens":0})", s), 777);
  EXPECT_EQ(estimate(R"({"max_tokens":-5})", s), 777);
  EXPECT_EQ(estimate(R"({"max_tokens":"100"})", s), 777);
  EXPECT_EQ(estimate(R"({"max_tokens":null})", s), 777);
}

TEST(QuotaEstimate, CappedAtMaxReservation) {
  QuotaSettings s = settings();
  s.max_reservation = 1'000;
  EXPECT_EQ(estimate(R"({"max_tokens":5000})", s), 1'000);
  EXPECT_EQ(estimate(R"({"max_tokens":10})" + std::string(100'000, ' '), s), 1'000);  // input part too
  s.default_reservation = 4'096;
  EXPECT_EQ(estimate("{}", s), 1'000);  // the default reservation is capped as well
  EXPECT_EQ(estimate(R"({"max_tokens":900})", s), 900 + 4);  // below the cap: unchanged
}

// A client's max_tokens near INT64_MAX must still be capped at max_reservation (the overshoot
// bound relies on the cap), without overflowing on the way (UBSan would abort).
TEST(QuotaEstimate, HugeMaxTokensIsCapped) {
  const QuotaSettings s = settings();
  EXPECT_EQ(estimate(R"({"max_tokens":9223372036854775000})", s), s.max_reservation);
  EXPECT_EQ(estimate(R"({"max_tokens":9223372036854775807})", s), s.max_reservation);
  EXPECT_EQ(estimate(R"({"max_tokens":9223372036854775800})", s), s.max_reservation);
}

TEST(QuotaEstimate, MalformedJsonIsDefaultReservation) {
  QuotaSettings s = settings();
  s.default_reservation = 321;
  EXPECT_EQ(estimate(R"({"max_tokens":100)", s), 321);  // truncated
  EXPECT_EQ(estimate("not json at all", s), 321);
  EXPECT_EQ(estimate("", s), 321);
  EXPECT_EQ(estimate("[1,2,3]", s), 321);  // not an object
  EXPECT_EQ(estimate("100", s), 321);
}

// Only the body's own top-level max_tokens counts (a nested one is a tool's or a message's), and a
// key given twice counts with its last value, as a JSON parser keeps it.
TEST(QuotaEstimate, OnlyTopLevelMembersCount) {
  QuotaSettings s = settings();
  s.default_reservation = 555;
  EXPECT_EQ(estimate(R"({"messages":[{"max_tokens":100}],"metadata":{"max_tokens":200}})", s), 555);
  const std::string twice = R"({"max_tokens":10,"max_tokens":100})";
  EXPECT_EQ(estimate(twice, s), 100 + static_cast<int64_t>(twice.size() / 4));
  // Only the members asked for are looked up, max_tokens first.
  std::vector<std::string> asked;
  const BodyMember member = [&](std::string_view name) -> std::optional<std::string_view> {
    asked.emplace_back(name);
    return name == "max_completion_tokens" ? std::optional<std::string_view>("7") : std::nullopt;
  };
  EXPECT_EQ(estimate_tokens(member, 40, s), 7 + 10);
  EXPECT_EQ(asked, (std::vector<std::string>{"max_tokens", "max_completion_tokens"}));
}

// ---------------------------------------------------------------------------------------------
// can_generate and charge_tokens (README "Charging")

TEST(QuotaGeneration, OnlyPostsThatAreNotTokenCountsCanGenerate) {
  EXPECT_TRUE(can_generate("POST", "/v1/chat/completions"));
  EXPECT_TRUE(can_generate("POST", "/v1/messages"));
  EXPECT_TRUE(can_generate("POST", "/v1/embeddings"));
  EXPECT_FALSE(can_generate("GET", "/v1/models"));
  EXPECT_FALSE(can_generate("GET", "/v1/chat/completions"));
  EXPECT_FALSE(can_generate("HEAD", "/v1/models"));
  EXPECT_FALSE(can_generate("DELETE", "/v1/files/f1"));
  EXPECT_FALSE(can_generate("POST", "/v1/messages/count_tokens"));
  EXPECT_FALSE(can_generate("POST", "/v1/messages/count_tokens/"));
  EXPECT_TRUE(can_generate("POST", "/v1/messages/count_tokens_and_more"));
}

ReportedUsage reported(bool seen, int64_t in, int64_t out, int64_t cache_read = 0, int64_t cache_creation = 0,
                       int64_t total = 0) {
  return ReportedUsage{seen, in, out, cache_read, cache_creation, total};
}

TEST(QuotaCharge, ReportedUsageIsChargedWhateverTheEstimate) {
  const QuotaSettings s = settings();
  // OpenAI: total_tokens, else prompt + completion (cached tokens are part of the prompt).
  EXPECT_EQ(charge_tokens(reported(true, 10, 5, 4, 0, 15), false, 200, true, 4'096, s), 15);
  EXPECT_EQ(charge_tokens(reported(true, 10, 5, 4, 0, 0), false, 200, true, 4'096, s), 15);
  // Anthropic: input + output + cache tokens (count_cache_tokens), or without them.
  EXPECT_EQ(charge_tokens(reported(true, 10, 5, 7, 3), true, 200, true, 4'096, s), 25);
  QuotaSettings no_cache = s;
  no_cache.count_cache_tokens = false;
  EXPECT_EQ(charge_tokens(reported(true, 10, 5, 7, 3), true, 200, true, 4'096, no_cache), 15);
  // A stream cut after message_start and 190 deltas: the core reports output 190 (not 1); that
  // is charged, not the (larger) estimate, and not the (smaller) default reservation.
  EXPECT_EQ(charge_tokens(reported(true, 27, 190), true, 200, true, 4'096, s), 217);
  EXPECT_EQ(charge_tokens(reported(true, 27, 190), true, 200, true, 10, s), 217);
  // Usage on a failed request or a call that cannot generate is charged too.
  EXPECT_EQ(charge_tokens(reported(true, 8, 0), true, 400, true, 300, s), 8);
  EXPECT_EQ(charge_tokens(reported(true, 8, 0), true, 200, false, 0, s), 8);
}

TEST(QuotaCharge, RelayedContentWithoutUsageIsALowerBound) {
  const QuotaSettings s = settings();
  // An OpenAI stream cut after 4900 content chunks, no usage chunk, no max_tokens (4096 reserved):
  // never less than what was relayed.
  EXPECT_EQ(charge_tokens(reported(false, 0, 4'900), false, 200, true, 4'096, s), 4'900);
  // Cut after 150: the reservation stays (the input tokens are unknown), never below the relayed.
  EXPECT_EQ(charge_tokens(reported(false, 0, 150), false, 200, true, 4'096, s), 4'096);
  EXPECT_EQ(charge_tokens(reported(false, 0, 150), false, 200, true, 100, s), 150);
  // A key without a limit reserves nothing: the relayed content is charged.
  EXPECT_EQ(charge_tokens(reported(false, 0, 150), false, 200, true, 0, s), 150);
  // An error status with content relayed: the content.
  EXPECT_EQ(charge_tokens(reported(false, 0, 20), false, 502, true, 4'096, s), 20);
}

TEST(QuotaCharge, NothingReported) {
  const QuotaSettings s = settings();
  // A successful generation without usage: the reservation stays (-1).
  EXPECT_EQ(charge_tokens(reported(false, 0, 0), false, 200, true, 4'096, s), -1);
  // Failures are free.
  EXPECT_EQ(charge_tokens(reported(false, 0, 0), false, 500, true, 4'096, s), 0);
  EXPECT_EQ(charge_tokens(reported(false, 0, 0), true, 0, true, 4'096, s), 0);
  // Calls that cannot generate (GET /v1/models, count_tokens): nothing, even on success.
  EXPECT_EQ(charge_tokens(reported(false, 0, 0), false, 200, false, 0, s), 0);
  EXPECT_EQ(charge_tokens(reported(false, 0, 0), true, 200, false, 4'096, s), 0);
}

TEST_F(QuotaTest, CallsThatCannotGenerateLeaveTheWindowUnchanged) {
  Quota q = make(settings(1'000));
  use(q, "k", 100, now);
  // What the plugin does for GET /v1/models: reserve 0, charge 0.
  const Admission a = q.admit("k", std::nullopt, can_generate("GET", "/v1/models") ? 4'096 : 0);
  ASSERT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.reserved, 0);
  EXPECT_EQ(q.view("k").used, 100);  // nothing held while in flight
  q.reconcile("k", a, charge_tokens(ReportedUsage{}, false, 200, false, a.reserved, q.settings()));
  EXPECT_EQ(q.view("k").used, 100);
  EXPECT_EQ(q.view("k").lifetime, 100);
  // Still refused, like any request, once the key is out of tokens.
  use(q, "k", 900, now);
  EXPECT_EQ(q.admit("k", std::nullopt, 0).verdict, Verdict::TokensExceeded);
}

// ---------------------------------------------------------------------------------------------
// admit_again_at

TEST(QuotaAdmitAgainAt, AlreadyBelowLimitIsNow) {
  const std::vector<QuotaStore::Bucket> buckets{{kT0, 50}};
  EXPECT_EQ(admit_again_at(buckets, 50, 100, kWindow, kT0 + kHour), kT0 + kHour);
  EXPECT_EQ(admit_again_at({}, 0, 1, kWindow, kT0), kT0);
}

TEST(QuotaAdmitAgainAt, FirstBucketSuffices) {
  const std::vector<QuotaStore::Bucket> buckets{{kT0, 30}, {kT0 + kMinute, 40}, {kT0 + 2 * kMinute, 50}};
  EXPECT_EQ(admit_again_at(buckets, 120, 100, kWindow, kT0 + kHour), kT0 + kWindow);
}

TEST(QuotaAdmitAgainAt, NeedsTwoBucketsToAgeOut) {
  const std::vector<QuotaStore::Bucket> buckets{{kT0, 30}, {kT0 + kMinute, 40}, {kT0 + 2 * kMinute, 50}};
  // 120 - 30 = 90 >= 60; 90 - 40 = 50 < 60: the second bucket's end.
  EXPECT_EQ(admit_again_at(buckets, 120, 60, kWindow, kT0 + kHour), kT0 + kMinute + kWindow);
  // Exactly at the limit is not below it: 120 - 30 - 40 = 50 = limit -> the third bucket.
  EXPECT_EQ(admit_again_at(buckets, 120, 50, kWindow, kT0 + kHour), kT0 + 2 * kMinute + kWindow);
}

TEST(QuotaAdmitAgainAt, OnlyInFlightReservationsIsNowPlusWindow) {
  // The sum is more than the buckets hold (reservations not yet in a bucket the caller saw).
  const std::vector<QuotaStore::Bucket> buckets{{kT0, 10}};
  EXPECT_EQ(admit_again_at(buckets, 200, 100, kWindow, kT0 + kHour), kT0 + kHour + kWindow);
  EXPECT_EQ(admit_again_at({}, 100, 100, kWindow, kT0), kT0 + kWindow);
}

TEST(QuotaAdmitAgainAt, NeverBeforeNow) {
  // A bucket that should already have aged out (the caller's now is past its end): now.
  const std::vector<QuotaStore::Bucket> buckets{{kT0, 100}};
  EXPECT_EQ(admit_again_at(buckets, 100, 100, kWindow, kT0 + kWindow + 5), kT0 + kWindow + 5);
}

// ---------------------------------------------------------------------------------------------
// The window's edges

TEST_F(QuotaTest, UsageExactlyWindowOldIsOut) {
  Quota q = make(settings());
  use(q, "k", 100, kT0);  // bucket kT0
  now = kT0 + kWindow - 1;
  EXPECT_EQ(q.view("k").used, 100);
  now = kT0 + kWindow;  // exactly one window after the bucket started
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").started_at, now);  // empty: now
}

TEST_F(QuotaTest, UsageWindowMinusBucketOldIsIn) {
  Quota q = make(settings());
  use(q, "k", 100, kT0 + kMinute - 1);  // the last millisecond of bucket kT0
  now = kT0 + kMinute - 1 + (kWindow - kMinute);  // window - bucket after the usage
  EXPECT_EQ(q.view("k").used, 100);
  now = kT0 + kWindow;  // ... and out one millisecond later: never later than the window
  EXPECT_EQ(q.view("k").used, 0);
}

TEST_F(QuotaTest, WindowEdgesDecideAdmission) {
  Quota q = make(settings(100));
  use(q, "k", 100, kT0 + 30 * kSecond);
  now = kT0 + kWindow - 1;  // the usage is still in: the limit is reached
  const Admission refused = q.admit("k", std::nullopt, 10);
  EXPECT_EQ(refused.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(refused.used, 100);
  EXPECT_EQ(refused.reset_at, kT0 + kWindow);
  EXPECT_EQ(refused.retry_after_s, 1);  // 1 ms rounds up to one second
  now = kT0 + kWindow;  // the bucket has left the window
  const Admission admitted = q.admit("k", std::nullopt, 10);
  EXPECT_EQ(admitted.verdict, Verdict::Admitted);
  EXPECT_EQ(admitted.used, 0);
}

TEST_F(QuotaTest, UsageAgesOutBucketByBucket) {
  Quota q = make(settings());
  use(q, "k", 10, kT0);
  use(q, "k", 20, kT0 + kHour + 5 * kSecond);
  use(q, "k", 30, kT0 + 2 * kHour + 59 * kSecond);
  use(q, "k", 40, kT0 + 2 * kHour + 59 * kSecond);  // same bucket as the one before
  now = kT0 + 3 * kHour;
  EXPECT_EQ(q.view("k").used, 100);
  EXPECT_EQ(q.view("k").started_at, kT0);
  EXPECT_EQ(q.view("k").ends_at, kT0 + kWindow);
  now = kT0 + kWindow;
  EXPECT_EQ(q.view("k").used, 90);
  EXPECT_EQ(q.view("k").started_at, kT0 + kHour);
  EXPECT_EQ(q.view("k").ends_at, kT0 + kHour + kWindow);
  now = kT0 + kHour + kWindow - 1;
  EXPECT_EQ(q.view("k").used, 90);
  now = kT0 + kHour + kWindow;
  EXPECT_EQ(q.view("k").used, 70);
  EXPECT_EQ(q.view("k").started_at, kT0 + 2 * kHour);
  now = kT0 + 2 * kHour + kWindow;
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, 100);  // the lifetime counter does not age
}

// ---------------------------------------------------------------------------------------------
// Admission

TEST_F(QuotaTest, AdmittedWhileUsagePlusReservationsBelowLimit) {
  Quota q = make(settings(100));
  const Admission a1 = q.admit("k", std::nullopt, 60);
  EXPECT_EQ(a1.verdict, Verdict::Admitted);
  EXPECT_EQ(a1.limit, 100);
  EXPECT_EQ(a1.used, 0);
  EXPECT_EQ(a1.reserved, 60);
  EXPECT_EQ(a1.remaining, 40);
  const Admission a2 = q.admit("k", std::nullopt, 39);  // 60 in flight < 100
  EXPECT_EQ(a2.verdict, Verdict::Admitted);
  EXPECT_EQ(a2.used, 60);
  EXPECT_EQ(a2.remaining, 1);
  const Admission a3 = q.admit("k", std::nullopt, 50);  // 99 < 100: admitted, its own estimate does not matter
  EXPECT_EQ(a3.verdict, Verdict::Admitted);
  EXPECT_EQ(a3.used, 99);
  EXPECT_EQ(a3.remaining, 0);  // never below 0
  EXPECT_EQ(q.view("k").used, 149);
  const Admission a4 = q.admit("k", std::nullopt, 1);  // 149 >= 100
  EXPECT_EQ(a4.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(a4.used, 149);
  EXPECT_EQ(a4.reserved, 0);
  EXPECT_EQ(a4.remaining, 0);
  EXPECT_EQ(a4.limit, 100);
}

TEST_F(QuotaTest, RefusedWhenUsageReachesLimitExactly) {
  Quota q = make(settings(100));
  use(q, "k", 99, kT0);
  EXPECT_EQ(q.admit("k", std::nullopt, 5).verdict, Verdict::Admitted);  // 99 < 100
  const Admission refused = q.admit("k", std::nullopt, 5);              // 104 >= 100
  EXPECT_EQ(refused.verdict, Verdict::TokensExceeded);

  Quota q2 = make(settings(100));
  use(q2, "j", 100, kT0);
  EXPECT_EQ(q2.admit("j", std::nullopt, 1).verdict, Verdict::TokensExceeded);  // 100 >= 100
}

TEST_F(QuotaTest, RefusedReservationIsTakenBack) {
  Quota q = make(settings(100));
  use(q, "k", 100, kT0);
  now = kT0 + 10 * kMinute;
  for (int i = 0; i < 5; ++i) {
    const Admission r = q.admit("k", std::nullopt, 5'000);
    EXPECT_EQ(r.verdict, Verdict::TokensExceeded);
    q.reconcile("k", r, 5'000);  // reconciling a refusal does nothing
    q.reconcile("k", r, -1);
  }
  const WindowView v = q.view("k");
  EXPECT_EQ(v.used, 100);
  EXPECT_EQ(v.lifetime, 100);
  EXPECT_EQ(store.sum(Quota::window_name("k"), kWindow, now), 100);
  // The refusal's bucket holds nothing (net zero), so it is not reported as a bucket either.
  EXPECT_EQ(store.bucket_amount(Quota::window_name("k"), kT0 + 10 * kMinute, kWindow, now), 0);
}

TEST_F(QuotaTest, KeyLimitOverridesDefault) {
  Quota q = make(settings(1'000));
  const Admission a = q.admit("k", 50, 10);
  EXPECT_EQ(a.limit, 50);
  EXPECT_EQ(a.remaining, 40);
  q.reconcile("k", a, 50);
  EXPECT_EQ(q.admit("k", 50, 10).verdict, Verdict::TokensExceeded);
  EXPECT_EQ(q.admit("k", std::nullopt, 10).verdict, Verdict::Admitted);  // nullopt: default_limit 1000
  EXPECT_EQ(q.admit("k", 5'000, 10).verdict, Verdict::Admitted);
}

TEST_F(QuotaTest, NulloptUsesDefaultLimit) {
  Quota q = make(settings(30));
  const Admission a = q.admit("k", std::nullopt, 10);
  EXPECT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.limit, 30);
  EXPECT_EQ(a.remaining, 20);
  q.reconcile("k", a, 30);
  const Admission r = q.admit("k", std::nullopt, 10);
  EXPECT_EQ(r.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r.limit, 30);
  EXPECT_EQ(r.used, 30);
}

TEST_F(QuotaTest, DefaultLimitZeroIsUnlimited) {
  Quota q = make(settings(0));
  for (int i = 0; i < 20; ++i) {
    const Admission a = q.admit("k", std::nullopt, 32'768);
    ASSERT_EQ(a.verdict, Verdict::Admitted);
    EXPECT_EQ(a.limit, 0);
    EXPECT_EQ(a.reserved, 0);  // nothing to reserve against
    q.reconcile("k", a, 10'000);
  }
  // The usage is still recorded, for /stats.
  EXPECT_EQ(q.view("k").used, 200'000);
  EXPECT_EQ(q.view("k").lifetime, 200'000);
}

TEST_F(QuotaTest, KeyLimitZeroRefusesEverything) {
  Quota q = make(settings(0));  // even with an unlimited default
  const Admission r = q.admit("k", 0, 1);
  EXPECT_EQ(r.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r.limit, 0);
  EXPECT_EQ(r.reserved, 0);
  EXPECT_EQ(r.reset_at, now + kWindow);
  EXPECT_EQ(r.retry_after_s, kWindow / kSecond);
  q.reconcile("k", r, 100);
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, 0);
}

TEST_F(QuotaTest, KeysAreIndependent) {
  Quota q = make(settings(100));
  use(q, "a", 100, kT0);
  EXPECT_EQ(q.admit("a", std::nullopt, 1).verdict, Verdict::TokensExceeded);
  const Admission b = q.admit("b", std::nullopt, 1);
  EXPECT_EQ(b.verdict, Verdict::Admitted);
  EXPECT_EQ(b.used, 0);
}

// ---------------------------------------------------------------------------------------------
// Retry-After / reset_at

TEST_F(QuotaTest, ResetAtIsWhenEnoughUsageAgesOut) {
  Quota q = make(settings());
  use(q, "k", 30, kT0 + 10 * kSecond);                 // bucket kT0
  use(q, "k", 40, kT0 + 2 * kMinute + 5 * kSecond);    // bucket kT0 + 2 min
  use(q, "k", 50, kT0 + 4 * kMinute);                  // bucket kT0 + 4 min
  now = kT0 + kHour + 250;

  // 120 >= 100; without the first bucket 90 < 100.
  const Admission r1 = q.admit("k", 100, 1);
  ASSERT_EQ(r1.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r1.used, 120);
  EXPECT_EQ(r1.reset_at, kT0 + kWindow);
  EXPECT_EQ(r1.retry_after_s, (kWindow - kHour) / kSecond);  // 14399.75 s rounds up to 14400

  // 90 >= 60; without the second bucket too 50 < 60.
  const Admission r2 = q.admit("k", 60, 1);
  ASSERT_EQ(r2.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r2.reset_at, kT0 + 2 * kMinute + kWindow);
  EXPECT_EQ(r2.retry_after_s, (2 * kMinute + kWindow - kHour) / kSecond);

  // Only after the last bucket: 50 is not below 50.
  const Admission r3 = q.admit("k", 50, 1);
  ASSERT_EQ(r3.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r3.reset_at, kT0 + 4 * kMinute + kWindow);

  // And at those times the request is indeed admitted (not one millisecond earlier).
  now = r2.reset_at - 1;
  EXPECT_EQ(q.admit("k", 60, 1).verdict, Verdict::TokensExceeded);
  now = r2.reset_at;
  const Admission ok = q.admit("k", 60, 1);
  EXPECT_EQ(ok.verdict, Verdict::Admitted);
  EXPECT_EQ(ok.used, 50);
  q.reconcile("k", ok, 0);
}

TEST_F(QuotaTest, RetryAfterIsCeilSecondsAndAtLeastOne) {
  Quota q = make(settings(100));
  use(q, "k", 100, kT0);
  struct Case {
    Millis now;
    int64_t retry_after_s;
  };
  for (const Case c : {Case{kT0 + kWindow - 1, 1}, Case{kT0 + kWindow - 999, 1}, Case{kT0 + kWindow - 1'000, 1},
                       Case{kT0 + kWindow - 1'001, 2}, Case{kT0 + kWindow - 60'000, 60}, Case{kT0, kWindow / kSecond},
                       Case{kT0 + 1, kWindow / kSecond}}) {
    now = c.now;
    const Admission r = q.admit("k", std::nullopt, 1);
    ASSERT_EQ(r.verdict, Verdict::TokensExceeded) << c.now - kT0;
    EXPECT_EQ(r.reset_at, kT0 + kWindow) << c.now - kT0;
    EXPECT_EQ(r.retry_after_s, c.retry_after_s) << c.now - kT0;
  }
}

TEST_F(QuotaTest, ResetAtCountsOtherRequestsInFlight) {
  Quota q = make(settings(100));
  use(q, "k", 40, kT0);
  now = kT0 + 3 * kMinute;
  const Admission held = q.admit("k", std::nullopt, 70);  // 40 < 100; 110 with the reservation
  ASSERT_EQ(held.verdict, Verdict::Admitted);
  const Admission r = q.admit("k", std::nullopt, 1);
  ASSERT_EQ(r.verdict, Verdict::TokensExceeded);
  EXPECT_EQ(r.used, 110);
  // Without the first bucket: 70 < 100.
  EXPECT_EQ(r.reset_at, kT0 + kWindow);
  q.reconcile("k", held, 70);
}

// ---------------------------------------------------------------------------------------------
// Reservation and reconciliation

TEST_F(QuotaTest, ReconcileLessThanEstimate) {
  Quota q = make(settings());
  const Admission a = q.admit("k", std::nullopt, 500);
  ASSERT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(q.view("k").used, 500);  // the reservation is in the window while in flight
  q.reconcile("k", a, 120);
  EXPECT_EQ(q.view("k").used, 120);
  EXPECT_EQ(q.view("k").lifetime, 120);
}

TEST_F(QuotaTest, ReconcileMoreThanEstimate) {
  Quota q = make(settings());
  const Admission a = q.admit("k", std::nullopt, 100);
  q.reconcile("k", a, 2'345);
  EXPECT_EQ(q.view("k").used, 2'345);
  EXPECT_EQ(q.view("k").lifetime, 2'345);
}

TEST_F(QuotaTest, ReconcileGoesToTheAdmissionsBucket) {
  Quota q = make(settings());
  now = kT0 + 30 * kSecond;
  const Admission small = q.admit("k", std::nullopt, 500);
  const Admission big = q.admit("k", std::nullopt, 100);
  EXPECT_EQ(small.at, kT0 + 30 * kSecond);
  now = kT0 + 7 * kMinute + 10 * kSecond;  // the requests finish buckets later
  q.reconcile("k", small, 120);
  q.reconcile("k", big, 900);
  EXPECT_EQ(q.view("k").used, 1'020);
  const std::string w = Quota::window_name("k");
  EXPECT_EQ(store.bucket_amount(w, kT0, kWindow, now), 1'020);
  EXPECT_EQ(store.bucket_amount(w, kT0 + 7 * kMinute, kWindow, now), 0);
  // So the usage ages out with the admission's bucket.
  now = kT0 + kWindow;
  EXPECT_EQ(q.view("k").used, 0);
}

TEST_F(QuotaTest, ReconcileUnknownKeepsEstimate) {
  Quota q = make(settings());
  const Admission a = q.admit("k", std::nullopt, 640);
  now += 2 * kMinute;
  q.reconcile("k", a, -1);
  EXPECT_EQ(q.view("k").used, 640);
  EXPECT_EQ(q.view("k").lifetime, 640);
}

TEST_F(QuotaTest, ReconcileZeroReleases) {
  Quota q = make(settings(100));
  const Admission a = q.admit("k", std::nullopt, 100);
  EXPECT_EQ(q.admit("k", std::nullopt, 1).verdict, Verdict::TokensExceeded);  // the reservation holds the quota
  q.reconcile("k", a, 0);
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, 0);
  EXPECT_EQ(q.admit("k", std::nullopt, 1).verdict, Verdict::Admitted);
}

TEST_F(QuotaTest, LifetimeCounterAccumulatesChargedAmounts) {
  Quota q = make(settings(1'000'000));
  int64_t expected = 0;
  for (const int64_t actual : {int64_t{10}, int64_t{-1}, int64_t{0}, int64_t{5'000}}) {
    const Admission a = q.admit("k", std::nullopt, 300);
    q.reconcile("k", a, actual);
    expected += actual < 0 ? 300 : actual;
  }
  EXPECT_EQ(q.view("k").lifetime, expected);
  now = kT0 + 2 * kWindow;  // the window forgets, the lifetime counter does not
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, expected);
  int64_t raw = 0;
  EXPECT_EQ(store.core().counter_get(Quota::lifetime_name("k"), raw), store::Status::Ok);
  EXPECT_EQ(raw, expected);
}

TEST_F(QuotaTest, ReconcileOfRefusalDoesNothing) {
  Quota q = make(settings(10));
  use(q, "k", 10, kT0);
  const Admission r = q.admit("k", std::nullopt, 50);
  ASSERT_EQ(r.verdict, Verdict::TokensExceeded);
  q.reconcile("k", r, 1'000);
  q.reconcile("k", r, -1);
  q.reconcile("k", r, 0);
  EXPECT_EQ(q.view("k").used, 10);
  EXPECT_EQ(q.view("k").lifetime, 10);
}

// ---------------------------------------------------------------------------------------------
// remaining and reset_at of admitted requests

TEST_F(QuotaTest, RemainingAndResetOfAdmittedRequests) {
  Quota q = make(settings(10'000));
  now = kT0 + 20 * kSecond;
  const Admission first = q.admit("k", std::nullopt, 1'000);
  EXPECT_EQ(first.remaining, 9'000);
  EXPECT_EQ(first.reset_at, kT0 + kWindow);  // its own bucket is the oldest
  q.reconcile("k", first, 1'500);

  now = kT0 + kHour + 5 * kSecond;
  const Admission held = q.admit("k", std::nullopt, 2'000);  // in flight
  EXPECT_EQ(held.used, 1'500);
  EXPECT_EQ(held.remaining, 10'000 - 1'500 - 2'000);
  EXPECT_EQ(held.reset_at, kT0 + kWindow);

  now = kT0 + 2 * kHour;
  const Admission a = q.admit("k", std::nullopt, 700);
  EXPECT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.used, 3'500);  // usage 1500 + the other reservation 2000
  EXPECT_EQ(a.remaining, 10'000 - 3'500 - 700);
  EXPECT_EQ(a.reset_at, kT0 + kWindow);  // oldest bucket start + window
  q.reconcile("k", held, 2'000);
  q.reconcile("k", a, 700);

  // Once the first bucket aged out, the oldest is the held request's bucket.
  now = kT0 + kWindow + 1;
  const Admission later = q.admit("k", std::nullopt, 100);
  EXPECT_EQ(later.used, 2'700);
  EXPECT_EQ(later.remaining, 10'000 - 2'700 - 100);
  EXPECT_EQ(later.reset_at, kT0 + kHour + kWindow);
  q.reconcile("k", later, 100);

  const WindowView v = q.view("k");
  EXPECT_EQ(v.used, 2'800);
  EXPECT_EQ(v.started_at, kT0 + kHour);
  EXPECT_EQ(v.ends_at, kT0 + kHour + kWindow);
}

TEST_F(QuotaTest, RemainingNeverNegative) {
  Quota q = make(settings(100));
  const Admission a = q.admit("k", std::nullopt, 5'000);
  EXPECT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.remaining, 0);
}

// ---------------------------------------------------------------------------------------------
// requests_per_minute and global_limit

TEST_F(QuotaTest, RequestsPerMinute) {
  QuotaSettings s = settings(1'000'000);
  s.requests_per_minute = 3;
  Quota q = make(s);
  now = kT0 + 10 * kSecond;
  for (int i = 0; i < 3; ++i) {
    const Admission a = q.admit("k", std::nullopt, 10);
    ASSERT_EQ(a.verdict, Verdict::Admitted) << i;
    q.reconcile("k", a, 10);
  }
  now = kT0 + 50 * kSecond + 300;
  const Admission r = q.admit("k", std::nullopt, 10);
  EXPECT_EQ(r.verdict, Verdict::RequestsExceeded);
  EXPECT_EQ(r.reserved, 0);
  EXPECT_EQ(r.reset_at, kT0 + kMinute);  // the minute's bucket leaves
  EXPECT_EQ(r.retry_after_s, 10);        // 9.7 s rounds up
  q.reconcile("k", r, 10);
  EXPECT_EQ(q.view("k").used, 30);  // nothing reserved for the refusal
  // Other keys have their own count.
  EXPECT_EQ(q.admit("other", std::nullopt, 10).verdict, Verdict::Admitted);
  // The next minute admits again.
  now = kT0 + kMinute;
  EXPECT_EQ(q.admit("k", std::nullopt, 10).verdict, Verdict::Admitted);
}

TEST_F(QuotaTest, GlobalLimitRefusalRollsBackKeyReservation) {
  QuotaSettings s = settings(1'000'000);
  s.global_limit = 100;
  Quota q = make(s);
  const Admission a = q.admit("a", std::nullopt, 60);
  ASSERT_EQ(a.verdict, Verdict::Admitted);
  q.reconcile("a", a, 100);  // the global window follows the reconciliation
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 100);

  now = kT0 + 5 * kMinute;
  const Admission r = q.admit("b", std::nullopt, 40);
  EXPECT_EQ(r.verdict, Verdict::GlobalExceeded);
  EXPECT_EQ(r.reserved, 0);
  EXPECT_EQ(r.reset_at, kT0 + kWindow);
  EXPECT_EQ(r.retry_after_s, (kWindow - 5 * kMinute) / kSecond);
  q.reconcile("b", r, 40);
  EXPECT_EQ(q.view("b").used, 0);  // b's reservation was taken back
  EXPECT_EQ(q.view("b").lifetime, 0);
  EXPECT_EQ(store.sum(Quota::window_name("b"), kWindow, now), 0);
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 100);  // and the global one too

  // A key without a limit is still bound by the global limit, and nothing stays reserved.
  const Admission u = q.admit("c", std::nullopt, 40);
  EXPECT_EQ(u.verdict, Verdict::GlobalExceeded);
  QuotaSettings unlimited = s;
  unlimited.default_limit = 0;
  Quota q2 = make(unlimited);
  const Admission u2 = q2.admit("d", std::nullopt, 40);
  EXPECT_EQ(u2.verdict, Verdict::GlobalExceeded);
  EXPECT_EQ(q2.view("d").used, 0);
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 100);

  // When the global usage ages out, b is admitted.
  now = kT0 + kWindow;
  EXPECT_EQ(q.admit("b", std::nullopt, 40).verdict, Verdict::Admitted);
}

TEST_F(QuotaTest, GlobalLimitWithUnlimitedKeyCountsReconciledUsage) {
  QuotaSettings s = settings(0);  // keys unlimited
  s.global_limit = 1'000;
  Quota q = make(s);
  const Admission a = q.admit("a", std::nullopt, 300);
  ASSERT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.reserved, 300);  // reserved against the global limit
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 300);
  q.reconcile("a", a, 250);
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 250);
  EXPECT_EQ(q.view("a").used, 250);
  EXPECT_EQ(q.view("a").lifetime, 250);
}

// ---------------------------------------------------------------------------------------------
// Concurrency: the core memory store's window_add is an atomic add-and-sum.

TEST_F(QuotaTest, ConcurrentAdmissionsReconciledAdmitExactlyLimit) {
  constexpr int64_t kLimit = 2'000;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 1'000;  // 8000 attempts for 2000 tokens
  Quota q = make(settings(kLimit));
  std::atomic<int64_t> admitted{0};
  std::atomic<int64_t> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        const Admission a = q.admit("k", std::nullopt, 1);
        if (a.verdict == Verdict::Admitted) {
          ++admitted;
          q.reconcile("k", a, 1);
        } else {
          EXPECT_EQ(a.verdict, Verdict::TokensExceeded);
          ++refused;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), kLimit);
  EXPECT_EQ(admitted.load() + refused.load(), int64_t{kThreads} * kPerThread);
  EXPECT_EQ(q.view("k").used, kLimit);
  EXPECT_EQ(q.view("k").lifetime, kLimit);
}

TEST_F(QuotaTest, ConcurrentAdmissionsWithHeldReservationsNeverExceedLimit) {
  constexpr int64_t kLimit = 1'000;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 500;
  Quota q = make(settings(kLimit));
  std::atomic<int64_t> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i)
        if (q.admit("k", std::nullopt, 1).verdict == Verdict::Admitted) ++admitted;  // held: no reconcile
    });
  for (auto& th : threads) th.join();
  EXPECT_LE(admitted.load(), kLimit);
  EXPECT_GE(admitted.load(), kLimit - kThreads);  // spurious refusals only near the limit
  // Every refusal took its reservation back: the window holds exactly the held reservations.
  EXPECT_EQ(q.view("k").used, admitted.load());
}

// ---------------------------------------------------------------------------------------------
// Store unavailable

TEST_F(QuotaTest, StoreUnavailableChargesNothing) {
  Quota q = make(settings(1'000));
  use(q, "k", 100, kT0);
  store.unavailable = true;
  now = kT0 + kMinute;
  const Admission a = q.admit("k", std::nullopt, 50);
  EXPECT_EQ(a.verdict, Verdict::StoreUnavailable);
  EXPECT_EQ(a.reserved, 0);
  q.reconcile("k", a, 50);
  q.reconcile("k", a, -1);
  store.unavailable = false;
  EXPECT_EQ(q.view("k").used, 100);
  EXPECT_EQ(q.view("k").lifetime, 100);
  EXPECT_EQ(store.sum(Quota::window_name("k"), kWindow, now), 100);
}

TEST_F(QuotaTest, StoreUnavailableOnRequestCount) {
  QuotaSettings s = settings(1'000);
  s.requests_per_minute = 10;
  Quota q = make(s);
  store.unavailable_name = Quota::requests_name("k");
  const Admission a = q.admit("k", std::nullopt, 50);
  EXPECT_EQ(a.verdict, Verdict::StoreUnavailable);
  EXPECT_EQ(a.reserved, 0);
  q.reconcile("k", a, 50);
  store.unavailable_name.clear();
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, 0);
}

// README: "If the store cannot answer … 503". The global window is one of the store's answers: a
// failure there must not admit the request (a global limit silently off) nor leave the key's
// reservation behind.
TEST_F(QuotaTest, StoreUnavailableOnGlobalWindow) {
  QuotaSettings s = settings(1'000);
  s.global_limit = 10'000;
  Quota q = make(s);
  store.unavailable_name = Quota::kGlobal;
  const Admission a = q.admit("k", std::nullopt, 50);
  EXPECT_EQ(a.verdict, Verdict::StoreUnavailable);
  EXPECT_EQ(a.reserved, 0);
  store.unavailable_name.clear();
  q.reconcile("k", a, 20);
  EXPECT_EQ(q.view("k").used, 0);
  EXPECT_EQ(q.view("k").lifetime, 0);
  EXPECT_EQ(store.sum(Quota::kGlobal, kWindow, now), 0);  // never negative either
}

TEST_F(QuotaTest, StoreBackAfterOutage) {
  Quota q = make(settings(1'000));
  store.unavailable = true;
  EXPECT_EQ(q.admit("k", std::nullopt, 50).verdict, Verdict::StoreUnavailable);
  store.unavailable = false;
  const Admission a = q.admit("k", std::nullopt, 50);
  EXPECT_EQ(a.verdict, Verdict::Admitted);
  EXPECT_EQ(a.used, 0);
  q.reconcile("k", a, 40);
  EXPECT_EQ(q.view("k").used, 40);
}

}  // namespace
