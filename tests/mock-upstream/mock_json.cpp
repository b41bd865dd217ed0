#include "mock_json.hpp"

namespace glmp::mock {

namespace {

constexpr char kHex[] = "0123456789abcdef";

void append_u00(std::string& out, unsigned char c) {
  out += "\\u00";
  out += kHex[c >> 4];
  out += kHex[c & 0xF];
}

bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the valid UTF-8 sequence that starts at s[i] (2..4), or 0 if it is not valid.
std::size_t utf8_seq_len(std::string_view s, std::size_t i) {
  const auto at = [&](std::size_t k) -> unsigned char {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0;
  };
  const unsigned char c = at(0);
  if (c >= 0xC2 && c <= 0xDF) return is_cont(at(1)) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned char c1 = at(1);
    const bool ok1 = c == 0xE0   ? (c1 >= 0xA0 && c1 <= 0xBF)
                     : c == 0xED ? (c1 >= 0x80 && c1 <= 0x9F)
                                 : is_cont(c1);
    return ok1 && is_cont(at(2)) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned char c1 = at(1);
    const bool ok1 = c == 0xF0   ? (c1 >= 0x90 && c1 <= 0xBF)
                     : c == 0xF4 ? (c1 >= 0x80 && c1 <= 0x8F)
                                 : is_cont(c1);
    return ok1 && is_cont(at(2)) && is_cont(at(3)) ? 4 : 0;
  }
  return 0;
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

void skip_ws(std::string_view s, std::size_t& i) {
  while (i < s.size() && is_ws(s[i])) ++i;
}

// s[i] == '"'. On success i is just past the closing quote.
bool skip_string(std::string_view s, std::size_t& i) {
  ++i;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '\\') {
      i += 2;
      continue;
    }
    ++i;
    if (c == '"') return true;
  }
  return false;
}

bool skip_value(std::string_view s, std::size_t& i) {
  if (i >= s.size()) return false;
  const char c = s[i];
  if (c == '"') return skip_string(s, i);
  if (c == '{' || c == '[') {
    int depth = 0;
    while (i < s.size()) {
      const char d = s[i];
      if (d == '"') {
        if (!skip_string(s, i)) return false;
        continue;
      }
      if (d == '{' || d == '[') ++depth;
      if (d == '}' || d == ']') {
        --depth;
        if (depth == 0) {
          ++i;
          return true;
        }
      }
      ++i;
    }
    return false;
  }
  const std::size_t start = i;
  while (i < s.size()) {
    const char d = s[i];
    const bool literal = (d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z') ||
                         (d >= '0' && d <= '9') || d == '+' || d == '-' || d == '.';
    if (!literal) break;
    ++i;
  }
  return i > start;
}

// Walks the members of the object that starts at s[i] ('{'), calling fn(key_raw, value_raw) for
// each. On success i is just past the closing brace.
template <typename Fn>
bool for_each_member(std::string_view s, std::size_t& i, Fn&& fn) {
  if (i >= s.size() || s[i] != '{') return false;
  ++i;
  skip_ws(s, i);
  if (i < s.size() && s[i] == '}') {
    ++i;
    return true;
  }
  while (true) {
    skip_ws(s, i);
    if (i >= s.size() || s[i] != '"') return false;
    const std::size_t key_start = i + 1;
    if (!skip_string(s, i)) return false;
    const std::string_view key = s.substr(key_start, i - 1 - key_start);
    skip_ws(s, i);
    if (i >= s.size() || s[i] != ':') return false;
    ++i;
    skip_ws(s, i);
    const std::size_t value_start = i;
    if (!skip_value(s, i)) return false;
    if (!fn(key, s.substr(value_start, i - value_start))) return false;
    skip_ws(s, i);
    if (i >= s.size()) return false;
    if (s[i] == ',') {
      ++i;
      continue;
    }
    if (s[i] == '}') {
      ++i;
      return true;
    }
    return false;
  }
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (c < 0x20 || c == 0x7F) {
            append_u00(out, c);
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const std::size_t n = utf8_seq_len(s, i);
    if (n == 0) {
      append_u00(out, c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  out += '"';
}

bool fast_scan(std::string_view body, FastScan& out) {
  std::size_t i = 0;
  skip_ws(body, i);
  const bool ok = for_each_member(body, i, [&](std::string_view key, std::string_view value) {
    if (key == "model") {
      if (value.size() < 2 || value.front() != '"') return false;
      out.model_found = true;
      out.model_raw = value.substr(1, value.size() - 2);
    } else if (key == "stream") {
      out.stream = value == "true";
    } else if (key == "stream_options") {
      out.include_usage = false;
      if (!value.empty() && value.front() == '{') {
        std::size_t j = 0;
        return for_each_member(value, j, [&](std::string_view k, std::string_view v) {
          if (k == "include_usage") out.include_usage = v == "true";
          return true;
        });
      }
    }
    return true;
  });
  if (!ok) return false;
  skip_ws(body, i);
  return i == body.size();
}

}  // namespace glmp::mock
