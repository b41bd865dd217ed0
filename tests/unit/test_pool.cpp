// Unit tests for core/src/upstream/pool: the event-driven upstream pool on real sockets on
// 127.0.0.1, against a tiny in-process HTTP/1.1 server that counts connections and can close them
// on purpose.
//
// Each test runs one or two EventLoop threads (Rig) with the pool attached to them, as the server
// does. Every pool call that belongs to a loop runs on that loop's thread (Rig::on posts it and
// waits for the result); stats() is read from the test thread. Waits are polls with generous
// deadlines; no timing is asserted.

#include <gtest/gtest.h>

#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <Poco/Exception.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

#include "server/event_loop.hpp"
#include "upstream/pool.hpp"

namespace cfg = glmp::core::config;
using glmp::core::server::EventLoop;
using glmp::core::upstream::Connection;
using glmp::core::upstream::ConnectionUser;
using glmp::core::upstream::PoolStats;
using UpstreamPool = glmp::core::upstream::Pool;
using Io = Connection::Io;
using Waiter = UpstreamPool::Waiter;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

// A task posted to a loop that has not run after this long means the loop is stuck: the test
// binary aborts rather than hang.
constexpr auto kLoopDeadline = 20s;

// Polls `cond` every 10 ms until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = SteadyClock::now() + timeout;
  while (!cond()) {
    if (SteadyClock::now() > deadline) return cond();
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

[[noreturn]] void stuck(const char* what) {
  std::fprintf(stderr, "test_pool: %s did not happen within %lld s: aborting\n", what,
               static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kLoopDeadline).count()));
  std::abort();
}

const std::string kResponse = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

// A minimal HTTP/1.1 server: one thread accepts, one thread per connection reads requests (headers
// and Content-Length body) and answers each with kResponse, keeping the connection open.
class TestServer {
public:
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
    try {
      while (!stopping_ && !c.close_requested) {
        if (!c.socket.poll(Poco::Timespan(20'000), Poco::Net::Socket::SELECT_READ)) continue;
        char tmp[4096];
        const int n = c.socket.receiveBytes(tmp, sizeof tmp);
        if (n <= 0) break;
        buf.append(tmp, static_cast<size_t>(n));
        while (size_t len = complete_request(buf)) {
          buf.erase(0, len);
          ++requests_;
          c.socket.sendBytes(kResponse.data(), static_cast<int>(kResponse.size()));
        }
      }
    } catch (const Poco::Exception&) {
    }
    try {
      c.socket.shutdown();
    } catch (const Poco::Exception&) {
    }
    c.socket.close();
    ++closed_;
  }

  Poco::Net::ServerSocket listener_;
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};
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

// A port on 127.0.0.1 with nothing listening (bound once, then released).
uint16_t closed_port() {
  Poco::Net::ServerSocket s(Poco::Net::SocketAddress("127.0.0.1", 0));
  const uint16_t port = s.address().port();
  s.close();
  return port;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// What the figures of a snapshot must satisfy whatever happened.
void expect_consistent(const PoolStats& s) {
  EXPECT_EQ(s.idle + s.in_use, s.size) << "size=" << s.size << " idle=" << s.idle << " in_use=" << s.in_use;
  EXPECT_LE(s.size, s.max);
}

struct Outcome {
  Io io = Io::Error;
  std::string error;
  std::string response;
};

// Drives one connection on its loop thread: establish(), then (when `request` is not empty) writes
// the request and reads until a whole kResponse has arrived. Sets the connection's user while it
// works and clears it before reporting.
class Driver final : public ConnectionUser {
public:
  Driver(Connection& conn, std::string request) : conn_(conn), request_(std::move(request)) {}
  std::future<Outcome> result() { return done_.get_future(); }
  void start() {
    conn_.user = this;
    step();
  }
  void on_upstream_event(uint32_t) override { step(); }

private:
  void finish(Io io, std::string error) {
    finished_ = true;
    conn_.user = nullptr;
    out_.io = io;
    out_.error = std::move(error);
    done_.set_value(out_);  // the test thread may destroy this object from here on
  }
  void step() {
    if (finished_) return;
    Io io = conn_.establish();
    if (io == Io::WouldBlock) return;
    if (io != Io::Ok) return finish(io, conn_.error());
    while (sent_ < request_.size()) {
      size_t n = 0;
      io = conn_.write(request_.data() + sent_, request_.size() - sent_, n);
      if (io == Io::WouldBlock) return;
      if (io != Io::Ok) return finish(io, conn_.error());
      sent_ += n;
    }
    if (request_.empty()) return finish(Io::Ok, "");
    while (out_.response.size() < kResponse.size()) {
      char buf[4096];
      size_t got = 0;
      io = conn_.read(buf, sizeof buf, got);
      if (io == Io::WouldBlock) return;
      if (io == Io::Eof) return finish(io, "eof after " + std::to_string(out_.response.size()) + " bytes");
      if (io != Io::Ok) return finish(io, conn_.error());
      out_.response.append(buf, got);
    }
    finish(Io::Ok, "");
  }

  Connection& conn_;
  std::string request_;
  size_t sent_ = 0;
  bool finished_ = false;
  Outcome out_;
  std::promise<Outcome> done_;
};

// One pool attached to `loops` running event loops, wired like the server: a delivery to a waiter
// is posted to the waiter's loop, registered there and recorded for the test to collect.
class Rig {
public:
  // A connection held by the test thread; one left over is discarded on its loop.
  struct Drop {
    Rig* rig = nullptr;
    void operator()(Connection* c) const { rig->discard_raw(c, false); }
  };
  using Held = std::unique_ptr<Connection, Drop>;

  struct Delivery {
    Waiter waiter;
    Held conn;  // null: a free slot
  };

  explicit Rig(const cfg::UpstreamConfig& c, size_t loops = 1) {
    for (size_t i = 0; i < loops; ++i) {
      evs_.push_back(std::make_unique<EventLoop>());
      ptrs_.push_back(evs_.back().get());
    }
    pool_ = std::make_unique<UpstreamPool>(c);
    pool_->attach(
        loops, ptrs_.data(), [this](const Waiter& w, std::unique_ptr<Connection> conn) { deliver(w, std::move(conn)); },
        [this](size_t loop, std::function<void()> fn) { evs_[loop]->post(std::move(fn)); });
    for (auto& ev : evs_) threads_.emplace_back([e = ev.get()] { e->run([] {}); });
  }

  ~Rig() {
    pool_->stop();
    std::deque<Delivery> left;
    {
      std::lock_guard lock(mutex_);
      left.swap(deliveries_);
    }
    left.clear();  // discarded on their loops
    for (size_t l = 0; l < evs_.size(); ++l) on(l, [this, l] { pool_->close_loop(l); });
    for (auto& ev : evs_) ev->stop();
    for (auto& t : threads_) t.join();
    pool_.reset();
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  UpstreamPool& pool() { return *pool_; }
  EventLoop& ev(size_t loop) { return *evs_[loop]; }
  PoolStats stats() const { return pool_->stats(); }

  // Runs `fn` on loop `loop` and returns its result.
  template <class F>
  auto on(size_t loop, F fn) -> std::invoke_result_t<F&> {
    using R = std::invoke_result_t<F&>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(fn));
    std::future<R> done = task->get_future();
    evs_[loop]->post([task] { (*task)(); });
    if (done.wait_for(kLoopDeadline) != std::future_status::ready) stuck("a task posted to an event loop");
    return done.get();
  }
  // Lets loop `loop` handle every event that is ready now: the second task runs after a batch whose
  // epoll_wait began after the first had run.
  void settle(size_t loop) {
    on(loop, [] {});
    on(loop, [] {});
  }

  struct Opened {
    Held conn;
    std::string error;
  };
  Opened open(size_t loop) {
    std::string error;
    Connection* raw = on(loop, [&] { return pool_->open(loop, error).release(); });
    return {Held(raw, Drop{this}), error};
  }
  Held take_idle(size_t loop) {
    return Held(on(loop, [&] { return pool_->take_idle(loop).release(); }), Drop{this});
  }
  void release(Held c) {
    Connection* raw = c.release();
    on(raw->loop(), [&] { pool_->release(std::unique_ptr<Connection>(raw)); });
  }
  void discard(Held c, bool failure) { discard_raw(c.release(), failure); }
  void add_waiter(const Waiter& w) {
    on(w.loop, [&] { pool_->add_waiter(w); });
  }
  bool remove_waiter(const Waiter& w) {
    return on(w.loop, [&] { return pool_->remove_waiter(w); });
  }

  // establish() until done.
  Outcome establish(const Held& c) { return drive(*c, ""); }
  // Establishes if needed, sends GET /ping and reads the response: "ok", or what went wrong.
  std::string get(const Held& c) {
    const Outcome o =
        drive(*c, "GET " + pool_->base_path() + "/ping HTTP/1.1\r\nHost: " + pool_->host_header() + "\r\n\r\n");
    if (o.io != Io::Ok) return "failed: " + o.error;
    if (o.response != kResponse) return "unexpected response: " + o.response;
    return "ok";
  }

  // Deliveries made through the pool's Deliver callback, oldest first.
  std::optional<Delivery> next_delivery(std::chrono::milliseconds timeout = 5000ms) {
    if (!eventually(
            [&] {
              std::lock_guard lock(mutex_);
              return !deliveries_.empty();
            },
            timeout))
      return std::nullopt;
    std::lock_guard lock(mutex_);
    Delivery d = std::move(deliveries_.front());
    deliveries_.pop_front();
    return d;
  }
  int deliver_calls() const { return deliver_calls_.load(); }

private:
  void deliver(const Waiter& w, std::unique_ptr<Connection> conn) {
    ++deliver_calls_;
    Connection* raw = conn.release();
    evs_[w.loop]->post([this, w, raw] {
      std::unique_ptr<Connection> c(raw);
      if (c && !pool_->register_on(w.loop, *c)) {
        ADD_FAILURE() << "register_on failed";
        pool_->discard(std::move(c), true);
        return;
      }
      std::lock_guard lock(mutex_);
      deliveries_.push_back({w, Held(c.release(), Drop{this})});
    });
  }

  void discard_raw(Connection* raw, bool failure) {
    if (!raw) return;
    const size_t loop = raw->loop();
    if (evs_[loop]->in_loop_thread()) return pool_->discard(std::unique_ptr<Connection>(raw), failure);
    on(loop, [&] { pool_->discard(std::unique_ptr<Connection>(raw), failure); });
  }

  Outcome drive(Connection& c, std::string request) {
    Driver driver(c, std::move(request));
    std::future<Outcome> done = driver.result();
    on(c.loop(), [&] { driver.start(); });
    if (done.wait_for(kLoopDeadline) != std::future_status::ready) stuck("an upstream exchange");
    return done.get();
  }

  std::vector<std::unique_ptr<EventLoop>> evs_;
  std::vector<EventLoop*> ptrs_;
  std::vector<std::thread> threads_;
  std::unique_ptr<UpstreamPool> pool_;
  mutable std::mutex mutex_;
  std::deque<Delivery> deliveries_;
  std::atomic<int> deliver_calls_{0};
};

using Held = Rig::Held;

// The peer of `fd` has closed its side (FIN seen), within `timeout`.
bool peer_closed(int fd, std::chrono::milliseconds timeout = 5000ms) {
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

TEST(Pool, ParsesBaseUrl) {
  {
    UpstreamPool p(make_config("http://127.0.0.1:8080/api/coding/paas/v4/"));
    EXPECT_FALSE(p.secure());
    EXPECT_EQ(p.host(), "127.0.0.1");
    EXPECT_EQ(p.port(), 8080);
    EXPECT_EQ(p.base_path(), "/api/coding/paas/v4");
    EXPECT_EQ(p.host_header(), "127.0.0.1:8080");
  }
  {
    UpstreamPool p(make_config("http://localhost"));
    EXPECT_FALSE(p.secure());
    EXPECT_EQ(p.host(), "localhost");
    EXPECT_EQ(p.port(), 80);
    EXPECT_EQ(p.base_path(), "");
    EXPECT_EQ(p.host_header(), "localhost") << "default port: not in Host";
  }
  {
    UpstreamPool p(make_config("http://localhost:443/"));
    EXPECT_EQ(p.port(), 443);
    EXPECT_EQ(p.base_path(), "");
    EXPECT_EQ(p.host_header(), "localhost:443") << "443 is not http's default port";
  }
  {
    UpstreamPool p(make_config("https://localhost/api/anthropic"));
    EXPECT_TRUE(p.secure());
    EXPECT_EQ(p.port(), 443);
    EXPECT_EQ(p.base_path(), "/api/anthropic");
    EXPECT_EQ(p.host_header(), "localhost");
  }
  {
    UpstreamPool p(make_config("https://localhost:8443/v1"));
    EXPECT_TRUE(p.secure());
    EXPECT_EQ(p.port(), 8443);
    EXPECT_EQ(p.host_header(), "localhost:8443");
  }
  {
    UpstreamPool p(make_config("http://[::1]:9000"));
    EXPECT_EQ(p.host(), "::1");
    EXPECT_EQ(p.port(), 9000);
    EXPECT_EQ(p.host_header(), "[::1]:9000");
  }
  {
    UpstreamPool p(make_config("http://[::1]"));
    EXPECT_EQ(p.port(), 80);
    EXPECT_EQ(p.host_header(), "[::1]");
  }
  {
    UpstreamPool p(make_config("https://[::1]:443/v4//"));
    EXPECT_TRUE(p.secure());
    EXPECT_EQ(p.base_path(), "/v4");
    EXPECT_EQ(p.host_header(), "[::1]");
  }
  {
    auto c = make_config("http://127.0.0.1:1");
    c.max_connections = 7;
    UpstreamPool p(c);
    EXPECT_EQ(p.stats().max, 7u);
    EXPECT_EQ(p.config().max_connections, 7);
    EXPECT_EQ(p.config().name, "test");
  }
}

TEST(Pool, StatsFiguresMatchTheFields) {
  TestServer server;
  Rig rig(make_config(server.base_url()));
  const PoolStats fresh = rig.stats();
  EXPECT_EQ(fresh.size, 0u);
  EXPECT_EQ(fresh.created, 0u);
  EXPECT_TRUE(fresh.healthy);
  EXPECT_EQ(fresh.last_error, "");

  auto a = rig.open(0);
  auto b = rig.open(0);
  ASSERT_TRUE(a.conn && b.conn);
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.release(std::move(a.conn));
  rig.pool().count_timeout();
  rig.pool().count_timeout();

  const PoolStats s = rig.stats();
  expect_consistent(s);
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.timeouts, 2u);
  const auto figures = s.figures();
  const std::vector<std::pair<std::string, uint64_t>> expected = {
      {"size", s.size},       {"idle", s.idle},       {"in_use", s.in_use}, {"waiting", s.waiting},
      {"max", s.max},         {"created", s.created}, {"reused", s.reused}, {"failed", s.failed},
      {"expired", s.expired}, {"timeouts", s.timeouts}, {"h2_connections", s.h2_connections},
      {"h2_streams", s.h2_streams}, {"h2_max_streams_per_connection", s.h2_max_streams},
      {"h2_streams_total", s.h2_streams_total}, {"h2_goaways", s.h2_goaways}};
  ASSERT_EQ(figures.size(), expected.size());
  for (size_t i = 0; i < figures.size(); ++i) {
    EXPECT_EQ(figures[i].first, expected[i].first);
    EXPECT_EQ(figures[i].second, expected[i].second) << figures[i].first;
  }
  rig.discard(std::move(b.conn), false);
}

// ---------------------------------------------------------------------------------------------
// Opening, reuse, discard
// ---------------------------------------------------------------------------------------------

TEST(Pool, OpensAndEstablishesAConnection) {
  TestServer server;
  Rig rig(make_config(server.base_url()));
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(a.error, "");
  EXPECT_FALSE(a.conn->reused);
  EXPECT_EQ(a.conn->loop(), 0u);
  PoolStats s = rig.stats();
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.created, 1u);

  const Outcome o = rig.establish(a.conn);
  EXPECT_EQ(o.io, Io::Ok) << o.error;
  EXPECT_TRUE(a.conn->established);
  ASSERT_TRUE(eventually([&] { return server.accepts() == 1; }));
  EXPECT_EQ(rig.get(a.conn), "ok");
  EXPECT_EQ(server.requests(), 1);

  rig.discard(std::move(a.conn), false);
  s = rig.stats();
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.failed, 0u) << "discard(false) is not a failure";
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; })) << "discard closes the socket";
}

TEST(Pool, RefusedConnectionSaysRefused) {
  Rig rig(make_config("http://127.0.0.1:" + std::to_string(closed_port())));
  auto a = rig.open(0);
  std::string error = a.error;
  if (a.conn) {  // the usual case: connect() is in progress, establish() reports the refusal
    EXPECT_EQ(a.error, "");
    const Outcome o = rig.establish(a.conn);
    EXPECT_EQ(o.io, Io::Error);
    EXPECT_FALSE(a.conn->established);
    EXPECT_EQ(o.error, a.conn->error());
    error = o.error;
    rig.discard(std::move(a.conn), true);
  }
  EXPECT_TRUE(contains(error, "refused")) << error;
  EXPECT_TRUE(contains(error, "'test'")) << "names the upstream: " << error;
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.failed, 1u);
  expect_consistent(s);
}

TEST(Pool, ReleaseThenTakeIdleReusesTheConnection) {
  TestServer server;
  Rig rig(make_config(server.base_url()));
  EXPECT_FALSE(rig.take_idle(0)) << "nothing idle yet";

  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  const Connection* first = a.conn.get();
  rig.release(std::move(a.conn));
  PoolStats s = rig.stats();
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.reused, 0u);

  Held again = rig.take_idle(0);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.get(), first);
  EXPECT_TRUE(again->reused);
  EXPECT_TRUE(again->established);
  s = rig.stats();
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_FALSE(rig.take_idle(0)) << "the only connection is in use";

  EXPECT_EQ(rig.get(again), "ok");
  rig.release(std::move(again));
  s = rig.stats();
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_EQ(s.expired, 0u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(server.accepts(), 1);
  EXPECT_EQ(server.requests(), 2);
}

TEST(Pool, IdleConnectionsAreTakenMostRecentlyUsedFirst) {
  TestServer server;
  Rig rig(make_config(server.base_url()));
  auto a = rig.open(0);
  auto b = rig.open(0);
  auto c = rig.open(0);
  ASSERT_TRUE(a.conn && b.conn && c.conn);
  for (auto* h : {&a, &b, &c}) EXPECT_EQ(rig.get(h->conn), "ok");
  const Connection* pa = a.conn.get();
  const Connection* pb = b.conn.get();
  const Connection* pc = c.conn.get();
  rig.release(std::move(b.conn));
  rig.release(std::move(a.conn));
  rig.release(std::move(c.conn));  // c is the most recently used, b the least
  EXPECT_EQ(rig.stats().idle, 3u);

  Held x = rig.take_idle(0);
  Held y = rig.take_idle(0);
  Held z = rig.take_idle(0);
  EXPECT_EQ(x.get(), pc);
  EXPECT_EQ(y.get(), pa);
  EXPECT_EQ(z.get(), pb);
  EXPECT_FALSE(rig.take_idle(0));
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.reused, 3u);
  EXPECT_EQ(s.created, 3u);
  EXPECT_EQ(s.in_use, 3u);
  EXPECT_EQ(server.accepts(), 3);
}

TEST(Pool, IdleConnectionsBelongToTheirLoop) {
  TestServer server;
  Rig rig(make_config(server.base_url()), 2);
  auto a = rig.open(1);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(a.conn->loop(), 1u);
  EXPECT_EQ(rig.get(a.conn), "ok");
  const Connection* pa = a.conn.get();
  rig.release(std::move(a.conn));
  EXPECT_EQ(rig.stats().idle, 1u);

  EXPECT_FALSE(rig.take_idle(0)) << "loop 0 has no idle connection of its own";
  Held again = rig.take_idle(1);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.get(), pa);
  EXPECT_EQ(rig.get(again), "ok");
  EXPECT_EQ(server.accepts(), 1);
}

TEST(Pool, DiscardFreesTheSlotAndCountsFailures) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.discard(std::move(a.conn), true);
  PoolStats s = rig.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; })) << "the socket was closed";
  rig.on(0, [&] { rig.pool().discard(nullptr, true); });  // nothing to discard: a no-op
  EXPECT_EQ(rig.stats().failed, 1u);
  EXPECT_EQ(rig.stats().size, 0u);

  auto b = rig.open(0);  // the only slot is free again
  ASSERT_TRUE(b.conn) << b.error;
  EXPECT_FALSE(b.conn->reused);
  EXPECT_EQ(rig.get(b.conn), "ok");
  rig.discard(std::move(b.conn), false);
  s = rig.stats();
  EXPECT_EQ(s.failed, 1u) << "discard(false) is not a failure";
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.reused, 0u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, ExpireIdleIgnoresAConnectionThatIsNotIdle) {
  TestServer server;
  Rig rig(make_config(server.base_url()));
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.on(0, [&] { rig.pool().expire_idle(a.conn.get()); });
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.expired, 0u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(rig.get(a.conn), "ok") << "still open and usable";
}

// ---------------------------------------------------------------------------------------------
// max_connections and waiters
// ---------------------------------------------------------------------------------------------

TEST(Pool, OpenReturnsNullWithoutErrorWhenEverySlotIsTaken) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 2;
  Rig rig(cfg);
  auto a = rig.open(0);
  auto b = rig.open(0);
  ASSERT_TRUE(a.conn && b.conn);
  auto c = rig.open(0);
  EXPECT_FALSE(c.conn);
  EXPECT_EQ(c.error, "") << "full is not an error";
  PoolStats s = rig.stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.in_use, 2u);
  EXPECT_EQ(s.max, 2u);
  EXPECT_EQ(s.created, 2u) << "a refused open creates nothing";
  EXPECT_EQ(s.failed, 0u);

  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.release(std::move(a.conn));
  auto d = rig.open(0);
  EXPECT_FALSE(d.conn) << "an idle connection holds its slot";
  EXPECT_EQ(d.error, "");
  Held again = rig.take_idle(0);
  ASSERT_TRUE(again);
  rig.discard(std::move(again), false);
  auto e = rig.open(0);
  EXPECT_TRUE(e.conn) << "a discarded connection frees its slot: " << e.error;
  s = rig.stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.created, 3u);
  expect_consistent(s);
}

TEST(Pool, ReleasedConnectionGoesToTheFirstWaiter) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  const Connection* pa = a.conn.get();
  EXPECT_FALSE(rig.open(0).conn);
  rig.add_waiter({0, 1});
  rig.add_waiter({0, 2});
  EXPECT_EQ(rig.stats().waiting, 2u);

  rig.release(std::move(a.conn));
  auto d1 = rig.next_delivery();
  ASSERT_TRUE(d1);
  EXPECT_EQ(d1->waiter.id, 1u) << "first come, first served";
  EXPECT_EQ(d1->waiter.loop, 0u);
  ASSERT_TRUE(d1->conn) << "a connection, not just a slot";
  EXPECT_EQ(d1->conn.get(), pa);
  EXPECT_TRUE(d1->conn->reused);
  PoolStats s = rig.stats();
  EXPECT_EQ(s.waiting, 1u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(s.idle, 0u) << "handed over, never idle";
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(rig.get(d1->conn), "ok") << "the delivered connection is registered and works";

  rig.release(std::move(d1->conn));
  auto d2 = rig.next_delivery();
  ASSERT_TRUE(d2);
  EXPECT_EQ(d2->waiter.id, 2u);
  ASSERT_TRUE(d2->conn);
  EXPECT_EQ(d2->conn.get(), pa);
  EXPECT_EQ(rig.get(d2->conn), "ok");
  EXPECT_EQ(rig.stats().waiting, 0u);

  rig.release(std::move(d2->conn));  // nobody waits: idle
  s = rig.stats();
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.reused, 2u);
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(rig.deliver_calls(), 2);
  EXPECT_EQ(server.accepts(), 1);
  EXPECT_EQ(server.requests(), 3);
}

TEST(Pool, WaiterOnAnotherLoopGetsTheReleasedConnection) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  const Connection* pa = a.conn.get();
  auto full = rig.open(1);
  EXPECT_FALSE(full.conn);
  EXPECT_EQ(full.error, "");
  rig.add_waiter({1, 7});

  rig.release(std::move(a.conn));
  auto d = rig.next_delivery();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->waiter.loop, 1u);
  EXPECT_EQ(d->waiter.id, 7u);
  ASSERT_TRUE(d->conn);
  EXPECT_EQ(d->conn.get(), pa);
  EXPECT_EQ(d->conn->loop(), 1u) << "moved to the waiter's loop";
  EXPECT_EQ(rig.get(d->conn), "ok") << "its events now arrive on loop 1";

  rig.release(std::move(d->conn));
  EXPECT_FALSE(rig.take_idle(0)) << "idle on loop 1 now, not on loop 0";
  Held again = rig.take_idle(1);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.get(), pa);
  EXPECT_EQ(rig.get(again), "ok");
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.reused, 2u);
  EXPECT_EQ(s.waiting, 0u);
  EXPECT_EQ(server.accepts(), 1);
}

TEST(Pool, DiscardGivesTheWaiterASlot) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.add_waiter({1, 3});

  rig.discard(std::move(a.conn), true);
  auto d = rig.next_delivery();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->waiter.loop, 1u);
  EXPECT_EQ(d->waiter.id, 3u);
  EXPECT_FALSE(d->conn) << "a free slot, not a connection";
  PoolStats s = rig.stats();
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.waiting, 0u);

  auto b = rig.open(1);  // the waiter opens one in the freed slot
  ASSERT_TRUE(b.conn) << b.error;
  EXPECT_FALSE(b.conn->reused);
  EXPECT_EQ(rig.get(b.conn), "ok");
  s = rig.stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, RemovedWaiterGetsNothing) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");

  rig.add_waiter({0, 1});
  EXPECT_EQ(rig.stats().waiting, 1u);
  EXPECT_FALSE(rig.remove_waiter({0, 2})) << "never queued";
  EXPECT_FALSE(rig.remove_waiter({1, 1})) << "same id, other loop";
  EXPECT_TRUE(rig.remove_waiter({0, 1}));
  EXPECT_FALSE(rig.remove_waiter({0, 1})) << "already removed";
  EXPECT_EQ(rig.stats().waiting, 0u);

  rig.release(std::move(a.conn));
  EXPECT_EQ(rig.deliver_calls(), 0);
  EXPECT_EQ(rig.stats().idle, 1u) << "nobody waits: kept idle";

  // Once a waiter has been handed its connection, removing it says so.
  Held again = rig.take_idle(0);
  ASSERT_TRUE(again);
  rig.add_waiter({0, 9});
  rig.release(std::move(again));
  auto d = rig.next_delivery();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->waiter.id, 9u);
  EXPECT_FALSE(rig.remove_waiter({0, 9}));
  EXPECT_EQ(rig.stats().waiting, 0u);
}

// What the server does when a delivery arrives for a request that is gone: a slot is passed on
// (pass_slot), a connection is kept idle on the loop it arrived at (keep_idle).
TEST(Pool, DeliveriesForAGoneWaiterArePassedOnOrKept) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  rig.add_waiter({1, 1});
  rig.add_waiter({0, 2});
  rig.discard(std::move(a.conn), false);
  auto d1 = rig.next_delivery();
  ASSERT_TRUE(d1);
  EXPECT_EQ(d1->waiter.id, 1u);
  EXPECT_FALSE(d1->conn);

  rig.on(1, [&] { rig.pool().pass_slot(); });  // waiter 1 is gone
  auto d2 = rig.next_delivery();
  ASSERT_TRUE(d2);
  EXPECT_EQ(d2->waiter.id, 2u);
  EXPECT_FALSE(d2->conn);
  EXPECT_EQ(rig.stats().waiting, 0u);
  rig.on(0, [&] { rig.pool().pass_slot(); });  // nobody waits: nothing happens
  EXPECT_EQ(rig.deliver_calls(), 2);

  auto b = rig.open(0);
  ASSERT_TRUE(b.conn) << b.error;
  EXPECT_EQ(rig.get(b.conn), "ok");
  const Connection* pb = b.conn.get();
  rig.add_waiter({1, 3});
  rig.release(std::move(b.conn));
  auto d3 = rig.next_delivery();
  ASSERT_TRUE(d3);
  ASSERT_TRUE(d3->conn);
  Connection* raw = d3->conn.release();
  rig.on(1, [&] { rig.pool().keep_idle(std::unique_ptr<Connection>(raw)); });  // waiter 3 is gone
  PoolStats s = rig.stats();
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_FALSE(rig.take_idle(0));
  Held again = rig.take_idle(1);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.get(), pb);
  EXPECT_EQ(rig.get(again), "ok");
  EXPECT_EQ(server.accepts(), 2) << "a (never used) and b";
}

// ---------------------------------------------------------------------------------------------
// Idle connections that die or age
// ---------------------------------------------------------------------------------------------

TEST(Pool, IdleConnectionClosedByTheUpstreamIsExpiredByItsEvent) {
  TestServer server;
  Rig rig(make_config(server.base_url()));  // no maintenance thread: only the event can expire it
  auto a = rig.open(0);
  auto b = rig.open(0);
  ASSERT_TRUE(a.conn && b.conn);
  EXPECT_EQ(rig.get(a.conn), "ok");
  EXPECT_EQ(rig.get(b.conn), "ok");
  rig.release(std::move(a.conn));  // a idle, b in use
  ASSERT_EQ(rig.stats().idle, 1u);

  server.close_all();
  ASSERT_TRUE(eventually([&] {
    const PoolStats s = rig.stats();
    return s.expired == 1 && s.idle == 0;
  })) << "expired=" << rig.stats().expired << " idle=" << rig.stats().idle;
  // b's FIN has arrived too and its event has been handled: a connection in use is not expired.
  ASSERT_TRUE(peer_closed(b.conn->fd()));
  rig.settle(0);
  PoolStats s = rig.stats();
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_EQ(s.reused, 0u);
  EXPECT_FALSE(rig.take_idle(0)) << "the dead connection is gone";
  EXPECT_NE(rig.get(b.conn), "ok");
  rig.discard(std::move(b.conn), true);

  auto c = rig.open(0);
  ASSERT_TRUE(c.conn) << c.error;
  EXPECT_EQ(rig.get(c.conn), "ok");
  s = rig.stats();
  EXPECT_EQ(s.created, 3u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(server.accepts(), 3);
}

TEST(Pool, TooOldIdleConnectionIsNotTaken) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.idle_timeout = 200ms;
  Rig rig(cfg);  // no maintenance thread: take_idle itself must notice the age
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.release(std::move(a.conn));
  const auto released = SteadyClock::now();
  while (SteadyClock::now() - released <= 400ms) std::this_thread::sleep_for(20ms);  // age it past 200 ms
  ASSERT_EQ(rig.stats().idle, 1u);

  EXPECT_FALSE(rig.take_idle(0));
  PoolStats s = rig.stats();
  EXPECT_EQ(s.expired, 1u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.reused, 0u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; })) << "the old socket was closed";

  auto b = rig.open(0);
  ASSERT_TRUE(b.conn) << b.error;
  EXPECT_EQ(rig.get(b.conn), "ok");
  rig.release(std::move(b.conn));
  Held fresh = rig.take_idle(0);
  EXPECT_TRUE(fresh) << "a young idle connection is taken";
  s = rig.stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(server.accepts(), 2);
}

TEST(Pool, CloseLoopClosesThatLoopsIdleConnections) {
  TestServer server;
  Rig rig(make_config(server.base_url()), 2);
  auto a = rig.open(0);
  auto b = rig.open(1);
  ASSERT_TRUE(a.conn && b.conn);
  EXPECT_EQ(rig.get(a.conn), "ok");
  EXPECT_EQ(rig.get(b.conn), "ok");
  rig.release(std::move(a.conn));
  rig.release(std::move(b.conn));
  ASSERT_EQ(rig.stats().idle, 2u);

  rig.on(0, [&] { rig.pool().close_loop(0); });
  PoolStats s = rig.stats();
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 1; }));
  EXPECT_FALSE(rig.take_idle(0));
  EXPECT_TRUE(rig.take_idle(1)) << "the other loop keeps its own";
}

// ---------------------------------------------------------------------------------------------
// Maintenance thread: idle expiry, warm-up, health
// ---------------------------------------------------------------------------------------------

TEST(Pool, MaintenanceExpiresOldIdleConnectionsOnEveryLoop) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.idle_timeout = 300ms;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  auto b = rig.open(1);
  ASSERT_TRUE(a.conn && b.conn);
  EXPECT_EQ(rig.get(a.conn), "ok");
  EXPECT_EQ(rig.get(b.conn), "ok");
  rig.release(std::move(a.conn));
  rig.release(std::move(b.conn));
  rig.pool().start();
  ASSERT_TRUE(eventually([&] { return rig.stats().expired == 2; })) << "expired=" << rig.stats().expired;
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_TRUE(eventually([&] { return server.closed() == 2; })) << "expired sockets are closed";
  EXPECT_EQ(server.accepts(), 2) << "min_connections = 0, warm = false: nothing re-opened";
  rig.pool().stop();
}

TEST(Pool, WarmUpOpensMinConnections) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 2;
  Rig rig(cfg, 2);
  EXPECT_EQ(rig.stats().size, 0u) << "nothing before start()";
  rig.pool().start();
  ASSERT_TRUE(eventually([&] { return server.accepts() == 2 && rig.stats().idle == 2; }))
      << "accepts=" << server.accepts() << " idle=" << rig.stats().idle;
  PoolStats s = rig.stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_TRUE(s.healthy);

  // A warm connection is established already: using it dials nothing new.
  Held warm = rig.take_idle(0);
  if (!warm) warm = rig.take_idle(1);
  ASSERT_TRUE(warm);
  EXPECT_TRUE(warm->reused);
  EXPECT_TRUE(warm->established);
  EXPECT_EQ(rig.get(warm), "ok");
  rig.release(std::move(warm));
  rig.pool().stop();
  EXPECT_EQ(server.accepts(), 2);
  EXPECT_EQ(rig.stats().size, 2u) << "stop() ends maintenance, it does not close the pool";
}

TEST(Pool, IdleExpiryThenReWarm) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 2;
  cfg.idle_timeout = 300ms;
  Rig rig(cfg);
  rig.pool().start();
  ASSERT_TRUE(eventually([&] { return server.accepts() >= 2; }));
  ASSERT_TRUE(eventually([&] { return rig.stats().expired >= 2; })) << "expired=" << rig.stats().expired;
  ASSERT_TRUE(eventually([&] { return server.accepts() >= 4 && rig.stats().idle == 2; }))
      << "re-warmed: accepts=" << server.accepts() << " idle=" << rig.stats().idle;
  EXPECT_TRUE(eventually([&] { return server.closed() >= 2; })) << "expired sockets are closed";
  rig.pool().stop();
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.failed, 0u);
  EXPECT_GE(s.created, 4u);
  expect_consistent(s);
}

TEST(Pool, HealthCheckReportsAClosedPortAndRecovers) {
  const uint16_t port = closed_port();
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(port));
  cfg.health_interval = 100ms;
  cfg.connect_timeout = 1000ms;
  Rig rig(cfg);
  EXPECT_TRUE(rig.stats().healthy) << "healthy until a check says otherwise";
  rig.pool().start();
  ASSERT_TRUE(eventually([&] { return !rig.stats().healthy; }));
  PoolStats s = rig.stats();
  EXPECT_TRUE(contains(s.last_error, "refused")) << s.last_error;
  EXPECT_EQ(s.created, 0u) << "warm = false: health checks are not pooled connections";
  EXPECT_EQ(s.size, 0u);

  std::unique_ptr<TestServer> server;
  try {
    server = std::make_unique<TestServer>(port);
  } catch (const Poco::Exception& e) {
    GTEST_SKIP() << "port " << port << " was taken meanwhile: " << e.displayText();
  }
  ASSERT_TRUE(eventually([&] { return rig.stats().healthy; }));
  s = rig.stats();
  EXPECT_EQ(s.last_error, "");
  EXPECT_EQ(s.created, 0u);
  rig.pool().stop();
}

TEST(Pool, StartStopAreIdempotent) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.warm = true;
  cfg.min_connections = 1;
  Rig rig(cfg);
  rig.pool().start();
  rig.pool().start();  // second start: no second thread
  ASSERT_TRUE(eventually([&] { return server.accepts() == 1 && rig.stats().idle == 1; }));
  rig.pool().stop();
  rig.pool().stop();
  Held warm = rig.take_idle(0);
  ASSERT_TRUE(warm);
  rig.discard(std::move(warm), false);  // below min_connections now
  EXPECT_EQ(rig.stats().size, 0u);
  rig.pool().start();  // a restarted thread warms again
  ASSERT_TRUE(eventually([&] { return server.accepts() == 2 && rig.stats().idle == 1; }))
      << "accepts=" << server.accepts() << " idle=" << rig.stats().idle;
  rig.pool().stop();
  const PoolStats s = rig.stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.failed, 0u);
}

// ---------------------------------------------------------------------------------------------
// Known pool bugs (core/src/upstream/pool.cpp): enable these once they are fixed.
// ---------------------------------------------------------------------------------------------

// warm() loops `while (size < min_connections)`; a Warmer whose connect fails inside its first
// step() (ECONNREFUSED from 127.0.0.1 is already in SO_ERROR when connect() returns EINPROGRESS)
// discards the connection, which lowers size again, so the loop dials again at once. The retired
// connections keep their descriptors until the batch ends, so it only stops when socket() fails
// with EMFILE, after thousands of dials, with every descriptor of the process in use meanwhile.
// The documented behaviour is a 2 s back-off after a failed dial.
TEST(Pool, WarmUpAgainstARefusedPortBacksOff) {
  auto cfg = make_config("http://127.0.0.1:" + std::to_string(closed_port()));
  cfg.warm = true;
  cfg.min_connections = 2;
  Rig rig(cfg);
  rig.pool().start();
  ASSERT_TRUE(eventually([&] { return rig.stats().failed >= 1; }));
  rig.settle(0);  // the warm-up round that failed has finished
  rig.pool().stop();
  const PoolStats s = rig.stats();
  EXPECT_LE(s.failed, 4u) << "one warm-up round dialled " << s.failed << " times; last_error: " << s.last_error;
  EXPECT_EQ(s.size, 0u);
  EXPECT_FALSE(contains(s.last_error, "Too many open files")) << s.last_error;
}

// Every slot is taken by a connection idle on loop 0; a request on loop 1 finds no idle
// connection of its own and no free slot, so it queues as a waiter. Nothing ever serves it: only
// release() and a freed slot serve waiters, and the idle connection on loop 0 is neither until
// idle_timeout expires it (60 s by default, beyond acquire_timeout: a 503 with a connection idle).
// Warm-up makes this likely: warm(l) opens all min_connections on one loop.
TEST(Pool, WaiterIsServedWhileAnotherLoopHoldsTheIdleConnection) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.max_connections = 1;
  Rig rig(cfg, 2);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  rig.release(std::move(a.conn));
  rig.pool().start();

  // Loop 1 does what a request does: take_idle, open, then wait.
  EXPECT_FALSE(rig.take_idle(1));
  auto full = rig.open(1);
  ASSERT_FALSE(full.conn);
  ASSERT_EQ(full.error, "");
  rig.add_waiter({1, 1});
  auto d = rig.next_delivery(cfg.acquire_timeout);
  ASSERT_TRUE(d) << "the waiter was not served within acquire_timeout although a connection was idle";
  Held conn = std::move(d->conn);
  if (!conn) conn = rig.open(1).conn;  // a slot: open in it
  ASSERT_TRUE(conn);
  EXPECT_EQ(rig.get(conn), "ok");
  rig.pool().stop();
}

// take_idle() destroys a too-old idle connection at once (conn.reset()) instead of retiring it.
// take_idle runs inside event handlers; when the same epoll batch also holds an event for that
// connection (here: the upstream closed it), the loop then calls on_event on freed memory. A
// release build usually survives it by chance; AddressSanitizer reports a heap-use-after-free.
TEST(Pool, TakeIdleInAnEventHandlerDoesNotFreeAConnectionWithAPendingEvent) {
  TestServer server;
  auto cfg = make_config(server.base_url());
  cfg.idle_timeout = 100ms;
  Rig rig(cfg);
  auto a = rig.open(0);
  ASSERT_TRUE(a.conn) << a.error;
  EXPECT_EQ(rig.get(a.conn), "ok");
  const int fd = a.conn->fd();
  rig.release(std::move(a.conn));

  // A watcher on a pipe that takes an idle connection when the pipe turns readable, as a client
  // request does when its headers arrive.
  struct Taker final : glmp::core::server::Watcher {
    UpstreamPool* pool = nullptr;
    std::unique_ptr<Connection> taken;
    bool called = false;
    void on_event(uint32_t) override {
      called = true;
      taken = pool->take_idle(0);
    }
  } taker;
  taker.pool = &rig.pool();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  ASSERT_TRUE(rig.on(0, [&] { return rig.ev(0).add(pipe_fds[0], EPOLLIN | EPOLLET, &taker); }));

  // Hold the loop; make the pipe readable first and the idle connection readable (FIN) second;
  // then let the loop go: its next batch holds [pipe, connection] in that order.
  std::promise<void> held, go;
  std::shared_future<void> go_f = go.get_future().share();
  rig.ev(0).post([&held, go_f] {
    held.set_value();
    go_f.wait();
  });
  held.get_future().wait();
  const auto released = SteadyClock::now();
  while (SteadyClock::now() - released <= 300ms) std::this_thread::sleep_for(20ms);  // too old now
  EXPECT_EQ(::write(pipe_fds[1], "x", 1), 1);
  server.close_all();
  EXPECT_TRUE(peer_closed(fd));
  go.set_value();
  rig.settle(0);

  EXPECT_TRUE(rig.on(0, [&] { return taker.called; }));
  EXPECT_FALSE(rig.on(0, [&] { return taker.taken != nullptr; })) << "too old: not taken";
  EXPECT_EQ(rig.stats().expired, 1u);
  EXPECT_EQ(rig.stats().size, 0u);
  rig.on(0, [&] { rig.ev(0).remove(pipe_fds[0]); });
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}
