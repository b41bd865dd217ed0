#include "mock_handler.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/String.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <initializer_list>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "mock_json.hpp"

namespace glmp::mock {

namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers

std::atomic<std::uint64_t> g_next_id{1};

std::string to_str(std::uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

void append_num(std::string& out, std::uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

enum class Flavour { OpenAI, Anthropic };
enum class Route { Chat, Messages, CountTokens, Models, Unknown };

Route route_for(std::string_view path) {
  if (ends_with(path, "/v1/messages/count_tokens")) return Route::CountTokens;
  if (ends_with(path, "/v1/messages")) return Route::Messages;
  if (ends_with(path, "/chat/completions")) return Route::Chat;
  if (ends_with(path, "/models")) return Route::Models;
  return Route::Unknown;
}

Flavour flavour_for(Route route, std::string_view path) {
  if (route == Route::Messages || route == Route::CountTokens) return Flavour::Anthropic;
  if (route == Route::Unknown && path.find("anthropic") != std::string_view::npos) {
    return Flavour::Anthropic;
  }
  return Flavour::OpenAI;
}

// ---------------------------------------------------------------------------------------------
// Control headers

struct Controls {
  std::optional<std::uint64_t> chunks;
  std::optional<std::uint64_t> delay_ms;
  std::optional<std::uint64_t> status;
  std::optional<std::uint64_t> reset_after;
  std::optional<std::uint64_t> large_bytes;
  std::optional<std::uint64_t> stall_ms;
  std::optional<std::uint64_t> cache_read;
  std::optional<std::uint64_t> cache_creation;
  std::optional<std::uint64_t> goaway_after;  // HTTP/2 only
  std::optional<std::uint64_t> header_bytes;  // an x-mock-filler response header this long
  std::optional<std::string> error_message;
  bool garbage = false;
  bool echo = false;
  bool usage_in_last_chunk = false;
  bool goaway_refuse = false;  // HTTP/2 only
};

std::optional<std::uint64_t> parse_uint(std::string_view v) {
  v = trim(v);
  if (v.empty() || v.size() > 19) return std::nullopt;
  std::uint64_t out = 0;
  const auto r = std::from_chars(v.data(), v.data() + v.size(), out);
  if (r.ec != std::errc() || r.ptr != v.data() + v.size()) return std::nullopt;
  return out;
}

std::optional<bool> parse_bool(std::string_view v) {
  const std::string l = lower(trim(v));
  if (l == "1" || l == "true" || l == "yes") return true;
  if (l == "0" || l == "false" || l == "no") return false;
  return std::nullopt;
}

// Fills `c` from the request's x-mock-* headers. Returns an error message, or nothing.
std::optional<std::string> parse_controls(const Request& req, Controls& c) {
  static constexpr std::string_view kPrefix = "x-mock-";
  for (const auto& [raw_name, value] : req.headers) {
    if (raw_name.size() <= kPrefix.size()) continue;
    const std::string name = lower(raw_name);
    if (std::string_view(name).substr(0, kPrefix.size()) != kPrefix) continue;
    const std::string_view key = std::string_view(name).substr(kPrefix.size());

    using NumField = std::optional<std::uint64_t> Controls::*;
    using FlagField = bool Controls::*;
    static constexpr std::pair<std::string_view, NumField> kNumbers[] = {
        {"chunks", &Controls::chunks},           {"delay-ms", &Controls::delay_ms},
        {"status", &Controls::status},           {"reset-after", &Controls::reset_after},
        {"large-bytes", &Controls::large_bytes}, {"stall-ms", &Controls::stall_ms},
        {"cache-read", &Controls::cache_read},   {"cache-creation", &Controls::cache_creation},
        {"goaway-after", &Controls::goaway_after}, {"header-bytes", &Controls::header_bytes},
    };
    static constexpr std::pair<std::string_view, FlagField> kFlags[] = {
        {"garbage", &Controls::garbage},
        {"echo", &Controls::echo},
        {"usage-in-last-chunk", &Controls::usage_in_last_chunk},
        {"goaway-refuse", &Controls::goaway_refuse},
    };
    if (key == "error-message") {
      if (!c.error_message) c.error_message = value;
      continue;
    }
    std::optional<std::uint64_t>* num = nullptr;
    bool* flag = nullptr;
    for (const auto& [k, field] : kNumbers) {
      if (k == key) num = &(c.*field);
    }
    for (const auto& [k, field] : kFlags) {
      if (k == key) flag = &(c.*field);
    }
    if (num == nullptr && flag == nullptr) {
      return "mock-upstream: unknown control header '" + name + "'";
    }

    if (num != nullptr) {
      if (num->has_value()) continue;  // first occurrence wins
      const auto v = parse_uint(value);
      if (!v) {
        return "mock-upstream: invalid " + name + " header '" + value +
               "': expected a non-negative integer";
      }
      *num = *v;
    } else {
      const auto v = parse_bool(value);
      if (!v) {
        return "mock-upstream: invalid " + name + " header '" + value +
               "': expected 1/0/true/false";
      }
      *flag = *v;
    }
  }
  if (c.status && (*c.status < 400 || *c.status > 599)) {
    return "mock-upstream: invalid x-mock-status header '" + to_str(*c.status) +
           "': expected an error status 400..599";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Deterministic content

constexpr std::uint64_t kLargePiece = 16384;

const std::string& filler() {
  static const std::string f = [] {
    std::string s;
    s.reserve(kLargePiece);
    while (s.size() < kLargePiece) s += "abcdefghijklmnop";
    return s;
  }();
  return f;
}

struct Content {
  bool large = false;
  std::uint64_t count = 3;  // token pieces ("tok<i> ")
  std::uint64_t bytes = 0;  // large mode: total content bytes

  std::uint64_t pieces() const { return large ? (bytes + kLargePiece - 1) / kLargePiece : count; }

  // Piece i (JSON-safe, no escaping needed). May point into `scratch`.
  std::string_view piece(std::uint64_t i, std::string& scratch) const {
    if (large) {
      const std::uint64_t len = std::min<std::uint64_t>(kLargePiece, bytes - i * kLargePiece);
      return std::string_view(filler()).substr(0, len);
    }
    scratch.assign("tok");
    append_num(scratch, i);
    scratch += ' ';
    return scratch;
  }

  std::uint64_t total_bytes() const {
    if (large) return bytes;
    // "tok" + digits(i) + " " for i in [0, count)
    std::uint64_t total = 0;
    std::uint64_t lo = 0;
    std::uint64_t hi = 10;
    std::uint64_t digits = 1;
    while (lo < count) {
      const std::uint64_t n = std::min(hi, count) - lo;
      total += n * (4 + digits);
      lo = hi;
      if (hi > UINT64_MAX / 10) break;
      hi *= 10;
      ++digits;
    }
    return total;
  }
};

std::pair<std::string, std::string> openai_error_kind(int status) {
  switch (status) {
    case 400:
      return {"invalid_request_error", "invalid_request"};
    case 401:
      return {"authentication_error", "invalid_api_key"};
    case 403:
      return {"permission_error", "permission_denied"};
    case 404:
      return {"invalid_request_error", "not_found"};
    case 405:
      return {"invalid_request_error", "method_not_allowed"};
    case 408:
      return {"timeout_error", "request_timeout"};
    case 413:
      return {"invalid_request_error", "request_too_large"};
    case 429:
      return {"rate_limit_error", "rate_limit_exceeded"};
    case 500:
      return {"server_error", "internal_error"};
    case 502:
      return {"server_error", "bad_gateway"};
    case 503:
      return {"server_error", "service_unavailable"};
    case 504:
      return {"server_error", "gateway_timeout"};
    case 529:
      return {"server_error", "overloaded"};
    default:
      return status >= 500
                 ? std::pair<std::string, std::string>{"server_error", "server_error"}
                 : std::pair<std::string, std::string>{"invalid_request_error", "invalid_request"};
  }
}

std::string anthropic_error_type(int status) {
  switch (status) {
    case 400:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 500:
      return "api_error";
    case 503:
    case 529:
      return "overloaded_error";
    default:
      return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

std::string error_body(Flavour flavour, int status, std::string_view message) {
  std::string out;
  if (flavour == Flavour::OpenAI) {
    const auto [type, code] = openai_error_kind(status);
    out = "{\"error\":{\"message\":";
    append_json_string(out, message);
    out += ",\"type\":\"" + type + "\",\"code\":\"" + code + "\"}}";
  } else {
    out = "{\"type\":\"error\",\"error\":{\"type\":\"" + anthropic_error_type(status) +
          "\",\"message\":";
    append_json_string(out, message);
    out += "}}";
  }
  return out;
}

// Poco's reason phrase for the status, with the mock's own for the ones Poco does not know.
std::string_view reason_for(int status) {
  const auto s = static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status);
  const std::string& reason = Poco::Net::HTTPResponse::getReasonForStatus(s);
  if (reason == Poco::Net::HTTPResponse::HTTP_REASON_UNKNOWN) {
    return status == 529 ? "Overloaded" : (status >= 500 ? "Server Error" : "Client Error");
  }
  return reason;
}

// The Date header's value (RFC 1123), formatted once a second per thread.
const std::string& http_date() {
  thread_local std::time_t cached = -1;
  thread_local std::string text;
  const std::time_t now = std::time(nullptr);
  if (now != cached) {
    cached = now;
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[64];
    const std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    text.assign(buf, n);
  }
  return text;
}

void append_hex(std::string& out, std::uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, 16);
  for (char* p = buf; p != r.ptr; ++p) {
    if (*p >= 'a' && *p <= 'f') *p = static_cast<char>(*p - 'a' + 'A');
  }
  out.append(buf, r.ptr);
}

// ---------------------------------------------------------------------------------------------
// The handler

class MockHandler final : public Handler {
 public:
  MockHandler(const Options& options, Stats& stats, const Request& req)
      : opt_(options), stats_(stats), req_(req), keep_alive_(req.keep_alive()) {}

  bool keep_alive() const override { return keep_alive_; }

  std::string internal_error(const std::exception& e) override {
    if (opt_.verbose) std::fprintf(stderr, "mock-upstream: handler error: %s\n", e.what());
    return error(500, std::string("mock-upstream internal error: ") + e.what());
  }

  Script run() override {
    Script inner = respond();
    while (inner.next()) co_yield std::move(inner.step());
    // HTTP/2 x-mock-goaway-after on a response that had no content events to count (not a
    // stream, an error, another route): the GOAWAY follows the response's bytes.
    if (req_.h2() && controls_ok_ && ctl_.goaway_after && !goaway_sent_) co_yield Step::goaway();
  }

 private:
  Script respond() {
    const std::string& uri = req_.uri;
    const auto qpos = uri.find('?');
    path_ = uri.substr(0, qpos);
    query_ = qpos == std::string::npos ? std::string() : uri.substr(qpos + 1);

    if (path_ == "/__mock/stats") {
      co_yield Step::write(stats_response());
      co_return;
    }
    // Parsed here so that an HTTP/2 x-mock-goaway-refuse leaves the request uncounted (it was
    // never processed); a bad control header is still answered in its place below.
    const std::optional<std::string> ctl_error = parse_controls(req_, ctl_);
    controls_ok_ = !ctl_error;
    if (controls_ok_ && ctl_.goaway_refuse && req_.h2()) {
      co_yield Step::refuse();
      co_return;
    }
    stats_.requests.fetch_add(1);
    ActiveGuard active(stats_);

    route_ = route_for(path_);
    flavour_ = flavour_for(route_, path_);
    if (opt_.verbose) {
      std::fprintf(stderr, "mock-upstream: %s %s (%zu body bytes)\n", req_.method.c_str(),
                   uri.c_str(), req_.body.size());
    }

    if (ctl_error) {
      co_yield Step::write(error(400, *ctl_error));
      co_return;
    }
    if (ctl_.stall_ms && *ctl_.stall_ms > 0) co_yield Step::wait(*ctl_.stall_ms);
    if (ctl_.echo) {
      co_yield Step::write(echo_response());
      co_return;
    }

    const std::string& method = req_.method;
    if (route_ == Route::Unknown) {
      co_yield Step::write(error(404, "mock-upstream: unknown path " + path_));
      co_return;
    }
    const bool want_get = route_ == Route::Models;
    if (method != (want_get ? "GET" : "POST")) {
      co_yield Step::write(
          error(405, "mock-upstream: method " + method + " not allowed on " + path_));
      co_return;
    }
    if (!authorized()) {
      co_yield Step::write(
          error(401, flavour_ == Flavour::OpenAI
                         ? "mock-upstream: missing or invalid API key (Authorization: Bearer)"
                         : "mock-upstream: missing or invalid API key (x-api-key)"));
      co_return;
    }
    if (ctl_.status) {
      co_yield Step::write(mock_error_response());
      co_return;
    }
    if (route_ == Route::Models) {
      co_yield Step::write(models_response());
      co_return;
    }
    if (auto bad = analyze_body()) {
      co_yield Step::write(std::move(*bad));
      co_return;
    }

    prompt_tokens_ = std::max<std::uint64_t>(1, req_.body.size() / 4);
    if (route_ == Route::CountTokens) {
      co_yield Step::write(json_response(200, "{\"input_tokens\":" + to_str(prompt_tokens_) + "}"));
      co_return;
    }

    Script sub;
    if (ctl_.garbage) {
      sub = garbage();
    } else {
      Content content;
      if (ctl_.large_bytes) {
        content.large = true;
        content.bytes = *ctl_.large_bytes;
      } else if (ctl_.chunks) {
        content.count = *ctl_.chunks;
      }
      if (route_ == Route::Chat) {
        sub = stream_ ? stream_openai(content) : nonstream_openai(content);
      } else {
        sub = stream_ ? stream_anthropic(content) : nonstream_anthropic(content);
      }
    }
    while (sub.next()) co_yield std::move(sub.step());
    // The end of a chunked body (a reset never gets here: it ends the script).
    if (chunked_) co_yield Step::write("0\r\n\r\n");
  }

  struct ActiveGuard {
    explicit ActiveGuard(Stats& s) : stats(s) { stats.active.fetch_add(1); }
    ~ActiveGuard() { stats.active.fetch_sub(1); }
    ActiveGuard(const ActiveGuard&) = delete;
    ActiveGuard& operator=(const ActiveGuard&) = delete;
    Stats& stats;
  };

  // -------------------------------------------------------------------------------------------
  // Response heads and bodies, byte for byte as Poco's HTTPServer wrote them: the status line,
  // Date and Connection first, then the handler's headers in the order they were set.

  void start_head(std::string& out, int status) const {
    out += req_.version();
    out += ' ';
    append_num(out, static_cast<std::uint64_t>(status));
    out += ' ';
    out += reason_for(status);
    out += "\r\nDate: ";
    out += http_date();
    out += keep_alive_ ? "\r\nConnection: Keep-Alive\r\n" : "\r\nConnection: Close\r\n";
    // x-mock-filler fields of up to 3000 bytes, the same name and value over and over: HPACK
    // indexes them, so over HTTP/2 a few KiB on the wire decode to N bytes of fields.
    for (std::uint64_t left = ctl_.header_bytes.value_or(0); left > 0;) {
      const std::uint64_t n = std::min<std::uint64_t>(left, 3000);
      out += "x-mock-filler: ";
      out.append(n, 'a');
      out += "\r\n";
      left -= n;
    }
  }

  // A whole response with a Content-Length (Poco's sendBuffer: no body for HEAD).
  std::string body_response(int status, std::string_view content_type, std::string_view body,
                            std::string_view extra_headers = {}) const {
    std::string out;
    out.reserve(160 + extra_headers.size() + body.size());
    start_head(out, status);
    out += extra_headers;
    out += "Content-Type: ";
    out += content_type;
    out += "\r\nContent-Length: ";
    append_num(out, body.size());
    out += "\r\n\r\n";
    if (req_.method != "HEAD") out += body;
    return out;
  }

  std::string json_response(int status, std::string_view body,
                            std::string_view extra_headers = {}) const {
    return body_response(status, "application/json", body, extra_headers);
  }

  std::string error(int status, std::string_view message) const {
    return json_response(status, error_body(flavour_, status, message));
  }

  // The head of a streamed response: chunked on HTTP/1.1; on HTTP/1.0 the end of the body is the
  // close; on HTTP/2 the events are the DATA (the session strips the hop-by-hop headers).
  std::string sse_head() {
    chunked_ = req_.version_major == 1 && req_.version_minor == 1;
    if (!chunked_ && !req_.h2()) keep_alive_ = false;
    std::string out;
    start_head(out, 200);
    out += "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    if (chunked_) out += "Transfer-Encoding: chunked\r\n";
    out += "\r\n";
    return out;
  }

  // One event (or any piece of a streamed body), framed as one chunk when the body is chunked.
  // (A variadic template, not an initializer_list: GCC 12 miscompiles initializer_lists in
  // coroutines.)
  template <class... Parts>
  std::string event(const Parts&... parts) const {
    const std::string_view views[] = {std::string_view(parts)...};
    std::size_t size = 0;
    for (const auto part : views) size += part.size();
    std::string out;
    out.reserve(size + 24);
    if (chunked_) {
      append_hex(out, size);
      out += "\r\n";
    }
    for (const auto part : views) out += part;
    if (chunked_) out += "\r\n";
    return out;
  }

  bool authorized() const {
    const std::string& key = opt_.api_key;
    static const std::string kEmpty;
    const auto bearer_ok = [&] {
      const std::string& auth = req_.get("Authorization", kEmpty);
      if (auth.size() != key.size() + 7) return false;
      return lower(std::string_view(auth).substr(0, 7)) == "bearer " &&
             std::string_view(auth).substr(7) == key;
    };
    if (route_ == Route::Chat) return bearer_ok();
    if (route_ == Route::Messages || route_ == Route::CountTokens) {
      return req_.get("x-api-key", kEmpty) == key || bearer_ok();
    }
    // /models: OpenAI auth, but an Anthropic-style x-api-key is accepted as well.
    return bearer_ok() || req_.get("x-api-key", kEmpty) == key;
  }

  // Reads model / stream / include_usage from the body. On failure, the 400 response.
  std::optional<std::string> analyze_body() {
    const std::string& body = req_.body;
    if (opt_.fast) {
      FastScan scan;
      // A model with escapes goes through the full parser, so both modes answer byte-identically.
      if (fast_scan(body, scan) && scan.model_raw.find('\\') == std::string_view::npos) {
        if (scan.model_found) model_json_ = "\"" + std::string(scan.model_raw) + "\"";
        stream_ = scan.stream;
        include_usage_ = scan.include_usage;
        return std::nullopt;
      }
    }
    try {
      Poco::JSON::Parser parser;
      const Poco::Dynamic::Var parsed = parser.parse(body);
      if (parsed.type() != typeid(Poco::JSON::Object::Ptr)) {
        return error(400, "mock-upstream: request body must be a JSON object");
      }
      const auto obj = parsed.extract<Poco::JSON::Object::Ptr>();
      if (obj->has("model")) {
        const Poco::Dynamic::Var m = obj->get("model");
        if (m.isString()) model_json_ = json_string(m.extract<std::string>());
      }
      if (obj->has("stream")) {
        const Poco::Dynamic::Var s = obj->get("stream");
        stream_ = s.isBoolean() && s.extract<bool>();
      }
      if (const auto opts = obj->getObject("stream_options")) {
        if (opts->has("include_usage")) {
          const Poco::Dynamic::Var u = opts->get("include_usage");
          include_usage_ = u.isBoolean() && u.extract<bool>();
        }
      }
      return std::nullopt;
    } catch (const Poco::Exception& e) {
      return error(400, "mock-upstream: malformed JSON body: " + e.displayText());
    } catch (const std::exception& e) {
      return error(400, std::string("mock-upstream: malformed JSON body: ") + e.what());
    }
  }

  std::string stats_response() const {
    const std::string out =
        "{\"connections\":" + to_str(stats_.connections.load()) +
        ",\"requests\":" + to_str(stats_.requests.load()) +
        ",\"active\":" + std::to_string(stats_.active.load()) +
        ",\"current_connections\":" + std::to_string(stats_.current_connections.load()) +
        ",\"h2_connections\":" + to_str(stats_.h2_connections.load()) +
        ",\"h2_streams\":" + to_str(stats_.h2_streams.load()) +
        ",\"max_streams_per_connection\":" + to_str(stats_.max_streams_per_connection.load()) +
        ",\"goaways\":" + to_str(stats_.goaways.load()) + "}";
    return json_response(200, out);
  }

  std::string echo_response() const {
    std::vector<std::pair<std::string, std::string>> headers;
    for (const auto& [name, value] : req_.headers) {
      std::string key = lower(name);
      auto it = std::find_if(headers.begin(), headers.end(),
                             [&](const auto& h) { return h.first == key; });
      if (it == headers.end()) {
        headers.emplace_back(std::move(key), value);
      } else {
        it->second += ", ";
        it->second += value;
      }
    }
    std::string out = "{\"method\":";
    append_json_string(out, req_.method);
    out += ",\"path\":";
    append_json_string(out, path_);
    out += ",\"query\":";
    append_json_string(out, query_);
    out += ",\"headers\":{";
    bool first = true;
    for (const auto& [name, value] : headers) {
      if (!first) out += ',';
      first = false;
      append_json_string(out, name);
      out += ':';
      append_json_string(out, value);
    }
    out += "},\"body\":";
    append_json_string(out, req_.body);
    out += '}';
    return json_response(200, out);
  }

  std::string mock_error_response() const {
    const int status = static_cast<int>(*ctl_.status);
    const std::string message = ctl_.error_message
                                    ? *ctl_.error_message
                                    : "mock-upstream: simulated error " + to_str(*ctl_.status);
    const std::string_view extra =
        status == 429 ? "x-mock-error: 1\r\nretry-after: 7\r\n" : "x-mock-error: 1\r\n";
    return json_response(status, error_body(flavour_, status, message), extra);
  }

  std::string models_response() const {
    static const std::string body =
        "{\"object\":\"list\",\"data\":["
        "{\"id\":\"glm-4.7\",\"object\":\"model\",\"created\":1735689600,\"owned_by\":\"z-ai\"},"
        "{\"id\":\"glm-4.5-air\",\"object\":\"model\",\"created\":1735689600,\"owned_by\":\"z-ai\"}"
        "]}";
    return json_response(200, body);
  }

  Script garbage() {
    using namespace std::string_view_literals;
    if (!stream_) {
      co_yield Step::write(body_response(200, "application/json", "\x00\xffnot json{{{"sv));
      co_return;
    }
    std::string out = sse_head();
    out += event("data: {not json{{{\n\n"sv);
    co_yield Step::write(std::move(out));
    co_yield Step::write(event("\x00\xff\xfe garbage line without framing\n"sv));
    co_yield Step::write(event("event: ???\ndata: {\"unterminated\": \"str\n\n"sv));
    co_yield Step::write(event("data: \xc3\x28 [DONE\n\n"sv));
  }

  // Whether to reset when `sent` content events have gone out (`last` is true after the final
  // content event, where any reset-after >= the piece count fires).
  bool reset_due(std::uint64_t sent, bool last) const {
    if (!ctl_.reset_after) return false;
    return *ctl_.reset_after == sent || (last && *ctl_.reset_after >= sent);
  }

  // The same for HTTP/2's x-mock-goaway-after (once; marks it sent).
  bool goaway_due(std::uint64_t sent, bool last) {
    if (!req_.h2() || !ctl_.goaway_after || goaway_sent_) return false;
    goaway_sent_ = *ctl_.goaway_after == sent || (last && *ctl_.goaway_after >= sent);
    return goaway_sent_;
  }

  std::string openai_usage(std::uint64_t completion) const {
    return "{\"prompt_tokens\":" + to_str(prompt_tokens_) +
           ",\"completion_tokens\":" + to_str(completion) +
           ",\"total_tokens\":" + to_str(prompt_tokens_ + completion) + "}";
  }

  std::string anthropic_usage(std::uint64_t input, std::uint64_t output) const {
    return "{\"input_tokens\":" + to_str(input) + ",\"output_tokens\":" + to_str(output) +
           ",\"cache_read_input_tokens\":" + to_str(ctl_.cache_read.value_or(0)) +
           ",\"cache_creation_input_tokens\":" + to_str(ctl_.cache_creation.value_or(0)) + "}";
  }

  Script stream_openai(Content content) {
    const std::string head = "{\"id\":\"chatcmpl-mock-" + to_str(g_next_id.fetch_add(1)) +
                             "\",\"object\":\"chat.completion.chunk\",\"created\":" +
                             to_str(static_cast<std::uint64_t>(std::time(nullptr))) +
                             ",\"model\":" + model_json_ + ",\"choices\":[";
    const bool usage_last = ctl_.usage_in_last_chunk;
    const bool separate_usage = include_usage_ && !usage_last;
    // Like OpenAI: with include_usage, every chunk but the usage chunk carries "usage":null.
    const std::string_view tail = separate_usage ? ",\"usage\":null}\n\n" : "}\n\n";

    std::string first = sse_head();
    first += event("data: ", head,
                   "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                   "\"finish_reason\":null}]",
                   tail);
    co_yield Step::write(std::move(first));
    const std::uint64_t n = content.pieces();
    if (goaway_due(0, n == 0)) co_yield Step::goaway();
    if (reset_due(0, n == 0)) {
      co_yield Step::reset();
      co_return;
    }
    std::string scratch;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (ctl_.delay_ms && *ctl_.delay_ms > 0) co_yield Step::wait(*ctl_.delay_ms);
      co_yield Step::write(event("data: ", head, "{\"index\":0,\"delta\":{\"content\":\"",
                                 content.piece(i, scratch), "\"},\"finish_reason\":null}]", tail));
      if (goaway_due(i + 1, i + 1 == n)) co_yield Step::goaway();
      if (reset_due(i + 1, i + 1 == n)) {
        co_yield Step::reset();
        co_return;
      }
    }
    const std::string usage = openai_usage(n);
    const std::string finish_tail =
        usage_last ? ",\"usage\":" + usage + "}\n\n" : std::string(tail);
    co_yield Step::write(event(
        "data: ", head, "{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]", finish_tail));
    if (separate_usage) co_yield Step::write(event("data: ", head, "],\"usage\":", usage, "}\n\n"));
    co_yield Step::write(event("data: [DONE]\n\n"));
  }

  Script stream_anthropic(Content content) {
    const std::string id = "msg_mock_" + to_str(g_next_id.fetch_add(1));
    const std::string start =
        "{\"type\":\"message_start\",\"message\":{\"id\":\"" + id +
        "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + model_json_ +
        ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":" +
        anthropic_usage(prompt_tokens_, 1) + "}}";
    std::string first = sse_head();
    first += event("event: message_start\ndata: ", start, "\n\n");
    first += event(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    first += event("event: ping\ndata: {\"type\":\"ping\"}\n\n");
    co_yield Step::write(std::move(first));
    const std::uint64_t n = content.pieces();
    if (goaway_due(0, n == 0)) co_yield Step::goaway();
    if (reset_due(0, n == 0)) {
      co_yield Step::reset();
      co_return;
    }
    std::string scratch;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (ctl_.delay_ms && *ctl_.delay_ms > 0) co_yield Step::wait(*ctl_.delay_ms);
      co_yield Step::write(
          event("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                "\"delta\":{\"type\":\"text_delta\",\"text\":\"",
                content.piece(i, scratch), "\"}}\n\n"));
      if (goaway_due(i + 1, i + 1 == n)) co_yield Step::goaway();
      if (reset_due(i + 1, i + 1 == n)) {
        co_yield Step::reset();
        co_return;
      }
    }
    std::string last = event(
        "event: content_block_stop\ndata: "
        "{\"type\":\"content_block_stop\",\"index\":0}\n\n");
    last += event(
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":",
        to_str(n), "}}\n\n");
    last += event("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    co_yield Step::write(std::move(last));
  }

  Script nonstream_openai(Content content) {
    std::string prefix =
        "{\"id\":\"chatcmpl-mock-" + to_str(g_next_id.fetch_add(1)) +
        "\",\"object\":\"chat.completion\",\"created\":" +
        to_str(static_cast<std::uint64_t>(std::time(nullptr))) + ",\"model\":" + model_json_ +
        ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"";
    std::string suffix =
        "\"},\"finish_reason\":\"stop\"}],\"usage\":" + openai_usage(content.pieces()) + "}";
    return nonstream(std::move(prefix), content, std::move(suffix));
  }

  Script nonstream_anthropic(Content content) {
    std::string prefix = "{\"id\":\"msg_mock_" + to_str(g_next_id.fetch_add(1)) +
                         "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + model_json_ +
                         ",\"content\":[{\"type\":\"text\",\"text\":\"";
    std::string suffix = "\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":" +
                         anthropic_usage(prompt_tokens_, content.pieces()) + "}";
    return nonstream(std::move(prefix), content, std::move(suffix));
  }

  // prefix + content text + suffix. Small bodies go out in one write; large ones (or a reset)
  // are generated piece by piece as the peer takes them, with an exact Content-Length, in
  // constant memory. With a reset, only the first half of the body is sent, then the RST.
  Script nonstream(std::string prefix, Content content, std::string suffix) {
    const std::uint64_t text_bytes = content.total_bytes();
    const std::uint64_t total = prefix.size() + text_bytes + suffix.size();
    const std::uint64_t n = content.pieces();
    std::string scratch;
    if (!ctl_.reset_after && total <= (1u << 20)) {
      std::string body;
      body.reserve(total);
      body += prefix;
      for (std::uint64_t i = 0; i < n; ++i) body += content.piece(i, scratch);
      body += suffix;
      co_yield Step::write(json_response(200, body));
      co_return;
    }
    std::string head;
    start_head(head, 200);
    head += "Content-Type: application/json\r\nContent-Length: ";
    append_num(head, total);
    head += "\r\n\r\n";
    std::uint64_t budget = ctl_.reset_after ? total / 2 : total;
    const auto take = [&](std::string_view s) {
      const std::uint64_t k = std::min<std::uint64_t>(budget, s.size());
      budget -= k;
      return std::string(s.substr(0, k));
    };
    head += take(prefix);
    co_yield Step::write(std::move(head));
    for (std::uint64_t i = 0; i < n && budget > 0; ++i) {
      co_yield Step::write(take(content.piece(i, scratch)));
    }
    if (budget > 0) co_yield Step::write(take(suffix));
    if (ctl_.reset_after) co_yield Step::reset();
  }

  const Options& opt_;
  Stats& stats_;
  const Request& req_;
  bool keep_alive_;
  bool chunked_ = false;
  std::string path_;
  std::string query_;
  Route route_ = Route::Unknown;
  Flavour flavour_ = Flavour::OpenAI;
  Controls ctl_;
  bool controls_ok_ = false;
  bool goaway_sent_ = false;
  std::string model_json_ = "\"glm-4.7\"";
  bool stream_ = false;
  bool include_usage_ = false;
  std::uint64_t prompt_tokens_ = 1;
};

}  // namespace

// -----------------------------------------------------------------------------------------------
// Request

void Request::add_header(std::string name, std::string value) {
  auto pos = headers.end();
  for (auto it = headers.begin(); it != headers.end(); ++it) {
    if (Poco::icompare(it->first, name) == 0) {
      pos = it;
      while (pos != headers.end() && Poco::icompare(pos->first, name) == 0) ++pos;
      break;
    }
  }
  headers.emplace(pos, std::move(name), std::move(value));
}

const std::string* Request::find(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < k.size() && same; ++i) {
      char a = k[i];
      char b = name[i];
      if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
      if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
      same = a == b;
    }
    if (same) return &v;
  }
  return nullptr;
}

const std::string& Request::get(std::string_view name, const std::string& fallback) const {
  const std::string* v = find(name);
  return v != nullptr ? *v : fallback;
}

std::string Request::version() const {
  std::string out = "HTTP/";
  append_num(out, static_cast<std::uint64_t>(version_major));
  out += '.';
  append_num(out, static_cast<std::uint64_t>(version_minor));
  return out;
}

bool Request::keep_alive() const {
  if (const std::string* c = find("Connection"); c != nullptr && !c->empty()) {
    return lower(*c) != "close";
  }
  return version_major > 1 || (version_major == 1 && version_minor == 1);
}

bool Request::expect_continue() const {
  const std::string* e = find("Expect");
  return e != nullptr && lower(*e) == "100-continue";
}

void Request::clear() {
  method.clear();
  uri.clear();
  version_major = 1;
  version_minor = 1;
  headers.clear();
  body.clear();
}

std::unique_ptr<Handler> make_handler(const Options& options, Stats& stats,
                                      const Request& request) {
  return std::make_unique<MockHandler>(options, stats, request);
}

}  // namespace glmp::mock
