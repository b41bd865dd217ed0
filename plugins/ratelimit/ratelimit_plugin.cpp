// ratelimit: exact rolling token quotas per key (after auth in the chain), reserve-then-reconcile,
// rate-limit headers, and GET /stats. Semantics, bound and settings: README.md.
#include <glmproxy/sdk.hpp>

#include <nlohmann/json.hpp>

#include "quota.hpp"

namespace glmp::plugins::ratelimit {
namespace {

using Json = nlohmann::ordered_json;

// The core store through the SDK, as the quota logic sees it.
class HostStore final : public QuotaStore {
public:
  explicit HostStore(glmp::Store store) : store_(store) {}
  Result window_add(const std::string& name, int64_t amount, Millis window, Millis now, int64_t* sum) override {
    auto r = store_.window_add(name, amount, std::chrono::milliseconds(window), now);
    if (sum) *sum = r.value;
    return map(r.status);
  }
  Result window_buckets(const std::string& name, Millis window, Millis now, std::vector<Bucket>& out) override {
    auto r = store_.window_buckets(name, std::chrono::milliseconds(window), now);
    out.clear();
    for (const auto& b : r.value) out.push_back({b.start_ms, b.amount});
    return map(r.status);
  }
  Result counter_add(const std::string& name, int64_t amount) override { return map(store_.counter_add(name, amount).status); }
  Result counter_get(const std::string& name, int64_t& value) override {
    auto r = store_.counter_get(name);
    value = r.value;
    return map(r.status);
  }
  Millis bucket_ms() const override { return std::max<Millis>(1000, store_.bucket_ms()); }

private:
  static Result map(glmp::StoreStatus s) {
    return s == glmp::StoreStatus::Ok || s == glmp::StoreStatus::NotFound ? Result::Ok
           : s == glmp::StoreStatus::Degraded                             ? Result::Degraded
                                                                          : Result::Unavailable;
  }
  glmp::Store store_;
};


int64_t non_negative(const glmp::Settings& s, std::string_view key, int64_t fallback) {
  const int64_t v = s.get_int(key, fallback);
  if (v < 0) throw glmp::SettingsError("setting \"" + std::string(key) + "\" must be >= 0");
  return v;
}

QuotaSettings read_settings(const glmp::Settings& s) {
  s.allow_only({"window", "default_limit", "default_reservation", "max_reservation", "requests_per_minute", "global_limit",
                "count_cache_tokens"});
  QuotaSettings q;
  q.window = s.get_duration("window", std::chrono::hours(5)).count();
  if (q.window <= 0) throw glmp::SettingsError("setting \"window\" must be longer than 0");
  q.default_limit = non_negative(s, "default_limit", q.default_limit);
  q.default_reservation = non_negative(s, "default_reservation", q.default_reservation);
  q.max_reservation = non_negative(s, "max_reservation", q.max_reservation);
  q.requests_per_minute = non_negative(s, "requests_per_minute", 0);
  q.global_limit = non_negative(s, "global_limit", 0);
  q.count_cache_tokens = s.get_bool("count_cache_tokens", true);
  if (q.max_reservation == 0) throw glmp::SettingsError("setting \"max_reservation\" must be > 0");
  return q;
}

std::string window_text(Millis window) {
  if (window % 3'600'000 == 0) return std::to_string(window / 3'600'000) + "-hour";
  if (window % 60'000 == 0) return std::to_string(window / 60'000) + "-minute";
  return std::to_string(window / 1000) + "-second";
}

std::optional<int64_t> parse_int(std::optional<std::string_view> text) {
  if (!text || text->empty()) return std::nullopt;
  try {
    size_t pos = 0;
    const int64_t v = std::stoll(std::string(*text), &pos);
    if (pos == text->size()) return v;
  } catch (...) {
  }
  return std::nullopt;
}

}  // namespace

class Ratelimit final : public glmp::Plugin {
public:
  // Hooks only compute and use the store (short critical sections, no I/O of their own): with a
  // memory or SQLite store they run on the event loop, with Redis on a worker (the core decides).
  static constexpr bool nonblocking = true;

  Ratelimit(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        store_(host.store()),
        quota_(read_settings(settings), store_, [] { return glmp::unix_ms(); }),
        admitted_(host.counter("glmp_ratelimit_requests_total", "Requests seen by ratelimit, by verdict", {{"verdict", "admitted"}})),
        refused_tokens_(host.counter("glmp_ratelimit_requests_total", "Requests seen by ratelimit, by verdict", {{"verdict", "tokens"}})),
        refused_requests_(host.counter("glmp_ratelimit_requests_total", "Requests seen by ratelimit, by verdict", {{"verdict", "requests"}})),
        refused_global_(host.counter("glmp_ratelimit_requests_total", "Requests seen by ratelimit, by verdict", {{"verdict", "global"}})),
        unavailable_(host.counter("glmp_ratelimit_requests_total", "Requests seen by ratelimit, by verdict", {{"verdict", "store_unavailable"}})),
        charged_(host.counter("glmp_ratelimit_tokens_charged_total", "Tokens charged to windows after reconciliation", {})) {
    if (!host.store().available()) throw glmp::SettingsError("the ratelimit plugin needs a host with the state store (ABI 1.1)");
    // A window the store cannot serve would turn every request into a 503: refuse it now.
    if (host.store().window_sum("tokens:*", std::chrono::milliseconds(quota_.settings().window)).status == glmp::StoreStatus::Invalid)
      throw glmp::SettingsError("setting \"window\" is longer than the store keeps ([store] max_window)");
    host.register_route("GET", "/stats", glmp::Access::Key, [this](glmp::Request& r) { stats(r); });
  }

  glmp::Status on_request(glmp::Request& r) override {
    const auto key = r.attribute("auth.key_id");
    if (!key || r.path() == "/stats") return glmp::Status::Continue;  // no key (no auth): nothing to limit; /stats is free
    const std::string id(*key);
    const std::optional<int64_t> limit = parse_int(r.attribute("auth.token_limit_per_5h"));
    // Calls that cannot generate tokens reserve nothing (they are still counted and refused like
    // any request while the key is over its limit).
    const bool generation = can_generate(r.method(), r.path());
    const int64_t estimate =
        generation ? estimate_tokens([&r](std::string_view name) { return r.body_member(name); }, r.body().size(),
                                     quota_.settings())
                   : 0;
    const Admission a = quota_.admit(id, limit, estimate);
    switch (a.verdict) {
      case Verdict::Admitted: break;
      case Verdict::StoreUnavailable:
        unavailable_.inc();
        r.respond_error(503, "Rate limit store unavailable; try again shortly");
        return glmp::Status::Responded;
      default: return refuse(r, a);
    }
    admitted_.inc();
    if (a.limit > 0) headers(r, a.limit, a.remaining, a.reset_at, a.at);
    r.set_attribute("ratelimit.at", std::to_string(a.at));
    r.set_attribute("ratelimit.reserved", std::to_string(a.reserved));
    r.set_attribute("ratelimit.limit", std::to_string(a.limit));
    r.set_attribute("ratelimit.generation", generation ? "1" : "0");
    return glmp::Status::Continue;
  }

  void on_complete(glmp::Request& r) override {
    const auto key = r.attribute("auth.key_id");
    const auto at = parse_int(r.attribute("ratelimit.at"));
    if (!key || !at) return;
    Admission a;
    a.at = *at;
    a.reserved = parse_int(r.attribute("ratelimit.reserved")).value_or(0);
    a.limit = parse_int(r.attribute("ratelimit.limit")).value_or(0);
    const glmp::Usage u = r.usage();
    const ReportedUsage reported{u.seen, u.input_tokens, u.output_tokens, u.cache_read_input_tokens,
                                 u.cache_creation_input_tokens, u.total_tokens};
    // A response served from a recording (cache hit, coalesced follower) that a plugin marked as
    // not charged (ABI 1.5): the reservation is released, nothing is counted.
    const int64_t actual = !r.charge() ? 0
                                       : charge_tokens(reported, r.flavour() == glmp::Flavour::Anthropic, r.response_status(),
                                                       r.attribute("ratelimit.generation") != "0", a.reserved, quota_.settings());
    quota_.reconcile(std::string(*key), a, actual);
    const int64_t charged = actual < 0 ? a.reserved : actual;
    if (charged > 0) charged_.add(static_cast<double>(charged));
  }

private:
  void headers(glmp::Request& r, int64_t limit, int64_t remaining, Millis reset_at, Millis now) {
    const int64_t reset_s = std::max<int64_t>(0, (reset_at - now + 999) / 1000);
    if (r.flavour() == glmp::Flavour::Anthropic) {
      r.set_response_header("anthropic-ratelimit-tokens-limit", std::to_string(limit));
      r.set_response_header("anthropic-ratelimit-tokens-remaining", std::to_string(remaining));
      r.set_response_header("anthropic-ratelimit-tokens-reset", glmp::format_rfc3339(reset_at));
    } else {
      r.set_response_header("x-ratelimit-limit-tokens", std::to_string(limit));
      r.set_response_header("x-ratelimit-remaining-tokens", std::to_string(remaining));
      r.set_response_header("x-ratelimit-reset-tokens", std::to_string(reset_s) + "s");
    }
  }

  glmp::Status refuse(glmp::Request& r, const Admission& a) {
    std::string message;
    int64_t limit = a.limit;
    switch (a.verdict) {
      case Verdict::RequestsExceeded:
        refused_requests_.inc();
        message = "Request limit exceeded: " + std::to_string(quota_.settings().requests_per_minute) + " requests per minute";
        break;
      case Verdict::GlobalExceeded:
        refused_global_.inc();
        message = "Global token limit exceeded for " + window_text(quota_.settings().window) + " window";
        limit = quota_.settings().global_limit;
        break;
      default:
        refused_tokens_.inc();
        message = "Token limit exceeded for " + window_text(quota_.settings().window) + " window";
        break;
    }
    const std::string ends = glmp::format_rfc3339(a.reset_at);
    Json detail;
    if (r.flavour() == glmp::Flavour::Anthropic) {
      detail = {{"type", "error"},
                {"error", {{"type", "rate_limit_error"}, {"message", message}, {"tokens_used", a.used},
                           {"tokens_limit", limit}, {"window_ends_at", ends}}}};
    } else {
      detail = {{"error", {{"message", message}, {"type", "rate_limit_exceeded"}, {"code", "rate_limit_exceeded"},
                           {"tokens_used", a.used}, {"tokens_limit", limit}, {"window_ends_at", ends}}}};
    }
    r.set_response_header("Retry-After", std::to_string(a.retry_after_s));
    if (a.verdict != Verdict::RequestsExceeded) headers(r, limit, 0, a.reset_at, a.at);
    r.respond(429, "application/json", detail.dump());
    return glmp::Status::Responded;
  }

  void stats(glmp::Request& r) {
    const auto key = r.attribute("auth.key_id");
    if (!key) {
      r.respond_error(401, "API key required. Use Authorization: Bearer <key> or x-api-key: <key>");
      return;
    }
    const WindowView v = quota_.view(std::string(*key));
    const std::optional<int64_t> limit = parse_int(r.attribute("auth.token_limit_per_5h"));
    const int64_t effective = limit.value_or(quota_.settings().default_limit);
    auto attr = [&](std::string_view name) -> Json {
      const auto value = r.attribute(name);
      return value && !value->empty() ? Json(std::string(*value)) : Json(nullptr);
    };
    const std::string model = std::string(r.attribute("auth.model").value_or(""));
    Json body = {
        {"key", attr("auth.key_masked")},
        {"name", attr("auth.key_name")},
        {"model", model.empty() ? Json(nullptr) : Json(model)},
        {"token_limit_per_5h", effective > 0 ? Json(effective) : Json(nullptr)},
        {"expiry_date", attr("auth.expiry_date")},
        {"created_at", attr("auth.created_at")},
        {"last_used", attr("auth.last_used")},
        {"is_expired", false},  // auth refuses expired keys before /stats runs
        {"current_usage",
         {{"tokens_used_in_current_window", v.used},
          {"window_started_at", glmp::format_rfc3339(v.started_at)},
          {"window_ends_at", glmp::format_rfc3339(v.ends_at)},
          {"remaining_tokens", effective > 0 ? Json(std::max<int64_t>(0, effective - v.used)) : Json(nullptr)}}},
        {"total_lifetime_tokens", v.lifetime},
    };
    r.respond(200, "application/json", body.dump());
  }

  HostStore store_;
  Quota quota_;
  glmp::Counter admitted_, refused_tokens_, refused_requests_, refused_global_, unavailable_, charged_;
};

}  // namespace glmp::plugins::ratelimit

GLMP_PLUGIN(glmp::plugins::ratelimit::Ratelimit, "ratelimit", "1.0.0");
