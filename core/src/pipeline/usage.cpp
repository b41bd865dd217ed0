#include "pipeline/usage.hpp"

#include "pipeline/json_body.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>

namespace glmp::core::pipeline {

namespace {

constexpr size_t kUnknown = static_cast<size_t>(-1);
// Buffers that grew past this (a huge event or line) are released instead of kept for reuse.
constexpr size_t kShrinkAbove = size_t{64} << 10;
// Longest top-level key worth remembering; longer ones cannot match what we look for.
constexpr size_t kMaxNameBytes = 64;

// Position of `c` in s[from, n), or s.size() when absent.
inline size_t find_byte(std::string_view s, char c, size_t from) {
  const void* p = std::memchr(s.data() + from, c, s.size() - from);
  return p == nullptr ? s.size() : static_cast<size_t>(static_cast<const char*>(p) - s.data());
}

// A short literal to look for in event data. glibc's memmem builds a 256-byte shift table on every
// call, which costs more than scanning a whole ~200-byte event, so find_sub instead lets memchr look
// for one byte of the needle (`anchor`: one that is rare in typical event JSON, so there are few
// false starts) and compares the needle around each hit.
struct Needle {
  std::string_view text;
  size_t anchor;  // index in text of the byte memchr looks for

  consteval Needle(std::string_view t, char rare) : text(t), anchor(t.find(rare)) {
    if (t.empty() || anchor == std::string_view::npos) throw "the anchor must be a byte of the needle";
  }
};

// The first occurrence of `needle` in hay starting at or after `from`, or npos (memmem's answer).
inline size_t find_sub(std::string_view hay, const Needle& needle, size_t from = 0) {
  const size_t n = needle.text.size();
  if (from >= hay.size() || hay.size() - from < n) return std::string_view::npos;
  const char rare = needle.text[needle.anchor];
  // Anchors of the candidates starting in [from, hay.size() - n].
  size_t at = from + needle.anchor;
  const size_t last = hay.size() - n + needle.anchor;
  while (at <= last) {
    const void* p = std::memchr(hay.data() + at, rare, last + 1 - at);
    if (p == nullptr) break;
    at = static_cast<size_t>(static_cast<const char*>(p) - hay.data());
    const size_t start = at - needle.anchor;
    // Most false starts already differ in the first byte (most needles begin with a quote).
    if (hay[start] == needle.text[0] && std::memcmp(hay.data() + start, needle.text.data(), n) == 0) return start;
    ++at;
  }
  return std::string_view::npos;
}

inline bool contains(std::string_view hay, const Needle& needle) {
  return find_sub(hay, needle) != std::string_view::npos;
}

// What the SSE examination looks for, anchored on bytes that are rare in chat completion chunks.
constexpr Needle kUsageKey{"\"usage\"", 'u'};
constexpr Needle kErrorKey{"\"error\"", 'r'};
constexpr Needle kContentKey{"\"content\"", 'n'};
constexpr Needle kReasoningContentKey{"\"reasoning_content\"", 'g'};
constexpr Needle kToolCallsKey{"\"tool_calls\"", '_'};
constexpr Needle kTextKey{"\"text\"", 'x'};
constexpr Needle kPartialJsonKey{"\"partial_json\"", 'j'};
constexpr Needle kThinkingKey{"\"thinking\"", 'k'};
constexpr Needle kContentBlockDeltaValue{"\"content_block_delta\"", 'k'};
constexpr Needle kMessageStart{"message_start", '_'};
constexpr Needle kMessageDelta{"message_delta", '_'};
constexpr Needle kMessageStop{"\"message_stop\"", '_'};

inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// The characters the plain JSON scanner acts on outside strings once a value has begun.
constexpr std::array<bool, 256> kStructural = [] {
  std::array<bool, 256> t{};
  for (const char c : std::string_view("\"{}[],:")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

inline void release_if_big(std::string& s) {
  if (s.capacity() > kShrinkAbove) std::string().swap(s);
}

// True when `json` has a member named by `quoted_key` (e.g. "\"usage\"") whose value is not null.
// A quoted key can only appear unescaped in JSON text as a real string token, so this is a cheap and
// safe pre-filter before a real parse.
bool has_non_null_member(std::string_view json, const Needle& quoted_key) {
  size_t p = 0;
  while ((p = find_sub(json, quoted_key, p)) != std::string_view::npos) {
    size_t k = p + quoted_key.text.size();
    while (k < json.size() && is_ws(json[k])) ++k;
    if (k < json.size() && json[k] == ':') {
      ++k;
      while (k < json.size() && is_ws(json[k])) ++k;
      if (k < json.size() && json[k] != 'n') return true;
    }
    p += quoted_key.text.size();
  }
  return false;
}

// The position of the value of the member whose quoted key ends at `k`, or npos when no ':' follows
// (the quoted text was a value, not a key).
size_t value_after_key(std::string_view json, size_t k) {
  while (k < json.size() && is_ws(json[k])) ++k;
  if (k >= json.size() || json[k] != ':') return std::string_view::npos;
  ++k;
  while (k < json.size() && is_ws(json[k])) ++k;
  return k < json.size() ? k : std::string_view::npos;
}

// True when `json` has a member named by `quoted_key` whose value is a non-empty string (`open` =
// '"') or a non-empty array (`open` = '['). Same pre-filter reasoning as has_non_null_member: an
// unescaped quoted key followed by ':' is a real key.
bool has_non_empty_member(std::string_view json, const Needle& quoted_key, char open) {
  const char close = open == '"' ? '"' : ']';
  size_t p = 0;
  while ((p = find_sub(json, quoted_key, p)) != std::string_view::npos) {
    p += quoted_key.text.size();
    size_t v = value_after_key(json, p);
    if (v == std::string_view::npos || json[v] != open) continue;
    ++v;
    if (open == '[')
      while (v < json.size() && is_ws(json[v])) ++v;
    if (v < json.size() && json[v] != close) return true;
  }
  return false;
}

// OpenAI chunk carrying generated content: delta content / reasoning_content, or tool-call deltas.
bool openai_content_delta(std::string_view data) {
  return has_non_empty_member(data, kContentKey, '"') || has_non_empty_member(data, kReasoningContentKey, '"') ||
         has_non_empty_member(data, kToolCallsKey, '[');
}

// Anthropic content_block_delta data carrying generated content (text, thinking, tool input).
bool anthropic_content_delta(std::string_view data) {
  return has_non_empty_member(data, kTextKey, '"') || has_non_empty_member(data, kPartialJsonKey, '"') ||
         has_non_empty_member(data, kThinkingKey, '"');
}

// A JSON object read with the request scanner (json_body): its top-level members as offsets, no
// DOM, no allocation beyond the member list. Usage objects and the events around them are small.
struct JsonObject {
  std::string_view text;
  TopLevelScan scan;

  static std::optional<JsonObject> parse(std::string_view json) {
    JsonObject o{json, scan_top_level(json)};
    if (!o.scan.ok || !o.scan.is_object) return std::nullopt;
    return o;
  }
  std::string_view value(std::string_view key) const {
    const JsonMember* m = scan.find(key);
    return m ? text.substr(m->value_begin, m->value_end - m->value_begin) : std::string_view();
  }
  // The member when it is an object, else nullopt.
  std::optional<JsonObject> object(std::string_view key) const {
    const std::string_view v = value(key);
    if (v.empty() || v.front() != '{') return std::nullopt;
    return parse(v);
  }
  bool non_null(std::string_view key) const {
    const std::string_view v = value(key);
    return !v.empty() && v != "null";
  }
  std::optional<std::string> string(std::string_view key) const {
    const JsonMember* m = scan.find(key);
    return m ? json_string_value(text, *m) : std::nullopt;
  }
  // A number as a token count: an integer literal, or a finite number in range (truncated). A
  // negative count is as invalid as a string or 1e30 (nullopt): it would only corrupt the sums.
  std::optional<int64_t> integer(std::string_view key) const {
    const JsonMember* m = scan.find(key);
    if (!m) return std::nullopt;
    if (auto v = json_int_value(text, *m)) return *v >= 0 ? v : std::nullopt;
    const std::string_view v = value(key);
    if (v.empty() || !(v.front() == '-' || (v.front() >= '0' && v.front() <= '9'))) return std::nullopt;
    const double d = std::strtod(std::string(v).c_str(), nullptr);  // rare: 12.0, 1e3, beyond int64
    if (std::isfinite(d) && d >= 0.0 && d <= 9.0e18) return static_cast<int64_t>(d);
    return std::nullopt;
  }
};

// OpenAI: a usage object is a complete set of totals; the latest one replaces the previous.
void apply_openai_usage(const JsonObject& u, Usage& usage) {
  Usage fresh;
  fresh.input_tokens = u.integer("prompt_tokens").value_or(0);
  fresh.output_tokens = u.integer("completion_tokens").value_or(0);
  fresh.total_tokens = u.integer("total_tokens").value_or(0);
  if (const auto details = u.object("prompt_tokens_details")) {
    fresh.cache_read_input_tokens = details->integer("cached_tokens").value_or(0);
  }
  fresh.seen = true;
  usage = fresh;
}

// Anthropic: every field present overrides the one seen before (all of them are cumulative).
// Returns whether output_tokens was among them.
bool apply_anthropic_usage(const JsonObject& u, Usage& usage) {
  if (auto v = u.integer("input_tokens")) usage.input_tokens = *v;
  const auto out = u.integer("output_tokens");
  if (out) usage.output_tokens = *out;
  if (auto v = u.integer("cache_read_input_tokens")) usage.cache_read_input_tokens = *v;
  if (auto v = u.integer("cache_creation_input_tokens")) usage.cache_creation_input_tokens = *v;
  usage.seen = true;
  return out.has_value();
}

// a + b, clamped to the int64 range instead of overflowing.
int64_t saturating_add(int64_t a, int64_t b) {
  int64_t sum = 0;
  if (!__builtin_add_overflow(a, b, &sum)) return sum;
  return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
}

// An empty array ("[]", blanks allowed inside).
bool is_empty_array(std::string_view v) {
  if (v.empty() || v.front() != '[') return false;
  const size_t i = v.find_first_not_of(" \t\r\n", 1);
  return i != std::string_view::npos && v[i] == ']';
}

}  // namespace

int64_t Usage::total() const { return total_tokens > 0 ? total_tokens : saturating_add(input_tokens, output_tokens); }

UsageExtractor::UsageExtractor(Flavour flavour, bool sse, bool suppress_usage_only_chunks)
    : flavour_(flavour), sse_(sse), suppress_(suppress_usage_only_chunks && sse && flavour == Flavour::OpenAI) {}

std::string_view UsageExtractor::feed(std::string_view chunk) noexcept {
  if (finished_ || disabled_) return chunk;
  if (!suppress_) {
    try {
      if (sse_) {
        sse_feed(chunk);
      } else {
        plain_feed(chunk);
      }
    } catch (...) {
      disabled_ = true;  // only allocation failures get here; usage stays what it was
    }
    return chunk;
  }
  try {
    out_.clear();
    if (out_.capacity() > kMaxEventBytes + chunk.size()) std::string().swap(out_);
    sse_feed(chunk);
    return out_;
  } catch (...) {
    // Forward everything not yet released and pass through from now on.
    disabled_ = true;
    try {
      out_.append(pending_);
      pending_.clear();
      out_.append(chunk.substr(std::min(seg_start_, chunk.size())));
      return out_;
    } catch (...) {
      return chunk;
    }
  }
}

std::string_view UsageExtractor::finish() noexcept {
  if (finished_) return {};
  finished_ = true;
  if (!disabled_) {
    try {
      if (!sse_) {
        if (capturing_ && !capture_overflow_) parse_usage_value(capture_);
        capturing_ = false;
      } else {
        if (line_partial_) {
          sse_line(line_buf_, line_truncated_);
          line_buf_.clear();
          line_partial_ = false;
        }
        // A trailing event without its blank line: examined (not counted, never dropped).
        if (data_lines_ > 0) {
          if (flavour_ == Flavour::Anthropic && event_type_ == EventType::Error) {
            saw_error_ = true;
          } else if (!event_oversize_) {
            (void)sse_examine(false);
          }
        }
      }
    } catch (...) {
    }
  }
  if (!suppress_) return {};
  return pending_;
}

// ---------------------------------------------------------------------------------------------------
// SSE

void UsageExtractor::sse_feed(std::string_view chunk) {
  const size_t n = chunk.size();
  size_t i = 0;
  seg_start_ = 0;

  if (!bom_done_) {  // WHATWG: one leading U+FEFF is ignored
    static constexpr char kBom[3] = {'\xEF', '\xBB', '\xBF'};
    while (i < n && bom_matched_ < 3 && chunk[i] == kBom[bom_matched_]) {
      ++i;
      ++bom_matched_;
    }
    if (bom_matched_ == 3) {
      bom_done_ = true;
    } else if (i < n) {
      bom_done_ = true;  // not a BOM: the bytes matched so far start the first line
      if (bom_matched_ > 0) append_line_part(std::string_view(kBom, bom_matched_));
    }
  }

  if (after_cr_ && i < n) {
    after_cr_ = false;
    if (chunk[i] == '\n') {  // second half of a "\r\n" split across chunks
      ++i;
      if (cr_was_boundary_ && suppress_) {
        // It ends the event released (or dropped) with the previous chunk: it goes the same way.
        if (!last_dropped_) out_.push_back('\n');
        seg_start_ = i;
      }
    }
  }

  size_t lf_at = kUnknown;
  size_t cr_at = kUnknown;
  while (i < n) {
    if (lf_at == kUnknown || lf_at < i) lf_at = find_byte(chunk, '\n', i);
    if (cr_at == kUnknown || cr_at < i) cr_at = find_byte(chunk, '\r', i);
    const size_t eol = std::min(lf_at, cr_at);
    if (eol >= n) {
      append_line_part(chunk.substr(i));
      break;
    }
    size_t next = eol + 1;
    if (chunk[eol] == '\r') {
      if (next < n) {
        if (chunk[next] == '\n') ++next;
      } else {
        after_cr_ = true;
      }
    }
    std::string_view line = chunk.substr(i, eol - i);
    bool truncated = false;
    if (line_partial_) {
      append_line_part(line);
      line = line_buf_;
      truncated = line_truncated_;
    }
    const bool blank = line.empty();
    if (!blank) sse_line(line, truncated);
    if (line_partial_) {
      line_buf_.clear();
      release_if_big(line_buf_);
      line_partial_ = false;
      line_truncated_ = false;
    }
    if (blank) {
      const bool drop = sse_dispatch();
      if (suppress_) release(chunk, next, drop);
    }
    cr_was_boundary_ = blank;
    i = next;
  }
  if (suppress_) hold(chunk.substr(seg_start_));
}

void UsageExtractor::append_line_part(std::string_view part) {
  line_partial_ = true;
  if (line_truncated_) return;
  const size_t room = kMaxEventBytes - line_buf_.size();
  if (part.size() > room) {
    line_buf_.append(part.substr(0, room));
    line_truncated_ = true;
  } else {
    line_buf_.append(part);
  }
}

UsageExtractor::EventType UsageExtractor::event_type_of(std::string_view name) {
  if (name.empty()) return EventType::None;
  if (name == "message_start") return EventType::MessageStart;
  if (name == "message_delta") return EventType::MessageDelta;
  if (name == "content_block_delta") return EventType::ContentBlockDelta;
  if (name == "error") return EventType::Error;
  if (name == "message_stop") return EventType::MessageStop;
  return EventType::Other;
}

bool UsageExtractor::wants_data() const {
  return flavour_ == Flavour::OpenAI || event_type_ == EventType::None || event_type_ == EventType::MessageStart ||
         event_type_ == EventType::MessageDelta;
}

void UsageExtractor::sse_line(std::string_view line, bool truncated) {
  if (line.empty() || line[0] == ':') return;  // dispatch is the caller's; ':' starts a comment
  if (truncated) event_oversize_ = true;
  const size_t colon = line.find(':');
  const std::string_view field = line.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
  if (!value.empty() && value[0] == ' ') value.remove_prefix(1);

  if (field == "data") {
    ++data_lines_;
    // Anthropic content deltas are recognised line by line, without buffering their data.
    if (flavour_ == Flavour::Anthropic && (event_type_ == EventType::None || event_type_ == EventType::ContentBlockDelta)) {
      if (!delta_content_) delta_content_ = anthropic_content_delta(value);
      if (event_type_ == EventType::None && !delta_typed_) delta_typed_ = contains(value, kContentBlockDeltaValue);
    }
    if (event_oversize_) return;
    if (!wants_data()) {
      // Not an event that can carry usage: skip the copy. Should a later `event:` line make it one,
      // its data is incomplete and it is treated like an oversize event.
      event_oversize_ = true;
      data_buf_.clear();
      return;
    }
    const size_t sep = data_lines_ > 1 ? 1 : 0;
    if (data_buf_.size() + sep + value.size() > kMaxEventBytes) {
      event_oversize_ = true;
      data_buf_.clear();
      return;
    }
    if (sep != 0) data_buf_.push_back('\n');
    data_buf_.append(value);
  } else if (field == "event") {
    event_type_ = event_type_of(value);
  }
  // "id", "retry" and unknown fields carry nothing we need.
}

bool UsageExtractor::sse_dispatch() {
  bool drop = false;
  if (data_lines_ > 0) {  // WHATWG: an event without data is not dispatched
    ++events_;
    if (flavour_ == Flavour::Anthropic && event_type_ == EventType::Error) {
      saw_error_ = true;
    } else if (event_type_ == EventType::MessageStop) {
      saw_terminal_ = true;
    } else {
      if (flavour_ == Flavour::Anthropic && delta_content_ &&
          (event_type_ == EventType::ContentBlockDelta || (event_type_ == EventType::None && delta_typed_))) {
        count_delta();
      }
      if (!event_oversize_) drop = sse_examine(true);
    }
  }
  delta_content_ = false;
  delta_typed_ = false;
  data_buf_.clear();
  release_if_big(data_buf_);
  data_lines_ = 0;
  event_oversize_ = false;
  event_type_ = EventType::None;
  return drop && !event_passthrough_;
}

bool UsageExtractor::sse_examine(bool dispatched) {
  const std::string_view data = data_buf_;
  if (flavour_ == Flavour::OpenAI) {
    if (data == "[DONE]") {
      if (dispatched) saw_terminal_ = true;
      return false;
    }
    // Counted before the event's own usage (if any) is applied: a chunk carrying both is covered by it.
    if (dispatched && openai_content_delta(data)) count_delta();
    if (!has_non_null_member(data, kUsageKey) && !contains(data, kErrorKey)) return false;
  } else {
    if (event_type_ == EventType::None) {
      if (dispatched && contains(data, kMessageStop)) saw_terminal_ = true;  // no `event:` line: the data's "type"
      if (!contains(data, kMessageStart) && !contains(data, kMessageDelta) && !contains(data, kErrorKey)) {
        return false;
      }
    } else if (event_type_ != EventType::MessageStart && event_type_ != EventType::MessageDelta) {
      return false;
    }
  }
  bool drop = false;
  parse_event_json(data, &drop);
  return drop;
}

void UsageExtractor::parse_event_json(std::string_view json, bool* drop) {
  *drop = false;
  const auto obj = JsonObject::parse(json);
  if (!obj) return;  // not JSON (or not the JSON we expect): no usage from this event
  if (flavour_ == Flavour::OpenAI) {
    if (obj->non_null("error")) saw_error_ = true;
    const auto u = obj->object("usage");
    if (!u) return;
    apply_openai_usage(*u, reported_);
    final_ = true;
    refresh();
    if (suppress_) *drop = is_empty_array(obj->value("choices"));
    return;
  }
  EventType type = event_type_;
  if (type == EventType::None) type = event_type_of(obj->string("type").value_or(""));
  if (type == EventType::Error) {
    saw_error_ = true;
  } else if (type == EventType::MessageStart) {
    if (const auto message = obj->object("message")) {
      if (const auto u = message->object("usage")) {
        apply_anthropic_usage(*u, reported_);
        refresh();
      }
    }
  } else if (type == EventType::MessageDelta) {
    if (const auto u = obj->object("usage")) {
      // message_delta's output_tokens is the closing, cumulative figure.
      if (apply_anthropic_usage(*u, reported_)) final_ = true;
      refresh();
    }
  }
}

void UsageExtractor::count_delta() {
  ++deltas_;
  final_ = false;
  refresh();
}

void UsageExtractor::refresh() {
  usage_ = reported_;
  usage_.content_deltas = deltas_;
  usage_.complete = final_;
  // The reported counts are >= 0 (JsonObject::integer), so only the sum can overflow.
  if (!final_ && deltas_ > reported_.output_tokens) {
    if (usage_.total_tokens > 0) usage_.total_tokens = saturating_add(usage_.total_tokens, deltas_ - reported_.output_tokens);
    usage_.output_tokens = deltas_;
  }
}

void UsageExtractor::hold(std::string_view raw) {
  if (raw.empty()) return;
  if (event_passthrough_) {
    out_.append(raw);
    return;
  }
  if (pending_.size() + raw.size() > kMaxEventBytes) {
    // Too big to hold back: release what we have and let the rest of this event flow.
    out_.append(pending_);
    out_.append(raw);
    pending_.clear();
    release_if_big(pending_);
    event_passthrough_ = true;
    return;
  }
  pending_.append(raw);
}

void UsageExtractor::release(std::string_view chunk, size_t end, bool drop) {
  if (!drop) {
    if (!pending_.empty()) out_.append(pending_);
    out_.append(chunk.substr(seg_start_, end - seg_start_));
  }
  if (!pending_.empty()) {
    pending_.clear();
    release_if_big(pending_);
  }
  seg_start_ = end;
  last_dropped_ = drop;
  event_passthrough_ = false;
}

// ---------------------------------------------------------------------------------------------------
// Plain JSON body

void UsageExtractor::plain_feed(std::string_view c) {
  if (phase_ == Phase::Done) return;
  const size_t n = c.size();
  size_t i = 0;
  capture_from_ = 0;
  quote_at_ = bslash_at_ = kUnknown;

  if (phase_ == Phase::Start) {
    while (i < n && is_ws(c[i])) ++i;
    if (i == n) return;
    if (c[i] != '{') {  // not a JSON object: no usage in this body
      phase_ = Phase::Done;
      return;
    }
    phase_ = Phase::ExpectKey;
    depth_ = 1;
    ++i;
  } else if (in_string_) {
    i = plain_string(c, i);
  }

  while (i < n) {
    const char ch = c[i];
    switch (ch) {
      case '"':
        if (depth_ == 1) {
          if (phase_ == Phase::ExpectKey) {
            phase_ = Phase::InKey;
            key_.clear();
          } else if (phase_ == Phase::ExpectValue) {
            plain_begin_value(i);
          }
        }
        in_string_ = true;
        i = plain_string(c, i + 1);
        continue;
      case '{':
      case '[':
        if (depth_ == 1 && phase_ == Phase::ExpectValue) plain_begin_value(i);
        ++depth_;
        break;
      case '}':
      case ']':
        if (--depth_ == 0) {  // the top-level object closed: nothing after it matters
          if (ch == ']') capturing_ = false;  // "{...]" is not an object: drop a pending capture
          plain_end_value(c, i);
          phase_ = Phase::Done;
          return;
        }
        break;
      case ',':
        if (depth_ == 1) {
          plain_end_value(c, i);
          phase_ = Phase::ExpectKey;
        }
        break;
      case ':':
        if (depth_ == 1 && phase_ == Phase::ExpectColon) phase_ = Phase::ExpectValue;
        break;
      case ' ':
      case '\t':
      case '\n':
      case '\r':
        break;
      default:  // numbers and literals
        if (depth_ == 1 && phase_ == Phase::ExpectValue) plain_begin_value(i);
        // The rest of it changes nothing: on to the next character the scanner acts on.
        ++i;
        while (i < n && !kStructural[static_cast<unsigned char>(c[i])]) ++i;
        continue;
    }
    ++i;
  }
  if (capturing_) capture_append(c.substr(capture_from_));
}

size_t UsageExtractor::plain_string(std::string_view c, size_t i) {
  const size_t n = c.size();
  const size_t begin = i;
  for (;;) {
    if (escape_) {  // the byte after a backslash never ends the string
      if (i >= n) break;
      escape_ = false;
      ++i;
    }
    if (quote_at_ == kUnknown || quote_at_ < i) quote_at_ = find_byte(c, '"', i);
    if (bslash_at_ == kUnknown || bslash_at_ < i) bslash_at_ = find_byte(c, '\\', i);
    const size_t j = std::min(quote_at_, bslash_at_);
    if (j >= n) break;
    if (c[j] == '\\') {
      escape_ = true;
      i = j + 1;
      continue;
    }
    in_string_ = false;
    if (phase_ == Phase::InKey) plain_key_end(c.substr(begin, j - begin));
    return j + 1;
  }
  if (phase_ == Phase::InKey) key_append(c.substr(begin));
  return n;
}

void UsageExtractor::plain_key_end(std::string_view last_part) {
  // The key as written (escapes included): straight from the chunk unless it began in an earlier one.
  std::string_view key = last_part;
  if (!key_.empty()) {
    key_append(last_part);
    key = key_;
  }
  phase_ = Phase::ExpectColon;
  if (key.size() > kMaxNameBytes) {
    key_is_usage_ = false;
  } else if (key.find('\\') == std::string_view::npos) {
    key_is_usage_ = key == "usage";
  } else {
    const auto unescaped = json_unescape(key);
    key_is_usage_ = unescaped && *unescaped == "usage";
  }
}

void UsageExtractor::key_append(std::string_view bytes) {
  if (key_.size() <= kMaxNameBytes) key_.append(bytes.substr(0, kMaxNameBytes + 1 - key_.size()));
}

void UsageExtractor::plain_begin_value(size_t at) {
  phase_ = Phase::InValue;
  if (!key_is_usage_) return;
  capturing_ = true;
  capture_overflow_ = false;
  capture_.clear();
  capture_from_ = at;
}

void UsageExtractor::plain_end_value(std::string_view chunk, size_t at) {
  key_is_usage_ = false;
  if (!capturing_) return;
  capturing_ = false;
  const std::string_view tail = chunk.substr(capture_from_, at - capture_from_);
  if (capture_.empty() && !capture_overflow_) {  // the whole value is in this chunk: read it there
    if (tail.size() <= kMaxUsageValueBytes) parse_usage_value(tail);
    return;
  }
  capture_append(tail);
  if (!capture_overflow_) parse_usage_value(capture_);
  capture_.clear();
  release_if_big(capture_);
}

void UsageExtractor::capture_append(std::string_view bytes) {
  if (capture_overflow_) return;
  if (capture_.size() + bytes.size() > kMaxUsageValueBytes) {
    capture_overflow_ = true;  // not a usage object we want to parse
    capture_.clear();
    release_if_big(capture_);
    return;
  }
  capture_.append(bytes);
}

bool UsageExtractor::parse_usage_value(std::string_view json) {
  const auto u = JsonObject::parse(json);
  if (!u) return false;
  if (flavour_ == Flavour::OpenAI) {
    apply_openai_usage(*u, reported_);
  } else {
    apply_anthropic_usage(*u, reported_);
  }
  final_ = true;  // a plain body's usage object is the whole answer's
  refresh();
  return true;
}

}  // namespace glmp::core::pipeline
