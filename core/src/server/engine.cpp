#include "server/engine.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <Poco/Logger.h>

namespace glmp::core::server {
namespace {

constexpr auto kSweepEvery = std::chrono::milliseconds(200);
constexpr auto kLingerFor = std::chrono::seconds(2);   // reading what a closed request left, before close(2)
constexpr auto kWorkerIdle = std::chrono::seconds(5);  // an idle worker thread goes back to the pool

// As many descriptors as the hard limit allows: every connection is one (two while proxied).
void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

constexpr const char* kPlainHttpMessage =
    "The plain HTTP request was sent to HTTPS port: this port speaks TLS, use https://";

// Reads and drops what the client still sends; true when it has closed (the socket may go now).
// Raw reads, also for a TLS connection: after close_notify nothing it sends is looked at.
bool drain_until_eof(int fd) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
}

}  // namespace

// A client connection on its loop, registered once (edge-triggered, every event) for the
// connection's whole life: the loop owns the connection while it is idle, receiving headers or
// lingering; while a request is served (an exchange on the loop, or a worker) its owner has it,
// and the events go to the exchange, or are only remembered (`pending`) for when it comes back.
// So a request costs no epoll_ctl at all.
class Loop::Slot final : public Watcher {
public:
  explicit Slot(Loop& loop) : loop_(loop) {}
  void on_event(uint32_t events) override {
    if (!conn) {
      pending |= events;
      if (handler) handler->on_event(events);
      return;
    }
    loop_.on_slot_event(*this, events);
  }

  Loop& loop_;
  std::unique_ptr<ClientConnection> conn;  // null while its request is being served
  Watcher* handler = nullptr;              // gets the events meanwhile (an exchange), if anyone
  uint32_t pending = 0;                    // events seen meanwhile
  bool lingering = false;                  // answered and half-closed: reading what is left until EOF
  bool timing_headers = false;             // a request has started: the deadline is the header deadline
};

class Loop::Acceptor final : public Watcher {
public:
  explicit Acceptor(Loop& loop) : loop_(loop) {}
  void on_event(uint32_t) override { loop_.accept_all(); }

private:
  Loop& loop_;
};

namespace {
constexpr uint32_t kClientEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr uint32_t kInputEvents = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
}  // namespace

// ---------------------------------------------------------------------------------------------
// Loop

Loop::Loop(Engine& engine, size_t index)
    : engine_(engine), index_(index), acceptor_(std::make_unique<Acceptor>(*this)), tls_(engine.options_.tls) {}

Loop::~Loop() = default;

void Loop::run() {
  // Every loop waits on the one listening socket; EPOLLEXCLUSIVE wakes one of them per connection.
  listening_ = ev_.add(engine_.listen_fd_, EPOLLIN | EPOLLEXCLUSIVE, acceptor_.get());
  next_sweep_ = Clock::now() + kSweepEvery;
  ev_.run([this] {
    if (listening_ && !engine_.accepting()) close_idle();
    if (ev_.now() >= next_sweep_) {
      sweep();
      next_sweep_ = ev_.now() + kSweepEvery;
      if (listening_ && accept_paused_ && engine_.accepting()) {
        accept_paused_ = !ev_.add(engine_.listen_fd_, EPOLLIN | EPOLLEXCLUSIVE, acceptor_.get());
      }
    }
  });
  closing_ = true;  // the slots go with their connections, in one sweep
  fronts_.clear();
  for (auto& [p, s] : slots_) s->conn.reset();
  slots_.clear();
}

void Loop::forget(void* slot) {
  auto* s = static_cast<Slot*>(slot);
  Loop& loop = s->loop_;
  if (loop.closing_) return;
  auto it = loop.slots_.find(s);
  if (it == loop.slots_.end()) return;
  loop.ev_.retire(std::move(it->second));  // its event may be running, or queued in this batch
  loop.slots_.erase(it);
}

// Draining: no new connections, and idle ones are closed (busy ones close after their request).
void Loop::close_idle() {
  listening_ = false;
  if (!accept_paused_) ev_.remove(engine_.listen_fd_);
  std::vector<Slot*> idle;
  for (const auto& [p, s] : slots_)
    if (s->conn && !s->lingering) idle.push_back(p);
  for (Slot* s : idle) s->conn.reset();  // the connection closes here (and its slot with it)
  std::vector<H2Front*> fronts;
  for (const auto& [p, f] : fronts_) fronts.push_back(p);
  for (H2Front* f : fronts) f->drain();  // GOAWAY: their streams finish, then they close
}

void Loop::accept_all() {
  const auto& options = engine_.options_;
  if (tls_) {
    // A reload replaced the context: take the new one (the lock only then).
    if (const uint64_t v = engine_.tls_version_.load(std::memory_order_acquire); v != tls_version_) {
      tls_ = engine_.tls();
      tls_version_ = v;
    }
  }
  for (int round = 0; round < 64 && engine_.accepting(); ++round) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    const int fd = ::accept4(engine_.listen_fd_, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop accepting until the next sweep instead of spinning on the
        // level-triggered listening socket.
        Poco::Logger::get("glm-proxy").warning("accept failed (%s): pausing accepts", std::string(std::strerror(errno)));
        ev_.remove(engine_.listen_fd_);
        accept_paused_ = true;
      }
      return;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL* ssl = nullptr;
    if (tls_) {
      ssl = ::SSL_new(tls_->ssl_ctx());  // holds a reference to the context: a reload does not pull it away
      if (!ssl) {
        ::ERR_clear_error();
        ::close(fd);
        engine_.tls_outcome(TlsOutcome::Failed);
        continue;
      }
    }
    auto conn = std::make_unique<ClientConnection>(fd, Poco::Net::SocketAddress(reinterpret_cast<sockaddr*>(&peer), peer_len),
                                                   engine_.socket_.address(), options.limits, &engine_.open_, &engine_.stopping_, ssl);
    if (engine_.open_.load(std::memory_order_relaxed) > options.max_connections) {
      // A TLS client cannot be answered before a handshake: it is only closed.
      if (!conn->secure())
        conn->reject(503, "too many connections (server.max_connections = " + std::to_string(options.max_connections) + ")",
                     std::chrono::milliseconds(0));
      continue;  // closed at once: never queued
    }
    conn->deadline = ev_.now() + options.limits.header_timeout;
    if (!tls_ && options.h2c) conn->expect_h2c();
    watch(std::move(conn), false);
  }
}

void Loop::watch(std::unique_ptr<ClientConnection> conn, bool lingering) {
  auto* s = static_cast<Slot*>(conn->slot);
  if (!s) {
    auto slot = std::make_unique<Slot>(*this);
    if (!ev_.add(conn->fd(), kClientEvents, slot.get())) return;  // conn closes here
    s = slot.get();
    conn->slot = s;
    conn->on_destroy = &Loop::forget;
    if (LanePipe* pipe = conn->pipe()) pipe->inner = s;  // an HTTP/2 lane tells it of its bytes
    slots_.emplace(s, std::move(slot));
  }
  s->handler = nullptr;
  s->pending = 0;
  s->lingering = lingering;
  s->timing_headers = conn->started();
  s->conn = std::move(conn);
}

std::unique_ptr<ClientConnection> Loop::take(Slot& s) {
  s.pending = 0;
  s.handler = nullptr;
  return std::move(s.conn);
}

uint32_t Loop::attach(ClientConnection& conn, Watcher* handler) {
  auto* s = static_cast<Slot*>(conn.slot);
  if (!s) return 0;
  s->handler = handler;
  return s->pending;
}

void Loop::keep(std::unique_ptr<ClientConnection> conn) {
  if (conn->close_after || !engine_.accepting()) {
    if (conn->close_after) linger(std::move(conn));
    return;  // draining: an idle connection closes
  }
  conn->begin_request();
  // A pipelined request already read is served now. The socket is read only when something
  // arrived while the request was served (the edge-triggered event was remembered).
  auto* s = static_cast<Slot*>(conn->slot);
  const bool arrived = !s || (s->pending & kInputEvents) || conn->tls_buffered();
  switch (arrived ? conn->advance_nonblocking() : conn->advance_buffered()) {
    case ClientConnection::Progress::HeadersDone:
      if (s) s->pending = 0;
      engine_.dispatch_(*this, std::move(conn));
      return;
    case ClientConnection::Progress::Error:
    case ClientConnection::Progress::Http2:  // only a connection's first bytes are compared with the preface
      return reject_malformed(std::move(conn));
    case ClientConnection::Progress::Closed:
      return;  // the connection closes here
    case ClientConnection::Progress::NeedMore:
      break;
  }
  conn->deadline = ev_.now() + (conn->started() ? engine_.options_.limits.header_timeout : engine_.options_.limits.keepalive_timeout);
  watch(std::move(conn), false);
}

void Loop::linger(std::unique_ptr<ClientConnection> conn) {
  conn->close_notify();  // TLS: the alert goes before the FIN
  ::shutdown(conn->fd(), SHUT_WR);
  if (drain_until_eof(conn->fd())) return;  // the client closed already: close now
  conn->deadline = ev_.now() + kLingerFor;
  watch(std::move(conn), true);
}

void Loop::reject(std::unique_ptr<ClientConnection> conn, int status, const std::string& message, const std::string& code) {
  // Never blocks the loop: the answer is small and goes into an empty send buffer.
  conn->reject(status, message, std::chrono::milliseconds(0), code);
  linger(std::move(conn));
}

void Loop::reject_malformed(std::unique_ptr<ClientConnection> conn) {
  const int status = conn->parser().error_status();
  const std::string message = conn->parser().error_message();
  reject(std::move(conn), status, message);
}

void Loop::adopt(std::unique_ptr<ClientConnection> conn) {
  ClientConnection* raw = conn.release();
  ev_.post([this, raw] { keep(std::unique_ptr<ClientConnection>(raw)); });  // keep() lingers on close_after
}

void Loop::on_slot_event(Slot& s, uint32_t events) {
  if (s.conn->handshaking()) [[unlikely]] {
    if (!handshake(s)) return;  // done: the request may have come with the handshake's last flight
  } else if (!(events & kInputEvents) && !((events & EPOLLOUT) && s.conn->tls_wants_write())) {
    return;  // writable: nothing to write between requests (unless a TLS read waits for it)
  }
  if (s.lingering) {
    if (drain_until_eof(s.conn->fd())) s.conn.reset();
    return;
  }
  switch (s.conn->advance_nonblocking()) {
    case ClientConnection::Progress::NeedMore:
      if (!s.timing_headers && s.conn->started()) {
        // The first byte of a request: the total header deadline starts now.
        s.timing_headers = true;
        s.conn->deadline = ev_.now() + engine_.options_.limits.header_timeout;
      }
      return;
    case ClientConnection::Progress::HeadersDone:
      engine_.dispatch_(*this, take(s));
      return;
    case ClientConnection::Progress::Error:
      return reject_malformed(take(s));
    case ClientConnection::Progress::Closed:
      s.conn.reset();
      return;
    case ClientConnection::Progress::Http2:
      return start_h2(s);
  }
}

bool Loop::handshake(Slot& s) {
  std::string error;
  switch (s.conn->handshake_step(error)) {
    case ClientConnection::Handshake::NeedMore:
      return false;
    case ClientConnection::Handshake::Done:
      engine_.tls_outcome(TlsOutcome::Ok);
      if (s.conn->alpn() == "h2") [[unlikely]] {
        start_h2(s);
        return false;
      }
      return true;
    case ClientConnection::Handshake::PlainHttp: {
      // As nginx does: a plain answer that says so, then the connection closes.
      engine_.tls_outcome(TlsOutcome::PlainHttp);
      auto conn = take(s);
      conn->advance_nonblocking();  // what arrived of the request line: the answer's flavour
      reject(std::move(conn), 400, kPlainHttpMessage, "plain_http_to_tls_port");
      return false;
    }
    case ClientConnection::Handshake::Failed: {
      engine_.tls_outcome(TlsOutcome::Failed);
      auto& log = Poco::Logger::get("glm-proxy");
      if (log.debug()) log.debug("TLS handshake with %s failed: %s", s.conn->peer().toString(), error);
      s.conn.reset();
      return false;
    }
    case ClientConnection::Handshake::Closed:
      s.conn.reset();  // left before sending a byte (a port probe): not a handshake
      return false;
  }
  return false;
}

void Loop::start_h2(Slot& s) {
  std::unique_ptr<ClientConnection> conn = take(s);
  ClientConnection& c = *conn;
  auto front = std::make_unique<H2Front>(*this, std::move(conn), engine_.options_.h2);
  H2Front* raw = front.get();
  attach(c, raw);  // the socket's events go to the front from now on
  fronts_.emplace(raw, std::move(front));
  raw->start();
}

void Loop::front_closed(H2Front& front) {
  auto it = fronts_.find(&front);
  if (it == fronts_.end() || closing_) return;
  ev_.retire(std::move(it->second));  // its code is on the stack
  fronts_.erase(it);
}

void Loop::sweep() {
  const auto now = ev_.now();
  std::vector<Slot*> expired;
  for (const auto& [p, s] : slots_)
    if (s->conn && now >= s->conn->deadline) expired.push_back(p);
  for (Slot* s : expired) {
    if (!s->lingering && s->timing_headers) {
      reject(take(*s), 408,
             "request headers not received within " + std::to_string(engine_.options_.limits.header_timeout.count()) + " ms");
    } else {
      if (s->conn->handshaking() && s->conn->handshake_started()) {
        // A TLS handshake that did not finish within header_timeout: closed, no 408 (there is no
        // channel to send it on).
        engine_.tls_outcome(TlsOutcome::Failed);
        auto& log = Poco::Logger::get("glm-proxy");
        if (log.debug())
          log.debug("TLS handshake with %s not finished within %s ms: closed", s->conn->peer().toString(),
                    std::to_string(engine_.options_.limits.header_timeout.count()));
      }
      s->conn.reset();  // idle keep-alive, a fresh connection that never sent a byte (or never
                        // finished its handshake), or done lingering
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Engine

Engine::Engine(const Poco::Net::SocketAddress& address, EngineOptions options, Dispatch dispatch)
    : options_(std::move(options)), dispatch_(std::move(dispatch)) {
  // SO_REUSEADDR (restart while old connections linger in TIME_WAIT), never SO_REUSEPORT: a second
  // proxy on the same port must fail to start, not silently share it.
  socket_.bind(address, true, false);
  socket_.listen(1024);
  port_ = socket_.address().port();
  listen_fd_ = socket_.impl()->sockfd();
  ::fcntl(listen_fd_, F_SETFL, ::fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  const int n = std::max(1, options_.loops);
  for (int i = 0; i < n; ++i) loops_.push_back(std::make_unique<Loop>(*this, static_cast<size_t>(i)));
}

Engine::~Engine() { stop(); }

void Engine::set_tls(std::shared_ptr<const TlsContext> tls) {
  std::lock_guard lock(tls_mutex_);
  options_.tls = std::move(tls);
  tls_version_.fetch_add(1, std::memory_order_release);
}

std::shared_ptr<const TlsContext> Engine::tls() const {
  std::lock_guard lock(tls_mutex_);
  return options_.tls;
}

void Engine::start() {
  raise_fd_limit();
  threads_ = std::make_unique<Poco::ThreadPool>(1, std::max(1, options_.max_threads), 60, static_cast<int>(options_.thread_stack_size));
  for (auto& l : loops_) {
    Loop* loop = l.get();
    loop->thread_ = std::thread([loop] { loop->run(); });
  }
}

void Engine::stop_accepting() {
  accepting_ = false;
  for (auto& l : loops_) l->ev_.post([] {});  // each loop notices in its tick
}

void Engine::stop() {
  if (stopping_.exchange(true)) return;
  accepting_ = false;
  {
    // Requests still running on workers (past the drain timeout) are cut: their client sockets
    // are shut down, so a relay ends at its next write and a body read at once.
    std::lock_guard lock(work_mutex_);
    for (ClientConnection* c : lent_) ::shutdown(c->fd(), SHUT_RDWR);
  }
  work_cv_.notify_all();
  if (threads_) threads_->joinAll();
  {
    std::lock_guard lock(work_mutex_);
    queue_.clear();
  }
  for (auto& l : loops_) {
    Loop* loop = l.get();
    loop->ev_.post([this, loop] {
      if (on_loop_stop) on_loop_stop(*loop);
      loop->ev_.stop();
    });
  }
  for (auto& l : loops_)
    if (l->thread_.joinable()) l->thread_.join();
}

bool Engine::submit(std::function<void()> task) {
  std::unique_lock lock(work_mutex_);
  if (static_cast<int>(queue_.size()) >= options_.max_queued || stopping_.load(std::memory_order_relaxed)) return false;
  queue_.push_back(std::move(task));
  if (idle_ > 0) {
    work_cv_.notify_one();
    return true;
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
  return true;
}

bool Engine::lend(Loop& loop, std::unique_ptr<ClientConnection> conn, std::function<bool(ClientConnection&)> serve) {
  conn->leave_pipe();  // a worker reads and writes an HTTP/2 lane's socket, never its pipe
  ClientConnection* raw = conn.release();
  {
    std::lock_guard lock(work_mutex_);
    lent_.insert(raw);
  }
  const bool queued = submit([this, &loop, raw, serve = std::move(serve)] {
    std::unique_ptr<ClientConnection> c(raw);
    bool keep = false;
    try {
      keep = serve(*c);
    } catch (const std::exception& e) {
      Poco::Logger::get("glm-proxy").error("connection failed: %s", std::string(e.what()));
    }
    {
      std::lock_guard lock(work_mutex_);
      lent_.erase(raw);  // before the connection can be freed: stop() reads this set
    }
    if (!keep) c->close_after = true;  // the loop lingers, then closes it
    loop.adopt(std::move(c));  // connections are only ever freed on their loop
  });
  if (!queued) {
    {
      std::lock_guard lock(work_mutex_);
      lent_.erase(raw);
    }
    loop.reject(std::unique_ptr<ClientConnection>(raw), 503, "server busy: too many requests waiting for a worker (server.max_queued)");
    return false;
  }
  return true;
}

void Engine::worker_loop() {
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
    auto task = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    task();
    lock.lock();
  }
}

}  // namespace glmp::core::server
