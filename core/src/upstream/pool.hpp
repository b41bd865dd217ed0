#pragma once
// Upstream connections (docs/design.md, "Upstream pool").
//
// - Non-blocking HTTP/1.1 keep-alive connections, plain or TLS (OpenSSL on the socket, the
//   SSL_CTX from Poco's NetSSL Context: verification on, system CA store plus an optional extra CA
//   file, SNI, host-name check), each owned by one event loop.
// - One Pool per upstream: a global max_connections (a counter every loop reserves from) and one
//   global waiter queue, so acquire_timeout and its 503 mean what they always meant; idle
//   connections are kept per loop (no lock to take one), most recently used first, and stay in
//   their loop's epoll, so an upstream that closes an idle socket is noticed at once (EPOLLRDHUP)
//   instead of being polled.
// - Stale-socket retry support: a reused connection that fails before the first response byte is
//   retried once on a fresh one (the upstream cannot have started working on the request).
// - A maintenance thread resolves the host (loops never block on DNS), runs the TCP health check,
//   and asks the loops to warm min_connections.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/Context.h>
#include <Poco/Net/SocketAddress.h>

#include "config/config.hpp"
#include "server/event_loop.hpp"

typedef struct ssl_st SSL;

namespace glmp::core::upstream {

using Clock = std::chrono::steady_clock;

struct PoolStats {
  size_t size = 0;      // open or opening connections (idle + in use)
  size_t idle = 0;
  size_t in_use = 0;
  size_t waiting = 0;   // requests waiting for a connection
  size_t max = 0;
  uint64_t created = 0; // connections opened
  uint64_t reused = 0;  // acquisitions served by an already open connection
  uint64_t failed = 0;  // connections discarded after an error
  uint64_t expired = 0; // idle connections closed for age or because the upstream closed them
  uint64_t timeouts = 0;// acquisitions that gave up after acquire_timeout
  bool healthy = true;
  std::string last_error;  // last health-check failure ("" when healthy)
  // HTTP/2: connections carrying streams, streams open now, the most on one connection now,
  // streams ever opened, GOAWAYs received; and each connection's open streams (by serial).
  bool h2 = false;
  uint64_t h2_connections = 0, h2_streams = 0, h2_max_streams = 0, h2_streams_total = 0, h2_goaways = 0;
  std::vector<std::pair<uint64_t, uint64_t>> h2_per_connection;

  // The numeric figures by name, in one place for /health and /metrics.
  std::vector<std::pair<const char*, uint64_t>> figures() const {
    return {{"size", size},       {"idle", idle},       {"in_use", in_use}, {"waiting", waiting},
            {"max", max},         {"created", created}, {"reused", reused}, {"failed", failed},
            {"expired", expired}, {"timeouts", timeouts}, {"h2_connections", h2_connections},
            {"h2_streams", h2_streams}, {"h2_max_streams_per_connection", h2_max_streams},
            {"h2_streams_total", h2_streams_total}, {"h2_goaways", h2_goaways}};
  }
};

class Pool;
class H2Session;

// An exchange waiting for room on an HTTP/2 connection of its loop.
class H2Waiter {
public:
  virtual ~H2Waiter() = default;
  // A stream closed or a connection went away on the waiter's loop: try again (after this event).
  virtual void h2_room() = 0;
};

// Whoever uses a connection gets its events.
class ConnectionUser {
public:
  virtual ~ConnectionUser() = default;
  virtual void on_upstream_event(uint32_t events) = 0;
};

// One upstream connection on one loop.
class Connection final : public server::Watcher {
public:
  Connection(Pool& pool, int fd, size_t loop);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  enum class Io { Ok, WouldBlock, Eof, Error };
  // Finishes the TCP connect and the TLS handshake. WouldBlock: call again on the next event.
  Io establish();
  // Reads up to `cap` bytes (`got`). Eof: the upstream closed (clean_eof() tells a TLS
  // close_notify or plain FIN from a TLS connection cut without one).
  Io read(char* buf, size_t cap, size_t& got);
  // Writes from `data` (`sent` bytes taken; may be fewer than `len`).
  Io write(const char* data, size_t len, size_t& sent);
  bool clean_eof() const { return clean_eof_; }
  // TLS: ALPN selected "h2".
  bool alpn_h2() const;
  // Decrypted bytes OpenSSL holds that epoll cannot report.
  bool buffered() const;
  bool tls() const { return ssl_ != nullptr; }
  // Moves the connection to another loop (it is registered there by the caller).
  void set_loop(size_t loop) { loop_ = loop; }
  const std::string& error() const { return error_; }
  int fd() const { return fd_; }
  size_t loop() const { return loop_; }
  Pool& pool() { return pool_; }

  void on_event(uint32_t events) override;

  ConnectionUser* user = nullptr;  // nullptr while idle: then any event means it is unusable
  bool established = false;
  bool reused = false;             // this acquisition reuses a kept-alive connection
  Clock::time_point idle_since{};

private:
  Io ssl_result(int rc, const char* what);
  Pool& pool_;
  int fd_;
  size_t loop_;
  SSL* ssl_ = nullptr;
  bool clean_eof_ = true;
  std::string error_;
};

class Pool {
public:
  explicit Pool(const config::UpstreamConfig& cfg);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // How a loop is reached from another thread, and who on it waits for a connection.
  struct Waiter {
    size_t loop = 0;
    uint64_t id = 0;
  };
  // Delivers a connection (or, with nullptr, a free slot to open one in) to a waiter's loop. Set
  // by the server before start(); called on any loop thread.
  using Deliver = std::function<void(const Waiter&, std::unique_ptr<Connection>)>;
  // Asks loop i (any thread) to run fn on it.
  using Post = std::function<void(size_t loop, std::function<void()>)>;
  void attach(size_t loops, server::EventLoop* const* evs, Deliver deliver, Post post);

  // ---- loop thread ----
  // An idle connection of this loop (most recently used first; too old ones are closed), or null.
  std::unique_ptr<Connection> take_idle(size_t loop);
  // Reserves a slot under max_connections and starts a non-blocking connect. Null with `error`
  // set when the connect failed at once; null with error empty when every slot is taken.
  std::unique_ptr<Connection> open(size_t loop, std::string& error);
  // Queues a waiter (every slot taken); remove_waiter: false when it was already handed one.
  void add_waiter(const Waiter& w);
  bool remove_waiter(const Waiter& w);
  // A connection whose response was fully read: to the first waiter, else idle on its loop.
  void release(std::unique_ptr<Connection> conn);
  // Closes a connection (failure counts in the failed metric) and frees its slot.
  void discard(std::unique_ptr<Connection> conn, bool failure);
  // An idle connection of `loop` that turned unusable (event while idle): closed.
  void expire_idle(Connection* conn);
  // Registers a connection delivered from another loop with `loop`.
  bool register_on(size_t loop, Connection& conn);
  // Puts a connection delivered to a loop whose waiter is gone into that loop's idle list.
  void keep_idle(std::unique_ptr<Connection> conn);
  // A slot was freed for a waiter that is gone: passed on to the next one.
  void pass_slot();
  // Closes every idle connection of `loop` (the loop is stopping).
  void close_loop(size_t loop);
  void count_timeout() { timeouts_.fetch_add(1, std::memory_order_relaxed); }

  // ---- HTTP/2 (loop thread unless noted) ----
  // Requests go to HTTP/2 sessions: protocol "h2", or "auto" once ALPN chose h2 (any thread).
  bool h2() const { return h2_.load(std::memory_order_relaxed); }
  // The bound on connections: max_connections, but with HTTP/2 at least one per event loop.
  int max_connections() const;
  // An established connection speaks HTTP/2: ALPN chose h2, or h2c with prior knowledge.
  bool speaks_h2(const Connection& conn) const {
    return conn.tls() ? conn.alpn_h2() : cfg_.protocol == config::UpstreamProtocol::H2;
  }
  // A session of `loop` with room for one more stream, else a new one (connecting) if a slot is
  // free. Null: every slot is taken (error empty) or the connect failed at once (error set).
  H2Session* h2_session(size_t loop, std::string& error);
  // An established connection that ALPN made HTTP/2 becomes a session of its loop.
  H2Session* adopt_h2(std::unique_ptr<Connection> conn);
  // The loop has a session that may have room later (so waiting on the loop makes sense).
  bool h2_has_usable(size_t loop) const;
  void h2_wait(size_t loop, H2Waiter* w);
  void h2_unwait(size_t loop, H2Waiter* w);
  // From sessions.
  void h2_stream_opened(H2Session& s);
  void h2_stream_closed(H2Session& s);
  void h2_going_away(H2Session& s);
  void h2_close(H2Session& s);
  bool h2_alive(size_t loop, const H2Session* s, uint64_t serial) const;
  // Warm-up and health check: "" = healthy, else the last failure.
  void set_health(const std::string& error);

  void start();  // maintenance thread: DNS, health check, warm-up
  void stop();

  PoolStats stats() const;
  const config::UpstreamConfig& config() const { return cfg_; }
  bool secure() const { return secure_; }
  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }
  const std::string& base_path() const { return base_path_; }  // "" or "/api/coding/paas/v4"
  const std::string& host_header() const { return host_header_; }

private:
  friend class Connection;
  struct LoopIdle {
    std::vector<std::unique_ptr<Connection>> idle;  // back = most recently used
    std::vector<std::unique_ptr<H2Session>> sessions;
    std::vector<H2Waiter*> h2_waiters;  // first come, first served
  };
  void wake_h2_waiters(size_t loop, bool all);
  // A session for `conn` on `loop`: registered (stats), listed, started.
  H2Session* add_session(size_t loop, std::unique_ptr<Connection> conn);
  void unregister(const H2Session* s);
  void free_slot(bool failure);
  // An idle connection taken out of its loop's list because it is too old or unusable: closed.
  void close_expired(std::unique_ptr<Connection> conn);
  void maintenance_loop();
  bool resolve(std::string& error);
  void health_check();
  void warm(size_t loop);

  config::UpstreamConfig cfg_;
  bool secure_ = false;
  bool host_is_ip_ = false;
  std::string host_;
  uint16_t port_ = 0;
  std::string base_path_;
  std::string host_header_;
  Poco::Net::Context::Ptr ssl_context_;  // HTTPS only

  size_t loops_ = 0;
  server::EventLoop* const* evs_ = nullptr;
  Deliver deliver_;
  Post post_;
  std::vector<LoopIdle> per_loop_;

  std::atomic<int> size_{0};
  std::atomic<int> idle_count_{0};
  std::atomic<uint64_t> created_{0}, reused_{0}, failed_{0}, expired_{0}, timeouts_{0};
  std::atomic<bool> h2_{false};
  std::atomic<uint64_t> h2_streams_total_{0}, h2_goaways_{0};
  mutable std::mutex h2_mutex_;                 // the registry below; touched when a session opens or closes
  std::vector<const H2Session*> h2_registry_;

  mutable std::mutex waiters_mutex_;
  std::deque<Waiter> waiters_;
  std::atomic<int> waiting_{0};

  mutable std::mutex state_mutex_;  // addresses, health
  std::vector<Poco::Net::SocketAddress> addresses_;
  bool healthy_ = true;
  std::string last_error_;

  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread maintenance_;
};

}  // namespace glmp::core::upstream
