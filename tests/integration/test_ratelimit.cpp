// The ratelimit plugin (plugins/ratelimit, spec in its README.md) with the real binary, behind the
// auth plugin: exact charging of the usage the core extracted (both flavours, streamed and not,
// cache tokens, a client that leaves mid-stream), 429 refusals in both flavours with their body
// and headers (and the upstream never called for them), the rate-limit headers of admitted
// responses, the GET /stats shape, persistence across a clean restart, and the README's
// worst-case overshoot bound with three proxies on one Redis (and with one sqlite instance).
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>

#include "../support/redis_server.hpp"
#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

const std::string kAuthSo = plugin_path("auth");
const std::string kRatelimitSo = plugin_path("ratelimit");
const std::string kAdminToken = "rl-adm1n-t0ken";
const std::map<std::string, std::string> kAdmin{{"Authorization", "Bearer " + kAdminToken}};
constexpr int64_t kWindowMs = 5LL * 3600 * 1000;  // the default window
constexpr int64_t kBucketMs = 60'000;              // the store's default bucket
const std::string kLimitMessage = "Token limit exceeded for 5-hour window";

using Headers = std::map<std::string, std::string>;

// [admin] + auth + ratelimit (in that order), with the ratelimit settings given.
std::string plugins_toml(const std::string& ratelimit_settings = "window = \"5h\"\ncount_cache_tokens = true\n") {
  return "\n[admin]\ntoken = \"" + kAdminToken + "\"\n\n[[plugins]]\nname = \"auth\"\npath = \"" + kAuthSo +
         "\"\n\n[[plugins]]\nname = \"ratelimit\"\npath = \"" + kRatelimitSo + "\"\n[plugins.settings]\n" +
         ratelimit_settings + "\n";
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// RFC 3339 (`2026-01-18T00:00:00Z`, fraction and offset optional) to Unix ms; -1 if it does not parse.
int64_t rfc3339_ms(const std::string& text) {
  static const std::regex re(R"(^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.(\d{1,9}))?(Z|([+-])(\d{2}):(\d{2}))$)");
  std::smatch m;
  if (!std::regex_match(text, m, re)) return -1;
  std::tm t{};
  t.tm_year = std::stoi(m[1]) - 1900;
  t.tm_mon = std::stoi(m[2]) - 1;
  t.tm_mday = std::stoi(m[3]);
  t.tm_hour = std::stoi(m[4]);
  t.tm_min = std::stoi(m[5]);
  t.tm_sec = std::stoi(m[6]);
  int64_t ms = static_cast<int64_t>(timegm(&t)) * 1000;
  if (m[8].matched) ms += std::stoi((m[8].str() + "00").substr(0, 3));
  if (m[10].matched) {
    const int64_t offset = (std::stoi(m[11]) * 60 + std::stoi(m[12])) * 60'000LL;
    ms += m[10] == "+" ? -offset : offset;
  }
  return ms;
}

// The JSON type of a member of a parsed object.
std::string kind(const Poco::JSON::Object::Ptr& obj, const std::string& name) {
  if (!obj || !obj->has(name)) return "missing";
  const Poco::Dynamic::Var v = obj->get(name);
  if (v.isEmpty()) return "null";
  if (v.type() == typeid(Poco::JSON::Object::Ptr)) return "object";
  if (v.type() == typeid(Poco::JSON::Array::Ptr)) return "array";
  if (v.isBoolean()) return "bool";
  if (v.isInteger()) return "int";
  if (v.isNumeric()) return "number";
  if (v.isString()) return "string";
  return "other";
}

std::string masked(const std::string& plain) {
  return plain.size() < 11 ? std::string("<short>") : plain.substr(0, 7) + "\xE2\x80\xA6" + plain.substr(plain.size() - 4);
}

std::string next_request_id() {
  static std::atomic<int> n{0};
  return "rl-test-" + std::to_string(now_ms()) + "-" + std::to_string(n.fetch_add(1));
}

// Bodies whose ratelimit estimate (max_tokens + body bytes / 4) equals the mock's usage exactly:
// the client's model is the proxy's [proxy] model, so the body reaches the mock unchanged; the mock
// reports prompt = body bytes / 4 and completion = 3 (its default piece count).
std::string exact_openai_body() {
  return R"({"model":"glm-4.7","max_tokens":3,"messages":[{"role":"user","content":"Hello there"}]})";
}
std::string exact_anthropic_body() {
  return R"({"model":"glm-4.7","max_tokens":3,"messages":[{"role":"user","content":"Hello there"}]})";
}
// The README's estimate rule for a body with an integer max_tokens (default settings).
long estimate_of(const std::string& body) {
  const long max_tokens = jlong(body, "max_tokens");
  return max_tokens > 0 ? std::min<long>(max_tokens + static_cast<long>(body.size() / 4), 32768) : 4096;
}

// The tokens one access-log line reports: in + out + cache read + cache creation.
long logged_usage(const std::string& line) {
  return jlong(line, "tokens_in", 0) + jlong(line, "tokens_out", 0) + jlong(line, "cache_read_tokens", 0) +
         jlong(line, "cache_creation_tokens", 0);
}

struct Stats {
  int status = 0;
  long used = -1, lifetime = -1, remaining = -1;
  std::string body;
};

Stats stats(uint16_t port, const std::string& key) {
  Stats s;
  const Response r = http(port, "GET", "/stats", "", {{"Authorization", "Bearer " + key}});
  s.status = r.status;
  s.body = r.body;
  if (r.status == 200) {
    s.used = jlong(r.body, "current_usage.tokens_used_in_current_window");
    s.lifetime = jlong(r.body, "total_lifetime_tokens");
    s.remaining = jlong(r.body, "current_usage.remaining_tokens");
  }
  return s;
}

// on_complete runs just after the client got its response: poll /stats until the window shows
// `used` (or 5 s pass), and return what it shows then.
Stats stats_until(uint16_t port, const std::string& key, long used) {
  Stats s;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  do {
    s = stats(port, key);
    if (s.used == used) break;
    std::this_thread::sleep_for(10ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return s;
}

struct Key {
  std::string id, plain;
};

Key create_key(uint16_t port, const std::string& body) {
  const Response r = http(port, "POST", "/admin/keys", body, kAdmin);
  EXPECT_EQ(r.status, 201) << body << " -> " << r.body;
  if (r.status != 201) return {"<none>", "<none>"};
  return {jget(r.body, "id"), jget(r.body, "key")};
}

// The proxied lines (/v1/…) of an access log.
std::vector<std::string> proxied_lines(const Proxy& proxy) {
  std::vector<std::string> out;
  for (const auto& line : proxy.access_log())
    if (line.find("\"path\":\"/v1/") != std::string::npos) out.push_back(line);
  return out;
}

class Ratelimit : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  ProxyOptions opts;

  void start(const std::string& ratelimit_settings = "window = \"5h\"\ncount_cache_tokens = true\n") {
    ASSERT_TRUE(fs::exists(kAuthSo)) << "auth plugin not built: " << kAuthSo;
    ASSERT_TRUE(fs::exists(kRatelimitSo)) << "ratelimit plugin not built: " << kRatelimitSo;
    if (!mock) mock = std::make_unique<Mock>(dir);
    opts.extra_toml = plugins_toml(ratelimit_settings);
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  uint16_t port() const { return proxy->port(); }

  // One request with a fresh X-Request-ID; `rid` receives it (to find the access-log line).
  Response call(const std::string& key, const std::string& path, const std::string& body, Headers h, std::string& rid) const {
    rid = next_request_id();
    h["Authorization"] = "Bearer " + key;
    h["X-Request-ID"] = rid;
    return http(port(), "POST", path, body, h);
  }
  StreamedResponse call_stream(const std::string& key, const std::string& path, const std::string& body, Headers h,
                               std::string& rid) const {
    rid = next_request_id();
    h["Authorization"] = "Bearer " + key;
    h["X-Request-ID"] = rid;
    return http_stream(port(), "POST", path, body, h, 10s);
  }
  // The access-log line of a request (written after on_complete ran).
  std::string log_line(const std::string& rid) const { return proxy->wait_log({"\"id\":\"" + rid + "\""}); }
};

// ---------------------------------------------------------------------------------------------
// 1. Exact charging

TEST_F(Ratelimit, BothFlavoursStreamedOrNotChargeExactlyTheReportedUsage) {
  start();
  const Key k = create_key(port(), R"({"name":"meter","token_limit_per_5h":10000000})");
  Stats before = stats(port(), k.plain);
  ASSERT_EQ(before.status, 200) << before.body;
  ASSERT_EQ(before.used, 0) << before.body;
  ASSERT_EQ(before.lifetime, 0) << before.body;

  // Checks that the window and the lifetime counter grew by exactly `expected`.
  auto expect_charged = [&](long expected, const std::string& what) {
    ASSERT_GT(expected, 0) << what;
    const Stats after = stats_until(port(), k.plain, before.used + expected);
    EXPECT_EQ(after.used - before.used, expected) << what << ": " << after.body;
    EXPECT_EQ(after.lifetime - before.lifetime, expected) << what << ": " << after.body;
    // on_complete runs once: nothing more arrives later.
    std::this_thread::sleep_for(150ms);
    const Stats later = stats(port(), k.plain);
    EXPECT_EQ(later.used, after.used) << what << ": charged again later";
    before = later;
  };
  std::string rid;

  {  // OpenAI, not streamed: the usage total.
    const Response r = call(k.plain, "/v1/chat/completions", openai_body(false), {}, rid);
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string line = log_line(rid);
    const long total = jlong(r.body, "usage.total_tokens");
    EXPECT_EQ(jlong(line, "tokens_in") + jlong(line, "tokens_out"), total) << line;
    expect_charged(total, "openai non-stream");
  }
  {  // OpenAI, streamed, the client did not ask for include_usage: the core asked for it, and the
     // client must not see the usage-only chunk.
    const StreamedResponse r = call_stream(k.plain, "/v1/chat/completions", openai_body(true), {}, rid);
    ASSERT_EQ(r.status, 200) << r.error;
    const std::string body = r.body();
    EXPECT_NE(body.find("data: [DONE]"), std::string::npos) << body;
    EXPECT_EQ(body.find("\"usage\":{"), std::string::npos) << "the client got a usage chunk it did not ask for:\n" << body;
    const std::string line = log_line(rid);
    EXPECT_EQ(jget(line, "stream"), "true") << line;
    EXPECT_GT(jlong(line, "tokens_out"), 0) << line;
    expect_charged(jlong(line, "tokens_in") + jlong(line, "tokens_out"), "openai stream without include_usage");
  }
  {  // Anthropic, not streamed.
    const Response r = call(k.plain, "/v1/messages", anthropic_body(false), {}, rid);
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string line = log_line(rid);
    const long usage = logged_usage(line);
    EXPECT_EQ(usage, jlong(r.body, "usage.input_tokens") + jlong(r.body, "usage.output_tokens")) << line;
    expect_charged(usage, "anthropic non-stream");
  }
  {  // Anthropic, streamed, with cache tokens (count_cache_tokens = true).
    const StreamedResponse r = call_stream(k.plain, "/v1/messages", anthropic_body(true),
                                           {{"x-mock-cache-read", "37"}, {"x-mock-cache-creation", "11"}}, rid);
    ASSERT_EQ(r.status, 200) << r.error;
    EXPECT_NE(r.body().find("message_stop"), std::string::npos) << r.body();
    const std::string line = log_line(rid);
    EXPECT_EQ(jlong(line, "cache_read_tokens"), 37) << line;
    EXPECT_EQ(jlong(line, "cache_creation_tokens"), 11) << line;
    EXPECT_GT(jlong(line, "tokens_in"), 0) << line;
    EXPECT_GT(jlong(line, "tokens_out"), 1) << line;  // message_delta's output_tokens
    expect_charged(logged_usage(line), "anthropic stream with cache tokens");
  }
  {  // Anthropic, not streamed, with cache tokens too.
    const Response r = call(k.plain, "/v1/messages", anthropic_body(false),
                            {{"x-mock-cache-read", "5"}, {"x-mock-cache-creation", "3"}}, rid);
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string line = log_line(rid);
    EXPECT_EQ(jlong(line, "cache_read_tokens"), 5) << line;
    EXPECT_EQ(jlong(line, "cache_creation_tokens"), 3) << line;
    expect_charged(logged_usage(line), "anthropic non-stream with cache tokens");
  }
}

// The reservation comes from the body's own top-level max_tokens, as the core's scan found it
// (request_body_member): the first request on a fresh key leaves limit - estimate in the
// x-ratelimit-remaining-tokens header.
TEST_F(Ratelimit, TheEstimateReadsTheTopLevelMaxTokensOnly) {
  start();
  struct Case {
    std::string what, body;
    long estimate;
  };
  const std::string top = R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi","max_tokens":5000}],"max_tokens":100})";
  const std::string escaped = R"({"model":"glm-4.7","m\u0061x_tokens":40,"messages":[{"role":"user","content":"hi"}]})";
  const std::string twice = R"({"model":"glm-4.7","max_tokens":7,"max_tokens":70,"messages":[]})";
  const std::string nested = R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi","max_tokens":5000}]})";
  const std::string completion = R"({"model":"glm-4.7","max_tokens":0,"max_completion_tokens":60,"messages":[]})";
  const std::vector<Case> cases{
      {"top-level beside a nested one", top, 100 + static_cast<long>(top.size() / 4)},
      {"escaped key", escaped, 40 + static_cast<long>(escaped.size() / 4)},
      {"given twice: the last", twice, 70 + static_cast<long>(twice.size() / 4)},
      {"only nested: the default reservation", nested, 4096},
      {"max_completion_tokens when max_tokens is not positive", completion, 60 + static_cast<long>(completion.size() / 4)},
  };
  constexpr long kLimit = 1'000'000;
  for (const auto& c : cases) {
    const Key k = create_key(port(), R"({"name":"estimate","token_limit_per_5h":1000000})");
    std::string rid;
    const Response r = call(k.plain, "/v1/chat/completions", c.body, {}, rid);
    ASSERT_EQ(r.status, 200) << c.what << ": " << r.body;
    EXPECT_EQ(r.header("x-ratelimit-remaining-tokens"), std::to_string(kLimit - c.estimate)) << c.what;
  }
}

// ---------------------------------------------------------------------------------------------
// 2. A client that leaves mid-stream

TEST_F(Ratelimit, ClientDisconnectMidStreamIsChargedTheUsageSeenSoFar) {
  start();
  const Key k = create_key(port(), R"({"name":"leaver","token_limit_per_5h":1000000})");
  const Stats before = stats(port(), k.plain);
  ASSERT_EQ(before.used, 0) << before.body;

  const std::string body = anthropic_body(true);
  const std::string rid = next_request_id();
  std::string received;
  {
    Poco::Net::HTTPClientSession session("127.0.0.1", port());
    session.setTimeout(Poco::Timespan(5, 0));
    Poco::Net::HTTPRequest req(Poco::Net::HTTPRequest::HTTP_POST, "/v1/messages", Poco::Net::HTTPMessage::HTTP_1_1);
    req.set("Authorization", "Bearer " + k.plain);
    req.set("X-Request-ID", rid);
    req.set("x-mock-chunks", "40");
    req.set("x-mock-delay-ms", "100");  // 4 s of stream: the client leaves long before its end
    req.setContentType("application/json");
    req.setContentLength64(static_cast<Poco::Int64>(body.size()));
    session.sendRequest(req) << body;
    Poco::Net::HTTPResponse resp;
    std::istream& in = session.receiveResponse(resp);
    ASSERT_EQ(resp.getStatus(), 200);
    char c = 0;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (received.find("content_block_delta") == std::string::npos && std::chrono::steady_clock::now() < deadline &&
           in.get(c))
      received.push_back(c);
    ASSERT_NE(received.find("content_block_delta"), std::string::npos) << received;
    session.abort();  // close the socket mid-stream
  }
  // The input tokens the client saw in message_start.
  const auto start_at = received.find("event: message_start\ndata: ");
  ASSERT_NE(start_at, std::string::npos) << received;
  const auto data_at = start_at + std::string("event: message_start\ndata: ").size();
  const std::string start_event = received.substr(data_at, received.find('\n', data_at) - data_at);
  const long input = jlong(start_event, "message.usage.input_tokens");
  ASSERT_GT(input, 0) << start_event;

  const std::string line = log_line(rid);  // written after on_complete ran
  EXPECT_EQ(jget(line, "client_gone"), "true") << line;
  EXPECT_EQ(jlong(line, "tokens_in"), input) << line;
  EXPECT_LT(jlong(line, "tokens_out"), 40) << "the stream ran to its end: " << line;
  // README ("Charging"): a client that left mid-stream is charged the usage seen so far (Anthropic
  // reports input tokens at the start), with the output at least the content deltas relayed.
  // Usage was seen (message_start), so the charge is exactly that usage — at least the input
  // tokens, and not the estimate.
  const long seen = logged_usage(line);
  const long estimate = estimate_of(body);
  ASSERT_NE(seen, estimate) << "test cannot tell the two rules apart";
  const Stats after = stats_until(port(), k.plain, seen);
  EXPECT_EQ(after.used, seen) << "expected the usage seen so far (" << seen << "), not the estimate (" << estimate
                              << "): " << after.body << "\n" << line;
  EXPECT_GE(after.used, input) << after.body;
  EXPECT_LT(after.used, estimate) << after.body;
  EXPECT_EQ(after.lifetime, seen) << after.body;
}

// Billing on disconnect (README "Charging"): the mock streams 200 content deltas, 10 ms apart; the
// client reads 150 of them and closes. The charge is never less than what the client received:
// Anthropic input + at least 150 (message_delta never came, message_start said output 1); OpenAI
// (no usage chunk came) at least 150 — here more than the request's reservation
// (default_reservation = 10, as a request without max_tokens whose stream outgrew the estimate).
TEST_F(Ratelimit, DisconnectNeverLowersTheChargeBelowWhatWasRelayed) {
  start("window = \"5h\"\ndefault_reservation = 10\n");
  constexpr int kDeltas = 200;
  constexpr int kRead = 150;
  for (const bool anthropic : {true, false}) {
    SCOPED_TRACE(anthropic ? "anthropic" : "openai");
    const Key k = create_key(port(), anthropic ? R"({"name":"cut-a","token_limit_per_5h":1000000})"
                                               : R"({"name":"cut-o","token_limit_per_5h":1000000})");
    ASSERT_EQ(stats(port(), k.plain).used, 0);
    const std::string path = anthropic ? "/v1/messages" : "/v1/chat/completions";
    const std::string body = anthropic ? anthropic_body(true) : openai_body(true);  // OpenAI: no max_tokens
    // One content delta as the client sees it (the mock's pieces are "tok<i> ").
    const std::string marker = anthropic ? "event: content_block_delta" : R"("delta":{"content":"tok)";
    const std::string rid = next_request_id();
    std::string received;
    int deltas = 0;
    {
      Poco::Net::HTTPClientSession session("127.0.0.1", port());
      session.setTimeout(Poco::Timespan(5, 0));
      Poco::Net::HTTPRequest req(Poco::Net::HTTPRequest::HTTP_POST, path, Poco::Net::HTTPMessage::HTTP_1_1);
      req.set("Authorization", "Bearer " + k.plain);
      req.set("X-Request-ID", rid);
      req.set("x-mock-chunks", std::to_string(kDeltas));
      req.set("x-mock-delay-ms", "10");  // 2 s of stream: the client leaves ~0.5 s before its end
      req.setContentType("application/json");
      req.setContentLength64(static_cast<Poco::Int64>(body.size()));
      session.sendRequest(req) << body;
      Poco::Net::HTTPResponse resp;
      std::istream& in = session.receiveResponse(resp);
      ASSERT_EQ(resp.getStatus(), 200);
      char c = 0;
      const auto deadline = std::chrono::steady_clock::now() + 10s;
      while (deltas < kRead && std::chrono::steady_clock::now() < deadline && in.get(c)) {
        received.push_back(c);
        if (received.size() >= marker.size() && received.compare(received.size() - marker.size(), marker.size(), marker) == 0)
          ++deltas;
      }
      // The event whose marker was just read is relayed whole (it is one write): count it as
      // received even though the client stops reading here.
      ASSERT_EQ(deltas, kRead) << received;
      session.abort();  // close the socket mid-stream
    }
    long input = 0;
    if (anthropic) {
      const auto at = received.find("event: message_start\ndata: ");
      ASSERT_NE(at, std::string::npos) << received;
      const auto data_at = at + std::string("event: message_start\ndata: ").size();
      input = jlong(received.substr(data_at, received.find('\n', data_at) - data_at), "message.usage.input_tokens");
      ASSERT_GT(input, 0);
    }

    const std::string line = log_line(rid);
    EXPECT_EQ(jget(line, "client_gone"), "true") << line;
    const long out = jlong(line, "tokens_out");
    EXPECT_GE(out, kRead) << "output below the deltas the client received: " << line;
    EXPECT_LT(out, kDeltas) << "the stream was not cut (the test proves nothing): " << line;
    EXPECT_EQ(jlong(line, "tokens_in"), input) << line;
    // Charged: the usage reported (Anthropic), or the relayed lower bound, which exceeds the
    // reservation of 10 (OpenAI).
    const long expected = anthropic ? logged_usage(line) : out;
    const Stats after = stats_until(port(), k.plain, expected);
    EXPECT_EQ(after.used, expected) << after.body << "\n" << line;
    EXPECT_GE(after.used, input + kRead) << after.body;
    EXPECT_EQ(after.lifetime, expected) << after.body;
  }
}

// Calls that cannot generate tokens (README "Charging") reserve nothing and are charged nothing:
// GET /v1/models and POST /v1/messages/count_tokens through auth + ratelimit leave the key's usage
// as it was — also while they are in flight (the remaining-tokens header) — while a generation
// call next to them is still charged.
TEST_F(Ratelimit, CallsThatCannotGenerateAreNotCharged) {
  start();
  constexpr long kLimit = 100000;
  const Key k = create_key(port(), R"({"name":"lister","token_limit_per_5h":100000})");
  const Headers auth{{"Authorization", "Bearer " + k.plain}};
  auto expect_free = [&](const Response& r, const std::string& rid, long used_before, const std::string& what) {
    ASSERT_EQ(r.status, 200) << what << ": " << r.body;
    EXPECT_EQ(to_long(r.header(what.find("count_tokens") != std::string::npos ? "anthropic-ratelimit-tokens-remaining"
                                                                               : "x-ratelimit-remaining-tokens")),
              kLimit - used_before)
        << what << ": a reservation was held";
    log_line(rid);  // on_complete ran
    const Stats s = stats(port(), k.plain);
    EXPECT_EQ(s.used, used_before) << what << ": " << s.body;
    EXPECT_EQ(s.lifetime, used_before) << what << ": " << s.body;
  };
  auto get_models = [&](std::string& rid) {
    rid = next_request_id();
    Headers h = auth;
    h["X-Request-ID"] = rid;
    return http(port(), "GET", "/v1/models", "", h);
  };

  std::string rid;
  Response r = get_models(rid);
  EXPECT_NE(r.body.find("glm-4.7"), std::string::npos) << r.body;
  expect_free(r, rid, 0, "GET /v1/models");
  r = call(k.plain, "/v1/messages/count_tokens", anthropic_body(false), {}, rid);
  EXPECT_NE(r.body.find("input_tokens"), std::string::npos) << r.body;
  expect_free(r, rid, 0, "POST /v1/messages/count_tokens");

  // A generation call is still metered...
  r = call(k.plain, "/v1/chat/completions", openai_body(false), {}, rid);
  ASSERT_EQ(r.status, 200) << r.body;
  const long total = jlong(r.body, "usage.total_tokens");
  ASSERT_GT(total, 0) << r.body;
  ASSERT_EQ(stats_until(port(), k.plain, total).used, total);
  // ...and listing models after it changes nothing.
  r = get_models(rid);
  expect_free(r, rid, total, "GET /v1/models after a generation");
}

// ---------------------------------------------------------------------------------------------
// 3. 429 refusals and the rate-limit headers

TEST_F(Ratelimit, RefusalsInBothFlavoursWithBodyHeadersAndNoUpstreamCall) {
  start();
  constexpr long kLimit = 50;
  for (const bool anthropic : {false, true}) {
    const std::string flavour = anthropic ? "anthropic" : "openai";
    const Key k = create_key(port(), R"({"name":"small-)" + flavour + R"(","token_limit_per_5h":50})");
    const std::string path = anthropic ? "/v1/messages" : "/v1/chat/completions";
    const std::string body = anthropic ? exact_anthropic_body() : exact_openai_body();
    const long estimate = estimate_of(body);
    ASSERT_LT(estimate, kLimit);
    const int64_t first_at = now_ms();
    long used = 0;  // the settled usage (from the access log) before each request
    long last_remaining = kLimit + 1;
    int admitted = 0;
    Response refused;
    std::string rid;
    int64_t refused_at = 0;
    long upstream_before_refusal = -1;
    for (int i = 0; i < 10; ++i) {
      const long upstream_before = mock->requests();
      const int64_t sent_at = now_ms();
      const Response r = call(k.plain, path, body, {}, rid);
      const int64_t answered_at = now_ms();
      if (r.status == 429) {
        refused = r;
        refused_at = sent_at;
        upstream_before_refusal = upstream_before;
        break;
      }
      ASSERT_EQ(r.status, 200) << flavour << ": " << r.body;
      ++admitted;
      EXPECT_LT(used, kLimit) << flavour << ": admitted although the usage already reached the limit";
      // Headers of an admitted response: the limit, and what remains after this request's reservation.
      const long remaining = std::max<long>(0, kLimit - used - estimate);
      if (anthropic) {
        EXPECT_EQ(r.header("anthropic-ratelimit-tokens-limit"), "50") << flavour;
        EXPECT_EQ(to_long(r.header("anthropic-ratelimit-tokens-remaining")), remaining) << flavour << " request " << i;
        const int64_t reset = rfc3339_ms(r.header("anthropic-ratelimit-tokens-reset"));
        EXPECT_GT(reset, first_at - kBucketMs + kWindowMs) << r.header("anthropic-ratelimit-tokens-reset");
        EXPECT_LE(reset, answered_at + kWindowMs) << r.header("anthropic-ratelimit-tokens-reset");
        EXPECT_EQ(r.header("x-ratelimit-limit-tokens"), "") << "OpenAI headers on an Anthropic route";
      } else {
        EXPECT_EQ(r.header("x-ratelimit-limit-tokens"), "50") << flavour;
        EXPECT_EQ(to_long(r.header("x-ratelimit-remaining-tokens")), remaining) << flavour << " request " << i;
        const std::string reset = r.header("x-ratelimit-reset-tokens");
        ASSERT_FALSE(reset.empty());
        EXPECT_EQ(reset.back(), 's') << reset;
        const long reset_s = to_long(reset.substr(0, reset.size() - 1));
        EXPECT_LE(reset_s, kWindowMs / 1000) << reset;
        EXPECT_GT(reset_s, (kWindowMs - kBucketMs - (answered_at - first_at)) / 1000 - 1) << reset;
        EXPECT_EQ(r.header("anthropic-ratelimit-tokens-limit"), "") << "Anthropic headers on an OpenAI route";
      }
      EXPECT_LT(remaining, last_remaining) << flavour << ": remaining did not decrease";
      last_remaining = remaining;
      used += logged_usage(log_line(rid));
      ASSERT_EQ(stats_until(port(), k.plain, used).used, used) << flavour;
    }
    ASSERT_EQ(refused.status, 429) << flavour << ": never refused";
    EXPECT_GE(admitted, 2) << flavour;
    EXPECT_GE(used, kLimit) << flavour << ": refused before the usage reached the limit";
    // The refused request never reached the upstream.
    EXPECT_EQ(mock->requests(), upstream_before_refusal) << flavour << ": the refused request reached the upstream";
    const std::string where = flavour + ": " + refused.body;
    EXPECT_EQ(refused.header("content-type").find("application/json"), 0u) << where;
    EXPECT_EQ(jget(refused.body, "error.message"), kLimitMessage) << where;
    if (anthropic) {
      EXPECT_EQ(jget(refused.body, "type"), "error") << where;
      EXPECT_EQ(jget(refused.body, "error.type"), "rate_limit_error") << where;
    } else {
      EXPECT_EQ(jget(refused.body, "type"), "<missing>") << where;
      EXPECT_EQ(jget(refused.body, "error.type"), "rate_limit_exceeded") << where;
      EXPECT_EQ(jget(refused.body, "error.code"), "rate_limit_exceeded") << where;
    }
    // Nothing in flight: tokens_used is the settled usage.
    EXPECT_EQ(jlong(refused.body, "error.tokens_used"), used) << where;
    EXPECT_GE(jlong(refused.body, "error.tokens_used"), kLimit) << where;
    EXPECT_EQ(jlong(refused.body, "error.tokens_limit"), kLimit) << where;
    // Retry-After: the seconds until the oldest usage ages out, in (window - bucket - elapsed, window].
    const long retry = to_long(refused.header("retry-after"));
    const int64_t elapsed = refused_at - first_at;
    EXPECT_LE(retry, kWindowMs / 1000) << where << " Retry-After " << refused.header("retry-after");
    EXPECT_GT(retry, (kWindowMs - kBucketMs - elapsed) / 1000 - 1) << where << " Retry-After " << refused.header("retry-after");
    // window_ends_at: RFC 3339, when the request may go again: about now + Retry-After.
    const int64_t ends = rfc3339_ms(jget(refused.body, "error.window_ends_at"));
    ASSERT_GT(ends, 0) << where;
    EXPECT_GT(ends, first_at - kBucketMs + kWindowMs) << where;
    EXPECT_LE(ends, refused_at + kWindowMs + 2000) << where;
    EXPECT_NEAR(static_cast<double>(ends), static_cast<double>(refused_at + retry * 1000), 2000.0) << where;
    // The flavour's headers on the refusal too: the limit and nothing remaining.
    if (anthropic) {
      EXPECT_EQ(refused.header("anthropic-ratelimit-tokens-limit"), "50") << where;
      EXPECT_EQ(refused.header("anthropic-ratelimit-tokens-remaining"), "0") << where;
    } else {
      EXPECT_EQ(refused.header("x-ratelimit-limit-tokens"), "50") << where;
      EXPECT_EQ(refused.header("x-ratelimit-remaining-tokens"), "0") << where;
    }
    // The refusal is logged as a 429 without upstream status and charges nothing.
    const std::string line = log_line(rid);
    EXPECT_EQ(jlong(line, "status"), 429) << line;
    const Stats after = stats(port(), k.plain);  // /stats is not itself limited
    EXPECT_EQ(after.status, 200) << after.body;
    EXPECT_EQ(after.used, used) << after.body;
    EXPECT_EQ(after.lifetime, used) << after.body;
    EXPECT_EQ(after.remaining, 0) << after.body;
    // Refused again, still without reaching the upstream.
    const long upstream = mock->requests();
    EXPECT_EQ(call(k.plain, path, body, {}, rid).status, 429) << flavour;
    EXPECT_EQ(mock->requests(), upstream) << flavour;
  }
}

// ---------------------------------------------------------------------------------------------
// 4. GET /stats

TEST_F(Ratelimit, StatsHasTheOldProxysShape) {
  start();
  const Response created = http(port(), "POST", "/admin/keys",
                                R"({"name":"alice","model":"glm-4.7","token_limit_per_5h":100000})", kAdmin);
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string plain = jget(created.body, "key");
  const Stats empty = stats(port(), plain);
  ASSERT_EQ(empty.status, 200) << empty.body;
  EXPECT_EQ(empty.used, 0) << empty.body;
  EXPECT_EQ(empty.remaining, 100000) << empty.body;
  // Empty window: it starts now.
  const int64_t empty_start = rfc3339_ms(jget(empty.body, "current_usage.window_started_at"));
  EXPECT_LE(std::llabs(empty_start - now_ms()), 5000) << empty.body;

  std::string rid;
  const int64_t first_at = now_ms();
  ASSERT_EQ(call(plain, "/v1/chat/completions", openai_body(false), {}, rid).status, 200);
  long used = logged_usage(log_line(rid));
  ASSERT_EQ(call(plain, "/v1/messages", anthropic_body(false), {}, rid).status, 200);
  used += logged_usage(log_line(rid));
  const Stats s = stats_until(port(), plain, used);
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_EQ(s.used, used) << s.body;

  const auto root = Poco::JSON::Parser().parse(s.body).extract<Poco::JSON::Object::Ptr>();
  ASSERT_TRUE(root) << s.body;
  // Every field of the README's example, with its type.
  EXPECT_EQ(kind(root, "key"), "string") << s.body;
  EXPECT_EQ(kind(root, "name"), "string") << s.body;
  EXPECT_EQ(kind(root, "model"), "string") << s.body;
  EXPECT_EQ(kind(root, "token_limit_per_5h"), "int") << s.body;
  EXPECT_EQ(kind(root, "expiry_date"), "null") << s.body;
  EXPECT_EQ(kind(root, "created_at"), "string") << s.body;
  EXPECT_TRUE(kind(root, "last_used") == "string" || kind(root, "last_used") == "null") << s.body;
  EXPECT_EQ(kind(root, "is_expired"), "bool") << s.body;
  EXPECT_EQ(kind(root, "current_usage"), "object") << s.body;
  EXPECT_EQ(kind(root, "total_lifetime_tokens"), "int") << s.body;
  const auto usage = root->getObject("current_usage");
  EXPECT_EQ(kind(usage, "tokens_used_in_current_window"), "int") << s.body;
  EXPECT_EQ(kind(usage, "window_started_at"), "string") << s.body;
  EXPECT_EQ(kind(usage, "window_ends_at"), "string") << s.body;
  EXPECT_EQ(kind(usage, "remaining_tokens"), "int") << s.body;
  // And the values.
  EXPECT_EQ(jget(s.body, "key"), masked(plain)) << s.body;
  EXPECT_EQ(jget(s.body, "key"), jget(created.body, "key_masked")) << s.body;
  EXPECT_EQ(s.body.find(plain), std::string::npos) << "the plain key is in /stats: " << s.body;
  EXPECT_EQ(jget(s.body, "name"), "alice");
  EXPECT_EQ(jget(s.body, "model"), "glm-4.7");
  EXPECT_EQ(jlong(s.body, "token_limit_per_5h"), 100000);
  EXPECT_EQ(jget(s.body, "is_expired"), "false");
  EXPECT_GT(rfc3339_ms(jget(s.body, "created_at")), 0) << s.body;
  if (kind(root, "last_used") == "string") {
    EXPECT_GT(rfc3339_ms(jget(s.body, "last_used")), 0) << s.body;
  }
  EXPECT_EQ(s.remaining, 100000 - used) << s.body;
  EXPECT_EQ(s.lifetime, used) << s.body;
  // The window started at the (minute) bucket of the first request, and ends one window later.
  const int64_t started = rfc3339_ms(jget(s.body, "current_usage.window_started_at"));
  const int64_t ends = rfc3339_ms(jget(s.body, "current_usage.window_ends_at"));
  EXPECT_EQ(started % kBucketMs, 0) << s.body;
  EXPECT_GT(started, first_at - kBucketMs) << s.body;
  EXPECT_LE(started, now_ms()) << s.body;
  EXPECT_EQ(ends - started, kWindowMs) << s.body;

  // A key without token_limit_per_5h shows default_limit (100000).
  const Key unlimited = create_key(port(), R"({"name":"bob","expiry_date":"2099-12-31T23:59:59Z"})");
  const Stats d = stats(port(), unlimited.plain);
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_EQ(jlong(d.body, "token_limit_per_5h"), 100000) << d.body;
  EXPECT_EQ(d.remaining, 100000) << d.body;
  EXPECT_EQ(jget(d.body, "model"), "null") << d.body;
  EXPECT_EQ(rfc3339_ms(jget(d.body, "expiry_date")), rfc3339_ms("2099-12-31T23:59:59Z")) << d.body;

  // Without a key, or with an unknown one: 401, and the upstream is not involved.
  const long upstream = mock->requests();
  const Response none = http(port(), "GET", "/stats");
  EXPECT_EQ(none.status, 401) << none.body;
  EXPECT_EQ(jget(none.body, "error.message"), "API key required. Use Authorization: Bearer <key> or x-api-key: <key>")
      << none.body;
  const Response bad = http(port(), "GET", "/stats", "", {{"Authorization", "Bearer pk_not_a_real_key_at_all"}});
  EXPECT_EQ(bad.status, 401) << bad.body;
  // x-api-key works as well.
  const Response via_x = http(port(), "GET", "/stats", "", {{"x-api-key", plain}});
  EXPECT_EQ(via_x.status, 200) << via_x.body;
  EXPECT_EQ(jlong(via_x.body, "current_usage.tokens_used_in_current_window"), used) << via_x.body;
  EXPECT_EQ(mock->requests(), upstream);
}

// ---------------------------------------------------------------------------------------------
// 5. Persistence

TEST_F(Ratelimit, UsageSurvivesACleanRestart) {
  start();
  const Key k = create_key(port(), R"({"name":"persist","token_limit_per_5h":1000000})");
  std::string rid;
  long used = 0;
  ASSERT_EQ(call(k.plain, "/v1/chat/completions", openai_body(false), {}, rid).status, 200);
  used += logged_usage(log_line(rid));
  ASSERT_EQ(call_stream(k.plain, "/v1/messages", anthropic_body(true), {{"x-mock-cache-read", "9"}}, rid).status, 200);
  used += logged_usage(log_line(rid));
  ASSERT_EQ(call_stream(k.plain, "/v1/chat/completions", openai_body(true), {}, rid).status, 200);
  used += logged_usage(log_line(rid));
  const Stats before = stats_until(port(), k.plain, used);
  ASSERT_EQ(before.used, used) << before.body;
  ASSERT_EQ(before.lifetime, used) << before.body;

  proxy.reset();  // SIGTERM: the store flushes before exit
  proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  const Stats after = stats(port(), k.plain);
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(after.used, before.used) << after.body;
  EXPECT_EQ(after.lifetime, before.lifetime) << after.body;
  EXPECT_EQ(after.remaining, before.remaining) << after.body;
  EXPECT_EQ(jget(after.body, "current_usage.window_started_at"), jget(before.body, "current_usage.window_started_at"));
  // And it keeps counting on top.
  ASSERT_EQ(call(k.plain, "/v1/messages", anthropic_body(false), {}, rid).status, 200);
  const long more = logged_usage(log_line(rid));
  const Stats later = stats_until(port(), k.plain, used + more);
  EXPECT_EQ(later.used, used + more) << later.body;
  EXPECT_EQ(later.lifetime, used + more) << later.body;
}

// ---------------------------------------------------------------------------------------------
// 6. Replicas on one Redis, and the worst-case overshoot bound

struct DriveResult {
  long admitted = 0, refused = 0;
  std::vector<std::string> unexpected;
};

// `threads` clients, spread round-robin over `ports`, send `body` with `key` until each has seen a 429.
DriveResult drive(const std::vector<uint16_t>& ports, const std::string& key, const std::string& body, int threads) {
  DriveResult d;
  std::mutex m;
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&, t] {
      size_t next = static_cast<size_t>(t);
      for (int i = 0; i < 200; ++i) {
        const uint16_t p = ports[next++ % ports.size()];
        const Response r = http(p, "POST", "/v1/chat/completions", body, {{"Authorization", "Bearer " + key}}, 10s);
        std::lock_guard lock(m);
        if (r.status == 200) {
          ++d.admitted;
        } else if (r.status == 429) {
          ++d.refused;
          return;
        } else {
          d.unexpected.push_back(std::to_string(r.status) + " " + r.error + " " + r.body);
          return;
        }
      }
      std::lock_guard lock(m);
      d.unexpected.push_back("client " + std::to_string(t) + " never saw a 429");
    });
  }
  for (auto& c : clients) c.join();
  return d;
}

struct Logged {
  long admitted = 0, refused = 0, tokens = 0, max_over_estimate = 0, max_usage = 0;
};

// The proxied lines of the access logs, once they hold `admitted` 200s and `refused` 429s (each is
// written after on_complete ran): the admitted usage and how far any request went over `estimate`.
Logged logged(const std::vector<const Proxy*>& proxies, long admitted, long refused, long estimate) {
  Logged l;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    l = {};
    for (const Proxy* p : proxies)
      for (const auto& line : proxied_lines(*p)) {
        const long status = jlong(line, "status");
        if (status == 200) {
          ++l.admitted;
          const long usage = logged_usage(line);
          l.tokens += usage;
          l.max_usage = std::max(l.max_usage, usage);
          l.max_over_estimate = std::max(l.max_over_estimate, usage - estimate);
        } else if (status == 429) {
          ++l.refused;
        }
      }
    if ((l.admitted >= admitted && l.refused >= refused) || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(10ms);
  }
  return l;
}

// Checks the README's bound on one drive: final usage <= limit - 1 + e_max + Σ max(0, actual -
// estimate) (here every actual equals the estimate, so the sum is 0), and the quota actually used
// (>= limit - one request's usage).
void expect_bound(const DriveResult& d, const Logged& l, long limit, long estimate, const std::string& what) {
  EXPECT_TRUE(d.unexpected.empty()) << what << ": " << (d.unexpected.empty() ? "" : d.unexpected.front());
  EXPECT_EQ(l.admitted, d.admitted) << what << ": 200s in the access logs";
  EXPECT_EQ(l.refused, d.refused) << what << ": 429s in the access logs";
  EXPECT_GT(d.refused, 0) << what;
  EXPECT_EQ(l.max_over_estimate, 0) << what << ": a request used more than its estimate (test precondition)";
  EXPECT_LE(l.tokens, limit - 1 + estimate) << what << ": admitted usage " << l.tokens << " beyond the README's bound (limit "
                                            << limit << " - 1 + one estimate " << estimate << ")";
  EXPECT_GE(l.tokens, limit - l.max_usage) << what << ": the quota was not used up (admitted usage " << l.tokens << ")";
}

// The core times every hook each plugin implements and exports it on /metrics, one observation
// per request and hook: glmp_plugin_hook_duration_seconds{hook,plugin}. Hooks a plugin lacks
// have no series.
TEST_F(Ratelimit, TheCoreTimesEveryHookAPluginImplements) {
  start();
  const Key k = create_key(port(), R"({"name":"timed","token_limit_per_5h":1000000})");
  auto series = [&](const std::string& plugin, const std::string& hook, const std::string& what) {
    return metric(http(port(), "GET", "/metrics").body, "glmp_plugin_hook_duration_seconds_" + what,
                  {"hook=\"" + hook + "\"", "plugin=\"" + plugin + "\""});
  };
  const std::vector<std::pair<std::string, std::string>> implemented = {
      {"auth", "on_request_headers"}, {"auth", "on_request"}, {"ratelimit", "on_request"}, {"ratelimit", "on_complete"}};
  std::map<std::string, double> before;
  for (const auto& [plugin, hook] : implemented) before[plugin + "." + hook] = series(plugin, hook, "count");
  std::string rid;
  ASSERT_EQ(call(k.plain, "/v1/chat/completions", openai_body(false), {}, rid).status, 200);
  log_line(rid);  // written after on_complete
  ASSERT_EQ(call_stream(k.plain, "/v1/messages", anthropic_body(true), {{"x-mock-chunks", "5"}}, rid).status, 200);
  log_line(rid);
  for (const auto& [plugin, hook] : implemented) {
    EXPECT_EQ(series(plugin, hook, "count") - before[plugin + "." + hook], 2) << plugin << " " << hook;
    EXPECT_GT(series(plugin, hook, "sum"), 0) << plugin << " " << hook;
  }
  for (const auto& [plugin, hook] : std::vector<std::pair<std::string, std::string>>{
           {"auth", "on_complete"}, {"auth", "on_response_body"}, {"ratelimit", "on_response_headers"}, {"ratelimit", "on_response_body"}})
    EXPECT_EQ(series(plugin, hook, "count"), -1) << plugin << " " << hook << " has a series but no hook";
}

TEST(RatelimitReplicas, ThreeProxiesOnOneRedisShareTheQuotaWithinTheBound) {
  ASSERT_TRUE(fs::exists(kAuthSo) && fs::exists(kRatelimitSo)) << "plugins not built: " << kAuthSo << ", " << kRatelimitSo;
  RedisServer redis;
  TempDir dir_a, dir_b, dir_c;
  Mock mock(dir_a);
  ProxyOptions opts;
  opts.extra_toml = plugins_toml();
  opts.store_toml = "[store]\nbackend = \"redis\"\nurl = \"" + redis.url() + "\"\ntimeout = \"2s\"\n";
  const std::vector<const TempDir*> dirs{&dir_a, &dir_b, &dir_c};
  std::vector<std::unique_ptr<Proxy>> proxies;
  for (const TempDir* d : dirs) proxies.push_back(std::make_unique<Proxy>(*d, &mock, opts));

  constexpr long kLimit = 400;
  const Key k = create_key(proxies[0]->port(), R"({"name":"shared","token_limit_per_5h":400})");
  // B and C see the key (through Redis) before the drive.
  for (size_t i = 1; i < proxies.size(); ++i) {
    Stats s;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    do {
      s = stats(proxies[i]->port(), k.plain);
      if (s.status == 200) break;
      std::this_thread::sleep_for(20ms);
    } while (std::chrono::steady_clock::now() < deadline);
    ASSERT_EQ(s.status, 200) << "proxy " << i << " does not accept the key: " << s.body;
    EXPECT_EQ(s.used, 0) << s.body;
  }

  const std::string body = exact_openai_body();
  const long estimate = estimate_of(body);
  const long upstream_before = mock.requests();
  std::vector<uint16_t> ports;
  std::vector<const Proxy*> views;
  for (const auto& p : proxies) {
    ports.push_back(p->port());
    views.push_back(p.get());
  }
  const DriveResult d = drive(ports, k.plain, body, 12);
  const Logged l = logged(views, d.admitted, d.refused, estimate);
  expect_bound(d, l, kLimit, estimate, "3 proxies on Redis");
  EXPECT_EQ(mock.requests() - upstream_before, d.admitted) << "refused requests reached the upstream";
  for (size_t i = 0; i < proxies.size(); ++i) EXPECT_GT(proxied_lines(*proxies[i]).size(), 0u) << "proxy " << i << " got no traffic";

  // Every proxy shows the same window: the admitted usage.
  for (size_t i = 0; i < proxies.size(); ++i) {
    const Stats s = stats_until(proxies[i]->port(), k.plain, l.tokens);
    EXPECT_EQ(s.used, l.tokens) << "proxy " << i << ": " << s.body;
    EXPECT_EQ(s.lifetime, l.tokens) << "proxy " << i << ": " << s.body;
    EXPECT_EQ(s.remaining, std::max<long>(0, kLimit - l.tokens)) << "proxy " << i << ": " << s.body;
  }

  // All three restart (clean stop), Redis stays: the usage is still there, on every one.
  for (auto& p : proxies) p.reset();
  for (size_t i = 0; i < proxies.size(); ++i) proxies[i] = std::make_unique<Proxy>(*dirs[i], &mock, opts);
  for (size_t i = 0; i < proxies.size(); ++i) {
    const Stats s = stats(proxies[i]->port(), k.plain);
    EXPECT_EQ(s.status, 200) << "proxy " << i << " after restart: " << s.body;
    EXPECT_EQ(s.used, l.tokens) << "proxy " << i << " after restart: " << s.body;
    EXPECT_EQ(s.lifetime, l.tokens) << "proxy " << i << " after restart: " << s.body;
  }
  // And the key is still refused on each of them.
  for (size_t i = 0; i < proxies.size(); ++i) {
    const Response r = http(proxies[i]->port(), "POST", "/v1/chat/completions", body, {{"Authorization", "Bearer " + k.plain}});
    EXPECT_EQ(r.status, 429) << "proxy " << i << " after restart: " << r.body;
  }
}

TEST(RatelimitReplicas, OneSqliteInstanceKeepsTheSameBound) {
  ASSERT_TRUE(fs::exists(kAuthSo) && fs::exists(kRatelimitSo)) << "plugins not built: " << kAuthSo << ", " << kRatelimitSo;
  TempDir dir;
  Mock mock(dir);
  ProxyOptions opts;
  opts.extra_toml = plugins_toml();
  Proxy proxy(dir, &mock, opts);
  constexpr long kLimit = 400;
  const Key k = create_key(proxy.port(), R"({"name":"single","token_limit_per_5h":400})");
  const std::string body = exact_openai_body();
  const long estimate = estimate_of(body);
  const long upstream_before = mock.requests();
  const DriveResult d = drive({proxy.port()}, k.plain, body, 12);
  const Logged l = logged({&proxy}, d.admitted, d.refused, estimate);
  expect_bound(d, l, kLimit, estimate, "1 proxy on sqlite");
  EXPECT_EQ(mock.requests() - upstream_before, d.admitted) << "refused requests reached the upstream";
  const Stats s = stats_until(proxy.port(), k.plain, l.tokens);
  EXPECT_EQ(s.used, l.tokens) << s.body;
  EXPECT_EQ(s.lifetime, l.tokens) << s.body;
}

}  // namespace
