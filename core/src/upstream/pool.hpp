#pragma once
// One keep-alive connection pool per upstream (docs/design.md, "Upstream pool").
//
// - HTTP/1.1 keep-alive sessions over HTTP or HTTPS (Poco NetSSL: verification on, system CA
//   store plus an optional extra CA file, SNI and host-name checks by Poco).
// - min/max connections, optional warm-up, a wait queue bounded by acquire_timeout,
//   idle expiry, and a background TCP health check.
// - Idle connections are taken most-recently-used first (hottest socket) and are checked for a
//   pending EOF/RST before use, so most sockets the upstream closed while idle never see a request.
// - Stale-socket retry support: Connection::wait_first_byte() tells "the upstream closed before
//   sending a single byte" apart from every later failure, so a request is retried only when the
//   upstream cannot have started working on it.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPClientSession.h>

#include "config/config.hpp"

namespace glmp::core::upstream {

using Clock = std::chrono::steady_clock;

class PoolExhausted : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct PoolStats {
  size_t size = 0;      // open or opening connections (idle + in use)
  size_t idle = 0;
  size_t in_use = 0;
  size_t waiting = 0;   // requests waiting for a connection
  size_t max = 0;
  uint64_t created = 0; // sessions created
  uint64_t reused = 0;  // acquisitions served by an already open session (kept alive or warmed)
  uint64_t failed = 0;  // connections discarded after an error
  uint64_t expired = 0; // idle connections closed for age or staleness
  uint64_t timeouts = 0;// acquisitions that gave up after acquire_timeout
  bool healthy = true;
  std::string last_error;  // last health-check failure ("" when healthy)

  // The numeric figures by name, in one place for /health and /metrics.
  std::vector<std::pair<const char*, uint64_t>> figures() const {
    return {{"size", size},       {"idle", idle},       {"in_use", in_use}, {"waiting", waiting},
            {"max", max},         {"created", created}, {"reused", reused}, {"failed", failed},
            {"expired", expired}, {"timeouts", timeouts}};
  }
};

// A pooled session. Poco's HTTPClientSession plus the two protected operations the pool needs.
class Connection {
public:
  virtual ~Connection() = default;
  virtual Poco::Net::HTTPClientSession& http() = 0;
  // Opens the TCP (and TLS) connection now, for warm-up.
  virtual void open() = 0;
  // Blocks (up to the session's receive timeout) for the first response byte without consuming it.
  // Returns false on a clean EOF before any byte; throws Poco exceptions on reset/timeout.
  virtual bool wait_first_byte() = 0;
  // Reads up to n raw response bytes (what wait_first_byte peeked first): 0 at EOF; throws Poco
  // exceptions on reset, TLS failure or a read timeout. The response is parsed by the caller
  // (http::ResponseParser), never by Poco, so a cut response is always seen as cut.
  virtual size_t read_some(char* buf, size_t n) = 0;
  // An idle keep-alive connection with something to read (EOF, RST or stray bytes) is unusable.
  bool idle_looks_stale();

  bool reused = false;             // this acquisition reuses a kept-alive connection
  Clock::time_point idle_since{};  // when it was last returned to the pool
};

class Pool {
public:
  explicit Pool(const config::UpstreamConfig& cfg);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // RAII handle: the connection goes back to the pool only through release(); destroying a lease
  // that was not released closes the connection (an error path never returns a dirty socket).
  class Lease {
  public:
    Lease() = default;
    Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) noexcept = default;
    Lease& operator=(Lease&&) noexcept;
    ~Lease();
    Connection* operator->() const { return conn_.get(); }
    Connection& operator*() const { return *conn_; }
    explicit operator bool() const { return conn_ != nullptr; }
    void release();               // healthy, fully read: keep alive for the next request
    void discard(bool failure);   // close; `failure` counts in the failed metric
  private:
    Pool* pool_ = nullptr;
    std::unique_ptr<Connection> conn_;
  };

  // Waits up to acquire_timeout. Throws PoolExhausted on timeout.
  Lease acquire();

  // Starts warm-up and the maintenance thread (idle expiry, min fill, health check).
  void start();
  void stop();

  PoolStats stats() const;
  const config::UpstreamConfig& config() const { return cfg_; }
  bool secure() const { return secure_; }
  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }
  const std::string& base_path() const { return base_path_; }  // "" or "/api/coding/paas/v4"
  const std::string& host_header() const { return host_header_; }

private:
  std::unique_ptr<Connection> make_connection();
  void give_back(std::unique_ptr<Connection> conn);
  void drop(bool failure);
  void maintenance_loop();
  void health_check();

  config::UpstreamConfig cfg_;
  bool secure_ = false;
  std::string host_;
  uint16_t port_ = 0;
  std::string base_path_;
  std::string host_header_;
  Poco::Net::Context::Ptr ssl_context_;  // HTTPS only

  mutable std::mutex mutex_;
  std::condition_variable available_;
  std::vector<std::unique_ptr<Connection>> idle_;  // back = most recently used
  size_t size_ = 0;
  size_t waiting_ = 0;
  uint64_t created_ = 0, reused_ = 0, failed_ = 0, expired_ = 0, timeouts_ = 0;
  bool healthy_ = true;
  std::string last_error_;

  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread maintenance_;
};

}  // namespace glmp::core::upstream
