#include "upstream/pool.hpp"

#include <algorithm>

#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/URI.h>

#include "server/poll.hpp"  // poll_socket

namespace glmp::core::upstream {
namespace {

Poco::Timespan to_timespan(std::chrono::milliseconds ms) { return Poco::Timespan(ms.count() * 1000); }

constexpr auto kStaleCheckAfter = std::chrono::milliseconds(20);

template <class Base>
class SessionConnection final : public Base, public Connection {
public:
  using Base::Base;
  Poco::Net::HTTPClientSession& http() override { return *this; }
  void open() override { this->reconnect(); }
  bool wait_first_byte() override { return this->peek() != std::char_traits<char>::eof(); }
  size_t read_some(char* buf, size_t n) override {
    const int got = this->read(buf, static_cast<std::streamsize>(n));
    return got > 0 ? static_cast<size_t>(got) : 0;
  }
};

}  // namespace

bool Connection::idle_looks_stale() {
  auto& s = http();
  if (!s.connected()) return false;  // not opened yet: nothing can be stale
  try {
    // One poll(2): Poco's own poll costs four syscalls (a fresh epoll instance per call).
    return server::poll_socket(s.socket().impl()->sockfd(), Poco::Timespan(0),
                               Poco::Net::Socket::SELECT_READ | Poco::Net::Socket::SELECT_ERROR);
  } catch (const Poco::Exception&) {
    return true;
  }
}

Pool::Lease& Pool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    if (conn_) discard(false);
    pool_ = other.pool_;
    conn_ = std::move(other.conn_);
  }
  return *this;
}

Pool::Lease::~Lease() {
  if (conn_) discard(false);
}

void Pool::Lease::release() {
  if (conn_) pool_->give_back(std::move(conn_));
}

void Pool::Lease::discard(bool failure) {
  if (!conn_) return;
  try {
    conn_->http().abort();
  } catch (...) {
  }
  conn_.reset();
  pool_->drop(failure);
}

Pool::Pool(const config::UpstreamConfig& cfg) : cfg_(cfg) {
  Poco::URI uri(cfg.base_url);
  secure_ = uri.getScheme() == "https";
  host_ = uri.getHost();
  port_ = uri.getPort();
  base_path_ = uri.getPath();
  while (!base_path_.empty() && base_path_.back() == '/') base_path_.pop_back();
  const bool default_port = (secure_ && port_ == 443) || (!secure_ && port_ == 80);
  const bool ipv6 = host_.find(':') != std::string::npos;
  if (ipv6) host_header_.append(1, '[').append(host_).append(1, ']');
  else host_header_ = host_;
  if (!default_port) host_header_.append(1, ':').append(std::to_string(port_));
  if (secure_) {
    // Verification on: system CA store (loadDefaultCAs) plus the optional extra bundle; Poco checks
    // the certificate's host name against host_ after the handshake.
    ssl_context_ = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", cfg.ca_file,
                                          Poco::Net::Context::VERIFY_RELAXED, 9, true);
    ssl_context_->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
  }
}

Pool::~Pool() { stop(); }

std::unique_ptr<Connection> Pool::make_connection() {
  std::unique_ptr<Connection> conn;
  if (secure_)
    conn = std::make_unique<SessionConnection<Poco::Net::HTTPSClientSession>>(host_, port_, ssl_context_);
  else
    conn = std::make_unique<SessionConnection<Poco::Net::HTTPClientSession>>(host_, port_);
  auto& s = conn->http();
  s.setKeepAlive(true);
  // The pool expires idle sessions itself; Poco's own 8 s client keep-alive would silently reconnect.
  s.setKeepAliveTimeout(Poco::Timespan(static_cast<long>(cfg_.idle_timeout.count() / 1000 + 3600), 0));
  s.setTimeout(to_timespan(cfg_.connect_timeout), to_timespan(cfg_.read_timeout), to_timespan(cfg_.read_timeout));
  return conn;
}

Pool::Lease Pool::acquire() {
  const auto deadline = Clock::now() + cfg_.acquire_timeout;
  std::unique_lock lock(mutex_);
  for (;;) {
    while (!idle_.empty()) {
      std::unique_ptr<Connection> conn = std::move(idle_.back());
      idle_.pop_back();
      const auto idle_for = Clock::now() - conn->idle_since;
      const bool too_old = idle_for > cfg_.idle_timeout;
      lock.unlock();
      // A socket idle for a few milliseconds is not checked (one poll(2) saved per request under
      // load); should the upstream have closed it in that instant, the stale-socket retry covers it.
      const bool stale = too_old || (idle_for > kStaleCheckAfter && conn->idle_looks_stale());
      if (!stale) {
        conn->reused = conn->http().connected();
        lock.lock();
        if (conn->reused) ++reused_;
        return Lease(this, std::move(conn));
      }
      try {
        conn->http().abort();
      } catch (...) {
      }
      conn.reset();
      lock.lock();
      --size_;
      ++expired_;
    }
    if (size_ < static_cast<size_t>(cfg_.max_connections)) {
      ++size_;
      ++created_;
      lock.unlock();
      try {
        auto conn = make_connection();
        conn->reused = false;
        return Lease(this, std::move(conn));
      } catch (...) {
        drop(true);
        throw;
      }
    }
    ++waiting_;
    const bool woke = available_.wait_until(lock, deadline, [&] {
      return !idle_.empty() || size_ < static_cast<size_t>(cfg_.max_connections);
    });
    --waiting_;
    if (!woke) {
      ++timeouts_;
      throw PoolExhausted("upstream '" + cfg_.name + "': all " + std::to_string(cfg_.max_connections) +
                          " connections are busy (waited " + std::to_string(cfg_.acquire_timeout.count()) + " ms)");
    }
  }
}

void Pool::give_back(std::unique_ptr<Connection> conn) {
  conn->idle_since = Clock::now();
  {
    std::lock_guard lock(mutex_);
    idle_.push_back(std::move(conn));
  }
  available_.notify_one();
}

void Pool::drop(bool failure) {
  {
    std::lock_guard lock(mutex_);
    --size_;
    if (failure) ++failed_;
  }
  available_.notify_one();
}

PoolStats Pool::stats() const {
  std::lock_guard lock(mutex_);
  PoolStats s;
  s.size = size_;
  s.idle = idle_.size();
  s.in_use = size_ - idle_.size();
  s.waiting = waiting_;
  s.max = static_cast<size_t>(cfg_.max_connections);
  s.created = created_;
  s.reused = reused_;
  s.failed = failed_;
  s.expired = expired_;
  s.timeouts = timeouts_;
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
    Poco::Net::StreamSocket probe;
    probe.connect(Poco::Net::SocketAddress(host_, port_), to_timespan(cfg_.connect_timeout));
    probe.close();
  } catch (const Poco::Exception& e) {
    error = e.displayText();
  }
  std::lock_guard lock(mutex_);
  healthy_ = error.empty();
  last_error_ = error;
}

void Pool::maintenance_loop() {
  constexpr auto kWarmRetry = std::chrono::seconds(2);
  auto next_health = Clock::now();
  auto next_warm = Clock::now();
  // Wake often enough for the shortest configured period (between 50 ms and 1 s).
  std::chrono::milliseconds tick = std::min<std::chrono::milliseconds>(std::chrono::seconds(1), cfg_.idle_timeout / 2);
  if (cfg_.health_interval.count() > 0) tick = std::min(tick, cfg_.health_interval);
  tick = std::max(tick, std::chrono::milliseconds(50));
  std::unique_lock stop_lock(stop_mutex_);
  while (!stopping_) {
    stop_lock.unlock();
    // 1. Expire idle connections that are too old or that the upstream closed.
    std::vector<std::unique_ptr<Connection>> expired;
    {
      std::lock_guard lock(mutex_);
      const auto now = Clock::now();
      for (auto it = idle_.begin(); it != idle_.end();) {
        if (now - (*it)->idle_since > cfg_.idle_timeout || (*it)->idle_looks_stale()) {
          expired.push_back(std::move(*it));
          it = idle_.erase(it);
          --size_;
          ++expired_;
        } else {
          ++it;
        }
      }
    }
    for (auto& c : expired) {
      try {
        c->http().abort();
      } catch (...) {
      }
    }
    if (!expired.empty()) available_.notify_all();
    // 2. Warm: keep at least min_connections open and idle. After a failed dial, back off
    //    (kWarmRetry) instead of hammering a down upstream; a success marks the upstream healthy.
    if (cfg_.warm && Clock::now() >= next_warm) {
      for (;;) {
        {
          std::lock_guard lock(mutex_);
          if (size_ >= static_cast<size_t>(cfg_.min_connections)) break;
          ++size_;
          ++created_;
        }
        try {
          auto conn = make_connection();
          conn->open();
          give_back(std::move(conn));
          std::lock_guard lock(mutex_);
          healthy_ = true;
          last_error_.clear();
        } catch (const Poco::Exception& e) {
          drop(true);
          std::lock_guard lock(mutex_);
          healthy_ = false;
          last_error_ = e.displayText();
          next_warm = Clock::now() + kWarmRetry;
          break;
        }
      }
    }
    // 3. Health check.
    if (cfg_.health_interval.count() > 0 && Clock::now() >= next_health) {
      health_check();
      next_health = Clock::now() + cfg_.health_interval;
    }
    stop_lock.lock();
    stop_cv_.wait_for(stop_lock, tick, [&] { return stopping_; });
  }
}

}  // namespace glmp::core::upstream
