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
};

struct Stats {
  std::atomic<std::uint64_t> connections{0};         // accepted TCP connections (counted at accept)
  std::atomic<std::uint64_t> requests{0};            // requests, excluding /__mock/* ones
  std::atomic<std::int64_t> active{0};               // in-flight requests, excluding /__mock/* ones
  std::atomic<std::int64_t> current_connections{0};  // open connections
};

// One parsed request. Header names keep their case; lookups ignore it.
struct Request {
  std::string method;
  std::string uri;
  int version_major = 1;
  int version_minor = 1;
  std::vector<std::pair<std::string, std::string>> headers;  // in the order received
  std::string body;

  // The first value of header `name` (case-insensitive), or nullptr.
  const std::string* find(std::string_view name) const;
  const std::string& get(std::string_view name, const std::string& fallback) const;
  // "HTTP/1.1" or "HTTP/1.0" (whatever the request line said).
  std::string version() const;
  // As Poco's HTTPMessage::getKeepAlive: a Connection header other than "close" keeps the
  // connection alive; without one, only HTTP/1.1 does.
  bool keep_alive() const;
  // Expect: 100-continue.
  bool expect_continue() const;
  void clear();
};

class Handler {
 public:
  virtual ~Handler() = default;
  // The response. The handler and its request must outlive the script.
  virtual Script run() = 0;
  // After the script: whether the connection may carry another request (the response's
  // Connection header).
  virtual bool keep_alive() const = 0;
  // A 500 response for an exception the script threw before it wrote anything.
  virtual std::string internal_error(const std::exception& e) = 0;
};

std::unique_ptr<Handler> make_handler(const Options& options, Stats& stats, const Request& request);

}  // namespace glmp::mock
