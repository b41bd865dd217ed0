#pragma once
// The engine (docs/design.md, "The engine"): server.workers event loops, one thread each, that
// share the listening socket (EPOLLEXCLUSIVE: one loop wakes per new connection) and each own the
// client connections they accepted — idle, receiving headers, lingering, or carrying a proxied
// request — together with those requests' upstream connections and timers. A small worker pool
// runs what may block (admin and plugin routes, /health, /metrics, hooks of plugins that did not
// declare themselves non-blocking); it borrows a connection and hands it back to its loop.
//
// A connection costs memory, never a thread: a slowloris of thousands of connections trickling
// header bytes meets the total header deadline; beyond server.max_connections a new connection is
// answered 503 and closed at once; beyond server.max_queued tasks waiting for a worker, 503 too.
//
// With a TLS context every accepted connection is TLS: its handshake runs on its loop before the
// first request is read (ClientConnection::handshake_step). Each loop keeps its own copy of the
// current context and compares a version number (one atomic load) before accepting: only after a
// reload does it take the engine's lock, once, to copy the new context.

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <Poco/Net/ServerSocket.h>
#include <Poco/Runnable.h>
#include <Poco/ThreadPool.h>

#include "server/connection.hpp"
#include "server/event_loop.hpp"
#include "server/h2_front.hpp"
#include "server/tls.hpp"

namespace glmp::core::server {

struct EngineOptions {
  ConnectionLimits limits;
  int loops = 1;             // server.workers
  int max_connections = 10000;
  int max_threads = 64;      // worker pool for blocking work
  int max_queued = 1024;     // tasks waiting for a worker
  size_t thread_stack_size = 256 * 1024;
  std::shared_ptr<const TlsContext> tls;  // set: the listener speaks TLS only
  H2FrontOptions h2;                       // clients whose ALPN chose h2
  bool h2c = false;                        // plain listener: a connection opening with HTTP/2's preface is served as h2c
  std::function<void(TlsOutcome)> on_tls;  // every TLS connection's start, counted (any loop thread)
};

class Engine;

// One loop and the connections it owns.
class Loop {
public:
  Loop(Engine& engine, size_t index);
  ~Loop();
  EventLoop& ev() { return ev_; }
  size_t index() const { return index_; }
  Engine& engine() { return engine_; }

  // Loop thread. Watches a connection for its next request (pipelined bytes are parsed first; a
  // complete request is dispatched at once).
  void keep(std::unique_ptr<ClientConnection> conn);
  // Loop thread. The connection is done: half-close it and read what the client still sends
  // until it closes (closing with unread bytes would reset the answer away).
  void linger(std::unique_ptr<ClientConnection> conn);
  // Loop thread. Answers a request that cannot be served (status + JSON error) and lingers.
  void reject(std::unique_ptr<ClientConnection> conn, int status, const std::string& message, const std::string& code = {});
  // Loop thread. The request failed parsing or a limit: answers with the parser's status and reason.
  void reject_malformed(std::unique_ptr<ClientConnection> conn);
  // Any thread: gives a connection back after a worker served it (or close_after set: linger).
  void adopt(std::unique_ptr<ClientConnection> conn);
  // Loop thread. Sends the events of a connection being served to `handler` (an exchange) and
  // returns those that arrived since it was taken from the loop.
  uint32_t attach(ClientConnection& conn, Watcher* handler);
  // Loop thread. An HTTP/2 front is done (its connection closed): freed after this event.
  void front_closed(H2Front& front);

private:
  friend class Engine;
  class Slot;
  class Acceptor;
  void run();
  void accept_all();
  void on_slot_event(Slot& s, uint32_t events);
  void watch(std::unique_ptr<ClientConnection> conn, bool lingering);
  std::unique_ptr<ClientConnection> take(Slot& s);
  static void forget(void* slot);  // a connection with a slot is destroyed
  void sweep();
  void close_idle();
  // A TLS connection's handshake moved on; true when it is done and the request can be read.
  bool handshake(Slot& s);
  // The connection's ALPN chose h2 (or it opened with HTTP/2's preface): an H2Front serves it
  // from now on.
  void start_h2(Slot& s);

  Engine& engine_;
  size_t index_;
  EventLoop ev_;
  std::thread thread_;
  std::unordered_map<Slot*, std::unique_ptr<Slot>> slots_;
  std::unordered_map<H2Front*, std::unique_ptr<H2Front>> fronts_;
  std::unique_ptr<Acceptor> acceptor_;
  bool listening_ = false;
  bool accept_paused_ = false;
  Clock::time_point next_sweep_{};
  bool closing_ = false;
  std::shared_ptr<const TlsContext> tls_;  // this loop's copy: new connections use it
  uint64_t tls_version_ = 0;               // of the engine's context it copied
};

class Engine {
public:
  // Called on the loop thread when a connection's request headers are complete. The callee owns
  // the connection from then on (an exchange on the loop, a worker, or an answer).
  using Dispatch = std::function<void(Loop&, std::unique_ptr<ClientConnection>)>;

  Engine(const Poco::Net::SocketAddress& address, EngineOptions options, Dispatch dispatch);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void start();
  // Stops accepting and closes idle connections; requests in flight continue.
  void stop_accepting();
  // Stops everything: workers first (their blocked reads and writes give up within 250 ms), then
  // the loops, which end what they still carry.
  void stop();

  uint16_t port() const { return port_; }
  int open_connections() const { return open_.load(std::memory_order_relaxed); }
  bool accepting() const { return accepting_.load(std::memory_order_relaxed); }
  const std::atomic<bool>& stopping() const { return stopping_; }
  std::atomic<int>* open_counter() { return &open_; }
  size_t loop_count() const { return loops_.size(); }
  Loop& loop(size_t i) { return *loops_[i]; }
  int worker_threads() const { return running_now_.load(std::memory_order_relaxed); }

  // Any thread: connections accepted from now on use `tls`; connections already open keep the
  // certificate they were accepted with. Only for an engine that was started with TLS.
  void set_tls(std::shared_ptr<const TlsContext> tls);
  // The context new connections get (null: plain HTTP).
  std::shared_ptr<const TlsContext> tls() const;

  // Runs `task` on a worker thread; false when server.max_queued tasks are already waiting.
  bool submit(std::function<void()> task);
  // Lends a connection to a worker: `serve` runs there; the connection then goes back to `loop`
  // (kept alive, or closed when serve returns false). While it is lent, stop() can shut it down.
  bool lend(Loop& loop, std::unique_ptr<ClientConnection> conn, std::function<bool(ClientConnection&)> serve);

  // Hooks for the server: what to do when a loop finds a complete request, and per-loop
  // clean-up at stop (ends exchanges still running).
  std::function<void(Loop&)> on_loop_stop;

private:
  friend class Loop;
  class WorkerRunnable final : public Poco::Runnable {
  public:
    explicit WorkerRunnable(Engine& e) : e_(e) {}
    void run() override { e_.worker_loop(); }

  private:
    Engine& e_;
  };
  void worker_loop();
  void tls_outcome(TlsOutcome o) {
    if (options_.on_tls) options_.on_tls(o);
  }

  EngineOptions options_;
  mutable std::mutex tls_mutex_;  // guards options_.tls (the current context) for tls()/set_tls()
  std::atomic<uint64_t> tls_version_{0};  // moves (under tls_mutex_) when set_tls replaces it
  Dispatch dispatch_;
  Poco::Net::ServerSocket socket_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> stopping_{false};
  std::atomic<int> open_{0};
  std::vector<std::unique_ptr<Loop>> loops_;

  // Worker pool.
  std::mutex work_mutex_;
  std::condition_variable work_cv_;
  std::deque<std::function<void()>> queue_;
  std::unordered_set<ClientConnection*> lent_;  // alive while listed: stop() shuts their sockets down
  int running_ = 0, idle_ = 0;
  std::atomic<int> running_now_{0};
  std::unique_ptr<Poco::ThreadPool> threads_;
  WorkerRunnable runnable_{*this};
};

}  // namespace glmp::core::server
