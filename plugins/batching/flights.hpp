// batching: the logic of request coalescing without the request ABI — settings, which requests may
// coalesce, and the flight table (one flight per key: a leader's recording plus its followers).
// Compiled into the plugin and into the unit tests. Semantics: README.md.
#pragma once

#include <glmproxy/sdk.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace glmp::plugins::batching {

enum class Mode { Deterministic, All };

struct Config {
  Mode mode = Mode::Deterministic;
  std::chrono::milliseconds wait{0};  // a leader's upstream call waits this long for joiners
  std::int64_t max_followers = 10;    // followers one flight takes, in its whole life
  std::int64_t max_waiting = 1000;    // followers in progress, over every flight of the instance
  bool charge_followers = false;
  bool global_scope = false;  // scope = "global"
  std::vector<std::string> exclude_fields;
  std::vector<std::string> paths{"/v1/chat/completions", "/v1/completions", "/v1/messages"};
  std::uint64_t max_bytes = 1024 * 1024;  // body bytes a flight keeps for late joiners
};

// The largest `wait` (the core defers an upstream call by at most 10 s).
inline constexpr std::chrono::milliseconds kMaxWait{10'000};
// The largest `max_bytes` (a flight's body is held in memory).
inline constexpr std::uint64_t kMaxBytesLimit = std::uint64_t{1} << 30;

// Reads and validates the plugin's settings; unknown keys and bad values throw glmp::SettingsError.
Config parse_config(const glmp::Settings& settings);

std::string_view mode_name(Mode mode) noexcept;

// True when `raw` (a JSON value as written, e.g. from Request::body_member) is the number zero in
// any spelling: 0, -0, 0.0, 0e5, 0.000E-3. A string ("0"), null or anything non-zero is false.
bool is_json_zero(std::string_view raw) noexcept;

// Whether a request may coalesce at all: a POST to one of the configured paths and, in
// deterministic mode, a top-level "temperature" that is zero (absent does not count).
bool eligible(const Config& config, std::string_view method, std::string_view path,
              std::optional<std::string_view> temperature) noexcept;

// A recording a new identical request may follow: no head yet or still streaming, and every body
// byte so far kept.
bool followable(const glmp::RecordingInfo& info) noexcept;

// Why a would-be follower went upstream on its own.
enum class Fallback : std::size_t { MaxFollowers = 0, MaxWaiting = 1, LeaderFailed = 2 };
inline constexpr std::size_t kFallbackCount = 3;
std::string_view fallback_name(Fallback reason) noexcept;

struct Stats {
  std::int64_t flights_active = 0;    // leaders whose request has not completed yet
  std::int64_t followers_active = 0;  // followers whose request has not completed yet
  std::int64_t flights = 0;           // leaders so far
  std::int64_t followers = 0;         // requests that followed a flight so far
  std::array<std::int64_t, kFallbackCount> fallbacks{};
};

// The JSON of GET /admin/batching.
nlohmann::ordered_json stats_json(const Config& config, const Stats& stats);

// The flight table of one plugin instance. Thread-safe. Every flight is one leader's request
// (its recording), known by a token; the table maps each key to its newest flight, the one new
// requests join. A flight stays in the table until its leader's request completes (finish_leader),
// also after a newer flight took over its key.
class FlightTable {
 public:
  struct Limits {
    std::int64_t max_followers = 10;
    std::int64_t max_waiting = 1000;
  };

  struct Decision {
    enum class Kind {
      Follow,  // follow `recording` (flight `token`); afterwards confirm or abandon the token
      Lead,    // the request leads flight `token` (its recording is in the table)
      Alone    // go upstream alone: `fallback` says why, or nothing (the request cannot be recorded)
    };
    Kind kind = Kind::Alone;
    std::uint64_t token = 0;
    glmp::Recording recording;  // Follow: the recording to follow
    std::optional<Fallback> fallback;
  };

  explicit FlightTable(Limits limits) noexcept : limits_(limits) {}

  // Decides for one request with key `key`, atomically (so N identical requests arriving together
  // make exactly one leader):
  //  - the key's flight is followable (followable(info())) and has room → Follow, counted as one
  //    of its followers (and as waiting);
  //  - it is followable but full → Alone with Fallback::MaxFollowers / MaxWaiting;
  //  - no flight, or one that can no longer be followed → `record()` is called (under the table's
  //    lock) for the request's recording: empty → Alone without a fallback; else Lead, and the new
  //    flight replaces the old one for the key.
  // `abandon`: the token of a flight this request just failed to follow (follow returned false):
  // its count is undone first and the flight is no longer joined (see abandon()).
  Decision admit(const std::string& key, const std::function<glmp::Recording()>& record,
                 std::uint64_t abandon = 0);

  // Follow returned false for flight `token`: undoes the count admit made, and stops new requests
  // joining that flight (its recording cannot be followed).
  void abandon(std::uint64_t token);

  struct Finished {
    bool found = false;          // the flight was in the table (the token is this table's)
    std::int64_t followers = 0;  // requests that followed it
    glmp::Recording recording;
  };
  // The leader of flight `token` completed: removes the flight (and its key's entry when the key
  // still names it; a newer flight under the same key stays).
  Finished finish_leader(std::uint64_t token);

  // A follower completed (of whatever flight: the flight may be gone already).
  void finish_follower();

  // A follower went upstream on its own after all (the leader failed before its head).
  void count_fallback(Fallback reason);

  Stats stats() const;

  // For tests: the token the key's joinable flight has, 0 when none.
  std::uint64_t current(const std::string& key) const;

 private:
  struct Flight {
    std::string key;
    glmp::Recording recording;
    std::int64_t followers = 0;
  };

  void abandon_locked(std::uint64_t token);

  const Limits limits_;
  mutable std::mutex mutex_;
  std::unordered_map<std::uint64_t, Flight> flights_;      // token -> flight, until its leader completes
  std::unordered_map<std::string, std::uint64_t> current_;  // key -> the flight new requests join
  std::uint64_t next_token_ = 1;
  std::int64_t waiting_ = 0;
  Stats totals_;
};

}  // namespace glmp::plugins::batching
