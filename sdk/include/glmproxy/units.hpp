// GLM Proxy: the one reading of sizes and durations written in a config.
//
// The core's TOML reader and the SDK's Settings (so every plugin) use these two functions, so
// "512KiB" or "1m30s" means the same wherever an operator writes it. Header-only, standard
// library only.
//
//   parse_size("32MiB")       -> 33554432      units B KiB MiB GiB (1024) and KB kB MB GB (1000),
//   parse_size("1000")        -> 1000          no unit = bytes, spaces before the unit allowed
//   parse_duration("250ms")   -> 250 ms        units ms s m h, combinable: "1m30s"
//
// Both throw std::invalid_argument with a message that quotes the text and says what is allowed.
// Sizes stop at 2^60 bytes and durations at about 100 years: anything larger is a mistake.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace glmp {

inline std::uint64_t parse_size(std::string_view text) {
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::size_t i = 0;
  std::uint64_t value = 0;
  while (i < text.size() && is_digit(text[i])) {
    value = value * 10 + static_cast<std::uint64_t>(text[i] - '0');
    if (value > (std::uint64_t{1} << 50)) throw std::invalid_argument("size \"" + std::string(text) + "\" is too large");
    ++i;
  }
  if (i == 0) throw std::invalid_argument("invalid size \"" + std::string(text) + "\" (examples: \"32MiB\", \"512KiB\", \"1000\")");
  std::string_view unit = text.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  std::uint64_t mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KiB") mult = 1024;
  else if (unit == "MiB") mult = 1024 * 1024;
  else if (unit == "GiB") mult = std::uint64_t{1024} * 1024 * 1024;
  else if (unit == "KB" || unit == "kB") mult = 1000;
  else if (unit == "MB") mult = 1000 * 1000;
  else if (unit == "GB") mult = std::uint64_t{1000} * 1000 * 1000;
  else throw std::invalid_argument("invalid size unit in \"" + std::string(text) + "\": use B, KiB, MiB, GiB, KB, MB or GB");
  if (value > (std::uint64_t{1} << 60) / mult) throw std::invalid_argument("size \"" + std::string(text) + "\" is too large");
  return value * mult;
}

inline std::chrono::milliseconds parse_duration(std::string_view text) {
  constexpr std::int64_t kMaxMs = std::int64_t{100} * 365 * 24 * 3'600'000;  // about 100 years
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  const auto is_alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (text.empty()) throw std::invalid_argument("empty duration");
  std::int64_t total_ms = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t start = i;
    std::int64_t value = 0;
    while (i < text.size() && is_digit(text[i])) {
      value = value * 10 + (text[i] - '0');
      if (value > (std::int64_t{1} << 40)) throw std::invalid_argument("duration \"" + std::string(text) + "\" is too large");
      ++i;
    }
    if (i == start)
      throw std::invalid_argument("invalid duration \"" + std::string(text) + "\" (examples: \"250ms\", \"10s\", \"5m\", \"1h\")");
    const std::size_t unit_start = i;
    while (i < text.size() && is_alpha(text[i])) ++i;
    const std::string_view unit = text.substr(unit_start, i - unit_start);
    std::int64_t mult = 0;
    if (unit == "ms") mult = 1;
    else if (unit == "s") mult = 1000;
    else if (unit == "m") mult = 60'000;
    else if (unit == "h") mult = 3'600'000;
    else throw std::invalid_argument("invalid duration \"" + std::string(text) + "\": unit must be ms, s, m or h");
    total_ms += value * mult;  // value <= 2^40 and mult < 2^22: no overflow here
    if (total_ms > kMaxMs) throw std::invalid_argument("duration \"" + std::string(text) + "\" is too large");
  }
  return std::chrono::milliseconds(total_ms);
}

}  // namespace glmp
