#pragma once
// Request handling for the mock upstream: routing, auth, control headers and the response
// generators for the OpenAI and Anthropic flavours. A handler turns one parsed request into a
// Script of timed steps (mock_script.hpp) that the event loop plays. See README.md.

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mock_script.hpp"

namespace glmp::mock {

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::string api_key = "test-upstream-key";
  bool https = false;
  std::string cert_file;
  std::string key_file;
  long keepalive_timeout_ms = 10000;
  int loops = 1;  // event loop threads
  bool fast = false;
  bool verbose = false;
  // HTTP/2. ALPN (--https): the protocols the mock selects, in its order of preference ("h2",
  // "http/1.1"); none of them offered = no ALPN, HTTP/1.1.
  std::vector<std::string> alpn = {"h2", "http/1.1"};
  std::uint32_t max_concurrent_streams = 100;  // SETTINGS_MAX_CONCURRENT_STREAMS advertised
  std::uint32_t h2_window = 65535;             // SETTINGS_INITIAL_WINDOW_SIZE advertised
};

struct Stats {
  std::atomic<std::uint64_t> connections{0};         // accepted TCP connections (counted at accept)
  std::atomic<std::uint64_t> requests{0};            // requests, excluding /__mock/* ones
  std::atomic<std::int64_t> active{0};               // in-flight requests, excluding /__mock/* ones
  std::atomic<std::int64_t> current_connections{0};  // open connections
  std::atomic<std::uint64_t> h2_connections{0};      // accepted connections that became HTTP/2
  std::atomic<std::uint64_t> h2_streams{0};          // request streams served over HTTP/2
  std::atomic<std::uint64_t> max_streams_per_connection{0};  // most streams open at once on one
  std::atomic<std::uint64_t> goaways{0};             // GOAWAY frames sent

  // Raises max_streams_per_connection to `open` if that is higher.
  void note_open_streams(std::uint64_t open) {
    std::uint64_t seen = max_streams_per_connection.load();
    while (open > seen && !max_streams_per_connection.compare_exchange_weak(seen, open)) {
    }
  }
};

// One parsed request. Header names keep their case; lookups ignore it. An HTTP/2 request has
// version 2.0, its pseudo-header :authority as a `host` header and lowercase names.
struct Request {
  std::string method;
  std::string uri;
  int version_major = 1;
  int version_minor = 1;
  std::vector<std::pair<std::string, std::string>> headers;  // in the order received
  std::string body;

  // Adds a header as Poco's NameValueCollection kept them: a repeated name (any case) goes right
  // after the earlier ones, so lookups and iteration see the same order.
  void add_header(std::string name, std::string value);
  // The first value of header `name` (case-insensitive), or nullptr.
  const std::string* find(std::string_view name) const;
  const std::string& get(std::string_view name, const std::string& fallback) const;
  // "HTTP/1.1" or "HTTP/1.0" (whatever the request line said); "HTTP/2.0" over HTTP/2.
  std::string version() const;
  bool h2() const { return version_major == 2; }
  // As Poco's HTTPMessage::getKeepAlive: a Connection header other than "close" keeps the
  // connection alive; without one, only HTTP/1.1 (and HTTP/2) does.
  bool keep_alive() const;
  // Expect: 100-continue.
  bool expect_continue() const;
  void clear();
};

class Handler {
 public:
  virtual ~Handler() = default;
  // The response. The handler and its request must outlive the script. The response is written
  // as HTTP/1.1 bytes (status line, headers, body); for an HTTP/2 request (version 2.0) the body
  // is never chunked, and the HTTP/2 session turns the head into HEADERS and the rest into DATA.
  virtual Script run() = 0;
  // After the script: whether the connection may carry another request (the response's
  // Connection header).
  virtual bool keep_alive() const = 0;
  // A 500 response for an exception the script threw before it wrote anything.
  virtual std::string internal_error(const std::exception& e) = 0;
};

std::unique_ptr<Handler> make_handler(const Options& options, Stats& stats, const Request& request);

}  // namespace glmp::mock
