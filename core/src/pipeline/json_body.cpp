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

// Index (0..7, in memory order) of the lowest flagged byte of a non-zero string_special_bits().
inline size_t first_flagged_byte(uint64_t bits) {
  if constexpr (std::endian::native == std::endian::little) {
    return static_cast<size_t>(std::countr_zero(bits)) / 8;
  } else {
    return static_cast<size_t>(std::countl_zero(bits)) / 8;
  }
}

inline bool is_string_special(unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80; }

// Offset of the first '"', '\\', control character or byte >= 0x80 in s[i, s.size()), or s.size().
// Plain ASCII is skipped eight bytes at a time.
inline size_t find_string_special(std::string_view s, size_t i) {
  const size_t n = s.size();
  while (i + 8 <= n) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, sizeof w);
    if (const uint64_t bits = string_special_bits(w)) return i + first_flagged_byte(bits);
    i += 8;
  }
  while (i < n && !is_string_special(byte_at(s, i))) ++i;
  return i;
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
  size_t i = 0;
  const size_t n = in.size();
  while (i < n) {
    const size_t bs = in.find('\\', i);
    const size_t plain_end = bs == std::string_view::npos ? n : bs;
    const std::string_view plain = in.substr(i, plain_end - i);
    if (plain.find('"') != std::string_view::npos) return std::nullopt;
    out.append(plain);
    if (bs == std::string_view::npos) break;
    if (bs + 1 >= n) return std::nullopt;
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
        if (u < 0) return std::nullopt;
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
        return std::nullopt;
    }
  }
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
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(utf8.size() + 2);
  out.push_back('"');
  size_t i = 0;
  const size_t n = utf8.size();
  while (i < n) {
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
      default:
        if (c < 0x20) {
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out.push_back('"');
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
