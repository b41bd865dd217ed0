#pragma once
// usage: incremental token-usage extraction from upstream RESPONSE bodies.
//
// Why: quotas and accounting need the tokens of every response, but response bodies are never held
// whole (they stream, and can be 100 MB). The extractor observes the body chunk by chunk, split at
// arbitrary byte boundaries (mid-line, mid-UTF-8, mid-JSON), with bounded memory, and forwards the
// bytes untouched. It is the second hand-written hot-path scanner the architecture allows.
//
// Four modes: flavour {OpenAI, Anthropic} x {SSE stream, plain JSON body}.
//   - SSE: framed per the WHATWG EventSource rules (lines end in \n, \r\n or \r, also split across
//     chunks; "event:"/"data:" fields with one leading space stripped; data lines joined with \n; a
//     blank line dispatches; ':' lines are comments; a leading BOM is ignored). An event's data is
//     read (with json_body's scanner: member offsets, no DOM) only when it can carry usage or an error:
//       OpenAI: the data contains a non-null "usage" member (or an "error" member);
//       Anthropic: the event is message_start / message_delta / error (from the `event:` line, or
//       from the data's "type" when that line is missing).
//     Events whose data exceeds kMaxEventBytes are forwarded but not examined.
//   - Plain JSON: an incremental top-level scanner (string/escape state and depth) finds the
//     top-level "usage" member wherever it is, captures only its value (at most kMaxUsageValueBytes)
//     and reads that with json_body's scanner. A non-JSON or non-object body simply yields no usage.
//
// Counting rules (values are running totals, never increments):
//   - OpenAI: the last non-null "usage" object wins as a whole.
//   - Anthropic: message_start.message.usage, then every field present in a message_delta.usage
//     overrides the same field (output_tokens is cumulative there; newer APIs also repeat the input
//     and cache fields). Nothing is ever added up, so nothing is double counted.
//   - A count that is not a number >= 0 (a string, a negative number, one beyond ~9e18) is invalid
//     and ignored like a missing field: 0 for OpenAI; for Anthropic the field keeps its earlier
//     value (and a message_delta without a valid output_tokens is not the closing figure).
//
// Streams cut short (billing on disconnect): SSE content deltas are counted as they pass —
//   Anthropic: a content_block_delta event whose delta carries a non-empty "text", "thinking" or
//     "partial_json" string (so an empty first input_json_delta or a signature_delta does not count);
//     checked on each data line as it passes (no copy, no parse; a key and its value split over two
//     data lines are not seen);
//   OpenAI: a dispatched chunk with a non-empty "content" or "reasoning_content" string, or a
//     non-empty "tool_calls" array (cheap key scans of the event's data, which is buffered anyway).
// The usage is final (Usage::complete) once the upstream's closing figure arrived after the last
// counted delta: an OpenAI usage object, an Anthropic message_delta with output_tokens (plain JSON:
// the usage object). Until then output_tokens is reported as at least the number of deltas seen
// (total_tokens, when given, is raised by the same amount), so a client that disconnects mid-stream
// is never charged less than what was relayed. A final usage is reported exactly as the upstream
// gave it, never raised. Oversize events (> kMaxEventBytes) are not counted.
//
// feed()/finish() never throw. One extractor per response; not thread-safe.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace glmp::core::pipeline {

enum class Flavour { OpenAI, Anthropic };

// Token usage of one response.
struct Usage {
  int64_t input_tokens = 0;                 // OpenAI prompt_tokens; Anthropic input_tokens
  int64_t output_tokens = 0;                // OpenAI completion_tokens; Anthropic output_tokens
  // Anthropic cache_read_input_tokens; OpenAI prompt_tokens_details.cached_tokens
  int64_t cache_read_input_tokens = 0;
  int64_t cache_creation_input_tokens = 0;  // Anthropic only
  int64_t total_tokens = 0;                 // OpenAI usage.total_tokens if given, else 0
  bool seen = false;                        // a usage object was found
  // SSE: content deltas seen so far (see "Streams cut short" above); 0 for plain JSON bodies.
  int64_t content_deltas = 0;
  // The upstream's final usage arrived (after the last content delta): the figures are exact.
  // false: output_tokens is a lower bound — at least content_deltas — because the stream ended (or
  // was cut) before its usage, or the upstream never reports it.
  bool complete = false;

  // total_tokens when > 0, else input + output (saturating; cache tokens are reported separately).
  int64_t total() const;
};

class UsageExtractor {
 public:
  // Cap of one SSE event's buffered data (and of the bytes held back while suppressing).
  static constexpr size_t kMaxEventBytes = size_t{1} << 20;
  // Cap of the captured top-level "usage" value of a plain JSON body.
  static constexpr size_t kMaxUsageValueBytes = size_t{64} << 10;

  // `suppress_usage_only_chunks` only applies to OpenAI SSE (ignored otherwise). The proxy sets it
  // when it added stream_options.include_usage itself because the client did not ask for usage:
  // the client must then not see the extra usage-only chunk.
  UsageExtractor(Flavour flavour, bool sse, bool suppress_usage_only_chunks = false);

  // Observes one chunk of the upstream body and returns the bytes to forward to the client NOW.
  //   - Without suppression: exactly `chunk` (same pointer, zero copy).
  //   - With suppression: bytes are released event by event (held back until the event's blank
  //     line); an event whose data JSON has an empty "choices" array and a non-null "usage" is
  //     observed but not forwarded (together with the blank line that ends it). Everything else is
  //     forwarded byte for byte. An event held back beyond kMaxEventBytes is released as it comes
  //     and can no longer be suppressed. The view points into an internal buffer that is valid
  //     until the next call.
  // After finish(), chunks are passed through untouched and not observed.
  std::string_view feed(std::string_view chunk) noexcept;

  // End of body: returns the remaining bytes to forward (an incomplete trailing event is forwarded
  // as it is). A trailing event without its blank line is still examined for usage (so a stream
  // cut right after its usage chunk is accounted), but not counted in events(). Calls after the
  // first return an empty view.
  std::string_view finish() noexcept;

  // Valid at any time (also without finish(), e.g. after the client went away): the upstream's
  // figures, with output_tokens raised to content_deltas while the usage is not complete.
  const Usage& usage() const { return usage_; }

  // SSE: an `event: error` (Anthropic, or a data "type":"error") or a data JSON with a top-level
  // "error" member (OpenAI) was seen.
  bool saw_error_event() const { return saw_error_; }
  // SSE: the stream's terminal event was dispatched: OpenAI "data: [DONE]", Anthropic
  // message_stop (from the `event:` line, or the data's "type" when that line is missing).
  bool saw_terminal_event() const { return saw_terminal_; }
  // SSE: events dispatched (terminated by a blank line and carrying at least one data line).
  uint64_t events() const { return events_; }

 private:
  enum class Phase : uint8_t { Start, ExpectKey, InKey, ExpectColon, ExpectValue, InValue, Done };
  // An SSE event's type (`event:` line, or Anthropic data's "type"), as far as it matters here.
  enum class EventType : uint8_t { None, MessageStart, MessageDelta, ContentBlockDelta, MessageStop, Error, Other };
  static EventType event_type_of(std::string_view name);  // None for ""

  // SSE
  void sse_feed(std::string_view chunk);
  void sse_line(std::string_view line, bool truncated);
  bool sse_dispatch();  // returns true when the event must be dropped (suppression)
  bool sse_examine(bool dispatched);  // looks at the pending event's data; returns "drop it"
  bool wants_data() const;
  void append_line_part(std::string_view part);
  void hold(std::string_view raw);
  void release(std::string_view chunk, size_t end, bool drop);

  // Plain JSON
  void plain_feed(std::string_view chunk);
  // In a string at chunk[at]: returns the offset after its closing quote, or chunk.size() when it
  // goes on in the next chunk. Inline: it runs once per string (defined in usage.cpp).
  inline size_t plain_string(std::string_view chunk, size_t at);
  void plain_key_end(std::string_view last_part);  // the closing quote of a top-level key
  void key_append(std::string_view bytes);
  void plain_begin_value(size_t at);
  void plain_end_value(std::string_view chunk, size_t at);
  void capture_append(std::string_view bytes);

  // Both
  bool parse_usage_value(std::string_view json);  // a usage object; false when it is not one
  void parse_event_json(std::string_view json, bool* drop);
  void count_delta();  // one more content delta: the usage is no longer final
  void refresh();      // usage_ from reported_, final_ and deltas_

  Flavour flavour_;
  bool sse_;
  bool suppress_;
  bool finished_ = false;
  bool disabled_ = false;  // an internal failure happened: pass everything through from now on
  Usage usage_;     // what usage() returns
  Usage reported_;  // the upstream's own figures
  int64_t deltas_ = 0;
  bool final_ = false;  // reported_ holds the closing usage and no delta came after it
  bool saw_error_ = false;
  bool saw_terminal_ = false;
  uint64_t events_ = 0;

  // SSE framing
  std::string line_buf_;  // a line split across chunks (capped)
  bool line_partial_ = false;
  bool line_truncated_ = false;
  bool after_cr_ = false;           // the previous chunk ended in '\r': a leading '\n' completes it
  bool cr_was_boundary_ = false;    // ...and that '\r' ended a blank line (an event boundary)
  uint8_t bom_matched_ = 0;
  bool bom_done_ = false;
  std::string data_buf_;    // the pending event's data (capped)
  uint64_t data_lines_ = 0;
  bool event_oversize_ = false;
  EventType event_type_ = EventType::None;  // the pending event's `event:` line (None: no such line)
  bool delta_content_ = false;  // Anthropic: a data line of the pending event has delta content
  bool delta_typed_ = false;    // Anthropic: ...and one says "content_block_delta" (no `event:` line)

  // SSE suppression
  std::string out_;        // bytes returned by feed()/finish()
  std::string pending_;    // raw bytes of the pending event from earlier chunks
  size_t seg_start_ = 0;   // offset in the current chunk where the pending event's bytes start
  bool event_passthrough_ = false;  // the pending event outgrew the hold-back cap
  bool last_dropped_ = false;       // the last released event was suppressed

  // Plain JSON scanner
  Phase phase_ = Phase::Start;
  int64_t depth_ = 0;
  bool in_string_ = false;
  bool escape_ = false;
  std::string key_;  // the top-level key being read (capped)
  bool key_is_usage_ = false;
  bool capturing_ = false;
  bool capture_overflow_ = false;
  size_t capture_from_ = 0;  // offset in the current chunk where captured bytes start
  size_t quote_at_ = 0;      // next '"' in the current chunk at or after the scan (or unknown)
  size_t bslash_at_ = 0;     // next '\\' likewise
  std::string capture_;
};

}  // namespace glmp::core::pipeline
