#include "pipeline/json_body.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <stdexcept>

namespace glmp::core::pipeline {

namespace {

inline unsigned char byte_at(std::string_view s, size_t i) { return static_cast<unsigned char>(s[i]); }

inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Four hex digits at s[i..i+4) as a code unit, or -1.
inline int32_t hex4(std::string_view s, size_t i) {
  if (i + 4 > s.size()) return -1;
  int32_t v = 0;
  for (size_t k = 0; k < 4; ++k) {
    const int h = hex_value(s[i + k]);
    if (h < 0) return -1;
    v = (v << 4) | h;
  }
  return v;
}

// Length of the valid UTF-8 sequence starting at s[i] (a byte >= 0x80), or 0 when it is invalid
// (Unicode 15, table 3-7: no overlongs, no encoded surrogates, nothing above U+10FFFF).
inline size_t utf8_sequence_length(std::string_view s, size_t i) {
  const unsigned char b0 = byte_at(s, i);
  const size_t left = s.size() - i;
  auto cont = [&](size_t k, unsigned char lo, unsigned char hi) {
    if (k >= left) return false;
    const unsigned char b = byte_at(s, i + k);
    return b >= lo && b <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1, 0x80, 0xBF) ? 2 : 0;
  if (b0 == 0xE0) return cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (b0 == 0xED) return cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (b0 == 0xF0) return cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (b0 >= 0xF1 && b0 <= 0xF3)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (b0 == 0xF4) return cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  return 0;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The high bit of each of the 8 bytes of `w` (in memory order) that is '"', '\\', a control
// character (< 0x20) or >= 0x80 is set; the lowest flagged byte is exact (a borrow only propagates
// upwards from a byte that matched itself), a byte above it may be flagged wrongly.
inline uint64_t string_special_bits(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHighs = 0x8080808080808080ULL;
  const uint64_t q = w ^ (kOnes * '"');
  const uint64_t b = w ^ (kOnes * '\\');
  return (((q - kOnes) & ~q) | ((b - kOnes) & ~b) | ((w - kOnes * 0x20) & ~w) | w) & kHighs;
}

// The same for '"' and '\\' only: inside an already validated string nothing else ends a run.
inline uint64_t quote_or_backslash_bits(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHighs = 0x8080808080808080ULL;
  const uint64_t q = w ^ (kOnes * '"');
  const uint64_t b = w ^ (kOnes * '\\');
  return (((q - kOnes) & ~q) | ((b - kOnes) & ~b)) & kHighs;
}

// Index (0..7, in memory order) of the lowest flagged byte of a non-zero string_special_bits().
inline size_t first_flagged_byte(uint64_t bits) {
  if constexpr (std::endian::native == std::endian::little) {
    return static_cast<size_t>(std::countr_zero(bits)) / 8;
  } else {
    return static_cast<size_t>(std::countl_zero(bits)) / 8;
  }
}

inline bool is_string_special(unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80; }
inline bool is_quote_or_backslash(unsigned char c) { return c == '"' || c == '\\'; }

// Offset of the first byte of s[i, s.size()) that `is_special`, or s.size() (i when i >= s.size()).
// Eight bytes at a time with `special_bits` (one of the two above, matching `is_special`).
template <uint64_t (*special_bits)(uint64_t), bool (*is_special)(unsigned char)>
inline size_t find_flagged(std::string_view s, size_t i) {
  const size_t n = s.size();
  while (i + 8 <= n) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, sizeof w);
    if (const uint64_t bits = special_bits(w)) return i + first_flagged_byte(bits);
    i += 8;
  }
  while (i < n && !is_special(byte_at(s, i))) ++i;
  return i;
}

// Offset of the first '"', '\\', control character or byte >= 0x80 in s[i, s.size()), or s.size().
// Plain ASCII is skipped eight bytes at a time.
inline size_t find_string_special(std::string_view s, size_t i) {
  return find_flagged<string_special_bits, is_string_special>(s, i);
}

// Offset of the first '"' or '\\' in s[i, s.size()), or s.size() (i when i >= s.size()). For the
// contents of validated strings, where UTF-8 needs no checking: skips 8 bytes at a time whatever they are.
inline size_t find_quote_or_backslash(std::string_view s, size_t i) {
  return find_flagged<quote_or_backslash_bits, is_quote_or_backslash>(s, i);
}

// json_unescape() appending to `out`; false (with `out` partly appended) when `in` is not well-formed.
bool append_unescaped(std::string& out, std::string_view in) {
  size_t i = 0;
  const size_t n = in.size();
  while (i < n) {
    const size_t bs = in.find('\\', i);
    const size_t plain_end = bs == std::string_view::npos ? n : bs;
    const std::string_view plain = in.substr(i, plain_end - i);
    if (plain.find('"') != std::string_view::npos) return false;
    out.append(plain);
    if (bs == std::string_view::npos) break;
    if (bs + 1 >= n) return false;
    const char e = in[bs + 1];
    i = bs + 2;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        const int32_t u = hex4(in, i);
        if (u < 0) return false;
        i += 4;
        uint32_t cp = static_cast<uint32_t>(u);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          // A high surrogate: combine with a following \uDC00-\uDFFF, else it is lone.
          int32_t low = -1;
          if (i + 6 <= n && in[i] == '\\' && in[i + 1] == 'u') low = hex4(in, i + 2);
          if (low >= 0xDC00 && low <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (static_cast<uint32_t>(low) - 0xDC00);
            i += 6;
          } else {
            cp = 0xFFFD;
          }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          cp = 0xFFFD;
        }
        append_utf8(out, cp);
        break;
      }
      default:
        return false;
    }
  }
  return true;
}

// json_quote() appending to `out`. Runs of plain ASCII are copied in one go.
void append_quoted(std::string& out, std::string_view utf8) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  size_t i = 0;
  const size_t n = utf8.size();
  while (i < n) {
    const size_t special = find_string_special(utf8, i);
    out.append(utf8.substr(i, special - i));
    i = special;
    if (i >= n) break;
    const unsigned char c = byte_at(utf8, i);
    if (c >= 0x80) {
      const size_t len = utf8_sequence_length(utf8, i);
      if (len == 0) {
        out.append("\xEF\xBF\xBD");  // U+FFFD for each invalid byte
        ++i;
      } else {
        out.append(utf8.substr(i, len));
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:  // another control character (find_string_special stops at nothing else)
        out.append("\\u00");
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xF]);
    }
    ++i;
  }
  out.push_back('"');
}

std::string describe_byte(unsigned char c) {
  if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "byte 0x";
  s.push_back(kHex[c >> 4]);
  s.push_back(kHex[c & 0xF]);
  return s;
}

// The single-pass, iterative validator. Records top-level members only.
class Scanner {
 public:
  Scanner(std::string_view body, TopLevelScan& out) : s_(body), n_(body.size()), out_(out) {}

  bool run() {
    std::array<char, kJsonMaxDepth> stack;  // '{' or '[' per open container (only [0, depth) is read)
    size_t depth = 0;
    enum class State { Value, AfterValue, Key } state = State::Value;
    skip_ws();
    for (;;) {
      switch (state) {
        case State::Value: {
          if (pos_ >= n_) return fail_eof();
          const char c = s_[pos_];
          if (c == '{' || c == '[') {
            if (depth == kJsonMaxDepth) {
              return fail(pos_, "nesting deeper than " + std::to_string(kJsonMaxDepth) + " levels");
            }
            if (depth == 0 && c == '{') {
              out_.is_object = true;
              out_.object_begin = pos_;
              out_.members.reserve(8);  // requests and usage objects have a handful: one allocation
            }
            stack[depth++] = c;
            ++pos_;
            skip_ws();
            if (pos_ >= n_) return fail_eof();
            if (s_[pos_] == (c == '{' ? '}' : ']')) {
              --depth;
              ++pos_;
              state = State::AfterValue;
            } else {
              state = c == '{' ? State::Key : State::Value;
            }
            continue;
          }
          if (c == '"') {
            if (!scan_string(nullptr)) return false;
          } else if (c == '-' || is_digit(c)) {
            if (!scan_number()) return false;
          } else if (c == 't') {
            if (!scan_literal("true")) return false;
          } else if (c == 'f') {
            if (!scan_literal("false")) return false;
          } else if (c == 'n') {
            if (!scan_literal("null")) return false;
          } else {
            return fail_unexpected(pos_);
          }
          state = State::AfterValue;
          continue;
        }
        case State::AfterValue: {
          // A value just ended at pos_. It is a top-level member's value when we are back at depth 1
          // inside the top-level object.
          if (depth == 1 && stack[0] == '{') out_.members.back().value_end = pos_;
          if (depth == 0) {
            if (out_.is_object) out_.object_end = pos_;
            skip_ws();
            if (pos_ != n_) return fail_unexpected(pos_);
            out_.ok = true;
            return true;
          }
          skip_ws();
          if (pos_ >= n_) return fail_eof();
          const char c = s_[pos_];
          const char open = stack[depth - 1];
          if (c == ',') {
            ++pos_;
            skip_ws();
            state = open == '{' ? State::Key : State::Value;
          } else if ((c == '}' && open == '{') || (c == ']' && open == '[')) {
            --depth;
            ++pos_;
          } else {
            return fail_unexpected(pos_);
          }
          continue;
        }
        case State::Key: {
          if (pos_ >= n_) return fail_eof();
          if (s_[pos_] != '"') return fail_unexpected(pos_);
          // A top-level member is recorded as soon as its key starts (its key is unescaped in
          // place); a failure clears the list anyway.
          JsonMember* member = nullptr;
          if (depth == 1) {
            member = &out_.members.emplace_back();
            member->member_begin = pos_;
          }
          if (!scan_string(member != nullptr ? &member->key : nullptr)) return false;
          skip_ws();
          if (pos_ >= n_) return fail_eof();
          if (s_[pos_] != ':') return fail_unexpected(pos_);
          ++pos_;
          skip_ws();
          if (member != nullptr) member->value_begin = member->value_end = pos_;
          state = State::Value;
          continue;
        }
      }
    }
  }

 private:
  void skip_ws() {
    while (pos_ < n_ && byte_at(s_, pos_) <= ' ' && is_ws(s_[pos_])) ++pos_;
  }

  bool fail(size_t offset, std::string message) {
    out_.ok = false;
    out_.error = std::move(message) + " at offset " + std::to_string(offset);
    out_.error_offset = offset;
    out_.members.clear();
    return false;
  }
  bool fail_eof() { return fail(n_, "unexpected end of input"); }
  bool fail_unexpected(size_t offset) {
    return fail(offset, "unexpected character " + describe_byte(byte_at(s_, offset)));
  }

  // pos_ is at an opening quote. On success pos_ is one past the closing quote and, when `key` is
  // given, it holds the unescaped content.
  bool scan_string(std::string* key) {
    const size_t content_begin = pos_ + 1;
    const size_t i = find_string_special(s_, content_begin);
    if (i < n_ && s_[i] == '"') {  // plain ASCII up to the closing quote: the common case
      if (key != nullptr) key->assign(s_.data() + content_begin, i - content_begin);
      pos_ = i + 1;
      return true;
    }
    return scan_string_rest(key, content_begin, i);
  }

  // scan_string() beyond the first special byte, at s_[i] (escapes, UTF-8, errors).
  bool scan_string_rest(std::string* key, size_t content_begin, size_t i) {
    bool escaped = false;
    for (;;) {
      i = find_string_special(s_, i);
      if (i >= n_) return fail_eof();
      const unsigned char c = byte_at(s_, i);
      if (c == '"') break;
      if (c == '\\') {
        escaped = true;
        if (i + 1 >= n_) return fail_eof();
        const char e = s_[i + 1];
        if (e == 'u') {
          if (hex4(s_, i + 2) < 0) {
            if (i + 6 > n_ && std::all_of(s_.begin() + static_cast<std::ptrdiff_t>(i + 2), s_.end(),
                                          [](char h) { return hex_value(h) >= 0; })) {
              return fail_eof();
            }
            return fail(i, "invalid escape");
          }
          i += 6;
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                   e == 't') {
          i += 2;
        } else {
          return fail(i, "invalid escape");
        }
        continue;
      }
      if (c < 0x20) return fail(i, "control character in string");
      const size_t len = utf8_sequence_length(s_, i);
      if (len == 0) return fail(i, "invalid UTF-8");
      i += len;
    }
    if (key != nullptr) {
      const std::string_view content = s_.substr(content_begin, i - content_begin);
      if (!escaped) {
        key->assign(content);
      } else if (auto unescaped = json_unescape(content)) {
        *key = std::move(*unescaped);
      } else {
        return fail(content_begin, "invalid escape");  // unreachable: validated above
      }
    }
    pos_ = i + 1;
    return true;
  }

  bool scan_number() {
    const size_t begin = pos_;
    size_t i = pos_;
    if (s_[i] == '-') ++i;
    if (i >= n_) return fail_eof();
    if (s_[i] == '0') {
      ++i;
    } else if (is_digit(s_[i])) {
      while (i < n_ && is_digit(s_[i])) ++i;
    } else {
      return fail(begin, "invalid number");
    }
    if (i < n_ && s_[i] == '.') {
      ++i;
      if (i >= n_) return fail_eof();
      if (!is_digit(s_[i])) return fail(begin, "invalid number");
      while (i < n_ && is_digit(s_[i])) ++i;
    }
    if (i < n_ && (s_[i] == 'e' || s_[i] == 'E')) {
      ++i;
      if (i < n_ && (s_[i] == '+' || s_[i] == '-')) ++i;
      if (i >= n_) return fail_eof();
      if (!is_digit(s_[i])) return fail(begin, "invalid number");
      while (i < n_ && is_digit(s_[i])) ++i;
    }
    pos_ = i;
    return true;
  }

  bool scan_literal(std::string_view word) {
    for (size_t k = 0; k < word.size(); ++k) {
      if (pos_ + k >= n_) return fail_eof();
      if (s_[pos_ + k] != word[k]) return fail_unexpected(pos_ + k);
    }
    pos_ += word.size();
    return true;
  }

  std::string_view s_;
  size_t n_;
  size_t pos_ = 0;
  TopLevelScan& out_;
};

struct MemberPlan {
  const TopLevelEdit* edit = nullptr;  // the edit that applies to this member, if any
  bool removed() const { return edit != nullptr && edit->mode == TopLevelEdit::Mode::Remove; }
};

// The last edit naming `key`, or nullptr.
const TopLevelEdit* last_edit_for(std::span<const TopLevelEdit> edits, std::string_view key) {
  for (size_t k = edits.size(); k-- > 0;) {
    if (edits[k].key == key) return &edits[k];
  }
  return nullptr;
}

}  // namespace

const JsonMember* TopLevelScan::find(std::string_view key) const {
  for (size_t k = members.size(); k-- > 0;) {
    if (members[k].key == key) return &members[k];
  }
  return nullptr;
}

void scan_top_level(std::string_view body, TopLevelScan& out) {
  std::vector<JsonMember> members = std::move(out.members);
  members.clear();
  out = TopLevelScan{};
  out.members = std::move(members);
  Scanner(body, out).run();
}

TopLevelScan scan_top_level(std::string_view body) {
  TopLevelScan out;
  scan_top_level(body, out);
  return out;
}

std::optional<std::string> json_unescape(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  if (!append_unescaped(out, in)) return std::nullopt;
  return out;
}

std::optional<std::string> json_string_value(std::string_view body, const JsonMember& member) {
  if (member.value_end > body.size() || member.value_begin + 2 > member.value_end) return std::nullopt;
  if (body[member.value_begin] != '"' || body[member.value_end - 1] != '"') return std::nullopt;
  return json_unescape(body.substr(member.value_begin + 1, member.value_end - member.value_begin - 2));
}

std::optional<bool> json_bool_value(std::string_view body, const JsonMember& member) {
  if (member.value_end > body.size() || member.value_begin > member.value_end) return std::nullopt;
  const std::string_view v = body.substr(member.value_begin, member.value_end - member.value_begin);
  if (v == "true") return true;
  if (v == "false") return false;
  return std::nullopt;
}

std::optional<int64_t> json_int_value(std::string_view body, const JsonMember& member) {
  if (member.value_end > body.size() || member.value_begin >= member.value_end) return std::nullopt;
  const std::string_view v = body.substr(member.value_begin, member.value_end - member.value_begin);
  // from_chars reads exactly -?[0-9]+ (no '+', no blanks); anything after it (a fraction, an
  // exponent) leaves ptr short of the end.
  int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), value);
  if (ec != std::errc() || ptr != v.data() + v.size()) return std::nullopt;
  return value;
}

std::string json_quote(std::string_view utf8) {
  std::string out;
  out.reserve(utf8.size() + 2);
  append_quoted(out, utf8);
  return out;
}

std::string apply_top_level_edits(std::string_view body, const TopLevelScan& scan,
                                  std::span<const TopLevelEdit> edits) {
  if (!scan.ok || !scan.is_object || scan.object_end > body.size() || scan.object_begin >= scan.object_end ||
      body[scan.object_begin] != '{') {
    throw std::invalid_argument("apply_top_level_edits: the scan is not a valid JSON object scan of the body");
  }
  for (const TopLevelEdit& e : edits) {
    if (e.mode != TopLevelEdit::Mode::Remove && !scan_top_level(e.raw_value).ok) {
      throw std::invalid_argument("apply_top_level_edits: raw_value of \"" + e.key + "\" is not valid JSON");
    }
  }

  const std::vector<JsonMember>& members = scan.members;
  const size_t m = members.size();
  std::vector<MemberPlan> plan(m);
  size_t kept = 0;
  size_t extra = 0;
  for (size_t k = 0; k < m; ++k) {
    plan[k].edit = last_edit_for(edits, members[k].key);
    if (!plan[k].removed()) ++kept;
    if (plan[k].edit != nullptr) extra += plan[k].edit->raw_value.size();
  }

  // Upserts of absent keys, in edit order, each key once (its last edit decides).
  std::vector<const TopLevelEdit*> inserts;
  for (size_t k = 0; k < edits.size(); ++k) {
    const TopLevelEdit& e = edits[k];
    if (e.mode != TopLevelEdit::Mode::Upsert || last_edit_for(edits, e.key) != &e) continue;
    const bool present = std::any_of(members.begin(), members.end(),
                                     [&](const JsonMember& mem) { return mem.key == e.key; });
    if (!present) {
      inserts.push_back(&e);
      extra += e.key.size() + e.raw_value.size() + 8;
    }
  }

  std::string out;
  out.reserve(body.size() + extra);
  size_t cursor = 0;
  if (!inserts.empty()) {
    out.append(body.substr(0, scan.object_begin + 1));
    for (size_t k = 0; k < inserts.size(); ++k) {
      if (k > 0) out.push_back(',');
      out.append(json_quote(inserts[k]->key));
      out.push_back(':');
      out.append(inserts[k]->raw_value);
    }
    if (kept > 0) out.push_back(',');
    cursor = scan.object_begin + 1;
  }

  size_t k = 0;
  while (k < m) {
    if (plan[k].removed()) {
      // A maximal run [k, last] of removed members, deleted with exactly one comma.
      size_t last = k;
      while (last + 1 < m && plan[last + 1].removed()) ++last;
      size_t cut_begin = 0;
      size_t cut_end = 0;
      if (last + 1 < m) {  // a kept member follows: cut up to it (takes the comma after the run)
        cut_begin = members[k].member_begin;
        cut_end = members[last + 1].member_begin;
      } else if (k > 0) {  // the run ends the object: cut from the end of the previous value
        cut_begin = members[k - 1].value_end;
        cut_end = members[last].value_end;
      } else {  // every member goes
        cut_begin = members[k].member_begin;
        cut_end = members[last].value_end;
      }
      out.append(body.substr(cursor, cut_begin - cursor));
      cursor = cut_end;
      k = last + 1;
      continue;
    }
    if (plan[k].edit != nullptr) {
      out.append(body.substr(cursor, members[k].value_begin - cursor));
      out.append(plan[k].edit->raw_value);
      cursor = members[k].value_end;
    }
    ++k;
  }
  out.append(body.substr(cursor));
  return out;
}

// ---- canonical JSON ----

namespace {

constexpr size_t kNpos = std::string_view::npos;

inline size_t skip_ws_from(std::string_view s, size_t i) {
  while (i < s.size() && is_ws(s[i])) ++i;
  return i;
}

// One past the closing quote of the validated string literal whose opening quote is at s[i], or
// kNpos when it is unterminated. `escaped` is set when the literal contains a backslash.
inline size_t string_literal_end(std::string_view s, size_t i, bool& escaped) {
  size_t k = i + 1;
  for (;;) {
    k = find_quote_or_backslash(s, k);
    if (k >= s.size()) return kNpos;
    if (s[k] == '"') return k + 1;
    escaped = true;
    k += 2;  // the escaped byte; the hex digits of a \uXXXX hold no quote and no backslash
  }
}

// The canonical form, in two iterative passes over a validated body:
//   1. index_containers(): for each non-empty container that is an object member's value, where it
//      ends (`spans_`, in body order). Nothing else is recorded.
//   2. run(): emits the value depth first with an explicit stack of frames. An array is emitted as it
//      is read. An object's members are gathered first (key, value span; a container value's end comes
//      from `spans_`, so nested values are not rescanned once per level), sorted, deduplicated, then
//      emitted one by one.
//      The gathered members of the open objects share one vector used as a stack, and so do the keys
//      that had to be unescaped (`arena_`).
// Every read is bounds-checked, so a body that does not match its scan fails (or gives unspecified
// output) rather than reading out of bounds.
class Canonicalizer {
 public:
  Canonicalizer(std::string_view body, std::span<const std::string_view> exclude, std::string& out)
      : s_(body), n_(body.size()), exclude_(exclude), out_(out) {}

  bool run() {
    const size_t begin = skip_ws_from(s_, 0);
    if (begin >= n_) return false;
    if ((s_[begin] == '{' || s_[begin] == '[') && !index_containers(begin)) return false;
    // The canonical form is never longer than the body (whitespace goes, an escape never grows).
    out_.reserve(out_.size() + (n_ - begin));
    size_t end = 0;
    if (!open_value(begin, true, end)) return false;
    while (!frames_.empty()) {
      const size_t fi = frames_.size() - 1;
      Frame& f = frames_[fi];
      size_t value_pos = 0;
      if (f.object) {
        if (f.next == f.stop) {
          out_.push_back('}');
          members_.resize(f.members_base);
          arena_.resize(f.arena_base);
          const size_t object_end = f.end;
          frames_.pop_back();
          child_done(object_end);
          continue;
        }
        const Member& m = members_[f.next++];
        if (!f.first) out_.push_back(',');
        f.first = false;
        append_key(m);
        out_.push_back(':');
        value_pos = m.value_begin;
      } else {
        size_t p = skip_ws_from(s_, f.pos);
        if (p >= n_) return false;
        if (s_[p] == ']') {
          out_.push_back(']');
          frames_.pop_back();
          child_done(p + 1);
          continue;
        }
        if (!f.first) {
          if (s_[p] != ',') return false;
          p = skip_ws_from(s_, p + 1);
          out_.push_back(',');
        }
        f.first = false;
        value_pos = p;
      }
      if (!open_value(value_pos, false, end)) return false;  // may push a frame: `f` is stale now
      if (end != kNpos) frames_[fi].pos = end;
    }
    return true;
  }

 private:
  struct Span {
    size_t open;  // offset of the '{' or '['
    size_t end;   // one past the matching '}' or ']' (kNpos while open)
  };
  struct Member {
    size_t key_begin;  // the key's bytes: in the body (raw, escape-free) or in arena_ (unescaped)
    size_t key_size;
    size_t value_begin;  // the value's span in the body
    size_t value_end;
    bool key_in_arena;
  };
  struct Frame {
    bool object = false;
    bool first = true;  // nothing emitted inside yet
    size_t pos = 0;     // array: where the next element (or ',' or ']') is looked for
    size_t next = 0;    // object: members_[next, stop) are still to emit
    size_t stop = 0;
    size_t members_base = 0;  // object: members_ and arena_ sizes to restore when it is done
    size_t arena_base = 0;
    size_t end = 0;  // object: one past its '}'
  };
  struct OpenContainer {
    size_t span;  // index in spans_, or kNpos when not recorded
    bool object;
  };

  // Pass 1 from the top-level container at s_[begin].
  bool index_containers(size_t begin) {
    std::vector<OpenContainer> open;
    open.reserve(16);
    size_t i = begin;
    while (i < n_) {
      const char c = s_[i];
      if (c == '"') {
        bool escaped = false;
        i = string_literal_end(s_, i, escaped);
        if (i == kNpos) return false;
        continue;
      }
      if (c == '{' || c == '[') {
        size_t span = kNpos;
        if (!open.empty() && open.back().object) {
          span = spans_.size();
          spans_.push_back(Span{i, kNpos});
        }
        open.push_back(OpenContainer{span, c == '{'});
      } else if (c == '}' || c == ']') {
        if (open.empty()) return false;
        const size_t span = open.back().span;
        open.pop_back();
        if (span != kNpos) {
          // An empty container holds no recorded one, so it is still the last: drop it (it is known
          // by its first bytes in pass 2).
          if (span + 1 == spans_.size() && skip_ws_from(s_, spans_[span].open + 1) == i) {
            spans_.pop_back();
          } else {
            spans_[span].end = i + 1;
          }
        }
        if (open.empty()) return true;
      }
      ++i;
    }
    return false;
  }

  // One past the end of the value at s_[p], or kNpos.
  size_t value_end(size_t p) const {
    if (p >= n_) return kNpos;
    const char c = s_[p];
    if (c == '"') {
      bool escaped = false;
      return string_literal_end(s_, p, escaped);
    }
    if (c == '{' || c == '[') {
      const size_t k = find_span(p);
      if (k < spans_.size() && spans_[k].open == p) return spans_[k].end;
      const size_t q = skip_ws_from(s_, p + 1);  // not recorded: an empty container
      return q < n_ && s_[q] == (c == '{' ? '}' : ']') ? q + 1 : kNpos;
    }
    return scalar_end(p);
  }

  // Index of the first span opening at or after `p`. Lookups mostly go forward a little (the members
  // of an object are gathered in body order, objects mostly come in body order), so the search
  // gallops forward from where the previous one ended; a jump back is a plain binary search.
  size_t find_span(size_t p) const {
    const auto before = [](const Span& span, size_t offset) { return span.open < offset; };
    size_t lo = span_hint_;
    if (lo > spans_.size() || (lo > 0 && spans_[lo - 1].open >= p)) {
      lo = static_cast<size_t>(std::lower_bound(spans_.begin(), spans_.end(), p, before) - spans_.begin());
    } else {
      size_t step = 1;
      size_t hi = lo;  // spans_[lo - 1].open < p; find hi with spans_[hi].open >= p (or the end)
      while (hi < spans_.size() && spans_[hi].open < p) {
        lo = hi + 1;
        hi += step;
        step *= 2;
      }
      hi = std::min(hi, spans_.size());
      lo = static_cast<size_t>(std::lower_bound(spans_.begin() + static_cast<std::ptrdiff_t>(lo),
                                                spans_.begin() + static_cast<std::ptrdiff_t>(hi), p, before) -
                               spans_.begin());
    }
    span_hint_ = lo + 1;
    return lo;
  }

  // One past the number or literal at s_[p] (kNpos when s_[p] cannot start one).
  size_t scalar_end(size_t p) const {
    const char c = s_[p];
    if (c != '-' && !is_digit(c) && c != 't' && c != 'f' && c != 'n') return kNpos;
    size_t i = p + 1;
    while (i < n_ && !is_ws(s_[i]) && s_[i] != ',' && s_[i] != '}' && s_[i] != ']') ++i;
    return i;
  }

  // Emits the value at s_[p]: a scalar entirely (`end` is then one past it), a container by its opening
  // byte and a new frame (`end` is then kNpos).
  bool open_value(size_t p, bool top_level, size_t& end) {
    if (p >= n_) return false;
    const char c = s_[p];
    if (c == '"') {
      bool escaped = false;
      end = string_literal_end(s_, p, escaped);
      if (end == kNpos) return false;
      if (!escaped) {  // already canonical: validated UTF-8, no control character, no escape
        out_.append(s_.substr(p, end - p));
        return true;
      }
      scratch_.clear();
      if (!append_unescaped(scratch_, s_.substr(p + 1, end - p - 2))) return false;
      append_quoted(out_, scratch_);
      return true;
    }
    end = kNpos;
    if (c == '[') {
      Frame f;
      f.pos = p + 1;
      frames_.push_back(f);
      out_.push_back('[');
      return true;
    }
    if (c == '{') {
      Frame f;
      f.object = true;
      if (!gather_members(p, top_level, f)) return false;
      frames_.push_back(f);
      out_.push_back('{');
      return true;
    }
    end = scalar_end(p);
    if (end == kNpos) return false;
    out_.append(s_.substr(p, end - p));  // numbers exactly as written
    return true;
  }

  std::string_view key_of(const Member& m) const {
    return m.key_in_arena ? std::string_view(arena_).substr(m.key_begin, m.key_size)
                          : s_.substr(m.key_begin, m.key_size);
  }

  void append_key(const Member& m) {
    if (m.key_in_arena) {
      append_quoted(out_, std::string_view(arena_).substr(m.key_begin, m.key_size));
    } else {  // escape-free in the body: already canonical
      out_.append(s_.substr(m.key_begin - 1, m.key_size + 2));
    }
  }

  bool excluded(std::string_view key) const {
    return std::find(exclude_.begin(), exclude_.end(), key) != exclude_.end();
  }

  // Gathers the members of the object at s_[open] onto members_ as `f`'s range, sorted by key, the
  // last occurrence of each key only (and without the excluded keys at the top level).
  bool gather_members(size_t open, bool top_level, Frame& f) {
    f.members_base = members_.size();
    f.arena_base = arena_.size();
    size_t p = skip_ws_from(s_, open + 1);
    if (p < n_ && s_[p] == '}') {
      f.end = p + 1;
    } else {
      for (;;) {
        if (p >= n_ || s_[p] != '"') return false;
        bool escaped = false;
        const size_t key_end = string_literal_end(s_, p, escaped);
        if (key_end == kNpos) return false;
        Member m{};
        if (escaped) {
          m.key_in_arena = true;
          m.key_begin = arena_.size();
          if (!append_unescaped(arena_, s_.substr(p + 1, key_end - p - 2))) return false;
          m.key_size = arena_.size() - m.key_begin;
        } else {
          m.key_begin = p + 1;
          m.key_size = key_end - p - 2;
        }
        p = skip_ws_from(s_, key_end);
        if (p >= n_ || s_[p] != ':') return false;
        m.value_begin = skip_ws_from(s_, p + 1);
        m.value_end = value_end(m.value_begin);
        if (m.value_end == kNpos) return false;
        members_.push_back(m);
        p = skip_ws_from(s_, m.value_end);
        if (p < n_ && s_[p] == ',') {
          p = skip_ws_from(s_, p + 1);
          continue;
        }
        if (p < n_ && s_[p] == '}') {
          f.end = p + 1;
          break;
        }
        return false;
      }
    }
    // Sort by key, equal keys in body order (value_begin is unique), then keep the last of each run.
    const auto first = members_.begin() + static_cast<std::ptrdiff_t>(f.members_base);
    std::sort(first, members_.end(), [this](const Member& a, const Member& b) {
      const int c = key_of(a).compare(key_of(b));
      return c != 0 ? c < 0 : a.value_begin < b.value_begin;
    });
    size_t kept = f.members_base;
    for (size_t r = f.members_base; r < members_.size(); ++r) {
      const std::string_view key = key_of(members_[r]);
      if (r + 1 < members_.size() && key_of(members_[r + 1]) == key) continue;  // a later one follows
      if (top_level && excluded(key)) continue;
      members_[kept++] = members_[r];
    }
    members_.resize(kept);
    f.next = f.members_base;
    f.stop = kept;
    return true;
  }

  // A container ended at `end`: the enclosing array (if any) goes on from there.
  void child_done(size_t end) {
    if (!frames_.empty() && !frames_.back().object) frames_.back().pos = end;
  }

  std::string_view s_;
  size_t n_;
  std::span<const std::string_view> exclude_;
  std::string& out_;
  std::vector<Span> spans_;
  mutable size_t span_hint_ = 0;  // find_span()'s starting point
  std::vector<Frame> frames_;
  std::vector<Member> members_;
  std::string arena_;    // unescaped keys of the open objects' members
  std::string scratch_;  // the unescaped content of the current string value
};

}  // namespace

bool canonical_json(std::string_view body, const TopLevelScan& scan, std::span<const std::string_view> exclude,
                    std::string& out) {
  if (!scan.ok) return false;
  const size_t restore = out.size();
  if (Canonicalizer(body, exclude, out).run()) return true;
  out.resize(restore);
  return false;
}

ModelRewriteResult rewrite_model(std::string_view body, std::string_view model, bool insert_if_absent) {
  ModelRewriteResult result;
  const TopLevelScan scan = scan_top_level(body);
  if (!scan.ok) {
    result.outcome = ModelRewrite::InvalidJson;
    result.error = scan.error;
    result.error_offset = scan.error_offset;
    return result;
  }
  if (!scan.is_object) {
    result.outcome = ModelRewrite::NotAnObject;
    return result;
  }

  bool present = false;
  bool all_equal = true;
  for (const JsonMember& mem : scan.members) {
    if (mem.key != "model") continue;
    present = true;
    const auto value = json_string_value(body, mem);
    if (!value || *value != model) all_equal = false;
  }
  if (const JsonMember* last = scan.find("model")) result.previous_model = json_string_value(body, *last);

  if (present && all_equal) return result;  // Unchanged
  if (!present && !insert_if_absent) return result;

  const TopLevelEdit edit{"model", json_quote(model),
                          present ? TopLevelEdit::Mode::Replace : TopLevelEdit::Mode::Upsert};
  result.body = apply_top_level_edits(body, scan, std::span<const TopLevelEdit>(&edit, 1));
  result.outcome = present ? ModelRewrite::Replaced : ModelRewrite::Inserted;
  return result;
}

}  // namespace glmp::core::pipeline
