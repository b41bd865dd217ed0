#pragma once
// The listener (docs/design.md, "Threads and connections"): one epoll thread that accepts
// connections and owns every connection that is idle or still receiving its request's headers,
// and a pool of worker threads that each take one connection whose headers are complete, run the
// request, and give the connection back (or close it).
//
// So a connection costs a thread only while its request is being served: a slowloris of
// thousands of connections trickling header bytes costs a few hundred bytes each, and every one
// of them meets the total header deadline. Beyond server.max_connections a new connection is
// answered 503 and closed at once; beyond server.max_queued complete requests waiting for a
// worker, 503 too.

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

namespace glmp::core::server {

struct ListenerOptions {
  ConnectionLimits limits;
  int max_connections = 10000;
  int max_threads = 512;
  int max_queued = 1024;
  size_t thread_stack_size = 256 * 1024;
};

class Listener {
public:
  // Serves one connection whose request headers are complete, on a worker thread, and says what
  // becomes of it: back to the loop (kept alive, next request not complete yet) or closed. The
  // listener keeps ownership throughout, so stop() can always reach a connection being served.
  enum class After { Idle, Close };
  using Serve = std::function<After(ClientConnection&)>;

  Listener(const Poco::Net::SocketAddress& address, ListenerOptions options, Serve serve);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  void start();
  // Stops accepting and closes idle connections; connections being served finish their request.
  void stop_accepting();
  // Stops everything: the loop, the workers (blocked reads and writes give up within 250 ms).
  void stop();

  uint16_t port() const { return port_; }
  int open_connections() const { return open_.load(std::memory_order_relaxed); }
  // Every worker thread is taken and requests are waiting for one: a worker then hands a quiet
  // connection back at once instead of waiting for its next request (fairness under overload).
  bool saturated() const {
    return queued_.load(std::memory_order_relaxed) > 0 && running_now_.load(std::memory_order_relaxed) >= options_.max_threads;
  }
  const std::atomic<bool>& stopping() const { return stopping_; }

private:
  class WorkerRunnable final : public Poco::Runnable {
  public:
    explicit WorkerRunnable(Listener& l) : l_(l) {}
    void run() override { l_.worker_loop(); }

  private:
    Listener& l_;
  };

  void loop();
  void accept_all();
  void on_readable(int fd);
  void dispatch(std::unique_ptr<ClientConnection> conn);
  void worker_loop();
  void adopt(std::unique_ptr<ClientConnection> conn);  // from a worker: back into the loop
  void take_adopted();
  void watch(std::unique_ptr<ClientConnection> conn, bool lingering);
  void close_conn(int fd);
  void wake();  // the loop wakes up: adopted connections, stop
  void sweep();
  void reject_and_linger(std::unique_ptr<ClientConnection> conn, int status, const std::string& message);

  ListenerOptions options_;
  Serve serve_;
  Poco::Net::ServerSocket socket_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: adopted connections, stop
  std::atomic<bool> accepting_{true};
  std::atomic<bool> stopping_{false};
  std::atomic<int> open_{0};
  std::atomic<int> queued_{0};       // queue_.size(), readable without the lock
  std::atomic<int> running_now_{0};  // running_, readable without the lock
  std::thread thread_;
  bool accept_paused_ = false;  // loop-owned: out of descriptors, accepts resume at the next sweep

  // Loop-owned.
  struct Waiting {
    std::unique_ptr<ClientConnection> conn;
    bool lingering = false;       // answered and half-closed: reading what is left until EOF
    bool timing_headers = false;  // a request has started: the deadline is the header deadline
  };
  std::unordered_map<int, Waiting> waiting_;
  // Takes a waiting connection out of epoll and the map, for a worker or an answer.
  std::unique_ptr<ClientConnection> unwatch(std::unordered_map<int, Waiting>::iterator it);

  std::mutex adopt_mutex_;
  std::vector<std::unique_ptr<ClientConnection>> adopted_;

  // Workers.
  std::mutex work_mutex_;
  std::condition_variable work_cv_;
  std::deque<std::unique_ptr<ClientConnection>> queue_;
  std::unordered_set<ClientConnection*> serving_;  // alive while listed: stop() shuts their sockets down
  int running_ = 0, idle_ = 0;
  std::unique_ptr<Poco::ThreadPool> threads_;
  WorkerRunnable runnable_{*this};
};

}  // namespace glmp::core::server
