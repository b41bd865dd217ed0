#include "server/listener.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <Poco/Logger.h>

namespace glmp::core::server {
namespace {

constexpr auto kSweepEvery = std::chrono::milliseconds(200);
constexpr auto kLingerFor = std::chrono::seconds(2);  // reading what a closed request left, before close(2)
constexpr auto kWorkerIdle = std::chrono::seconds(5);  // an idle worker thread goes back to the pool

// As many descriptors as the hard limit allows: every connection is one (two while proxied).
void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

Listener::Listener(const Poco::Net::SocketAddress& address, ListenerOptions options, Serve serve)
    : options_(std::move(options)), serve_(std::move(serve)) {
  // SO_REUSEADDR (restart while old connections linger in TIME_WAIT), never SO_REUSEPORT: a second
  // proxy on the same port must fail to start, not silently share it.
  socket_.bind(address, true, false);
  socket_.listen(1024);
  port_ = socket_.address().port();
  listen_fd_ = socket_.impl()->sockfd();
  ::fcntl(listen_fd_, F_SETFL, ::fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
}

Listener::~Listener() { stop(); }

void Listener::start() {
  raise_fd_limit();
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw Poco::SystemException("epoll/eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = wake_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  threads_ = std::make_unique<Poco::ThreadPool>(1, options_.max_threads, 60, static_cast<int>(options_.thread_stack_size));
  thread_ = std::thread([this] { loop(); });
}

void Listener::wake() {
  if (wake_fd_ < 0) return;
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void Listener::stop_accepting() {
  accepting_ = false;
  wake();
}

void Listener::stop() {
  if (stopping_.exchange(true)) return;
  accepting_ = false;
  wake();
  if (thread_.joinable()) thread_.join();
  {
    // Requests still running (past the drain timeout) are cut: their client sockets are shut down,
    // so a relay ends at its next write and a body read at once.
    std::lock_guard lock(work_mutex_);
    for (ClientConnection* c : serving_) ::shutdown(c->fd(), SHUT_RDWR);
  }
  work_cv_.notify_all();
  if (threads_) threads_->joinAll();
  {
    std::lock_guard lock(work_mutex_);
    queue_.clear();
  }
  {
    std::lock_guard lock(adopt_mutex_);
    adopted_.clear();
  }
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  epoll_fd_ = wake_fd_ = -1;
}

void Listener::loop() {
  epoll_event events[256];
  auto next_sweep = Clock::now() + kSweepEvery;
  bool listening = true;
  while (!stopping_.load(std::memory_order_relaxed)) {
    const int n = ::epoll_wait(epoll_fd_, events, 256, static_cast<int>(kSweepEvery.count()));
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd_) {
        accept_all();
      } else if (fd == wake_fd_) {
        uint64_t v;
        [[maybe_unused]] auto r = ::read(wake_fd_, &v, sizeof v);
        take_adopted();
      } else {
        on_readable(fd);
      }
    }
    if (listening && !accepting_.load(std::memory_order_relaxed)) {
      // Draining: no new connections, and idle ones are closed (busy ones close after their request).
      listening = false;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      socket_.close();
      std::vector<int> idle;
      for (const auto& [fd, w] : waiting_)
        if (!w.lingering) idle.push_back(fd);
      for (int fd : idle) close_conn(fd);
    }
    if (Clock::now() >= next_sweep) {
      sweep();
      next_sweep = Clock::now() + kSweepEvery;
      if (listening && accept_paused_) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = listen_fd_;
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
        accept_paused_ = false;
      }
    }
  }
  waiting_.clear();
}

void Listener::accept_all() {
  const Poco::Net::SocketAddress local = socket_.address();
  for (int round = 0; round < 64 && accepting_.load(std::memory_order_relaxed); ++round) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop accepting until the next sweep instead of spinning on the
        // level-triggered listening socket.
        Poco::Logger::get("glm-proxy").warning("accept failed (%s): pausing accepts", std::string(std::strerror(errno)));
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        accept_paused_ = true;
      }
      return;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto conn = std::make_unique<ClientConnection>(fd, Poco::Net::SocketAddress(reinterpret_cast<sockaddr*>(&peer), peer_len),
                                                   local, options_.limits, &open_, &stopping_);
    if (open_.load(std::memory_order_relaxed) > options_.max_connections) {
      conn->reject(503, "too many connections (server.max_connections = " + std::to_string(options_.max_connections) + ")",
                   std::chrono::milliseconds(0));
      continue;  // closed at once: never queued
    }
    conn->deadline = Clock::now() + options_.limits.header_timeout;
    watch(std::move(conn), false);
  }
}

void Listener::watch(std::unique_ptr<ClientConnection> conn, bool lingering) {
  const int fd = conn->fd();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return;  // conn closes here
  Waiting& w = waiting_[fd];
  w.conn = std::move(conn);
  w.lingering = lingering;
  w.timing_headers = w.conn->started();
}

std::unique_ptr<ClientConnection> Listener::unwatch(std::unordered_map<int, Waiting>::iterator it) {
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->first, nullptr);
  auto conn = std::move(it->second.conn);
  waiting_.erase(it);
  return conn;
}

void Listener::close_conn(int fd) {
  if (auto it = waiting_.find(fd); it != waiting_.end()) unwatch(it);  // the connection closes here
}

void Listener::reject_and_linger(std::unique_ptr<ClientConnection> conn, int status, const std::string& message) {
  // Never blocks the loop: the answer is small and goes into an empty send buffer.
  conn->reject(status, message, std::chrono::milliseconds(0));
  ::shutdown(conn->fd(), SHUT_WR);
  conn->deadline = Clock::now() + kLingerFor;
  watch(std::move(conn), true);
}

void Listener::on_readable(int fd) {
  auto it = waiting_.find(fd);
  if (it == waiting_.end()) return;
  Waiting& w = it->second;
  if (w.lingering) {
    // Read and drop until the client closes: closing with unread bytes would send a reset that
    // can destroy the answer before the client reads it.
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) continue;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      close_conn(fd);
      return;
    }
  }
  switch (w.conn->advance_nonblocking()) {
    case ClientConnection::Progress::NeedMore:
      if (!w.timing_headers && w.conn->started()) {
        // The first byte of a request: the total header deadline starts now.
        w.timing_headers = true;
        w.conn->deadline = Clock::now() + options_.limits.header_timeout;
      }
      return;
    case ClientConnection::Progress::HeadersDone:
      dispatch(unwatch(it));
      return;
    case ClientConnection::Progress::Error: {
      auto conn = unwatch(it);
      const int status = conn->parser().error_status();
      const std::string message = conn->parser().error_message();
      reject_and_linger(std::move(conn), status, message);
      return;
    }
    case ClientConnection::Progress::Closed:
      close_conn(fd);
      return;
  }
}

void Listener::sweep() {
  const auto now = Clock::now();
  std::vector<int> expired;
  for (const auto& [fd, w] : waiting_)
    if (now >= w.conn->deadline) expired.push_back(fd);
  for (int fd : expired) {
    auto it = waiting_.find(fd);
    if (!it->second.lingering && it->second.timing_headers) {
      reject_and_linger(unwatch(it), 408,
                        "request headers not received within " + std::to_string(options_.limits.header_timeout.count()) + " ms");
    } else {
      close_conn(fd);  // idle keep-alive, a fresh connection that never sent a byte, or done lingering
    }
  }
}

void Listener::dispatch(std::unique_ptr<ClientConnection> conn) {
  std::unique_lock lock(work_mutex_);
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    lock.unlock();
    reject_and_linger(std::move(conn), 503, "server busy: too many requests waiting for a worker (server.max_queued)");
    return;
  }
  queue_.push_back(std::move(conn));
  queued_.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
  if (idle_ > 0) {
    work_cv_.notify_one();
    return;
  }
  if (running_ < options_.max_threads) {
    running_now_.store(++running_, std::memory_order_relaxed);
    lock.unlock();
    try {
      threads_->start(runnable_);
    } catch (const Poco::Exception&) {
      lock.lock();
      running_now_.store(--running_, std::memory_order_relaxed);
    }
  }
}

void Listener::worker_loop() {
  std::unique_lock lock(work_mutex_);
  for (;;) {
    while (queue_.empty()) {
      if (stopping_.load(std::memory_order_relaxed)) {
        running_now_.store(--running_, std::memory_order_relaxed);
        return;
      }
      ++idle_;
      const bool got = work_cv_.wait_for(lock, kWorkerIdle, [&] { return !queue_.empty() || stopping_.load(); });
      --idle_;
      if (!got) {
        running_now_.store(--running_, std::memory_order_relaxed);
        return;
      }
    }
    auto conn = std::move(queue_.front());
    queue_.pop_front();
    queued_.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
    serving_.insert(conn.get());
    lock.unlock();
    After after = After::Close;
    try {
      after = serve_(*conn);
    } catch (const std::exception& e) {
      Poco::Logger::get("glm-proxy").error("connection failed: %s", std::string(e.what()));
    }
    lock.lock();
    serving_.erase(conn.get());  // before the connection can be freed: stop() reads this set
    lock.unlock();
    if (after == After::Close) {
      // Half-close, then read what the client still sends until it closes: only if it already did
      // can the socket be closed here without the risk of a reset; else the loop lingers.
      conn->close_after = true;
      ::shutdown(conn->fd(), SHUT_WR);
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(conn->fd(), buf, sizeof buf, 0)) > 0) {
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) conn.reset();
    }
    if (conn) adopt(std::move(conn));
    lock.lock();
  }
}

void Listener::adopt(std::unique_ptr<ClientConnection> conn) {
  {
    std::lock_guard lock(adopt_mutex_);
    adopted_.push_back(std::move(conn));
  }
  wake();
}

void Listener::take_adopted() {
  std::vector<std::unique_ptr<ClientConnection>> batch;
  {
    std::lock_guard lock(adopt_mutex_);
    batch.swap(adopted_);
  }
  const auto now = Clock::now();
  for (auto& conn : batch) {
    if (conn->close_after) {
      conn->deadline = now + kLingerFor;
      watch(std::move(conn), true);
    } else if (!accepting_.load(std::memory_order_relaxed)) {
      conn.reset();  // draining: an idle connection closes
    } else {
      conn->deadline = now + (conn->started() ? options_.limits.header_timeout : options_.limits.keepalive_timeout);
      watch(std::move(conn), false);
    }
  }
}

}  // namespace glmp::core::server
