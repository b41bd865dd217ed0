// batching: settings, eligibility and the flight table. See flights.hpp and README.md.
#include "flights.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace glmp::plugins::batching {

namespace {

std::int64_t at_least_one(const glmp::Settings& s, std::string_view key, std::int64_t fallback) {
  const std::int64_t v = s.get_int(key, fallback);
  if (v < 1) throw glmp::SettingsError("setting \"" + std::string(key) + "\" must be >= 1");
  return v;
}

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

}  // namespace


Config parse_config(const glmp::Settings& s) {
  s.allow_only({"mode", "wait", "max_followers", "max_waiting", "charge_followers", "scope", "exclude_fields", "paths",
                "max_bytes"});
  Config c;

  const std::string mode = s.get_string("mode", "deterministic");
  if (mode == "deterministic") c.mode = Mode::Deterministic;
  else if (mode == "all") c.mode = Mode::All;
  else throw glmp::SettingsError("setting \"mode\" must be \"deterministic\" or \"all\", not \"" + mode + "\"");

  c.wait = s.get_duration("wait", std::chrono::milliseconds(0));
  if (c.wait > kMaxWait) throw glmp::SettingsError("setting \"wait\" must be at most 10s");

  c.max_followers = at_least_one(s, "max_followers", c.max_followers);
  c.max_waiting = at_least_one(s, "max_waiting", c.max_waiting);
  c.charge_followers = s.get_bool("charge_followers", false);

  const std::string scope = s.get_string("scope", "key");
  if (scope == "global") c.global_scope = true;
  else if (scope != "key") throw glmp::SettingsError("setting \"scope\" must be \"key\" or \"global\", not \"" + scope + "\"");

  c.exclude_fields = s.get_string_list("exclude_fields");
  for (const auto& f : c.exclude_fields)
    if (f.empty()) throw glmp::SettingsError("setting \"exclude_fields\" must not hold an empty name");

  if (s.has("paths")) {
    c.paths = s.get_string_list("paths");
    if (c.paths.empty()) throw glmp::SettingsError("setting \"paths\" must list at least one path");
    for (const auto& p : c.paths)
      if (p.empty() || p.front() != '/') throw glmp::SettingsError("setting \"paths\": \"" + p + "\" must start with '/'");
  }

  if (s.has("max_bytes")) {
    c.max_bytes = s.get_size("max_bytes", c.max_bytes);
    if (c.max_bytes == 0) throw glmp::SettingsError("setting \"max_bytes\" must be > 0");
    if (c.max_bytes > kMaxBytesLimit) throw glmp::SettingsError("setting \"max_bytes\" must be at most 1GiB");
  }
  return c;
}

std::string_view mode_name(Mode mode) noexcept { return mode == Mode::All ? "all" : "deterministic"; }

bool is_json_zero(std::string_view raw) noexcept {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!raw.empty() && space(raw.front())) raw.remove_prefix(1);
  while (!raw.empty() && space(raw.back())) raw.remove_suffix(1);
  std::size_t i = 0;
  const std::size_t n = raw.size();
  if (i < n && raw[i] == '-') ++i;
  // int: "0" or [1-9][0-9]* (JSON allows no leading zeros); only "0" can be zero.
  if (i >= n || !is_digit(raw[i])) return false;
  bool zero = raw[i] == '0';
  ++i;
  if (!zero) return false;
  if (i < n && is_digit(raw[i])) return false;  // "00": not JSON
  if (i < n && raw[i] == '.') {
    ++i;
    if (i >= n || !is_digit(raw[i])) return false;
    while (i < n && is_digit(raw[i])) {
      if (raw[i] != '0') zero = false;
      ++i;
    }
  }
  if (i < n && (raw[i] == 'e' || raw[i] == 'E')) {
    ++i;
    if (i < n && (raw[i] == '+' || raw[i] == '-')) ++i;
    if (i >= n || !is_digit(raw[i])) return false;
    while (i < n && is_digit(raw[i])) ++i;
  }
  return i == n && zero;
}

bool eligible(const Config& config, std::string_view method, std::string_view path,
              std::optional<std::string_view> temperature) noexcept {
  if (method != "POST") return false;
  if (std::find(config.paths.begin(), config.paths.end(), path) == config.paths.end()) return false;
  if (config.mode == Mode::Deterministic) return temperature.has_value() && is_json_zero(*temperature);
  return true;
}

bool followable(const glmp::RecordingInfo& info) noexcept {
  using State = glmp::RecordingInfo::State;
  return (info.state == State::Waiting || info.state == State::Live) && info.replayable;
}

std::string_view fallback_name(Fallback reason) noexcept {
  switch (reason) {
    case Fallback::MaxFollowers: return "max_followers";
    case Fallback::MaxWaiting: return "max_waiting";
    case Fallback::LeaderFailed: return "leader_failed";
  }
  return "unknown";
}

nlohmann::ordered_json stats_json(const Config& config, const Stats& stats) {
  nlohmann::ordered_json fallbacks = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < kFallbackCount; ++i)
    fallbacks[std::string(fallback_name(static_cast<Fallback>(i)))] = stats.fallbacks[i];
  return {{"mode", std::string(mode_name(config.mode))},
          {"wait_ms", config.wait.count()},
          {"max_followers", config.max_followers},
          {"max_waiting", config.max_waiting},
          {"flights_active", stats.flights_active},
          {"followers_active", stats.followers_active},
          {"flights", stats.flights},
          {"followers", stats.followers},
          {"fallbacks", fallbacks}};
}

// --- FlightTable -------------------------------------------------------------------------------

FlightTable::Decision FlightTable::admit(const std::string& key, const std::function<glmp::Recording()>& record,
                                         std::uint64_t abandon) {
  Decision d;
  std::lock_guard lock(mutex_);
  if (abandon != 0) abandon_locked(abandon);

  auto cur = current_.find(key);
  if (cur != current_.end()) {
    auto flight = flights_.find(cur->second);
    // recording_info only reads the recording's state: a quick host call, safe under our lock.
    if (flight != flights_.end() && followable(flight->second.recording.info())) {
      if (flight->second.followers >= limits_.max_followers) {
        d.fallback = Fallback::MaxFollowers;
      } else if (waiting_ >= limits_.max_waiting) {
        d.fallback = Fallback::MaxWaiting;
      }
      if (d.fallback) {
        ++totals_.fallbacks[static_cast<std::size_t>(*d.fallback)];
        return d;  // Alone
      }
      ++flight->second.followers;
      ++waiting_;
      ++totals_.followers;
      d.kind = Decision::Kind::Follow;
      d.token = flight->first;
      d.recording = flight->second.recording;
      return d;
    }
  }

  // No flight to join: this request leads a new one (if it can be recorded).
  glmp::Recording rec = record();
  if (!rec) return d;  // Alone, no fallback
  const std::uint64_t token = next_token_++;
  flights_.emplace(token, Flight{key, std::move(rec), 0});
  current_[key] = token;  // a stale flight under the key stays until its leader completes
  ++totals_.flights;
  d.kind = Decision::Kind::Lead;
  d.token = token;
  return d;
}

void FlightTable::abandon_locked(std::uint64_t token) {
  auto flight = flights_.find(token);
  if (flight != flights_.end()) {
    if (flight->second.followers > 0) --flight->second.followers;
    auto cur = current_.find(flight->second.key);
    if (cur != current_.end() && cur->second == token) current_.erase(cur);
  }
  if (waiting_ > 0) --waiting_;
  if (totals_.followers > 0) --totals_.followers;
}

void FlightTable::abandon(std::uint64_t token) {
  std::lock_guard lock(mutex_);
  abandon_locked(token);
}

FlightTable::Finished FlightTable::finish_leader(std::uint64_t token) {
  Finished out;
  std::lock_guard lock(mutex_);
  auto flight = flights_.find(token);
  if (flight == flights_.end()) return out;
  auto cur = current_.find(flight->second.key);
  if (cur != current_.end() && cur->second == token) current_.erase(cur);
  out.found = true;
  out.followers = flight->second.followers;
  out.recording = std::move(flight->second.recording);  // released by the caller, after the lock
  flights_.erase(flight);
  return out;
}

void FlightTable::finish_follower() {
  std::lock_guard lock(mutex_);
  if (waiting_ > 0) --waiting_;
}

void FlightTable::count_fallback(Fallback reason) {
  std::lock_guard lock(mutex_);
  ++totals_.fallbacks[static_cast<std::size_t>(reason)];
}

Stats FlightTable::stats() const {
  std::lock_guard lock(mutex_);
  Stats s = totals_;
  s.flights_active = static_cast<std::int64_t>(flights_.size());
  s.followers_active = waiting_;
  return s;
}

std::uint64_t FlightTable::current(const std::string& key) const {
  std::lock_guard lock(mutex_);
  auto cur = current_.find(key);
  return cur == current_.end() ? 0 : cur->second;
}

}  // namespace glmp::plugins::batching
