#include "upstream/pool.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <Poco/Net/DNS.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/URI.h>

#include "upstream/h2_session.hpp"
#include "util/openssl_errors.hpp"

namespace glmp::core::upstream {
namespace {

Poco::Timespan to_timespan(std::chrono::milliseconds ms) { return Poco::Timespan(ms.count() * 1000); }

constexpr auto kResolveEvery = std::chrono::seconds(30);
// Registered once, edge-triggered, for every event: using a connection costs no epoll_ctl.
constexpr uint32_t kEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

// Opens warm-up connections: finishes their connect and handshake, then puts them idle.
class Warmer final : public ConnectionUser {
public:
  Warmer(Pool& pool, std::unique_ptr<Connection> conn, server::EventLoop& ev) : pool_(pool), conn_(std::move(conn)), ev_(ev) {
    conn_->user = this;
  }
  void step() {
    switch (conn_->establish()) {
      case Connection::Io::Ok:
        conn_->user = nullptr;
        pool_.keep_idle(std::move(conn_));
        pool_.set_health("");
        delete this;
        return;
      case Connection::Io::WouldBlock:
        return;  // the next event continues
      default:
        conn_->user = nullptr;
        pool_.set_health(conn_->error());
        pool_.discard(std::move(conn_), true);
        delete this;
        return;
    }
  }
  void on_upstream_event(uint32_t) override { step(); }

private:
  Pool& pool_;
  std::unique_ptr<Connection> conn_;
  server::EventLoop& ev_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Connection

Connection::Connection(Pool& pool, int fd, size_t loop) : pool_(pool), fd_(fd), loop_(loop) {}

Connection::~Connection() {
  if (ssl_) ::SSL_free(ssl_);
  ::close(fd_);
}

bool Connection::buffered() const { return ssl_ && ::SSL_pending(ssl_) > 0; }

bool Connection::alpn_h2() const {
  if (!ssl_) return false;
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  ::SSL_get0_alpn_selected(ssl_, &proto, &len);
  return len == 2 && proto[0] == 'h' && proto[1] == '2';
}

void Connection::on_event(uint32_t events) {
  if (user) user->on_upstream_event(events);
  else if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pool_.expire_idle(this);  // closed (or talking) while idle
}

Connection::Io Connection::ssl_result(int rc, const char* what) {
  const int err = ::SSL_get_error(ssl_, rc);
  switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return Io::WouldBlock;  // the socket is registered for both: the next event continues
    case SSL_ERROR_ZERO_RETURN:
      clean_eof_ = true;  // close_notify
      return Io::Eof;
    case SSL_ERROR_SYSCALL: {
      const int e = errno;
      const std::string queued = util::openssl_error_queue();
      if (queued.empty() && (e == 0 || rc == 0)) {
        clean_eof_ = false;  // the TCP connection ended without close_notify
        error_ = "TLS connection closed without close_notify";
        return Io::Eof;
      }
      error_ = std::string(what) + ": " + (queued.empty() ? std::strerror(e) : queued);
      return Io::Error;
    }
    default: {
      const std::string queued = util::openssl_error_queue();
      error_ = std::string("TLS error with upstream '") + pool_.cfg_.name + "': " + what + ": " +
               (queued.empty() ? "error " + std::to_string(err) : queued);
      const long verify = ::SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK) error_ += std::string(" (certificate verify failed: ") + ::X509_verify_cert_error_string(verify) + ")";
      return Io::Error;
    }
  }
}

Connection::Io Connection::establish() {
  if (established) return Io::Ok;
  if (!ssl_) {
    // TCP: the non-blocking connect has finished when the socket is writable; SO_ERROR says how.
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      error_ = err == ECONNREFUSED ? "upstream '" + pool_.cfg_.name + "' refused the connection"
                                   : "upstream '" + pool_.cfg_.name + "' connection failed: " + std::strerror(err);
      return Io::Error;
    }
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
      if (errno == ENOTCONN) {  // still connecting
        return Io::WouldBlock;
      }
      error_ = "upstream '" + pool_.cfg_.name + "' connection failed: " + std::strerror(errno);
      return Io::Error;
    }
    if (!pool_.secure_) {
      established = true;
      return Io::Ok;
    }
    ssl_ = ::SSL_new(pool_.ssl_context_->sslContext());
    if (!ssl_) {
      error_ = "TLS error with upstream '" + pool_.cfg_.name + "': " + util::openssl_error_queue();
      return Io::Error;
    }
    ::SSL_set_fd(ssl_, fd_);
    ::SSL_set_connect_state(ssl_);
    // Verification on, against the context's CA store; the certificate must name the host.
    ::SSL_set_verify(ssl_, SSL_VERIFY_PEER, nullptr);
    if (pool_.host_is_ip_) {
      ::X509_VERIFY_PARAM_set1_ip_asc(::SSL_get0_param(ssl_), pool_.host_.c_str());
    } else {
      ::SSL_set_tlsext_host_name(ssl_, pool_.host_.c_str());
      ::SSL_set1_host(ssl_, pool_.host_.c_str());
    }
  }
  ::ERR_clear_error();
  const int rc = ::SSL_do_handshake(ssl_);
  if (rc == 1) {
    established = true;
    return Io::Ok;
  }
  const Io r = ssl_result(rc, "handshake");
  if (r == Io::Eof) {
    error_ = "TLS error with upstream '" + pool_.cfg_.name + "': the connection closed during the handshake";
    return Io::Error;
  }
  if (r == Io::Error && error_.rfind("TLS error", 0) != 0) error_ = "TLS error with upstream '" + pool_.cfg_.name + "': " + error_;
  return r;
}

Connection::Io Connection::read(char* buf, size_t cap, size_t& got) {
  got = 0;
  if (ssl_) {
    ::ERR_clear_error();
    size_t n = 0;
    const int rc = ::SSL_read_ex(ssl_, buf, cap, &n);
    if (rc == 1) {
      got = n;
      return Io::Ok;
    }
    return ssl_result(rc, "read");
  }
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, cap, 0);
    if (n > 0) {
      got = static_cast<size_t>(n);
      return Io::Ok;
    }
    if (n == 0) return Io::Eof;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Io::WouldBlock;
    }
    error_ = errno == ECONNRESET ? "Connection reset by peer" : std::strerror(errno);
    return Io::Error;
  }
}

Connection::Io Connection::write(const char* data, size_t len, size_t& sent) {
  sent = 0;
  if (ssl_) {
    ::ERR_clear_error();
    size_t n = 0;
    const int rc = ::SSL_write_ex(ssl_, data, len, &n);
    if (rc == 1) {
      sent = n;
      return Io::Ok;
    }
    const Io r = ssl_result(rc, "write");
    return r == Io::Eof ? Io::Error : r;
  }
  for (;;) {
    const ssize_t n = ::send(fd_, data, len, MSG_NOSIGNAL);
    if (n >= 0) {
      sent = static_cast<size_t>(n);
      return Io::Ok;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Io::WouldBlock;
    }
    error_ = errno == ECONNRESET ? "Connection reset by peer" : std::strerror(errno);
    return Io::Error;
  }
}

// ---------------------------------------------------------------------------------------------
// Pool

Pool::Pool(const config::UpstreamConfig& cfg) : cfg_(cfg) {
  Poco::URI uri(cfg.base_url);
  secure_ = uri.getScheme() == "https";
  host_ = uri.getHost();
  port_ = uri.getPort();
  base_path_ = uri.getPath();
  while (!base_path_.empty() && base_path_.back() == '/') base_path_.pop_back();
  const bool default_port = (secure_ && port_ == 443) || (!secure_ && port_ == 80);
  const bool ipv6 = host_.find(':') != std::string::npos;
  Poco::Net::IPAddress ip;
  host_is_ip_ = Poco::Net::IPAddress::tryParse(host_, ip);
  if (ipv6) host_header_.append(1, '[').append(host_).append(1, ']');
  else host_header_ = host_;
  if (!default_port) host_header_.append(1, ':').append(std::to_string(port_));
  if (secure_) {
    // Verification on: system CA store (loadDefaultCAs) plus the optional extra bundle. The
    // connections check the certificate's name against host_ (SSL_set1_host).
    ssl_context_ = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", cfg.ca_file,
                                          Poco::Net::Context::VERIFY_RELAXED, 9, true);
    ssl_context_->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
    // ALPN (wire format: length-prefixed names): "auto" lets the upstream choose, "h2" insists.
    static constexpr unsigned char kAuto[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    static constexpr unsigned char kH2[] = {2, 'h', '2'};
    static constexpr unsigned char kHttp1[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    switch (cfg.protocol) {
      case config::UpstreamProtocol::Auto: ::SSL_CTX_set_alpn_protos(ssl_context_->sslContext(), kAuto, sizeof kAuto); break;
      case config::UpstreamProtocol::H2: ::SSL_CTX_set_alpn_protos(ssl_context_->sslContext(), kH2, sizeof kH2); break;
      case config::UpstreamProtocol::Http1: ::SSL_CTX_set_alpn_protos(ssl_context_->sslContext(), kHttp1, sizeof kHttp1); break;
    }
  }
  // h2 is known up front; "auto" over https learns it from the first handshake.
  h2_.store(cfg.protocol == config::UpstreamProtocol::H2, std::memory_order_relaxed);
  std::string ignored;
  resolve(ignored);  // a host that does not resolve yet is retried by the maintenance thread
}

Pool::~Pool() { stop(); }

void Pool::attach(size_t loops, server::EventLoop* const* evs, Deliver deliver, Post post) {
  loops_ = loops;
  evs_ = evs;
  deliver_ = std::move(deliver);
  post_ = std::move(post);
  per_loop_.resize(loops);
}

bool Pool::resolve(std::string& error) {
  std::vector<Poco::Net::SocketAddress> found;
  try {
    if (host_is_ip_) {
      found.emplace_back(host_, port_);
    } else {
      const Poco::Net::HostEntry entry = Poco::Net::DNS::hostByName(host_);
      for (const auto& a : entry.addresses()) found.emplace_back(a, port_);
    }
  } catch (const Poco::Net::HostNotFoundException&) {
    error = "upstream '" + cfg_.name + "' host not found";
  } catch (const Poco::Net::NoAddressFoundException&) {
    error = "upstream '" + cfg_.name + "' host has no address";
  } catch (const Poco::Exception& e) {
    error = "upstream '" + cfg_.name + "' host lookup failed: " + e.displayText();
  }
  std::lock_guard lock(state_mutex_);
  if (!found.empty()) addresses_ = std::move(found);
  else if (error.empty()) error = "upstream '" + cfg_.name + "' host has no address";
  return !addresses_.empty();
}

std::unique_ptr<Connection> Pool::take_idle(size_t loop) {
  auto& idle = per_loop_[loop].idle;
  const auto now = Clock::now();
  while (!idle.empty()) {
    std::unique_ptr<Connection> conn = std::move(idle.back());
    idle.pop_back();
    idle_count_.fetch_sub(1, std::memory_order_relaxed);
    if (now - conn->idle_since > cfg_.idle_timeout) {
      close_expired(std::move(conn));
      continue;
    }
    conn->reused = true;
    reused_.fetch_add(1, std::memory_order_relaxed);
    return conn;
  }
  return nullptr;
}

int Pool::max_connections() const {
  // HTTP/2 sessions belong to an event loop (no thread hop per stream), so every loop needs a
  // connection of its own: the bound is at least the number of loops (as Envoy's per-worker pools).
  return h2() ? std::max(cfg_.max_connections, static_cast<int>(loops_)) : cfg_.max_connections;
}

std::unique_ptr<Connection> Pool::open(size_t loop, std::string& error) {
  int size = size_.load(std::memory_order_relaxed);
  const int max = max_connections();
  do {
    if (size >= max) return nullptr;
  } while (!size_.compare_exchange_weak(size, size + 1, std::memory_order_relaxed));
  Poco::Net::SocketAddress address;
  {
    std::lock_guard lock(state_mutex_);
    if (!addresses_.empty()) address = addresses_.front();
  }
  if (address.port() == 0) {
    if (!resolve(error)) {
      free_slot(true);
      return nullptr;
    }
    std::lock_guard lock(state_mutex_);
    address = addresses_.front();
  }
  created_.fetch_add(1, std::memory_order_relaxed);
  const int fd = ::socket(address.family() == Poco::Net::SocketAddress::IPv6 ? AF_INET6 : AF_INET,
                          SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = "upstream '" + cfg_.name + "' connection failed: " + std::strerror(errno);
    free_slot(true);
    return nullptr;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto conn = std::make_unique<Connection>(*this, fd, loop);
  if (::connect(fd, address.addr(), address.length()) != 0 && errno != EINPROGRESS) {
    error = errno == ECONNREFUSED ? "upstream '" + cfg_.name + "' refused the connection"
                                  : "upstream '" + cfg_.name + "' connection failed: " + std::strerror(errno);
    conn.reset();
    free_slot(true);
    return nullptr;
  }
  if (!evs_[loop]->add(fd, kEvents, conn.get())) {
    error = "upstream '" + cfg_.name + "' connection failed: epoll: " + std::strerror(errno);
    conn.reset();
    free_slot(true);
    return nullptr;
  }
  return conn;
}

bool Pool::register_on(size_t loop, Connection& conn) {
  conn.set_loop(loop);
  return evs_[loop]->add(conn.fd(), kEvents, &conn);
}

void Pool::add_waiter(const Waiter& w) {
  {
    std::lock_guard lock(waiters_mutex_);
    waiters_.push_back(w);
    waiting_.fetch_add(1, std::memory_order_relaxed);
  }
  // Every slot is taken, but some may be idle on other loops: each of them hands one over (a
  // loop reads only its own idle list, so it is asked through its post queue).
  if (idle_count_.load(std::memory_order_relaxed) > 0) {
    for (size_t l = 0; l < loops_; ++l) {
      if (l == w.loop) continue;
      post_(l, [this, l] {
        auto& idle = per_loop_[l].idle;
        if (idle.empty() || waiting_.load(std::memory_order_relaxed) == 0) return;
        std::unique_ptr<Connection> conn = std::move(idle.back());
        idle.pop_back();
        idle_count_.fetch_sub(1, std::memory_order_relaxed);
        release(std::move(conn));  // to the first waiter (or back to idle if it was served meanwhile)
      });
    }
  }
}

bool Pool::remove_waiter(const Waiter& w) {
  std::lock_guard lock(waiters_mutex_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->loop == w.loop && it->id == w.id) {
      waiters_.erase(it);
      waiting_.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

void Pool::release(std::unique_ptr<Connection> conn) {
  conn->user = nullptr;
  if (waiting_.load(std::memory_order_relaxed) > 0) {
    std::unique_lock lock(waiters_mutex_);
    if (!waiters_.empty()) {
      const Waiter w = waiters_.front();
      waiters_.pop_front();
      waiting_.fetch_sub(1, std::memory_order_relaxed);
      lock.unlock();
      reused_.fetch_add(1, std::memory_order_relaxed);
      conn->reused = true;
      conn->idle_since = Clock::now();
      evs_[conn->loop()]->remove(conn->fd());  // the waiter's loop registers it again (register_on)
      deliver_(w, std::move(conn));
      return;
    }
  }
  keep_idle(std::move(conn));
}

void Pool::keep_idle(std::unique_ptr<Connection> conn) {
  if (conn->established && speaks_h2(*conn)) {
    adopt_h2(std::move(conn));  // a warmed-up (or waiter-less) HTTP/2 connection: a session with no stream yet
    return;
  }
  const size_t loop = conn->loop();
  conn->user = nullptr;
  conn->idle_since = Clock::now();
  // Still registered: the upstream closing it (or sending anything) while idle expires it at once.
  per_loop_[loop].idle.push_back(std::move(conn));
  idle_count_.fetch_add(1, std::memory_order_relaxed);
}

void Pool::discard(std::unique_ptr<Connection> conn, bool failure) {
  if (!conn) return;
  const size_t loop = conn->loop();
  conn->user = nullptr;
  evs_[loop]->remove(conn->fd());
  ::shutdown(conn->fd(), SHUT_RDWR);
  evs_[loop]->retire(std::move(conn));  // it may be the watcher whose event is running
  free_slot(failure);
}

void Pool::expire_idle(Connection* conn) {
  auto& idle = per_loop_[conn->loop()].idle;
  auto it = std::find_if(idle.begin(), idle.end(), [&](const auto& c) { return c.get() == conn; });
  if (it == idle.end()) return;
  std::unique_ptr<Connection> owned = std::move(*it);
  idle.erase(it);
  idle_count_.fetch_sub(1, std::memory_order_relaxed);
  close_expired(std::move(owned));
}

void Pool::close_expired(std::unique_ptr<Connection> conn) {
  const size_t loop = conn->loop();
  expired_.fetch_add(1, std::memory_order_relaxed);
  evs_[loop]->remove(conn->fd());
  evs_[loop]->retire(std::move(conn));  // an event for it may still be queued in this batch
  free_slot(false);
}

void Pool::free_slot(bool failure) {
  size_.fetch_sub(1, std::memory_order_relaxed);
  if (failure) failed_.fetch_add(1, std::memory_order_relaxed);
  pass_slot();
}

void Pool::pass_slot() {
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  std::unique_lock lock(waiters_mutex_);
  if (waiters_.empty()) return;
  const Waiter w = waiters_.front();
  waiters_.pop_front();
  waiting_.fetch_sub(1, std::memory_order_relaxed);
  lock.unlock();
  deliver_(w, nullptr);
}

void Pool::close_loop(size_t loop) {
  if (loop >= per_loop_.size()) return;
  auto sessions = std::move(per_loop_[loop].sessions);
  per_loop_[loop].sessions.clear();
  per_loop_[loop].h2_waiters.clear();
  for (auto& session : sessions) {
    unregister(session.get());
    if (auto conn = session->take_connection()) {
      evs_[loop]->remove(conn->fd());
      size_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  sessions.clear();
  auto& idle = per_loop_[loop].idle;
  for (auto& c : idle) {
    evs_[loop]->remove(c->fd());
    idle_count_.fetch_sub(1, std::memory_order_relaxed);
    size_.fetch_sub(1, std::memory_order_relaxed);
  }
  idle.clear();
}

void Pool::warm(size_t loop) {
  // At most the connections missing now: a dial that fails later (a refused connect is reported
  // by the socket) frees its slot, and is retried by the next warm-up round, not at once.
  const int missing = cfg_.min_connections - size_.load(std::memory_order_relaxed);
  for (int i = 0; i < missing; ++i) {
    std::string error;
    auto conn = open(loop, error);
    if (!conn) {
      if (!error.empty()) set_health(error);
      return;
    }
    (new Warmer(*this, std::move(conn), *evs_[loop]))->step();
  }
}

void Pool::set_health(const std::string& error) {
  std::lock_guard lock(state_mutex_);
  healthy_ = error.empty();
  last_error_ = error;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 sessions

H2Session* Pool::h2_session(size_t loop, std::string& error) {
  auto& sessions = per_loop_[loop].sessions;
  // The busiest session with room first: streams pack onto few connections.
  H2Session* best = nullptr;
  for (const auto& s : sessions)
    if (s->can_take() && (!best || s->open_streams() > best->open_streams())) best = s.get();
  if (best) return best;
  auto conn = open(loop, error);
  if (!conn) return nullptr;
  H2Session* raw = add_session(loop, std::move(conn));
  if (raw->dead()) {
    error = raw->error();  // failed at once (it is closed and freed after this event)
    return nullptr;
  }
  return raw;
}

H2Session* Pool::adopt_h2(std::unique_ptr<Connection> conn) {
  h2_.store(true, std::memory_order_relaxed);  // "auto": the upstream chose h2
  const size_t loop = conn->loop();
  conn->user = nullptr;
  H2Session* raw = add_session(loop, std::move(conn));
  wake_h2_waiters(loop, true);
  return raw->dead() ? nullptr : raw;
}

H2Session* Pool::add_session(size_t loop, std::unique_ptr<Connection> conn) {
  auto session = std::make_unique<H2Session>(*this, std::move(conn), *evs_[loop]);
  H2Session* raw = session.get();
  {
    std::lock_guard lock(h2_mutex_);
    h2_registry_.push_back(raw);
  }
  per_loop_[loop].sessions.push_back(std::move(session));
  raw->start();  // may fail, and close, at once (freed after this event)
  return raw;
}

void Pool::unregister(const H2Session* s) {
  std::lock_guard lock(h2_mutex_);
  std::erase(h2_registry_, s);
}

bool Pool::h2_has_usable(size_t loop) const {
  for (const auto& s : per_loop_[loop].sessions)
    if (s->usable()) return true;
  return false;
}

void Pool::h2_wait(size_t loop, H2Waiter* w) { per_loop_[loop].h2_waiters.push_back(w); }

void Pool::h2_unwait(size_t loop, H2Waiter* w) {
  auto& q = per_loop_[loop].h2_waiters;
  if (auto it = std::find(q.begin(), q.end(), w); it != q.end()) q.erase(it);
}

void Pool::wake_h2_waiters(size_t loop, bool all) {
  auto& q = per_loop_[loop].h2_waiters;
  if (q.empty()) return;
  if (!all) {
    H2Waiter* w = q.front();
    q.erase(q.begin());
    w->h2_room();
    return;
  }
  std::vector<H2Waiter*> woken;
  woken.swap(q);
  for (H2Waiter* w : woken) w->h2_room();
}

void Pool::h2_stream_opened(H2Session&) { h2_streams_total_.fetch_add(1, std::memory_order_relaxed); }

void Pool::h2_stream_closed(H2Session& s) {
  if (s.can_take()) wake_h2_waiters(s.loop(), false);
}

void Pool::h2_going_away(H2Session& s) {
  h2_goaways_.fetch_add(1, std::memory_order_relaxed);
  // Waiters of the loop look again: they may open a new connection instead.
  wake_h2_waiters(s.loop(), true);
}

void Pool::h2_close(H2Session& s) {
  const size_t loop = s.loop();
  auto& sessions = per_loop_[loop].sessions;
  auto it = std::find_if(sessions.begin(), sessions.end(), [&](const auto& p) { return p.get() == &s; });
  if (it == sessions.end()) return;
  std::unique_ptr<H2Session> owned = std::move(*it);
  sessions.erase(it);
  unregister(owned.get());
  discard(owned->take_connection(), false);  // frees its slot (a global waiter may open one)
  evs_[loop]->retire(std::move(owned));       // its code may be on the stack: freed after this batch
  wake_h2_waiters(loop, true);
}

bool Pool::h2_alive(size_t loop, const H2Session* s, uint64_t serial) const {
  for (const auto& p : per_loop_[loop].sessions)
    if (p.get() == s && p->serial() == serial) return true;
  return false;
}

PoolStats Pool::stats() const {
  PoolStats s;
  s.h2 = h2();
  s.h2_streams_total = h2_streams_total_.load(std::memory_order_relaxed);
  s.h2_goaways = h2_goaways_.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(h2_mutex_);
    s.h2_connections = h2_registry_.size();
    for (const H2Session* session : h2_registry_) {
      const uint64_t n = session->open_streams_now();
      s.h2_streams += n;
      s.h2_max_streams = std::max(s.h2_max_streams, n);
      s.h2_per_connection.emplace_back(session->serial(), n);
    }
  }
  const int size = std::max(0, size_.load(std::memory_order_relaxed));
  const int idle = std::max(0, idle_count_.load(std::memory_order_relaxed));
  s.size = static_cast<size_t>(size);
  s.idle = static_cast<size_t>(idle);
  s.in_use = size > idle ? static_cast<size_t>(size - idle) : 0;
  s.waiting = static_cast<size_t>(std::max(0, waiting_.load(std::memory_order_relaxed)));
  s.max = static_cast<size_t>(max_connections());
  s.created = created_.load(std::memory_order_relaxed);
  s.reused = reused_.load(std::memory_order_relaxed);
  s.failed = failed_.load(std::memory_order_relaxed);
  s.expired = expired_.load(std::memory_order_relaxed);
  s.timeouts = timeouts_.load(std::memory_order_relaxed);
  std::lock_guard lock(state_mutex_);
  s.healthy = healthy_;
  s.last_error = last_error_;
  return s;
}

void Pool::start() {
  std::lock_guard lock(stop_mutex_);
  if (maintenance_.joinable()) return;
  stopping_ = false;
  maintenance_ = std::thread([this] { maintenance_loop(); });
}

void Pool::stop() {
  {
    std::lock_guard lock(stop_mutex_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
}

void Pool::health_check() {
  std::string error;
  try {
    Poco::Net::SocketAddress address;
    {
      std::lock_guard lock(state_mutex_);
      if (!addresses_.empty()) address = addresses_.front();
    }
    if (address.port() == 0) throw Poco::Net::HostNotFoundException(host_);
    Poco::Net::StreamSocket probe;
    probe.connect(address, to_timespan(cfg_.connect_timeout));
    probe.close();
  } catch (const Poco::Exception& e) {
    error = e.displayText();
  }
  set_health(error);
}

void Pool::maintenance_loop() {
  constexpr auto kWarmRetry = std::chrono::seconds(2);
  auto next_health = Clock::now();
  auto next_resolve = Clock::now() + kResolveEvery;
  auto next_warm = Clock::now();
  // Wake often enough for the shortest configured period (between 50 ms and 1 s).
  std::chrono::milliseconds tick = std::min<std::chrono::milliseconds>(std::chrono::seconds(1), cfg_.idle_timeout / 2);
  if (cfg_.health_interval.count() > 0) tick = std::min(tick, cfg_.health_interval);
  tick = std::max(tick, std::chrono::milliseconds(50));
  size_t next_loop = 0;
  std::unique_lock stop_lock(stop_mutex_);
  while (!stopping_) {
    stop_lock.unlock();
    if (!host_is_ip_ && Clock::now() >= next_resolve) {
      std::string ignored;
      resolve(ignored);
      next_resolve = Clock::now() + kResolveEvery;
    }
    // Idle expiry by age: each loop closes its own (posted; loops own their connections).
    if (loops_ > 0 && idle_count_.load(std::memory_order_relaxed) > 0) {
      for (size_t l = 0; l < loops_; ++l) {
        post_(l, [this, l] {
          auto& idle = per_loop_[l].idle;
          const auto now = Clock::now();
          for (auto it = idle.begin(); it != idle.end();) {
            if (now - (*it)->idle_since > cfg_.idle_timeout) {
              std::unique_ptr<Connection> conn = std::move(*it);
              it = idle.erase(it);
              idle_count_.fetch_sub(1, std::memory_order_relaxed);
              close_expired(std::move(conn));
            } else {
              ++it;
            }
          }
        });
      }
    }
    // Warm: keep at least min_connections open, opened by the loops in turn. After a failed
    // dial, back off instead of hammering a down upstream; a success marks the upstream healthy.
    if (cfg_.warm && loops_ > 0 && Clock::now() >= next_warm && size_.load(std::memory_order_relaxed) < cfg_.min_connections) {
      const size_t l = next_loop++ % loops_;
      post_(l, [this, l] { warm(l); });
      next_warm = Clock::now() + kWarmRetry;
    }
    if (cfg_.health_interval.count() > 0 && Clock::now() >= next_health) {
      health_check();
      next_health = Clock::now() + cfg_.health_interval;
    }
    stop_lock.lock();
    stop_cv_.wait_for(stop_lock, tick, [&] { return stopping_; });
  }
}

}  // namespace glmp::core::upstream
