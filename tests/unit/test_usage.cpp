// Tests for pipeline/usage: incremental usage extraction from upstream response bodies, in all four
// modes, fed whole, split at every byte boundary and one byte at a time.
#include "pipeline/usage.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace glmp::core::pipeline;

struct Outcome {
  Usage usage;
  std::string forwarded;
  uint64_t events = 0;
  bool error = false;
};

// Feeds `chunks` and collects what would be forwarded. Without suppression it also checks the
// zero-copy promise (the returned view IS the chunk).
Outcome run_chunks(Flavour flavour, bool sse, bool suppress, const std::vector<std::string_view>& chunks) {
  UsageExtractor ex(flavour, sse, suppress);
  Outcome r;
  for (std::string_view c : chunks) {
    const std::string_view out = ex.feed(c);
    if (!suppress) {
      EXPECT_EQ(out.data(), c.data());
      EXPECT_EQ(out.size(), c.size());
    }
    r.forwarded.append(out);
  }
  r.forwarded.append(ex.finish());
  EXPECT_TRUE(ex.finish().empty());
  r.usage = ex.usage();
  r.events = ex.events();
  r.error = ex.saw_error_event();
  return r;
}

Outcome run_whole(Flavour flavour, bool sse, bool suppress, std::string_view body) {
  return run_chunks(flavour, sse, suppress, {body});
}

Outcome run_split(Flavour flavour, bool sse, bool suppress, std::string_view body, size_t at) {
  return run_chunks(flavour, sse, suppress, {body.substr(0, at), body.substr(at)});
}

Outcome run_bytewise(Flavour flavour, bool sse, bool suppress, std::string_view body) {
  std::vector<std::string_view> chunks;
  for (size_t i = 0; i < body.size(); ++i) chunks.push_back(body.substr(i, 1));
  return run_chunks(flavour, sse, suppress, chunks);
}

Outcome run_sized(Flavour flavour, bool sse, bool suppress, std::string_view body, size_t chunk_size) {
  std::vector<std::string_view> chunks;
  for (size_t i = 0; i < body.size(); i += chunk_size) chunks.push_back(body.substr(i, chunk_size));
  return run_chunks(flavour, sse, suppress, chunks);
}

bool same_usage(const Usage& a, const Usage& b) {
  return a.input_tokens == b.input_tokens && a.output_tokens == b.output_tokens &&
         a.cache_read_input_tokens == b.cache_read_input_tokens &&
         a.cache_creation_input_tokens == b.cache_creation_input_tokens && a.total_tokens == b.total_tokens &&
         a.seen == b.seen;
}

std::string describe(const Usage& u) {
  return "{in=" + std::to_string(u.input_tokens) + " out=" + std::to_string(u.output_tokens) +
         " cache_read=" + std::to_string(u.cache_read_input_tokens) +
         " cache_creation=" + std::to_string(u.cache_creation_input_tokens) +
         " total=" + std::to_string(u.total_tokens) + " seen=" + (u.seen ? "true" : "false") + "}";
}

Usage make_usage(int64_t in, int64_t out, int64_t cache_read, int64_t cache_creation, int64_t total) {
  Usage u;
  u.input_tokens = in;
  u.output_tokens = out;
  u.cache_read_input_tokens = cache_read;
  u.cache_creation_input_tokens = cache_creation;
  u.total_tokens = total;
  u.seen = true;
  return u;
}

// The whole body, every two-chunk split, and one byte at a time must all give `expected_usage`
// and forward `expected_forwarded`.
void check_every_split(Flavour flavour, bool sse, bool suppress, const std::string& body,
                       const Usage& expected_usage, const std::string& expected_forwarded,
                       uint64_t expected_events, bool expected_error = false) {
  auto check = [&](const Outcome& r, const std::string& how) {
    if (!same_usage(r.usage, expected_usage)) {
      FAIL() << how << ": usage " << describe(r.usage) << " expected " << describe(expected_usage);
    }
    if (r.forwarded != expected_forwarded) FAIL() << how << ": forwarded bytes differ";
    if (r.events != expected_events) FAIL() << how << ": events " << r.events << " expected " << expected_events;
    if (r.error != expected_error) FAIL() << how << ": error flag " << r.error;
  };
  check(run_whole(flavour, sse, suppress, body), "whole");
  for (size_t i = 0; i <= body.size(); ++i) {
    check(run_split(flavour, sse, suppress, body, i), "split at " + std::to_string(i));
    if (::testing::Test::HasFatalFailure()) return;
  }
  check(run_bytewise(flavour, sse, suppress, body), "byte by byte");
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t p = 0;
  while ((p = s.find(from, p)) != std::string::npos) {
    s.replace(p, from.size(), to);
    p += to.size();
  }
  return s;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const auto& p : parts) s += p;
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Fixtures, in the exact shapes the APIs send.

const char* const kOaiHead =
    R"({"id":"chatcmpl-AVz3oxn1kF2Qm6tL8pYrS0ud","object":"chat.completion.chunk","created":1732117268,)"
    R"("model":"glm-4.7","system_fingerprint":"fp_0ba0d124f1",)";

std::string oai_event(const std::string& choices_and_usage) {
  return std::string("data: ") + kOaiHead + choices_and_usage + "}\n\n";
}

// A streamed chat completion with stream_options.include_usage: every chunk has "usage":null, the
// last one has empty choices and the usage.
std::vector<std::string> openai_events() {
  return {
      oai_event(R"("choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null)"),
      oai_event(R"("choices":[{"index":0,"delta":{"content":"Memory usage is high; \"usage\": 99 is not a key."},"logprobs":null,"finish_reason":null}],"usage":null)"),
      oai_event(R"("choices":[{"index":0,"delta":{"content":" \u4f60\u597d )"
                "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80"
                R"( {\"error\"} usage"},"logprobs":null,"finish_reason":null}],"usage":null)"),
      oai_event(R"("choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null)"),
      oai_event(R"("choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}})"),
      "data: [DONE]\n\n",
  };
}
constexpr size_t kOaiUsageEvent = 4;
const Usage kOaiUsage = make_usage(1117, 46, 1024, 0, 1163);

// Z.AI style: the usage rides on the finish chunk, whose choices are not empty.
std::vector<std::string> openai_finish_usage_events() {
  return {
      oai_event(R"("choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}])"),
      oai_event(R"("choices":[{"index":0,"finish_reason":"stop","delta":{"role":"assistant","content":""}}],"usage":{"prompt_tokens":8,"completion_tokens":262,"total_tokens":270,"prompt_tokens_details":{"cached_tokens":0}})"),
      "data: [DONE]\n\n",
  };
}

std::vector<std::string> anthropic_events() {
  return {
      "event: message_start\n"
      R"(data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"glm-4.7","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"output_tokens":1}}})"
      "\n\n",
      "event: content_block_start\n"
      R"(data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"
      "\n\n",
      "event: ping\n"
      R"(data: {"type": "ping"})"
      "\n\n",
      "event: content_block_delta\n"
      R"(data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello \"usage\":{\"output_tokens\":999} message_delta"}})"
      "\n\n",
      "event: content_block_delta\n"
      "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80!\"}}"
      "\n\n",
      "event: content_block_stop\n"
      R"(data: {"type":"content_block_stop","index":0})"
      "\n\n",
      "event: message_delta\n"
      R"(data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}})"
      "\n\n",
      "event: message_stop\n"
      R"(data: {"type":"message_stop"})"
      "\n\n",
  };
}
const Usage kAnthropicUsage = make_usage(472, 15, 2048, 100, 0);

// Variants of the framing that must not change the result.
std::string with_crlf(const std::string& s) { return replace_all(s, "\n", "\r\n"); }
std::string with_cr(const std::string& s) { return replace_all(s, "\n", "\r"); }
std::string with_comments(const std::vector<std::string>& events) {
  std::string s = ": connected\n\n";
  for (const auto& e : events) s += ": keep-alive\n" + e + ":\n\n";
  return s;
}
// Splits every data line in two data lines (joined back with '\n', which is JSON whitespace when
// the split is after a comma) and drops the space after "data:".
std::string with_multiline_data(const std::string& s) {
  std::string out = replace_all(s, "data: {", "data:{");
  return replace_all(out, ",\"type\":", ",\ndata:\"type\":");
}

// ---------------------------------------------------------------------------------------------------
// OpenAI SSE

TEST(UsageOpenAISse, EverySplitAllFramings) {
  const std::vector<std::string> events = openai_events();
  const std::string body = join(events);
  for (const std::string& variant : {body, with_crlf(body), with_cr(body), with_comments(events),
                                     with_crlf(with_comments(events))}) {
    check_every_split(Flavour::OpenAI, true, false, variant, kOaiUsage, variant, events.size());
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(UsageOpenAISse, MultiLineDataAndNoSpaceAfterColon) {
  const std::string body =
      "data:{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n"
      "data: {\"id\":\"x\",\n"
      "data: \"choices\":[],\n"
      "data:\"usage\":{\"prompt_tokens\":3,\n"
      "data:   \"completion_tokens\":4}}\n\n"
      "data: [DONE]\n\n";
  check_every_split(Flavour::OpenAI, true, false, body, make_usage(3, 4, 0, 0, 0), body, 3);
}

TEST(UsageOpenAISse, UsageOnFinishChunk) {
  const std::string body = join(openai_finish_usage_events());
  const Outcome r = run_whole(Flavour::OpenAI, true, false, body);
  EXPECT_TRUE(same_usage(r.usage, make_usage(8, 262, 0, 0, 270))) << describe(r.usage);
  EXPECT_EQ(r.usage.total(), 270);
}

TEST(UsageOpenAISse, LastUsageWins) {
  const std::string body =
      oai_event(R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":2}})") +
      oai_event(R"("choices":[],"usage":{"prompt_tokens":10,"completion_tokens":7})") + "data: [DONE]\n\n";
  const Outcome r = run_whole(Flavour::OpenAI, true, false, body);
  // The later object replaces the earlier one as a whole (totals, not increments).
  EXPECT_TRUE(same_usage(r.usage, make_usage(10, 7, 0, 0, 0))) << describe(r.usage);
  EXPECT_EQ(r.usage.total(), 17);
}

TEST(UsageOpenAISse, NoUsageAndErrorEvents) {
  const std::string no_usage = oai_event(R"("choices":[{"index":0,"delta":{"content":"x"}}],"usage":null)") +
                               "data: [DONE]\n\n";
  const Outcome r = run_whole(Flavour::OpenAI, true, false, no_usage);
  EXPECT_FALSE(r.usage.seen);
  EXPECT_FALSE(r.usage.complete);
  // No usage from the upstream: only the lower bound of the one content delta relayed.
  EXPECT_EQ(r.usage.input_tokens, 0);
  EXPECT_EQ(r.usage.output_tokens, 1);
  EXPECT_EQ(r.usage.total(), 1);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.events, 2u);

  const std::string error =
      oai_event(R"("choices":[{"index":0,"delta":{"content":"x"}}])") +
      "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":\"500\"}}\n\n";
  Usage one_delta;
  one_delta.output_tokens = 1;
  check_every_split(Flavour::OpenAI, true, false, error, one_delta, error, 2, true);
}

TEST(UsageOpenAISse, CachedTokens) {
  const std::string body =
      oai_event(R"("choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}})");
  const Outcome r = run_whole(Flavour::OpenAI, true, false, body);
  EXPECT_EQ(r.usage.cache_read_input_tokens, 1920);
  EXPECT_EQ(r.usage.cache_creation_input_tokens, 0);
  EXPECT_EQ(r.usage.input_tokens, 2006);
  EXPECT_EQ(r.usage.total(), 2306);
}

// ---------------------------------------------------------------------------------------------------
// OpenAI SSE with suppression of the usage-only chunk

TEST(UsageSuppression, UsageOnlyChunkRemovedAtEverySplit) {
  const std::vector<std::string> events = openai_events();
  std::vector<std::string> kept = events;
  kept.erase(kept.begin() + kOaiUsageEvent);
  const std::string body = join(events);
  const std::string expected = join(kept);
  ASSERT_NE(body, expected);
  check_every_split(Flavour::OpenAI, true, true, body, kOaiUsage, expected, events.size());
  check_every_split(Flavour::OpenAI, true, true, with_crlf(body), kOaiUsage, with_crlf(expected), events.size());
  check_every_split(Flavour::OpenAI, true, true, with_cr(body), kOaiUsage, with_cr(expected), events.size());
}

TEST(UsageSuppression, CommentsAndKeepAlivesAreKept) {
  const std::vector<std::string> events = openai_events();
  std::string body = ": connected\n\n";
  std::string expected = body;
  for (size_t k = 0; k < events.size(); ++k) {
    body += events[k] + ": keep-alive\n\n";
    expected += (k == kOaiUsageEvent ? "" : events[k]) + ": keep-alive\n\n";
  }
  check_every_split(Flavour::OpenAI, true, true, body, kOaiUsage, expected, events.size());
}

TEST(UsageSuppression, FinishChunkWithChoicesIsNotSuppressed) {
  const std::string body = join(openai_finish_usage_events());
  check_every_split(Flavour::OpenAI, true, true, body, make_usage(8, 262, 0, 0, 270), body, 3);
}

TEST(UsageSuppression, OnlyAppliesToOpenAISse) {
  // Anthropic and plain bodies are passed through untouched (zero copy) even when asked to suppress.
  const std::string anthropic = join(anthropic_events());
  const Outcome a = run_split(Flavour::Anthropic, true, true, anthropic, 100);
  EXPECT_EQ(a.forwarded, anthropic);
  const std::string plain = R"({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}})";
  const Outcome p = run_split(Flavour::OpenAI, false, true, plain, 10);
  EXPECT_EQ(p.forwarded, plain);
  EXPECT_EQ(p.usage.total(), 3);
}

TEST(UsageSuppression, TruncatedStreamForwardsTheTail) {
  const std::vector<std::string> events = openai_events();
  const std::string body = join(events);
  // Cut inside the usage event: the incomplete event is forwarded as is by finish().
  const size_t usage_begin = join({events.begin(), events.begin() + kOaiUsageEvent}).size();
  for (size_t cut = usage_begin; cut < usage_begin + events[kOaiUsageEvent].size() - 2; ++cut) {
    const std::string truncated = body.substr(0, cut);
    const Outcome r = run_split(Flavour::OpenAI, true, true, truncated, cut / 2);
    EXPECT_EQ(r.forwarded, truncated) << cut;
  }
}

// ---------------------------------------------------------------------------------------------------
// Anthropic SSE

TEST(UsageAnthropicSse, EverySplitAllFramings) {
  const std::vector<std::string> events = anthropic_events();
  const std::string body = join(events);
  for (const std::string& variant : {body, with_crlf(body), with_cr(body), with_comments(events),
                                     with_cr(with_comments(events)), with_multiline_data(body)}) {
    check_every_split(Flavour::Anthropic, true, false, variant, kAnthropicUsage, variant, events.size());
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(UsageAnthropicSse, WithoutEventLinesUsesDataType) {
  std::string body = join(anthropic_events());
  size_t p;
  while ((p = body.find("event: ")) != std::string::npos) body.erase(p, body.find('\n', p) + 1 - p);
  ASSERT_EQ(body.find("event:"), std::string::npos);
  check_every_split(Flavour::Anthropic, true, false, body, kAnthropicUsage, body, anthropic_events().size());
}

TEST(UsageAnthropicSse, NoDoubleCounting) {
  // message_start says output 1, message_delta says 15 (cumulative): output is 15, not 16.
  const std::string body = join(anthropic_events());
  const Outcome r = run_whole(Flavour::Anthropic, true, false, body);
  EXPECT_EQ(r.usage.output_tokens, 15);
  EXPECT_EQ(r.usage.input_tokens, 472);
  EXPECT_EQ(r.usage.total(), 487);

  // Several message_delta events: the last cumulative value wins.
  const std::string two_deltas =
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n"
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n"
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
  const Outcome r2 = run_whole(Flavour::Anthropic, true, false, two_deltas);
  EXPECT_TRUE(same_usage(r2.usage, make_usage(10, 9, 0, 0, 0))) << describe(r2.usage);
}

TEST(UsageAnthropicSse, MessageDeltaOverridesEveryFieldItCarries) {
  const std::string body =
      "event: message_start\n"
      R"(data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"glm-4.7","usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}})"
      "\n\n"
      "event: message_delta\n"
      R"(data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":3120,"cache_creation_input_tokens":11,"cache_read_input_tokens":2560,"output_tokens":88,"server_tool_use":{"web_search_requests":0}}})"
      "\n\n"
      "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  check_every_split(Flavour::Anthropic, true, false, body, make_usage(3120, 88, 2560, 11, 0), body, 3);
}

TEST(UsageAnthropicSse, NullFieldsDoNotOverride) {
  const std::string body =
      "event: message_start\n"
      R"(data: {"type":"message_start","message":{"usage":{"input_tokens":50,"cache_read_input_tokens":7,"output_tokens":2}}})"
      "\n\n"
      "event: message_delta\n"
      R"(data: {"type":"message_delta","usage":{"input_tokens":null,"cache_read_input_tokens":null,"output_tokens":30}})"
      "\n\n";
  const Outcome r = run_whole(Flavour::Anthropic, true, false, body);
  EXPECT_TRUE(same_usage(r.usage, make_usage(50, 30, 7, 0, 0))) << describe(r.usage);
}

TEST(UsageAnthropicSse, ErrorEvent) {
  const std::string body =
      join({anthropic_events()[0]}) +
      "event: error\n"
      R"(data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})"
      "\n\n";
  check_every_split(Flavour::Anthropic, true, false, body, make_usage(472, 1, 2048, 100, 0), body, 2, true);

  const std::string no_event_line =
      R"(data: {"type": "error", "error": {"type": "api_error", "message": "boom"}})"
      "\n\n";
  EXPECT_TRUE(run_whole(Flavour::Anthropic, true, false, no_event_line).error);
  EXPECT_FALSE(run_whole(Flavour::Anthropic, true, false, join(anthropic_events())).error);
}

// ---------------------------------------------------------------------------------------------------
// Plain JSON bodies

const std::string kOaiBody =
    R"({"id":"chatcmpl-123","object":"chat.completion","created":1677652288,"model":"glm-4.7",)"
    R"("choices":[{"index":0,"message":{"role":"assistant","content":"Hello! \"usage\":{\"prompt_tokens\":999} \\ \u4f60 )"
    "\xE4\xBD\xA0\xF0\x9F\x98\x80"
    R"(","refusal":null,"usage":{"prompt_tokens":555}},"logprobs":null,"finish_reason":"stop"}],)"
    R"("usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4},)"
    R"("completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_44709d6fcb"})";

const std::string kAnthropicBody =
    R"({"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"glm-4.7",)"
    R"("usage":{"input_tokens":2095,"output_tokens":503,"cache_creation_input_tokens":10,"cache_read_input_tokens":20},)"
    R"("content":[{"type":"text","text":"Hi! {\"usage\": {\"input_tokens\": 1}} ]]}}"}],)"
    R"("stop_reason":"end_turn","stop_sequence":null})";

TEST(UsagePlainJson, OpenAIEverySplit) {
  check_every_split(Flavour::OpenAI, false, false, kOaiBody, make_usage(9, 12, 4, 0, 21), kOaiBody, 0);
}

TEST(UsagePlainJson, AnthropicEverySplit) {
  check_every_split(Flavour::Anthropic, false, false, kAnthropicBody, make_usage(2095, 503, 20, 10, 0),
                    kAnthropicBody, 0);
}

TEST(UsagePlainJson, PrettyPrintedAndEscapedKey) {
  const std::string body =
      "{\n  \"id\": \"x\",\n  \"choices\": [],\n  \"us\\u0061ge\" :\r\n  {\n    \"prompt_tokens\": 5,\n"
      "    \"completion_tokens\": 6\n  }\n}\n";
  check_every_split(Flavour::OpenAI, false, false, body, make_usage(5, 6, 0, 0, 0), body, 0);
}

TEST(UsagePlainJson, NestedUsageIsNotTopLevel) {
  const std::string body = R"({"choices":[{"usage":{"prompt_tokens":1}}],"meta":{"usage":{"prompt_tokens":2}}})";
  const Outcome r = run_whole(Flavour::OpenAI, false, false, body);
  EXPECT_FALSE(r.usage.seen);
  const std::string null_usage = R"({"usage":null,"choices":[]})";
  EXPECT_FALSE(run_whole(Flavour::OpenAI, false, false, null_usage).usage.seen);
}

TEST(UsagePlainJson, HugeContentBeforeAndAfterUsage) {
  std::string content;
  content.reserve(5u << 20);
  while (content.size() < (5u << 20)) content += "lorem \\\"ipsum\\\" \\\\ \xE4\xBD\xA0\xE5\xA5\xBD \\n {[\"usage\":1]} ";
  const std::string usage = R"("usage":{"prompt_tokens":123,"completion_tokens":456,"total_tokens":579})";
  const std::string before = "{" + usage + R"(,"choices":[{"message":{"content":")" + content + "\"}}]}";
  const std::string after = R"({"choices":[{"message":{"content":")" + content + "\"}}]," + usage + "}";
  for (const std::string* body : {&before, &after}) {
    for (size_t chunk : {size_t{32} << 10, size_t{32771}}) {
      const Outcome r = run_sized(Flavour::OpenAI, false, false, *body, chunk);
      EXPECT_TRUE(same_usage(r.usage, make_usage(123, 456, 0, 0, 579))) << describe(r.usage);
      EXPECT_EQ(r.forwarded.size(), body->size());
    }
  }
}

TEST(UsagePlainJson, TruncatedAndGarbage) {
  // Truncated inside the usage value: nothing. Truncated after it (missing final '}'): found.
  const std::string body = R"({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}})";
  for (size_t cut = 0; cut < body.size(); ++cut) {
    const Outcome r = run_whole(Flavour::OpenAI, false, false, body.substr(0, cut));
    const bool complete = cut >= body.size() - 1;
    EXPECT_EQ(r.usage.seen, complete) << cut;
    if (r.usage.seen) {
      EXPECT_EQ(r.usage.total(), 3);
    }
  }
  for (const std::string garbage :
       {"", "<html><body>502 Bad Gateway</body></html>", "[{\"usage\":{\"prompt_tokens\":1}}]", "\"usage\"",
        "}}}]]]\"usage\":{\"prompt_tokens\":1}", "{\"usage\":{\"prompt_tokens\":1,,}}", "{\"usage\":\"x\"}",
        "{\"usage\":[1,2]}", "{\"usage\":{\"prompt_tokens\":1}]", "{\"usage\" {\"prompt_tokens\":1}}"}) {
    const Outcome r = run_whole(Flavour::OpenAI, false, false, garbage);
    EXPECT_EQ(r.forwarded, garbage);
    EXPECT_FALSE(r.usage.seen) << garbage;
  }
  // A usage object whose fields are unusable is seen, with zeros.
  const Outcome odd = run_whole(Flavour::OpenAI, false, false,
                            R"({"usage":{"prompt_tokens":"many","completion_tokens":true,"total_tokens":null}})");
  EXPECT_TRUE(odd.usage.seen);
  EXPECT_EQ(odd.usage.total(), 0);
}

TEST(UsagePlainJson, OversizeUsageValueIsIgnored) {
  const std::string pad(UsageExtractor::kMaxUsageValueBytes, ' ');
  const std::string body = R"({"usage":{"prompt_tokens":1,)" + pad + R"("completion_tokens":2}})";
  EXPECT_FALSE(run_sized(Flavour::OpenAI, false, false, body, 4096).usage.seen);
  // A later, normal-sized duplicate is still read.
  const std::string dup = R"({"usage":{"prompt_tokens":1,)" + pad + R"("completion_tokens":2},"usage":{"prompt_tokens":7}})";
  EXPECT_EQ(run_sized(Flavour::OpenAI, false, false, dup, 4096).usage.input_tokens, 7);
  // The same in one chunk (the value is read where it is, without a copy).
  EXPECT_FALSE(run_whole(Flavour::OpenAI, false, false, body).usage.seen);
  EXPECT_EQ(run_whole(Flavour::OpenAI, false, false, dup).usage.input_tokens, 7);
  // Exactly at the cap it is still read.
  const std::string value = R"({"prompt_tokens":3})";
  const std::string at_cap = "{\"usage\":" + value + std::string(UsageExtractor::kMaxUsageValueBytes - value.size(), ' ') + "}";
  EXPECT_EQ(run_whole(Flavour::OpenAI, false, false, at_cap).usage.input_tokens, 3);
  EXPECT_EQ(run_sized(Flavour::OpenAI, false, false, at_cap, 1000).usage.input_tokens, 3);
}

TEST(UsagePlainJson, KeysAndValuesSplitAnywhere) {
  // Keys with escapes, long keys (never "usage"), numbers and literals, the usage value last or
  // not, cut at every byte and fed in small pieces.
  const std::string body =
      "{\"a\\\"b\":\"x\\\\\",\"n\":-12.5e3,\"t\":true,\"" + std::string(70, 'k') +
      "\":null,\"usage_\":{\"prompt_tokens\":8},\"\\u0075sage\":{\"prompt_tokens\":4,\"completion_tokens\":5},"
      "\"list\":[1,\"usage\",{\"usage\":{\"prompt_tokens\":9}}],\"z\":0}";
  check_every_split(Flavour::OpenAI, false, false, body, make_usage(4, 5, 0, 0, 0), body, 0);
  for (size_t size : {1, 2, 3, 5, 7, 11}) {
    const Outcome r = run_sized(Flavour::OpenAI, false, false, body, size);
    EXPECT_TRUE(same_usage(r.usage, make_usage(4, 5, 0, 0, 0))) << size << describe(r.usage);
  }
}

// ---------------------------------------------------------------------------------------------------
// Robustness

TEST(UsageRobustness, RandomGarbageInEveryMode) {
  std::mt19937 rng(1234);
  const std::string alphabet = "data: event:{}[]\",\\\r\n\n\n usage message_delta choices 0123456789:\xE4\xFF";
  for (int iter = 0; iter < 300; ++iter) {
    std::string body;
    const size_t len = rng() % 3000;
    for (size_t k = 0; k < len; ++k) body.push_back(alphabet[rng() % alphabet.size()]);
    for (Flavour f : {Flavour::OpenAI, Flavour::Anthropic}) {
      for (bool sse : {true, false}) {
        const Outcome r = run_sized(f, sse, false, body, 1 + rng() % 64);
        EXPECT_EQ(r.forwarded, body);
      }
    }
    const Outcome s = run_sized(Flavour::OpenAI, true, true, body, 1 + rng() % 64);
    EXPECT_EQ(s.forwarded, body);
  }
}

TEST(UsageRobustness, TruncatedStreamsNeverGivePartialUsage) {
  const std::vector<std::string> events = openai_events();
  const std::string body = join(events);
  const size_t usage_line_end = join({events.begin(), events.begin() + kOaiUsageEvent}).size() +
                                events[kOaiUsageEvent].size() - 2;  // before the blank line
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    const Outcome r = run_split(Flavour::OpenAI, true, false, body.substr(0, cut), cut / 3);
    EXPECT_EQ(r.forwarded, body.substr(0, cut));
    // Usage appears once its data line is complete (a final event without its blank line is still
    // examined), never before, and it is never a partial value.
    if (cut >= usage_line_end) {
      EXPECT_TRUE(same_usage(r.usage, kOaiUsage)) << cut << " " << describe(r.usage);
    } else {
      EXPECT_FALSE(r.usage.seen) << cut;
    }
  }
  const std::vector<std::string> a_events = anthropic_events();
  const std::string a_body = join(a_events);
  for (size_t cut = 0; cut <= a_body.size(); ++cut) {
    const Outcome r = run_whole(Flavour::Anthropic, true, false, a_body.substr(0, cut));
    // message_start's 1, then the content deltas dispatched so far (a lower bound), then
    // message_delta's 15 — never a partial value.
    const int64_t out = r.usage.output_tokens;
    EXPECT_TRUE(!r.usage.seen || out == 1 || out == 2 || out == 15) << cut << " " << describe(r.usage);
    EXPECT_EQ(r.usage.complete, out == 15) << cut;
  }
}

TEST(UsageRobustness, OversizeEventIsForwardedButNotExamined) {
  const std::string big_content(UsageExtractor::kMaxEventBytes + 1000, 'x');
  const std::string big_event = oai_event(R"("choices":[{"index":0,"delta":{"content":")" + big_content +
                                          R"("}}],"usage":{"prompt_tokens":1,"completion_tokens":1}})");
  const std::vector<std::string> events = openai_events();
  std::vector<std::string> with_big = events;
  with_big.insert(with_big.begin() + 1, big_event);
  const std::string body = join(with_big);
  for (size_t chunk : {size_t{32} << 10, size_t{4093}}) {
    const Outcome r = run_sized(Flavour::OpenAI, true, false, body, chunk);
    EXPECT_EQ(r.forwarded, body);
    EXPECT_TRUE(same_usage(r.usage, kOaiUsage)) << describe(r.usage);  // from the normal usage event
    EXPECT_EQ(r.events, with_big.size());

    // With suppression, the big event flows through and the usage-only chunk is still removed.
    std::vector<std::string> kept = with_big;
    kept.erase(kept.begin() + kOaiUsageEvent + 1);
    const Outcome s = run_sized(Flavour::OpenAI, true, true, body, chunk);
    EXPECT_EQ(s.forwarded, join(kept));
    EXPECT_TRUE(same_usage(s.usage, kOaiUsage));
  }
  // An oversize usage-only event is not examined, so it is not suppressed either.
  const std::string big_usage = oai_event(R"("choices":[],"pad":")" + big_content +
                                          R"(","usage":{"prompt_tokens":1,"completion_tokens":1}})");
  const Outcome s = run_sized(Flavour::OpenAI, true, true, big_usage, 32 << 10);
  EXPECT_EQ(s.forwarded, big_usage);
  EXPECT_FALSE(s.usage.seen);
  // An oversize line in one chunk (no partial buffering) behaves the same.
  const Outcome w = run_whole(Flavour::OpenAI, true, false, big_usage);
  EXPECT_FALSE(w.usage.seen);
  EXPECT_EQ(w.events, 1u);
}

TEST(UsageRobustness, ByteOrderMarkIsIgnoredOnSse) {
  const std::string body = "\xEF\xBB\xBF" + join(anthropic_events());
  check_every_split(Flavour::Anthropic, true, false, body, kAnthropicUsage, body, anthropic_events().size());
  // Not a BOM: the bytes belong to the first line (an unknown field), the stream still works.
  const std::string not_bom = "\xEF\xBB" + join(anthropic_events());
  const Outcome r = run_split(Flavour::Anthropic, true, false, not_bom, 1);
  EXPECT_TRUE(same_usage(r.usage, kAnthropicUsage));
}

TEST(UsageRobustness, FeedAfterFinishPassesThrough) {
  UsageExtractor ex(Flavour::OpenAI, true, true);
  EXPECT_TRUE(ex.finish().empty());
  const std::string late = "data: x\n\n";
  EXPECT_EQ(ex.feed(late).data(), late.data());
}

// ---------------------------------------------------------------------------------------------------
// Billing on disconnect: content deltas are a lower bound of the output until the final usage

// What the proxy reads when the client left: usage() after the chunks fed so far, no finish().
Usage usage_without_finish(Flavour flavour, bool suppress, std::string_view body, size_t chunk_size) {
  UsageExtractor ex(flavour, true, suppress);
  for (size_t i = 0; i < body.size(); i += chunk_size) (void)ex.feed(body.substr(i, chunk_size));
  return ex.usage();
}

std::string anthropic_delta(const std::string& delta) {
  return "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":" + delta + "}\n\n";
}
std::string anthropic_text_delta(int i) {
  return anthropic_delta("{\"type\":\"text_delta\",\"text\":\"tok" + std::to_string(i) + " \"}");
}
// An Anthropic stream of `n` text deltas: message_start (input 27, output 1), the deltas, then
// message_delta with output `final_output` and message_stop.
struct AnthropicStream {
  std::string head, tail;
  std::vector<std::string> deltas;
  std::string upto(size_t k) const {  // cut after the k-th delta's blank line
    std::string s = head;
    for (size_t i = 0; i < k; ++i) s += deltas[i];
    return s;
  }
  std::string whole() const { return upto(deltas.size()) + tail; }
};
AnthropicStream anthropic_stream(int n, int final_output) {
  AnthropicStream s;
  s.head =
      "event: message_start\n"
      R"(data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"glm-4.7","usage":{"input_tokens":27,"cache_read_input_tokens":0,"output_tokens":1}}})"
      "\n\n"
      "event: content_block_start\n"
      R"(data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"
      "\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n";
  for (int i = 0; i < n; ++i) s.deltas.push_back(anthropic_text_delta(i));
  s.tail = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
           "event: message_delta\n"
           R"(data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":)" +
           std::to_string(final_output) + "}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  return s;
}

// An OpenAI stream (include_usage shape): role chunk with "" content, `n` content chunks, the
// finish chunk, the usage-only chunk (completion `final_output`), [DONE].
struct OpenAIStream {
  std::string head, tail;
  std::vector<std::string> chunks;
  std::string upto(size_t k) const {
    std::string s = head;
    for (size_t i = 0; i < k; ++i) s += chunks[i];
    return s;
  }
  std::string whole() const { return upto(chunks.size()) + tail; }
};
OpenAIStream openai_stream(int n, int final_output) {
  OpenAIStream s;
  s.head = oai_event(R"("choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null)");
  for (int i = 0; i < n; ++i)
    s.chunks.push_back(oai_event(R"("choices":[{"index":0,"delta":{"content":"tok)" + std::to_string(i) +
                                 R"( "},"logprobs":null,"finish_reason":null}],"usage":null)"));
  s.tail = oai_event(R"("choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null)") +
           oai_event(R"("choices":[],"usage":{"prompt_tokens":31,"completion_tokens":)" + std::to_string(final_output) +
                     R"(,"total_tokens":)" + std::to_string(31 + final_output) + "}") +
           "data: [DONE]\n\n";
  return s;
}

TEST(UsageCutStream, AnthropicCutAfterNDeltasChargesAtLeastN) {
  const AnthropicStream st = anthropic_stream(200, 200);
  // Read to the end: exactly the upstream's usage (27 + 200).
  const Outcome full = run_sized(Flavour::Anthropic, true, false, st.whole(), 4096);
  EXPECT_TRUE(same_usage(full.usage, make_usage(27, 200, 0, 0, 0))) << describe(full.usage);
  EXPECT_TRUE(full.usage.complete);
  EXPECT_EQ(full.usage.content_deltas, 200);
  EXPECT_EQ(full.usage.total(), 227);
  // The client leaves after 190 deltas: message_delta never came; output is the 190 relayed, not
  // message_start's 1.
  const std::string cut = st.upto(190);
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{4096}, cut.size()}) {
    const Usage u = usage_without_finish(Flavour::Anthropic, false, cut, chunk);
    EXPECT_TRUE(same_usage(u, make_usage(27, 190, 0, 0, 0))) << chunk << ": " << describe(u);
    EXPECT_FALSE(u.complete) << chunk;
    EXPECT_EQ(u.content_deltas, 190) << chunk;
    EXPECT_EQ(u.total(), 217) << chunk;
  }
  // Every cut point: output is the number of deltas dispatched so far (at least message_start's 1).
  for (size_t k = 0; k <= 5; ++k) {
    const Usage u = usage_without_finish(Flavour::Anthropic, false, st.upto(k), 3);
    EXPECT_EQ(u.output_tokens, std::max<int64_t>(1, static_cast<int64_t>(k))) << k;
    EXPECT_EQ(u.input_tokens, 27) << k;
  }
  // Every split and framing of a short cut stream gives the same lower bound.
  const std::string short_cut = anthropic_stream(3, 3).upto(3);
  for (const std::string& variant : {short_cut, with_crlf(short_cut), with_cr(short_cut), with_multiline_data(short_cut)}) {
    check_every_split(Flavour::Anthropic, true, false, variant, make_usage(27, 3, 0, 0, 0), variant, 6);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(UsageCutStream, AnthropicDeltasWithoutContentAreNotCounted) {
  const std::string head = anthropic_stream(0, 0).head;
  const std::string body =
      head + anthropic_delta(R"({"type":"input_json_delta","partial_json":""})") +
      anthropic_delta(R"({"type":"input_json_delta","partial_json":"{\"city\": "})") +
      anthropic_delta(R"({"type":"thinking_delta","thinking":"Let me think"})") +
      anthropic_delta(R"({"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"})") +
      anthropic_delta(R"({"type":"text_delta","text":""})") + anthropic_delta(R"({"type":"text_delta","text":"a"})") +
      anthropic_delta(R"({"type":"text_delta", "text" : "b"})");
  const Usage u = usage_without_finish(Flavour::Anthropic, false, body, 5);
  EXPECT_EQ(u.content_deltas, 4);  // the tool input, the thinking, "a" and "b"
  EXPECT_EQ(u.output_tokens, 4);
  // Without `event:` lines, the data's "type" says which events are content deltas.
  std::string no_event_lines = body;
  size_t p;
  while ((p = no_event_lines.find("event: ")) != std::string::npos)
    no_event_lines.erase(p, no_event_lines.find('\n', p) + 1 - p);
  const Usage v = usage_without_finish(Flavour::Anthropic, false, no_event_lines, 5);
  EXPECT_EQ(v.content_deltas, 4);
  EXPECT_EQ(v.output_tokens, 4);
  // Text that merely mentions a delta in another event is not one.
  const std::string not_deltas =
      head + "event: content_block_start\n" +
      R"(data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":"content_block_delta"}})" + "\n\n";
  EXPECT_EQ(usage_without_finish(Flavour::Anthropic, false, not_deltas, 4096).content_deltas, 0);
}

TEST(UsageCutStream, OpenAICutAfterNChunksChargesAtLeastN) {
  const OpenAIStream st = openai_stream(200, 200);
  for (bool suppress : {false, true}) {
    const Outcome full = run_sized(Flavour::OpenAI, true, suppress, st.whole(), 4096);
    EXPECT_TRUE(same_usage(full.usage, make_usage(31, 200, 0, 0, 231))) << describe(full.usage);
    EXPECT_TRUE(full.usage.complete);
    EXPECT_EQ(full.usage.content_deltas, 200);
    // Cut after 150 content chunks: no usage object arrived; the role chunk's "" is not content.
    const std::string cut = st.upto(150);
    for (size_t chunk : {size_t{1}, size_t{13}, size_t{4096}, cut.size()}) {
      const Usage u = usage_without_finish(Flavour::OpenAI, suppress, cut, chunk);
      EXPECT_FALSE(u.seen) << chunk;
      EXPECT_FALSE(u.complete) << chunk;
      EXPECT_EQ(u.input_tokens, 0) << chunk;
      EXPECT_EQ(u.output_tokens, 150) << chunk;
      EXPECT_EQ(u.content_deltas, 150) << chunk;
      EXPECT_EQ(u.total(), 150) << chunk;
    }
    // Cut after the finish chunk, before the usage chunk: still the lower bound.
    const std::string before_usage = st.upto(200) + st.tail.substr(0, st.tail.find("data: ", 6));
    EXPECT_EQ(usage_without_finish(Flavour::OpenAI, suppress, before_usage, 100).output_tokens, 200);
  }
  Usage three;
  three.output_tokens = 3;
  const std::string short_cut = openai_stream(3, 3).upto(3);
  for (const std::string& variant : {short_cut, with_crlf(short_cut), with_cr(short_cut)}) {
    check_every_split(Flavour::OpenAI, true, false, variant, three, variant, 4);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // A trailing content chunk without its blank line is not dispatched to the client's parser: it
  // is not counted (as events() does not count it).
  const std::string unterminated = short_cut + oai_event(R"("choices":[{"index":0,"delta":{"content":"x"}}])").substr(0, 40);
  EXPECT_EQ(run_whole(Flavour::OpenAI, true, false, unterminated).usage.output_tokens, 3);
}

TEST(UsageCutStream, OpenAIWhatCountsAsAContentChunk) {
  auto deltas_of = [](const std::string& choices) {
    return usage_without_finish(Flavour::OpenAI, false, oai_event(choices), 4096).content_deltas;
  };
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"content":"a"}}])"), 1);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"content" : "a"}}])"), 1);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}])"), 1);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]}}])"), 1);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"role":"assistant","content":""}}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"content":null,"reasoning_content":""}}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"tool_calls":[ ]}}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{},"logprobs":{"content":[{"token":"a"}]}}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[{"index":0,"delta":{"role":"assistant","content":"","x":"\"content\":\"y"}}])"), 0);
  EXPECT_EQ(deltas_of(R"("choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0})"), 0);
  // "[DONE]" and errors are not content.
  EXPECT_EQ(usage_without_finish(Flavour::OpenAI, false, "data: [DONE]\n\n", 64).content_deltas, 0);
}

TEST(UsageCutStream, CompleteStreamsAreExactAndNeverDoubleCounted) {
  // The fixtures: 2 content deltas each, final usage 46 / 15: reported as is, deltas not added.
  const Outcome o = run_whole(Flavour::OpenAI, true, false, join(openai_events()));
  EXPECT_TRUE(same_usage(o.usage, kOaiUsage)) << describe(o.usage);
  EXPECT_TRUE(o.usage.complete);
  EXPECT_EQ(o.usage.content_deltas, 2);
  const Outcome a = run_whole(Flavour::Anthropic, true, false, join(anthropic_events()));
  EXPECT_TRUE(same_usage(a.usage, kAnthropicUsage)) << describe(a.usage);
  EXPECT_TRUE(a.usage.complete);
  EXPECT_EQ(a.usage.content_deltas, 2);
  // Z.AI style, usage on the finish chunk.
  const Outcome z = run_whole(Flavour::OpenAI, true, false, join(openai_finish_usage_events()));
  EXPECT_TRUE(same_usage(z.usage, make_usage(8, 262, 0, 0, 270))) << describe(z.usage);
  EXPECT_TRUE(z.usage.complete);
  // Plain JSON bodies: no deltas, the usage object is final.
  const Outcome p = run_whole(Flavour::OpenAI, false, false, R"({"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":2,"completion_tokens":1}})");
  EXPECT_EQ(p.usage.content_deltas, 0);
  EXPECT_TRUE(p.usage.complete);
  EXPECT_EQ(p.usage.output_tokens, 1);
}

TEST(UsageCutStream, ArrivedUsageIsNeverRaised) {
  // More deltas than the upstream's token count (a delta is not always a token): once the final
  // usage arrived, it is the answer, in both flavours.
  const Outcome a = run_sized(Flavour::Anthropic, true, false, anthropic_stream(20, 15).whole(), 64);
  EXPECT_TRUE(same_usage(a.usage, make_usage(27, 15, 0, 0, 0))) << describe(a.usage);
  EXPECT_TRUE(a.usage.complete);
  EXPECT_EQ(a.usage.content_deltas, 20);
  for (bool suppress : {false, true}) {
    const Outcome o = run_sized(Flavour::OpenAI, true, suppress, openai_stream(20, 15).whole(), 64);
    EXPECT_TRUE(same_usage(o.usage, make_usage(31, 15, 0, 0, 46))) << describe(o.usage);
    EXPECT_TRUE(o.usage.complete);
    EXPECT_EQ(o.usage.total(), 46);
  }
  // The stream ends after message_delta but before message_stop: message_delta's figure is final.
  const AnthropicStream st = anthropic_stream(20, 15);
  const std::string no_stop = st.whole().substr(0, st.whole().find("event: message_stop"));
  const Usage u = usage_without_finish(Flavour::Anthropic, false, no_stop, 64);
  EXPECT_EQ(u.output_tokens, 15);
  EXPECT_TRUE(u.complete);
  // Usage on every chunk (a running count, as some servers send): the latest figure covers the
  // chunk it rides on, so a cut there is exact, not raised.
  std::string running;
  for (int i = 1; i <= 5; ++i)
    running += oai_event(R"("choices":[{"index":0,"delta":{"content":"t"}}],"usage":{"prompt_tokens":4,"completion_tokens":)" +
                         std::to_string(i) + R"(,"total_tokens":)" + std::to_string(4 + i) + "}");
  const Usage r = usage_without_finish(Flavour::OpenAI, false, running, 50);
  EXPECT_TRUE(same_usage(r, make_usage(4, 5, 0, 0, 9))) << describe(r);
  EXPECT_TRUE(r.complete);
  // Content after the last usage object (out of protocol): the usage is no longer final and the
  // output, and total_tokens with it, are raised to the deltas seen.
  const std::string after = oai_event(R"("choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5})") +
                            oai_event(R"("choices":[{"index":0,"delta":{"content":"a"}}])") +
                            oai_event(R"("choices":[{"index":0,"delta":{"content":"b"}}])");
  const Usage l = usage_without_finish(Flavour::OpenAI, false, after, 50);
  EXPECT_FALSE(l.complete);
  EXPECT_EQ(l.output_tokens, 2);
  EXPECT_EQ(l.total_tokens, 6);
  EXPECT_EQ(l.total(), 6);
}

TEST(UsageTotals, TotalPrefersTotalTokens) {
  EXPECT_EQ(make_usage(10, 5, 100, 7, 0).total(), 15);  // cache tokens are not added
  EXPECT_EQ(make_usage(10, 5, 0, 0, 20).total(), 20);
  EXPECT_EQ(Usage{}.total(), 0);
}

}  // namespace

// Token counts are read with the request scanner: integer literals, and numbers written another
// way (12.0, 1e2) as their integral value; strings, booleans, nested look-alikes and broken JSON
// give nothing.
TEST(UsageNumbers, IntegralFormsCountOthersDoNot) {
  const auto plain = [](std::string_view body) { return run_whole(Flavour::OpenAI, false, false, body).usage; };
  Usage u = plain(R"({"usage":{"prompt_tokens":12.0,"completion_tokens":1e2,"total_tokens":112}})");
  EXPECT_TRUE(u.seen);
  EXPECT_EQ(u.input_tokens, 12);
  EXPECT_EQ(u.output_tokens, 100);
  EXPECT_EQ(u.total_tokens, 112);
  u = plain(R"({"usage":{"prompt_tokens":"7","completion_tokens":true,"total_tokens":null}})");
  EXPECT_TRUE(u.seen);
  EXPECT_EQ(u.input_tokens, 0);
  EXPECT_EQ(u.output_tokens, 0);
  EXPECT_EQ(u.total_tokens, 0);
  // The last of duplicate members wins, as in most parsers; details are an object or nothing.
  u = plain(R"({"usage":{"prompt_tokens":1,"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":3}}})");
  EXPECT_EQ(u.input_tokens, 5);
  EXPECT_EQ(u.cache_read_input_tokens, 3);
  u = plain(R"({"usage":{"prompt_tokens":5,"prompt_tokens_details":[{"cached_tokens":3}]}})");
  EXPECT_EQ(u.cache_read_input_tokens, 0);
  EXPECT_FALSE(plain(R"({"usage":{"prompt_tokens":5,}})").seen);  // not JSON
}

TEST(UsageNumbers, SseUsageChunkDroppedOnlyWithEmptyChoices) {
  const std::string usage_only = "data: {\"choices\": [ ],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n";
  const std::string with_choice =
      "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n";
  Outcome r = run_whole(Flavour::OpenAI, true, true, usage_only);
  EXPECT_EQ(r.forwarded, "");
  EXPECT_EQ(r.usage.output_tokens, 3);
  r = run_whole(Flavour::OpenAI, true, true, with_choice);
  EXPECT_EQ(r.forwarded, with_choice);
  EXPECT_EQ(r.usage.input_tokens, 2);
}

// A negative count is as invalid as a string (nothing to charge for it), and no count, however
// large, makes the running figures overflow (UBSan once caught refresh() computing
// deltas - INT64_MIN).
TEST(UsageNumbers, NegativeCountsAreInvalidAndNothingOverflows) {
  const auto plain = [](std::string_view body) { return run_whole(Flavour::OpenAI, false, false, body).usage; };
  Usage u = plain(R"({"usage":{"prompt_tokens":-3,"completion_tokens":-12.5,"total_tokens":-1e3}})");
  EXPECT_TRUE(u.seen);
  EXPECT_TRUE(same_usage(u, make_usage(0, 0, 0, 0, 0))) << describe(u);
  u = plain(R"({"usage":{"prompt_tokens":-0,"completion_tokens":-0.0,"total_tokens":7}})");
  EXPECT_TRUE(same_usage(u, make_usage(0, 0, 0, 0, 7))) << describe(u);

  // OpenAI: content after a usage with INT64_MIN completion tokens: the output is the deltas seen.
  const std::string chunk_a = oai_event(R"("choices":[{"index":0,"delta":{"content":"a"}}])");
  const std::string chunk_b = oai_event(R"("choices":[{"index":0,"delta":{"content":"b"}}])");
  std::string body =
      oai_event(R"("choices":[],"usage":{"prompt_tokens":4,"completion_tokens":-9223372036854775808,"total_tokens":5})") +
      chunk_a + chunk_b;
  u = usage_without_finish(Flavour::OpenAI, false, body, 50);
  EXPECT_FALSE(u.complete);
  EXPECT_EQ(u.content_deltas, 2);
  EXPECT_EQ(u.output_tokens, 2);
  EXPECT_EQ(u.total_tokens, 7);
  // ...and a total_tokens at the int64 maximum saturates instead of wrapping.
  body = oai_event(R"("choices":[],"usage":{"prompt_tokens":4,"completion_tokens":0,"total_tokens":9223372036854775807})") +
         chunk_a + chunk_b;
  u = usage_without_finish(Flavour::OpenAI, false, body, 50);
  EXPECT_EQ(u.output_tokens, 2);
  EXPECT_EQ(u.total_tokens, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(u.total(), std::numeric_limits<int64_t>::max());

  // Anthropic: an invalid field is ignored like a missing one: it keeps the earlier value, and a
  // message_delta without a valid output_tokens is not the closing figure.
  AnthropicStream st = anthropic_stream(3, 3);
  st.head = replace_all(st.head, R"("input_tokens":27)", R"("input_tokens":-9223372036854775808)");
  st.head = replace_all(st.head, R"("output_tokens":1)", R"("output_tokens":-9223372036854775808)");
  st.tail = replace_all(st.tail, R"("output_tokens":3})", R"("input_tokens":-1,"output_tokens":-9223372036854775808})");
  const Outcome a = run_sized(Flavour::Anthropic, true, false, st.whole(), 64);
  EXPECT_TRUE(same_usage(a.usage, make_usage(0, 3, 0, 0, 0))) << describe(a.usage);
  EXPECT_FALSE(a.usage.complete);
  EXPECT_EQ(a.usage.content_deltas, 3);

  // Usage::total() saturates too.
  const int64_t max = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(make_usage(max, 5, 0, 0, 0).total(), max);
  EXPECT_EQ(make_usage(max - 1, 1, 0, 0, 0).total(), max);
}
