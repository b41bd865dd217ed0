// batching: request coalescing. Identical requests in flight share one upstream call: the first is
// the leader (its response is recorded as it is relayed), the ones that arrive while it runs follow
// that recording, streamed or not, from its first byte. Runs after auth and ratelimit (and the
// cache) in the chain. Semantics, settings and failures: README.md.
#include <glmproxy/request_key.hpp>
#include <glmproxy/sdk.hpp>

#include <charconv>
#include <cstddef>
#include <exception>
#include <string>

#include "flights.hpp"

namespace glmp::plugins::batching {
namespace {

constexpr std::string_view kLeaderAttr = "batching.leader";
constexpr std::string_view kFollowerAttr = "batching.follower";

std::optional<std::uint64_t> parse_token(std::optional<std::string_view> text) {
  if (!text || text->empty()) return std::nullopt;
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
  if (ec != std::errc() || end != text->data() + text->size() || v == 0) return std::nullopt;
  return v;
}


}  // namespace

class Batching final : public glmp::Plugin {
 public:
  // Hooks only compute (a short critical section on the flight table) and call the host.
  static constexpr bool nonblocking = true;

  Batching(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        config_(parse_config(settings)),
        key_options_{config_.global_scope, config_.exclude_fields},
        table_(FlightTable::Limits{config_.max_followers, config_.max_waiting}),
        flights_total_(host.counter("glmp_batching_flights_total", "Coalescing flights started (leaders)")),
        followers_total_(host.counter("glmp_batching_followers_total",
                                      "Requests answered by following an identical request in flight")),
        flights_active_(host.gauge("glmp_batching_flights_active", "Coalescing flights whose leader is in progress")),
        followers_active_(host.gauge("glmp_batching_followers_active", "Followers in progress")),
        bytes_shared_(host.counter("glmp_batching_bytes_shared_total",
                                   "Response body bytes sent to followers without an upstream call of their own")) {
    if (!host.has_recordings())
      throw glmp::SettingsError("the batching plugin needs a host with recordings (ABI 1.5)");
    for (std::size_t i = 0; i < kFallbackCount; ++i)
      fallbacks_[i] = host.counter("glmp_batching_fallbacks_total",
                                   "Would-be followers that went upstream on their own, by reason",
                                   {{"reason", fallback_name(static_cast<Fallback>(i))}});
    host.register_route("GET", "/admin/batching", glmp::Access::Admin, [this](glmp::Request& r) {
      r.respond(200, "application/json", stats_json(config_, table_.stats()).dump());
    });
  }

  glmp::Status on_request(glmp::Request& r) override {
    const std::optional<std::string_view> temperature =
        config_.mode == Mode::Deterministic ? r.body_member("temperature") : std::nullopt;
    if (!eligible(config_, r.method(), r.path(), temperature) || !r.has_recordings()) return glmp::Status::Continue;
    const std::optional<std::string> key = glmp::request_key(r, key_options_);
    if (!key) return glmp::Status::Continue;  // not JSON, or no key id with scope = "key"

    const auto record = [&r, this] { return r.record(static_cast<std::size_t>(config_.max_bytes)); };
    std::uint64_t abandoned = 0;  // a flight whose follow failed: undone and detached by the next admit
    for (int attempt = 0; attempt < 2; ++attempt) {
      FlightTable::Decision d = table_.admit(*key, record, abandoned);
      abandoned = 0;
      switch (d.kind) {
        case FlightTable::Decision::Kind::Alone:
          if (d.fallback) fallbacks_[static_cast<std::size_t>(*d.fallback)].inc();
          return glmp::Status::Continue;
        case FlightTable::Decision::Kind::Lead:
          flights_total_.inc();
          flights_active_.inc();
          r.set_attribute(kLeaderAttr, std::to_string(d.token));
          if (config_.wait.count() > 0) r.defer_upstream(config_.wait);
          return glmp::Status::Continue;
        case FlightTable::Decision::Kind::Follow:
          if (follow(r, d)) return glmp::Status::Responded;
          abandoned = d.token;  // it could not be followed after all: as if there were no flight
          break;
      }
    }
    if (abandoned != 0) table_.abandon(abandoned);
    return glmp::Status::Continue;
  }

  void on_complete(glmp::Request& r) override {
    if (const auto leader = parse_token(r.attribute(kLeaderAttr))) {
      FlightTable::Finished f = table_.finish_leader(*leader);
      if (!f.found) return;
      flights_active_.dec();
      if (f.followers > 0 && f.recording) {
        const std::int64_t bytes = f.recording.info().body_bytes;
        if (bytes > 0) bytes_shared_.add(static_cast<double>(bytes) * static_cast<double>(f.followers));
      }
    } else if (parse_token(r.attribute(kFollowerAttr))) {
      table_.finish_follower();
      followers_active_.dec();
      // The leader failed before its head (429, 5xx, timeout): the core sent this one upstream.
      if (r.origin() == glmp::Origin::Upstream) {
        table_.count_fallback(Fallback::LeaderFailed);
        fallbacks_[static_cast<std::size_t>(Fallback::LeaderFailed)].inc();
      }
    }
  }

 private:
  // Follows the flight admit chose. False (the count undone by the caller) when it cannot be.
  bool follow(glmp::Request& r, const FlightTable::Decision& d) {
    try {
      if (!r.follow(d.recording, glmp::Origin::Coalesced, /*fallback=*/true, {{"X-Cache-Status", "COALESCED"}}))
        return false;
    } catch (...) {
      table_.abandon(d.token);
      throw;
    }
    if (!config_.charge_followers) r.set_charge(false);
    r.set_attribute(kFollowerAttr, std::to_string(d.token));
    followers_total_.inc();
    followers_active_.inc();
    return true;
  }

  const Config config_;
  const glmp::RequestKeyOptions key_options_;
  FlightTable table_;
  glmp::Counter flights_total_, followers_total_;
  glmp::Gauge flights_active_, followers_active_;
  glmp::Counter bytes_shared_;
  std::array<glmp::Counter, kFallbackCount> fallbacks_{};
};

}  // namespace glmp::plugins::batching

GLMP_PLUGIN(glmp::plugins::batching::Batching, "batching", "1.0.0");
