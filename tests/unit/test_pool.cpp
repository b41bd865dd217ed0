// Unit tests for core/src/upstream/pool: real sockets on 127.0.0.1 against a tiny in-process
// HTTP/1.1 server that counts connections and can close them on purpose.
//
// Timing rules: every wait is a polling loop with a generous deadline; timings are only checked as
// "at least X" or "less than 10 X", so the tests stay green on a loaded 2-core machine.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Exception.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/StreamCopier.h>

#include "upstream/pool.hpp"

namespace cfg = glmp::core::config;
using glmp::core::upstream::Pool;
using glmp::core::upstream::PoolExhausted;
using glmp::core::upstream::PoolStats;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

// Polls `cond` every 10 ms until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = SteadyClock::now() + timeout;
  while (!cond()) {
    if (SteadyClock::now() > deadline) return cond();
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// A minimal HTTP/1.1 server: one thread accepts, one thread per connection reads requests
// (headers + Content-Length body) and answers according to `mode`.
class TestServer {
public:
  enum class Mode {
    Respond,            // 200 "ok" with Content-Length, keep-alive
    CloseAfterRequest,  // read the request, then close cleanly (FIN) without a byte
    ResetAfterRequest,  // read the request, then abort with RST (SO_LINGER 0)
    Silent,             // read the request, never answer
  };

  TestServer() : TestServer(Poco::Net::SocketAddress("127.0.0.1", 0)) {}
  explicit TestServer(uint16_t port) : TestServer(Poco::Net::SocketAddress("127.0.0.1", port)) {}

  ~TestServer() { stop(); }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  uint16_t port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int accepts() const { return accepts_.load(); }
  int requests() const { return requests_.load(); }
  int closed() const { return closed_.load(); }  // connections that ended (either side)
  void set_mode(Mode m) { mode_.store(m); }

  // Closes every connection open now (server side, clean FIN).
  void close_all() {
    std::lock_guard lock(mutex_);
    for (auto& c : conns_) c->close_requested = true;
  }

  void stop() {
    if (stopping_.exchange(true)) return;
    if (acceptor_.joinable()) acceptor_.join();
    std::vector<std::unique_ptr<Conn>> conns;
    {
      std::lock_guard lock(mutex_);
      conns.swap(conns_);
    }
    for (auto& c : conns)
      if (c->thread.joinable()) c->thread.join();
    listener_.close();
  }

private:
  struct Conn {
    Poco::Net::StreamSocket socket;
    std::atomic<bool> close_requested{false};
    std::thread thread;
  };

  explicit TestServer(const Poco::Net::SocketAddress& addr) : listener_(addr, 64) {
    port_ = listener_.address().port();
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  void accept_loop() {
    while (!stopping_) {
      try {
        if (!listener_.poll(Poco::Timespan(20'000), Poco::Net::Socket::SELECT_READ)) continue;
        auto conn = std::make_unique<Conn>();
        conn->socket = listener_.acceptConnection();
        ++accepts_;
        Conn* raw = conn.get();
        std::lock_guard lock(mutex_);
        conn->thread = std::thread([this, raw] { serve(*raw); });
        conns_.push_back(std::move(conn));
      } catch (const Poco::Exception&) {
      }
    }
  }

  // One complete request at the front of `buf`? Returns its length, or 0.
  static size_t complete_request(const std::string& buf) {
    const size_t end = buf.find("\r\n\r\n");
    if (end == std::string::npos) return 0;
    size_t body = 0;
    std::string head = buf.substr(0, end);
    for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const size_t cl = head.find("\r\ncontent-length:");
    if (cl != std::string::npos) body = std::stoul(head.substr(cl + 17));
    const size_t total = end + 4 + body;
    return buf.size() >= total ? total : 0;
  }

  void serve(Conn& c) {
    std::string buf;
    bool open = true;
    try {
      while (open && !stopping_) {
        if (c.close_requested) break;
        if (!c.socket.poll(Poco::Timespan(20'000), Poco::Net::Socket::SELECT_READ)) continue;
        char tmp[4096];
        const int n = c.socket.receiveBytes(tmp, sizeof tmp);
        if (n <= 0) break;
        buf.append(tmp, static_cast<size_t>(n));
        while (size_t len = complete_request(buf)) {
          buf.erase(0, len);
          ++requests_;
          const Mode m = mode_.load();
          if (m == Mode::Respond) {
            static const std::string resp =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
            c.socket.sendBytes(resp.data(), static_cast<int>(resp.size()));
          } else if (m == Mode::CloseAfterRequest) {
            open = false;
            break;
          } else if (m == Mode::ResetAfterRequest) {
            c.socket.setLinger(true, 0);
            open = false;
            break;
          }
        }
      }
    } catch (const Poco::Exception&) {
    }
    try {
      if (mode_.load() != Mode::ResetAfterRequest) c.socket.shutdown();
    } catch (const Poco::Exception&) {
    }
    c.socket.close();
    ++closed_;
  }

  Poco::Net::ServerSocket listener_;
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};
  std::atomic<Mode> mode_{Mode::Respond};
  std::atomic<int> accepts_{0}, requests_{0}, closed_{0};
  std::mutex mutex_;
  std::vector<std::unique_ptr<Conn>> conns_;
};

cfg::UpstreamConfig make_config(const std::string& base_url) {
  cfg::UpstreamConfig c;
  c.name = "test";
  c.base_url = base_url;
  c.min_connections = 0;
  c.max_connections = 4;
  c.warm = false;
  c.connect_timeout = 2000ms;
  c.read_timeout = 2000ms;
  c.acquire_timeout = 2000ms;
  c.idle_timeout = 60'000ms;
  c.health_interval = 0ms;
  return c;
}

// GET /ping on the leased connection, reading the whole response; returns the body.
std::string get(Pool& pool, Pool::Lease& lease) {
  Poco::Net::HTTPRequest req(Poco::Net::HTTPRequest::HTTP_GET, pool.base_path() + "/ping",
                             Poco::Net::HTTPMessage::HTTP_1_1);
  req.setHost(pool.host_header());
  lease->http().sendRequest(req);
  Poco::Net::HTTPResponse resp;
  std::istream& in = lease->http().receiveResponse(resp);
  std::string body;
  Poco::StreamCopier::copyToString(in, body);
  EXPECT_EQ(resp.getStatus(), Poco::Net::HTTPResponse::HTTP_OK);
  return body;
}

// Sends a request (headers and body) without reading anything back.
void send_only(Pool& pool, Pool::Lease& lease) {
  Poco::Net::HTTPRequest req(Poco::Net::HTTPRequest::HTTP_POST, "/v1/chat/completions", Poco::Net::HTTPMessage::HTTP_1_1);
  req.setHost(pool.host_header());
  const std::string body = R"({"model":"glm-4.7"})";
  req.setContentLength(static_cast<std::streamsize>(body.size()));
  std::ostream& os = lease->http().sendRequest(req);
  os << body;
  os.flush();  // the request stream is buffered: push the body out before waiting for an answer
}

// A port on 127.0.0.1 with nothing listening (bound once, then released).
uint16_t closed_port() {
  Poco::Net::ServerSocket s(Poco::Net::SocketAddress("127.0.0.1", 0));
  const uint16_t port = s.address().port();
  s.close();
  return port;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

TEST(Pool, ParsesBaseUrl) {
  {
    Pool p(make_config("http://127.0.0.1:8080/api/coding/paas/v4/"));
    EXPECT_FALSE(p.secure());
    EXPECT_EQ(p.host(), "127.0.0.1");
    EXPECT_EQ(p.port(), 8080);
    EXPECT_EQ(p.base_path(), "/api/coding/paas/v4");
    EXPECT_EQ(p.host_header(), "127.0.0.1:8080");
  }
  {
    Pool p(make_config("http://example.com"));
    EXPECT_EQ(p.port(), 80);
    EXPECT_EQ(p.base_path(), "");
    EXPECT_EQ(p.host_header(), "example.com");
  }
  {
    Pool p(make_config("https://api.z.ai/api/anthropic"));
    EXPECT_TRUE(p.secure());
    EXPECT_EQ(p.port(), 443);
    EXPECT_EQ(p.base_path(), "/api/anthropic");
    EXPECT_EQ(p.host_header(), "api.z.ai");
  }
  {
    Pool p(make_config("http://[::1]:9000"));
    EXPECT_EQ(p.host(), "::1");
    EXPECT_EQ(p.host_header(), "[::1]:9000");
  }
  {
    auto c = make_config("http://h:1");
    c.max_connections = 7;
    Pool p(c);
    EXPECT_EQ(p.stats().max, 7u);
    EXPECT_EQ(p.config().max_connections, 7);
  }
}

TEST(Pool, ReleaseThenAcquireReusesTheConnection) {
  TestServer server;
  Pool pool(make_config(server.base_url()));

  auto lease = pool.acquire();
  ASSERT_TRUE(lease);
  EXPECT_FALSE(lease->reused);
  const auto* first = &*lease;
  EXPECT_EQ(get(pool, lease), "ok");
  PoolStats s = pool.stats();
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.idle, 0u);
  lease.release();
  EXPECT_FALSE(lease);
  s = pool.stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.size, 1u);

  auto again = pool.acquire();
  EXPECT_TRUE(again->reused);
  EXPECT_EQ(&*again, first);
  EXPECT_EQ(get(pool, again), "ok");
  again.release();

  s = pool.stats();
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_EQ(s.expired, 0u);
  EXPECT_EQ(server.accepts(), 1);
  EXPECT_EQ(server.requests(), 2);
}

TEST(Pool, IdleConnectionsAreTakenMostRecentlyUsedFirst) {
  TestServer server;
  Pool pool(make_config(server.base_url()));
  auto a = pool.acquire();
  auto b = pool.acquire();
  EXPECT_EQ(get(pool, a), "ok");
  EXPECT_EQ(get(pool, b), "ok");
  const auto* pa = &*a;
  const auto* pb = &*b;
  ASSERT_NE(pa, pb);
  a.release();
  b.release();  // b is the most recently used
  auto c = pool.acquire();
  EXPECT_EQ(&*c, pb);
  auto d = pool.acquire();
  EXPECT_EQ(&*d, pa);
  EXPECT_EQ(pool.stats().reused, 2u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, DroppedLeaseClosesAndFreesTheSlot) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  cfg.acquire_timeout = 200ms;
  Pool pool(cfg);
  {
    auto lease = pool.acquire();
    EXPECT_EQ(get(pool, lease), "ok");
  }  // not released: closed, not pooled
  PoolStats s = pool.stats();
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; })) << "the socket was closed";
  auto lease = pool.acquire();  // the slot is free again: no PoolExhausted
  EXPECT_FALSE(lease->reused);
  EXPECT_EQ(get(pool, lease), "ok");
  EXPECT_EQ(pool.stats().created, 2u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, MoveAssigningALeaseClosesTheOldOne) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 2;
  Pool pool(cfg);
  auto a = pool.acquire();
  auto b = pool.acquire();
  EXPECT_EQ(pool.stats().size, 2u);
  a = std::move(b);  // a's old connection is discarded (not a failure)
  EXPECT_TRUE(a);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.failed, 0u);
  a.release();
  EXPECT_EQ(pool.stats().idle, 1u);
}

TEST(Pool, DiscardFailureCountsAndFreesTheSlot) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  cfg.acquire_timeout = 200ms;
  Pool pool(cfg);

  auto lease = pool.acquire();
  EXPECT_EQ(get(pool, lease), "ok");
  lease.discard(true);
  EXPECT_FALSE(lease);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.idle, 0u);
  lease.discard(true);  // no connection: a no-op
  EXPECT_EQ(pool.stats().failed, 1u);

  auto next = pool.acquire();  // would throw PoolExhausted if the slot were still taken
  EXPECT_FALSE(next->reused);
  EXPECT_EQ(get(pool, next), "ok");
  next.discard(false);
  s = pool.stats();
  EXPECT_EQ(s.failed, 1u);  // discard(false) is not a failure
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.reused, 0u);
  EXPECT_EQ(server.accepts(), 2);
}

// ---------------------------------------------------------------------------------------------
// Limits and waiting
// ---------------------------------------------------------------------------------------------

TEST(Pool, ExhaustedAfterAcquireTimeout) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 2;
  cfg.acquire_timeout = 200ms;
  Pool pool(cfg);
  auto a = pool.acquire();
  auto b = pool.acquire();
  EXPECT_EQ(get(pool, a), "ok");
  EXPECT_EQ(pool.stats().in_use, 2u);

  const auto start = SteadyClock::now();
  try {
    auto c = pool.acquire();
    FAIL() << "expected PoolExhausted";
  } catch (const PoolExhausted& e) {
    const auto waited = SteadyClock::now() - start;
    EXPECT_GE(waited, 200ms);
    EXPECT_LT(waited, 2000ms);
    EXPECT_NE(std::string(e.what()).find("test"), std::string::npos) << e.what();
  }
  PoolStats s = pool.stats();
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(s.waiting, 0u);
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(server.accepts(), 1);  // b never sent anything: connections open lazily
}

TEST(Pool, WaiterIsServedWhenALeaseIsReleased) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 2;
  cfg.acquire_timeout = 5000ms;
  Pool pool(cfg);
  auto a = pool.acquire();
  auto b = pool.acquire();
  EXPECT_EQ(get(pool, a), "ok");
  EXPECT_EQ(get(pool, b), "ok");
  const auto* pa = &*a;

  struct Result {
    const void* conn = nullptr;
    bool reused = false;
    std::string body;
  };
  auto fut = std::async(std::launch::async, [&] {
    auto c = pool.acquire();
    Result r{&*c, c->reused, get(pool, c)};
    c.release();
    return r;
  });
  ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; })) << "the third acquire waits";
  EXPECT_EQ(fut.wait_for(0ms), std::future_status::timeout);

  const auto released_at = SteadyClock::now();
  a.release();
  ASSERT_EQ(fut.wait_for(4000ms), std::future_status::ready) << "the waiter was not woken";
  EXPECT_LT(SteadyClock::now() - released_at, 4000ms);
  const Result r = fut.get();
  EXPECT_EQ(r.conn, pa) << "the waiter got the released connection";
  EXPECT_TRUE(r.reused);
  EXPECT_EQ(r.body, "ok");

  PoolStats s = pool.stats();
  EXPECT_EQ(s.timeouts, 0u);
  EXPECT_EQ(s.waiting, 0u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, WaiterIsServedWhenALeaseIsDiscarded) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  cfg.acquire_timeout = 5000ms;
  Pool pool(cfg);
  auto a = pool.acquire();
  EXPECT_EQ(get(pool, a), "ok");

  auto fut = std::async(std::launch::async, [&] {
    auto c = pool.acquire();
    return get(pool, c);
  });
  ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
  a.discard(true);
  ASSERT_EQ(fut.wait_for(4000ms), std::future_status::ready);
  EXPECT_EQ(fut.get(), "ok");
  PoolStats s = pool.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.timeouts, 0u);
}

// ---------------------------------------------------------------------------------------------
// Stale connections
// ---------------------------------------------------------------------------------------------

TEST(Pool, IdleLooksStaleAfterServerClose) {
  TestServer server;
  Pool pool(make_config(server.base_url()));
  auto lease = pool.acquire();
  EXPECT_FALSE(lease->idle_looks_stale()) << "never opened: nothing to be stale";
  EXPECT_EQ(get(pool, lease), "ok");
  EXPECT_FALSE(lease->idle_looks_stale()) << "open, quiet keep-alive connection";
  server.close_all();
  EXPECT_TRUE(eventually([&] { return lease->idle_looks_stale(); })) << "FIN pending on the idle socket";
  lease.discard(false);
}

TEST(Pool, StaleIdleConnectionIsReplacedOnAcquire) {
  TestServer server;
  Pool pool(make_config(server.base_url()));
  {
    auto lease = pool.acquire();
    EXPECT_EQ(get(pool, lease), "ok");
    lease.release();
  }
  ASSERT_EQ(pool.stats().idle, 1u);
  server.close_all();
  ASSERT_TRUE(eventually([&] { return server.closed() == 1; }));
  // Sockets idle for under 20 ms are not polled (the proxy's stale retry covers that instant).
  std::this_thread::sleep_for(30ms);

  auto lease = pool.acquire();
  EXPECT_FALSE(lease->reused) << "a fresh connection, not the stale one";
  EXPECT_EQ(get(pool, lease), "ok");
  lease.release();
  PoolStats s = pool.stats();
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(s.reused, 0u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, TooOldIdleConnectionIsReplacedOnAcquire) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.idle_timeout = 100ms;
  Pool pool(cfg);
  {
    auto lease = pool.acquire();
    EXPECT_EQ(get(pool, lease), "ok");
    lease.release();
  }
  const auto released = SteadyClock::now();
  while (SteadyClock::now() - released <= 150ms) std::this_thread::sleep_for(10ms);  // age it past 100 ms
  auto lease = pool.acquire();
  EXPECT_FALSE(lease->reused);
  EXPECT_EQ(get(pool, lease), "ok");
  EXPECT_EQ(pool.stats().expired, 1u);
  EXPECT_EQ(server.accepts(), 2);
  EXPECT_TRUE(eventually([&] { return server.closed() >= 1; })) << "the old socket was closed";
}

TEST(Pool, WaitFirstByteTrueWhenTheResponseStarts) {
  TestServer server;
  Pool pool(make_config(server.base_url()));
  auto lease = pool.acquire();
  send_only(pool, lease);
  EXPECT_TRUE(lease->wait_first_byte());
  // The byte was peeked, not consumed: the response still parses.
  Poco::Net::HTTPResponse resp;
  std::istream& in = lease->http().receiveResponse(resp);
  std::string body;
  Poco::StreamCopier::copyToString(in, body);
  EXPECT_EQ(resp.getStatus(), Poco::Net::HTTPResponse::HTTP_OK);
  EXPECT_EQ(body, "ok");
  lease.release();
}

// Documented behaviour: a clean close (FIN) before any response byte makes wait_first_byte()
// return false; it does not throw.
TEST(Pool, WaitFirstByteFalseOnCleanCloseBeforeAnyByte) {
  TestServer server;
  server.set_mode(TestServer::Mode::CloseAfterRequest);
  Pool pool(make_config(server.base_url()));
  auto lease = pool.acquire();
  send_only(pool, lease);
  bool result = true;
  EXPECT_NO_THROW(result = lease->wait_first_byte());
  EXPECT_FALSE(result);
  EXPECT_EQ(server.requests(), 1);
  lease.discard(true);
}

// Documented behaviour: a reset (RST) before any byte throws Poco::Net::ConnectionResetException.
TEST(Pool, WaitFirstByteThrowsOnResetBeforeAnyByte) {
  TestServer server;
  server.set_mode(TestServer::Mode::ResetAfterRequest);
  Pool pool(make_config(server.base_url()));
  auto lease = pool.acquire();
  send_only(pool, lease);
  ASSERT_TRUE(eventually([&] { return server.closed() == 1; }));
  EXPECT_THROW(lease->wait_first_byte(), Poco::Net::ConnectionResetException);
  lease.discard(true);
}

TEST(Pool, WaitFirstByteTimesOutAfterReadTimeout) {
  TestServer server;
  server.set_mode(TestServer::Mode::Silent);
  auto cfg = make_config(server.base_url());
  cfg.read_timeout = 200ms;
  Pool pool(cfg);
  auto lease = pool.acquire();
  send_only(pool, lease);
  const auto start = SteadyClock::now();
  EXPECT_THROW(lease->wait_first_byte(), Poco::TimeoutException);
  EXPECT_GE(SteadyClock::now() - start, 150ms);  // Poco's timeout granularity is coarse; "about" 200 ms
  EXPECT_LT(SteadyClock::now() - start, 2000ms);
  lease.discard(true);
}

// ---------------------------------------------------------------------------------------------
// Maintenance thread: warm-up, idle expiry, health
// ---------------------------------------------------------------------------------------------

TEST(Pool, WarmUpOpensMinConnections) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 2;
  Pool pool(cfg);
  EXPECT_EQ(server.accepts(), 0) << "nothing before start()";
  pool.start();
  ASSERT_TRUE(eventually([&] { return server.accepts() == 2 && pool.stats().idle == 2; }, 3000ms))
      << "accepts=" << server.accepts() << " idle=" << pool.stats().idle;
  PoolStats s = pool.stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 2u);
  EXPECT_TRUE(s.healthy);

  // A warm connection is already open: using it dials nothing new.
  auto lease = pool.acquire();
  EXPECT_TRUE(lease->reused);
  EXPECT_EQ(get(pool, lease), "ok");
  lease.release();
  EXPECT_EQ(server.accepts(), 2);
  pool.stop();
  EXPECT_EQ(pool.stats().size, 2u) << "stop() ends maintenance, it does not close the pool";
}

TEST(Pool, IdleExpiryThenReWarm) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 2;
  cfg.idle_timeout = 300ms;
  Pool pool(cfg);
  pool.start();
  ASSERT_TRUE(eventually([&] { return server.accepts() >= 2; }, 3000ms));
  ASSERT_TRUE(eventually([&] { return pool.stats().expired >= 2; }, 5000ms))
      << "expired=" << pool.stats().expired;
  ASSERT_TRUE(eventually([&] { return server.accepts() >= 4 && pool.stats().idle == 2; }, 5000ms))
      << "re-warmed: accepts=" << server.accepts() << " idle=" << pool.stats().idle;
  EXPECT_TRUE(eventually([&] { return server.closed() >= 2; })) << "expired sockets are closed";
  PoolStats s = pool.stats();
  EXPECT_EQ(s.size, s.idle);
  EXPECT_GE(s.created, 4u);
  pool.stop();
}

TEST(Pool, IdleExpiryWithoutWarm) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.idle_timeout = 300ms;
  Pool pool(cfg);
  {
    auto lease = pool.acquire();
    EXPECT_EQ(get(pool, lease), "ok");
    lease.release();
  }
  pool.start();
  ASSERT_TRUE(eventually([&] { return pool.stats().expired == 1; }, 5000ms));
  PoolStats s = pool.stats();
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; }));
  EXPECT_EQ(server.accepts(), 1) << "min_connections = 0, warm = false: nothing re-opened";
  pool.stop();
}

TEST(Pool, MaintenanceRemovesIdleConnectionsTheServerClosed) {
  TestServer server;
  Pool pool(make_config(server.base_url()));  // idle_timeout 60 s: only staleness can expire it
  {
    auto lease = pool.acquire();
    EXPECT_EQ(get(pool, lease), "ok");
    lease.release();
  }
  server.close_all();
  ASSERT_TRUE(eventually([&] { return server.closed() == 1; }));
  pool.start();
  ASSERT_TRUE(eventually([&] { return pool.stats().expired == 1; }, 5000ms));
  EXPECT_EQ(pool.stats().idle, 0u);
  pool.stop();
}

TEST(Pool, HealthCheckReportsAClosedPort) {
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(closed_port()));
  cfg.health_interval = 100ms;
  cfg.connect_timeout = 1000ms;
  Pool pool(cfg);
  EXPECT_TRUE(pool.stats().healthy) << "healthy until a check says otherwise";
  pool.start();
  ASSERT_TRUE(eventually([&] { return !pool.stats().healthy; }, 3000ms));
  const PoolStats s = pool.stats();
  EXPECT_FALSE(s.last_error.empty());
  EXPECT_EQ(s.created, 0u) << "warm = false: health checks are not pooled connections";
  pool.stop();
}

TEST(Pool, HealthRecoversWhenTheUpstreamComesBack) {
  const uint16_t port = closed_port();
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(port));
  cfg.health_interval = 100ms;
  cfg.connect_timeout = 1000ms;
  Pool pool(cfg);
  pool.start();
  ASSERT_TRUE(eventually([&] { return !pool.stats().healthy; }, 3000ms));
  std::unique_ptr<TestServer> server;
  try {
    server = std::make_unique<TestServer>(port);
  } catch (const Poco::Exception& e) {
    GTEST_SKIP() << "port " << port << " was taken meanwhile: " << e.displayText();
  }
  ASSERT_TRUE(eventually([&] { return pool.stats().healthy; }, 5000ms));
  EXPECT_EQ(pool.stats().last_error, "");
  pool.stop();
}

TEST(Pool, FailedWarmUpMarksUnhealthy) {
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(closed_port()));
  cfg.warm = true;
  cfg.min_connections = 2;
  cfg.connect_timeout = 1000ms;
  Pool pool(cfg);
  pool.start();
  ASSERT_TRUE(eventually([&] { return !pool.stats().healthy; }, 3000ms));
  const PoolStats s = pool.stats();
  EXPECT_FALSE(s.last_error.empty());
  EXPECT_GE(s.failed, 1u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.idle, 0u);
  pool.stop();
}

TEST(Pool, WarmUpResumesWithoutHealthChecks) {
  const uint16_t port = closed_port();
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(port));
  cfg.warm = true;
  cfg.min_connections = 1;
  cfg.health_interval = 0ms;
  cfg.connect_timeout = 1000ms;
  Pool pool(cfg);
  pool.start();
  ASSERT_TRUE(eventually([&] { return !pool.stats().healthy; }, 3000ms));
  TestServer server(port);
  EXPECT_TRUE(eventually([&] { return server.accepts() >= 1; }, 5000ms)) << "warm-up resumed";
  EXPECT_TRUE(eventually([&] { return pool.stats().healthy; }, 5000ms));
  pool.stop();
}

TEST(Pool, StartStopAreIdempotent) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 1;
  Pool pool(cfg);
  pool.start();
  pool.start();  // second start: no second thread
  ASSERT_TRUE(eventually([&] { return server.accepts() == 1; }, 3000ms));
  const auto start = SteadyClock::now();
  pool.stop();
  EXPECT_LT(SteadyClock::now() - start, 3000ms) << "stop() wakes the maintenance thread";
  pool.stop();
  pool.start();  // restart after stop works
  pool.stop();
  EXPECT_EQ(pool.stats().created, 1u);
}
