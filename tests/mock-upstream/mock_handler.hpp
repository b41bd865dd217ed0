#pragma once
// Request handling for the mock upstream: routing, auth, control headers and the response
// generators for the OpenAI and Anthropic flavours. See README.md for the behaviour.

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/TCPServer.h>

#include <atomic>
#include <cstdint>
#include <string>

namespace Poco::Net {
class HTTPServer;
}

namespace glmp::mock {

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::string api_key = "test-upstream-key";
  bool https = false;
  std::string cert_file;
  std::string key_file;
  long keepalive_timeout_ms = 10000;
  int threads = 256;
  bool fast = false;
  bool verbose = false;
};

struct Stats {
  std::atomic<std::uint64_t> connections{0};  // accepted TCP connections (counted at accept)
  std::atomic<std::uint64_t> requests{0};     // requests, excluding /__mock/* ones
  std::atomic<std::int64_t> active{0};        // in-flight requests, excluding /__mock/* ones
  std::atomic<Poco::Net::HTTPServer*> server{nullptr};
};

// Process-wide stop flag; sleeps in the handlers wake up early when it is set.
void request_stop();
bool stop_requested();

// Counts every accepted TCP connection (the filter runs in the acceptor thread, before the
// connection is queued), and accepts them all.
class CountingFilter : public Poco::Net::TCPServerConnectionFilter {
 public:
  explicit CountingFilter(Stats& stats) : stats_(stats) {}
  bool accept(const Poco::Net::StreamSocket& socket) override;

 private:
  Stats& stats_;
};

class MockHandlerFactory : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  MockHandlerFactory(const Options& options, Stats& stats);
  Poco::Net::HTTPRequestHandler* createRequestHandler(
      const Poco::Net::HTTPServerRequest& request) override;

 private:
  const Options& options_;
  Stats& stats_;
};

}  // namespace glmp::mock
