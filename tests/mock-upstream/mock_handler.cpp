#include "mock_handler.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SecureStreamSocketImpl.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/StreamCopier.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <ostream>
#include <string_view>
#include <utility>
#include <vector>

#include "mock_json.hpp"

namespace glmp::mock {

using Poco::Net::HTTPResponse;
using Poco::Net::HTTPServerRequest;
using Poco::Net::HTTPServerResponse;

namespace {

// ---------------------------------------------------------------------------------------------
// Stop flag and interruptible sleep

std::mutex g_stop_mutex;
std::condition_variable g_stop_cv;
std::atomic<bool> g_stop{false};

// Sleeps `ms` milliseconds; returns false if the process is stopping.
bool sleep_ms(std::uint64_t ms) {
  if (ms == 0) return !g_stop.load();
  std::unique_lock lock(g_stop_mutex);
  return !g_stop_cv.wait_for(lock, std::chrono::milliseconds(ms), [] { return g_stop.load(); });
}

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
  std::optional<std::string> error_message;
  bool garbage = false;
  bool echo = false;
  bool usage_in_last_chunk = false;
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
std::optional<std::string> parse_controls(const HTTPServerRequest& req, Controls& c) {
  static constexpr std::string_view kPrefix = "x-mock-";
  for (const auto& [raw_name, value] : req) {
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
    };
    static constexpr std::pair<std::string_view, FlagField> kFlags[] = {
        {"garbage", &Controls::garbage},
        {"echo", &Controls::echo},
        {"usage-in-last-chunk", &Controls::usage_in_last_chunk},
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

// ---------------------------------------------------------------------------------------------
// Response helpers

void set_status(HTTPServerResponse& resp, int status) {
  const auto s = static_cast<HTTPResponse::HTTPStatus>(status);
  std::string reason = HTTPResponse::getReasonForStatus(s);
  if (reason == HTTPResponse::HTTP_REASON_UNKNOWN) {
    reason = status == 529 ? "Overloaded" : (status >= 500 ? "Server Error" : "Client Error");
  }
  resp.setStatusAndReason(s, reason);
}

void send_body(HTTPServerResponse& resp, int status, std::string_view content_type,
               std::string_view body) {
  set_status(resp, status);
  resp.setContentType(std::string(content_type));
  resp.sendBuffer(body.data(), body.size());
}

void send_json(HTTPServerResponse& resp, int status, std::string_view body) {
  send_body(resp, status, "application/json", body);
}

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

void send_error(HTTPServerResponse& resp, Flavour flavour, int status, std::string_view message) {
  send_json(resp, status, error_body(flavour, status, message));
}

// Waits until the peer has acknowledged everything queued on `fd` (or 2 s), so that an RST sent
// right after cannot discard data the test expects to have received.
void wait_for_send_queue(int fd) {
  for (int i = 0; i < 2000; ++i) {
    int pending = 0;
    if (::ioctl(fd, SIOCOUTQ, &pending) != 0 || pending <= 0) return;
    ::usleep(1000);
  }
}

// Aborts the connection with a TCP RST. The socket is detached from Poco's session first, so the
// server does not write anything more on it (the connection thread then just ends).
void reset_connection(HTTPServerRequest& req, HTTPServerResponse& resp) {
  resp.setKeepAlive(false);
  auto* impl = dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&req);
  if (impl == nullptr) return;
  Poco::Net::StreamSocket socket = impl->detachSocket();
  const bool tls = dynamic_cast<Poco::Net::SecureStreamSocketImpl*>(socket.impl()) != nullptr;
  const int fd = socket.impl()->sockfd();
  if (fd >= 0) {
    wait_for_send_queue(fd);
    const ::linger lg{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (tls) {
      // Closing a TLS socket through Poco first writes a close_notify alert. Disconnecting the
      // TCP socket (connect with AF_UNSPEC) sends the RST right away instead; the close below
      // then only releases the descriptor.
      ::sockaddr sa{};
      sa.sa_family = AF_UNSPEC;
      (void)::connect(fd, &sa, sizeof sa);
    }
  }
  try {
    socket.close();
  } catch (...) {
  }
}

// Writes SSE events (or any pieces) to the response stream, flushing after each event.
class EventWriter {
 public:
  explicit EventWriter(std::ostream& out) : out_(out) {}

  bool emit(std::initializer_list<std::string_view> parts) {
    if (!ok_) return false;
    try {
      for (const auto part : parts)
        out_.write(part.data(), static_cast<std::streamsize>(part.size()));
      out_.flush();
      ok_ = out_.good();
    } catch (...) {
      ok_ = false;
    }
    return ok_;
  }

  bool ok() const { return ok_; }

 private:
  std::ostream& out_;
  bool ok_ = true;
};

// ---------------------------------------------------------------------------------------------
// The handler

class MockHandler : public Poco::Net::HTTPRequestHandler {
 public:
  MockHandler(const Options& options, Stats& stats) : opt_(options), stats_(stats) {}

  void handleRequest(HTTPServerRequest& req, HTTPServerResponse& resp) override {
    try {
      handle(req, resp);
    } catch (const std::exception& e) {
      if (opt_.verbose) std::fprintf(stderr, "mock-upstream: handler error: %s\n", e.what());
      if (!resp.sent()) {
        try {
          send_error(resp, flavour_, 500, std::string("mock-upstream internal error: ") + e.what());
        } catch (...) {
        }
      }
    }
  }

 private:
  struct ActiveGuard {
    explicit ActiveGuard(Stats& s) : stats(s) { stats.active.fetch_add(1); }
    ~ActiveGuard() { stats.active.fetch_sub(1); }
    ActiveGuard(const ActiveGuard&) = delete;
    ActiveGuard& operator=(const ActiveGuard&) = delete;
    Stats& stats;
  };

  void handle(HTTPServerRequest& req, HTTPServerResponse& resp) {
    // The whole body is read first, so keep-alive framing stays intact whatever we answer.
    {
      std::istream& in = req.stream();
      Poco::StreamCopier::copyToString(in, body_);
    }
    const std::string& uri = req.getURI();
    const auto qpos = uri.find('?');
    path_ = uri.substr(0, qpos);
    query_ = qpos == std::string::npos ? std::string() : uri.substr(qpos + 1);

    if (path_ == "/__mock/stats") {
      send_stats(resp);
      return;
    }
    stats_.requests.fetch_add(1);
    ActiveGuard active(stats_);

    route_ = route_for(path_);
    flavour_ = flavour_for(route_, path_);
    if (opt_.verbose) {
      std::fprintf(stderr, "mock-upstream: %s %s (%zu body bytes)\n", req.getMethod().c_str(),
                   uri.c_str(), body_.size());
    }

    if (auto err = parse_controls(req, ctl_)) {
      send_error(resp, flavour_, 400, *err);
      return;
    }
    if (ctl_.stall_ms && !sleep_ms(*ctl_.stall_ms)) return;
    if (ctl_.echo) {
      send_echo(req, resp);
      return;
    }

    const std::string& method = req.getMethod();
    if (route_ == Route::Unknown) {
      send_error(resp, flavour_, 404, "mock-upstream: unknown path " + path_);
      return;
    }
    const bool want_get = route_ == Route::Models;
    if (method != (want_get ? "GET" : "POST")) {
      send_error(resp, flavour_, 405,
                 "mock-upstream: method " + method + " not allowed on " + path_);
      return;
    }
    if (!authorized(req)) {
      send_error(resp, flavour_, 401,
                 flavour_ == Flavour::OpenAI
                     ? "mock-upstream: missing or invalid API key (Authorization: Bearer)"
                     : "mock-upstream: missing or invalid API key (x-api-key)");
      return;
    }
    if (ctl_.status) {
      send_mock_error(resp);
      return;
    }
    if (route_ == Route::Models) {
      send_models(resp);
      return;
    }
    if (!analyze_body(resp)) return;

    prompt_tokens_ = std::max<std::uint64_t>(1, body_.size() / 4);
    if (route_ == Route::CountTokens) {
      send_json(resp, 200, "{\"input_tokens\":" + to_str(prompt_tokens_) + "}");
      return;
    }
    if (ctl_.garbage) {
      send_garbage(req, resp);
      return;
    }

    Content content;
    if (ctl_.large_bytes) {
      content.large = true;
      content.bytes = *ctl_.large_bytes;
    } else if (ctl_.chunks) {
      content.count = *ctl_.chunks;
    }
    if (route_ == Route::Chat) {
      if (stream_)
        stream_openai(req, resp, content);
      else
        nonstream_openai(req, resp, content);
    } else {
      if (stream_)
        stream_anthropic(req, resp, content);
      else
        nonstream_anthropic(req, resp, content);
    }
  }

  bool authorized(const HTTPServerRequest& req) const {
    const std::string& key = opt_.api_key;
    const auto bearer_ok = [&] {
      const std::string& auth = req.get("Authorization", "");
      if (auth.size() != key.size() + 7) return false;
      return lower(std::string_view(auth).substr(0, 7)) == "bearer " &&
             std::string_view(auth).substr(7) == key;
    };
    if (route_ == Route::Chat) return bearer_ok();
    if (route_ == Route::Messages || route_ == Route::CountTokens) {
      return req.get("x-api-key", "") == key || bearer_ok();
    }
    // /models: OpenAI auth, but an Anthropic-style x-api-key is accepted as well.
    return bearer_ok() || req.get("x-api-key", "") == key;
  }

  // Reads model / stream / include_usage from the body. Sends the 400 itself on failure.
  bool analyze_body(HTTPServerResponse& resp) {
    if (opt_.fast) {
      FastScan scan;
      // A model with escapes goes through the full parser, so both modes answer byte-identically.
      if (fast_scan(body_, scan) && scan.model_raw.find('\\') == std::string_view::npos) {
        if (scan.model_found) model_json_ = "\"" + std::string(scan.model_raw) + "\"";
        stream_ = scan.stream;
        include_usage_ = scan.include_usage;
        return true;
      }
    }
    try {
      Poco::JSON::Parser parser;
      const Poco::Dynamic::Var parsed = parser.parse(body_);
      if (parsed.type() != typeid(Poco::JSON::Object::Ptr)) {
        send_error(resp, flavour_, 400, "mock-upstream: request body must be a JSON object");
        return false;
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
      return true;
    } catch (const Poco::Exception& e) {
      send_error(resp, flavour_, 400, "mock-upstream: malformed JSON body: " + e.displayText());
    } catch (const std::exception& e) {
      send_error(resp, flavour_, 400,
                 std::string("mock-upstream: malformed JSON body: ") + e.what());
    }
    return false;
  }

  void send_stats(HTTPServerResponse& resp) {
    std::string out = "{\"connections\":" + to_str(stats_.connections.load()) +
                      ",\"requests\":" + to_str(stats_.requests.load()) +
                      ",\"active\":" + std::to_string(stats_.active.load());
    if (auto* server = stats_.server.load()) {
      out += ",\"current_connections\":" + std::to_string(server->currentConnections());
    }
    out += "}";
    send_json(resp, 200, out);
  }

  void send_echo(const HTTPServerRequest& req, HTTPServerResponse& resp) {
    std::vector<std::pair<std::string, std::string>> headers;
    for (const auto& [name, value] : req) {
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
    append_json_string(out, req.getMethod());
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
    append_json_string(out, body_);
    out += '}';
    send_json(resp, 200, out);
  }

  void send_mock_error(HTTPServerResponse& resp) {
    const int status = static_cast<int>(*ctl_.status);
    const std::string message = ctl_.error_message
                                    ? *ctl_.error_message
                                    : "mock-upstream: simulated error " + to_str(*ctl_.status);
    resp.set("x-mock-error", "1");
    if (status == 429) resp.set("retry-after", "7");
    send_error(resp, flavour_, status, message);
  }

  void send_models(HTTPServerResponse& resp) {
    static const std::string body =
        "{\"object\":\"list\",\"data\":["
        "{\"id\":\"glm-4.7\",\"object\":\"model\",\"created\":1735689600,\"owned_by\":\"z-ai\"},"
        "{\"id\":\"glm-4.5-air\",\"object\":\"model\",\"created\":1735689600,\"owned_by\":\"z-ai\"}"
        "]}";
    send_json(resp, 200, body);
  }

  void send_garbage(const HTTPServerRequest& req, HTTPServerResponse& resp) {
    using namespace std::string_view_literals;
    if (!stream_) {
      send_body(resp, 200, "application/json", "\x00\xffnot json{{{"sv);
      return;
    }
    std::ostream& out = begin_sse(req, resp);
    EventWriter w(out);
    w.emit({"data: {not json{{{\n\n"sv});
    w.emit({"\x00\xff\xfe garbage line without framing\n"sv});
    w.emit({"event: ???\ndata: {\"unterminated\": \"str\n\n"sv});
    w.emit({"data: \xc3\x28 [DONE\n\n"sv});
  }

  std::ostream& begin_sse(const HTTPServerRequest& req, HTTPServerResponse& resp) {
    set_status(resp, 200);
    resp.setContentType("text/event-stream");
    resp.set("Cache-Control", "no-cache");
    if (req.getVersion() == HTTPResponse::HTTP_1_1) {
      resp.setChunkedTransferEncoding(true);
    } else {
      resp.setKeepAlive(false);  // HTTP/1.0: no chunking, the end of the body is the close
    }
    return resp.send();
  }

  // Resets when `sent` content events have gone out and reset-after asks for it (`last` is true
  // after the final content event, where any reset-after >= the piece count fires).
  bool maybe_reset(HTTPServerRequest& req, HTTPServerResponse& resp, std::uint64_t sent,
                   bool last) {
    if (!ctl_.reset_after) return false;
    if (*ctl_.reset_after == sent || (last && *ctl_.reset_after >= sent)) {
      reset_connection(req, resp);
      return true;
    }
    return false;
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

  void stream_openai(HTTPServerRequest& req, HTTPServerResponse& resp, const Content& content) {
    const std::string head = "{\"id\":\"chatcmpl-mock-" + to_str(g_next_id.fetch_add(1)) +
                             "\",\"object\":\"chat.completion.chunk\",\"created\":" +
                             to_str(static_cast<std::uint64_t>(std::time(nullptr))) +
                             ",\"model\":" + model_json_ + ",\"choices\":[";
    const bool usage_last = ctl_.usage_in_last_chunk;
    const bool separate_usage = include_usage_ && !usage_last;
    // Like OpenAI: with include_usage, every chunk but the usage chunk carries "usage":null.
    const std::string_view tail = separate_usage ? ",\"usage\":null}\n\n" : "}\n\n";

    EventWriter w(begin_sse(req, resp));
    if (!w.emit({"data: ", head,
                 "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                 "\"finish_reason\":null}]",
                 tail})) {
      return;
    }
    const std::uint64_t n = content.pieces();
    if (maybe_reset(req, resp, 0, n == 0)) return;
    std::string scratch;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (ctl_.delay_ms && !sleep_ms(*ctl_.delay_ms)) return;
      if (!w.emit({"data: ", head, "{\"index\":0,\"delta\":{\"content\":\"",
                   content.piece(i, scratch), "\"},\"finish_reason\":null}]", tail})) {
        return;
      }
      if (maybe_reset(req, resp, i + 1, i + 1 == n)) return;
    }
    const std::string usage = openai_usage(n);
    const std::string finish_tail =
        usage_last ? ",\"usage\":" + usage + "}\n\n" : std::string(tail);
    if (!w.emit({"data: ", head, "{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]",
                 finish_tail})) {
      return;
    }
    if (separate_usage && !w.emit({"data: ", head, "],\"usage\":", usage, "}\n\n"})) return;
    w.emit({"data: [DONE]\n\n"});
  }

  void stream_anthropic(HTTPServerRequest& req, HTTPServerResponse& resp, const Content& content) {
    const std::string id = "msg_mock_" + to_str(g_next_id.fetch_add(1));
    EventWriter w(begin_sse(req, resp));
    const std::string start =
        "{\"type\":\"message_start\",\"message\":{\"id\":\"" + id +
        "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + model_json_ +
        ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":" +
        anthropic_usage(prompt_tokens_, 1) + "}}";
    if (!w.emit({"event: message_start\ndata: ", start, "\n\n"})) return;
    if (!w.emit({"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
                 "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"})) {
      return;
    }
    if (!w.emit({"event: ping\ndata: {\"type\":\"ping\"}\n\n"})) return;
    const std::uint64_t n = content.pieces();
    if (maybe_reset(req, resp, 0, n == 0)) return;
    std::string scratch;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (ctl_.delay_ms && !sleep_ms(*ctl_.delay_ms)) return;
      if (!w.emit(
              {"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
               "\"delta\":{\"type\":\"text_delta\",\"text\":\"",
               content.piece(i, scratch), "\"}}\n\n"})) {
        return;
      }
      if (maybe_reset(req, resp, i + 1, i + 1 == n)) return;
    }
    if (!w.emit({"event: content_block_stop\ndata: "
                 "{\"type\":\"content_block_stop\",\"index\":0}\n\n"})) {
      return;
    }
    if (!w.emit(
            {"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
             "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":",
             to_str(n), "}}\n\n"})) {
      return;
    }
    w.emit({"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"});
  }

  void nonstream_openai(HTTPServerRequest& req, HTTPServerResponse& resp, const Content& content) {
    const std::string prefix =
        "{\"id\":\"chatcmpl-mock-" + to_str(g_next_id.fetch_add(1)) +
        "\",\"object\":\"chat.completion\",\"created\":" +
        to_str(static_cast<std::uint64_t>(std::time(nullptr))) + ",\"model\":" + model_json_ +
        ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"";
    const std::string suffix =
        "\"},\"finish_reason\":\"stop\"}],\"usage\":" + openai_usage(content.pieces()) + "}";
    write_nonstream(req, resp, prefix, content, suffix);
  }

  void nonstream_anthropic(HTTPServerRequest& req, HTTPServerResponse& resp,
                           const Content& content) {
    const std::string prefix =
        "{\"id\":\"msg_mock_" + to_str(g_next_id.fetch_add(1)) +
        "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + model_json_ +
        ",\"content\":[{\"type\":\"text\",\"text\":\"";
    const std::string suffix =
        "\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":" +
        anthropic_usage(prompt_tokens_, content.pieces()) + "}";
    write_nonstream(req, resp, prefix, content, suffix);
  }

  // prefix + content text + suffix. Small bodies go out in one buffer; large ones (or a reset)
  // are generated as they are written, with an exact Content-Length, in constant memory.
  void write_nonstream(HTTPServerRequest& req, HTTPServerResponse& resp, const std::string& prefix,
                       const Content& content, const std::string& suffix) {
    const std::uint64_t text_bytes = content.total_bytes();
    const std::uint64_t total = prefix.size() + text_bytes + suffix.size();
    std::string scratch;
    if (!ctl_.reset_after && total <= (1u << 20)) {
      std::string body;
      body.reserve(total);
      body += prefix;
      const std::uint64_t n = content.pieces();
      for (std::uint64_t i = 0; i < n; ++i) body += content.piece(i, scratch);
      body += suffix;
      send_json(resp, 200, body);
      return;
    }
    set_status(resp, 200);
    resp.setContentType("application/json");
    resp.setContentLength64(static_cast<Poco::Int64>(total));
    std::ostream& out = resp.send();
    // With a reset, only the first half of the body is sent.
    std::uint64_t budget = ctl_.reset_after ? total / 2 : total;
    const auto put = [&](std::string_view s) {
      if (budget == 0 || !out.good()) return false;
      const std::uint64_t n = std::min<std::uint64_t>(budget, s.size());
      out.write(s.data(), static_cast<std::streamsize>(n));
      budget -= n;
      return out.good();
    };
    try {
      if (put(prefix)) {
        const std::uint64_t n = content.pieces();
        bool ok = true;
        for (std::uint64_t i = 0; i < n && ok; ++i) ok = put(content.piece(i, scratch));
        if (ok) put(suffix);
      }
      out.flush();
    } catch (...) {
      return;
    }
    if (ctl_.reset_after && out.good()) reset_connection(req, resp);
  }

  const Options& opt_;
  Stats& stats_;
  std::string body_;
  std::string path_;
  std::string query_;
  Route route_ = Route::Unknown;
  Flavour flavour_ = Flavour::OpenAI;
  Controls ctl_;
  std::string model_json_ = "\"glm-4.7\"";
  bool stream_ = false;
  bool include_usage_ = false;
  std::uint64_t prompt_tokens_ = 1;
};

}  // namespace

void request_stop() {
  {
    std::lock_guard lock(g_stop_mutex);
    g_stop.store(true);
  }
  g_stop_cv.notify_all();
}

bool stop_requested() { return g_stop.load(); }

bool CountingFilter::accept(const Poco::Net::StreamSocket&) {
  stats_.connections.fetch_add(1);
  return true;
}

MockHandlerFactory::MockHandlerFactory(const Options& options, Stats& stats)
    : options_(options), stats_(stats) {}

Poco::Net::HTTPRequestHandler* MockHandlerFactory::createRequestHandler(const HTTPServerRequest&) {
  return new MockHandler(options_, stats_);
}

}  // namespace glmp::mock
