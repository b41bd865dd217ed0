// Unit tests for core/src/pipeline/fanout + sink: one upstream response relayed by a real
// pipeline::Exchange to its own client and to followers (Fanout::attach), on a real engine loop,
// over loopback TCP, against a scripted in-process upstream.
//
// The harness is wired like Server (one loop): a request to /v1/lead… becomes an Exchange with
// following enabled; a request to /v1/follow… attaches to the current leader (409 when there is
// none or it cannot be followed). The upstream script runs on its own thread per connection and
// waits on gates the test opens, so "mid-stream" is a fixed point, not a timing.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/SocketAddress.h>

#include "config/config.hpp"
#include "pipeline/exchange.hpp"
#include "pipeline/fanout.hpp"
#include "pipeline/proxy.hpp"
#include "plugins/chain.hpp"
#include "server/engine.hpp"
#include "upstream/pool.hpp"

namespace cfg = glmp::core::config;
namespace pl = glmp::core::pipeline;
namespace srv = glmp::core::server;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

class Gate {
public:
  void open() {
    std::lock_guard lock(m_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }

private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = SteadyClock::now() + timeout;
  while (!cond()) {
    if (SteadyClock::now() > deadline) return cond();
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string chunk(std::string_view bytes) {
  char hex[24];
  std::snprintf(hex, sizeof hex, "%zx\r\n", bytes.size());
  return std::string(hex) + std::string(bytes) + "\r\n";
}

// A tiny upstream: each connection's request head is read, then `script(fd)` runs on the
// connection's thread; the connection closes when it returns.
class Upstream {
public:
  using Script = std::function<void(int fd)>;
  explicit Upstream(Script script) : script_(std::move(script)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Upstream() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : conns_) t.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  int requests() const { return requests_.load(); }

private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      conns_.emplace_back([this, c] {
        std::string head;
        char buf[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
          const ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n <= 0) break;
          head.append(buf, static_cast<size_t>(n));
        }
        ++requests_;
        if (head.find("\r\n\r\n") != std::string::npos) script_(c);
        ::close(c);
      });
    }
  }

  Script script_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread acceptor_;
  std::vector<std::thread> conns_;
};

// The proxy side: one engine loop, one pool, exchanges and followers as Server would make them.
class Harness final : public pl::ExchangeHost {
public:
  struct Followed {
    std::string request_id;
    bool client_gone = false;
    std::string error;
    uint64_t bytes_out = 0;
    int status = 0;
  };

  Harness(uint16_t upstream_port, pl::FanoutLimits limits, std::chrono::milliseconds send_timeout = 10s) : limits_(limits) {
    cfg::UpstreamConfig u;
    u.name = "up";
    u.base_url = "http://127.0.0.1:" + std::to_string(upstream_port);
    u.min_connections = 0;
    u.max_connections = 8;
    u.warm = false;
    u.health_interval = 0ms;
    u.read_timeout = 10'000ms;
    config_.upstreams["up"] = u;
    config_.routes.push_back({"/v1", pl::Flavour::OpenAI, "up", ""});
    config_.server.send_timeout = send_timeout;
    pools_.emplace("up", std::make_unique<glmp::core::upstream::Pool>(config_.upstreams["up"]));
    proxy_ = std::make_unique<pl::Proxy>(config_, pools_);
    srv::EngineOptions options;
    options.loops = 1;
    options.limits.send_timeout = send_timeout;
    options.max_threads = 2;
    engine_ = std::make_unique<srv::Engine>(Poco::Net::SocketAddress("127.0.0.1", 0), options,
                                            [this](srv::Loop& loop, std::unique_ptr<srv::ClientConnection> c) { dispatch(loop, std::move(c)); });
    engine_->on_loop_stop = [this](srv::Loop& loop) {
      std::vector<uint64_t> ids;
      for (const auto& [id, x] : exchanges_) ids.push_back(id);
      for (uint64_t id : ids)
        if (auto it = exchanges_.find(id); it != exchanges_.end()) it->second->abort("server stopping");
      for (auto& [id, x] : exchanges_) loop.ev().retire(std::move(x));
      exchanges_.clear();
      pool().close_loop(loop.index());
    };
    buffer_ = std::make_unique<char[]>(config_.proxy.chunk_size);
    ev_ = &engine_->loop(0).ev();
    pool().attach(
        1, &ev_,
        [this](const glmp::core::upstream::Pool::Waiter& w, std::unique_ptr<glmp::core::upstream::Connection> c) {
          auto* raw = c.release();
          ev_->post([this, w, raw] {
            std::unique_ptr<glmp::core::upstream::Connection> conn(raw);
            if (conn && !pool().register_on(0, *conn)) return pool().discard(std::move(conn), true);
            if (auto it = exchanges_.find(w.id); it != exchanges_.end()) return it->second->on_delivered(std::move(conn));
            if (conn) pool().keep_idle(std::move(conn));
            else pool().pass_slot();
          });
        },
        [this](size_t, std::function<void()> fn) { ev_->post(std::move(fn)); });
    engine_->start();
  }
  ~Harness() {
    engine_->stop();
    engine_.reset();
  }

  uint16_t port() const { return engine_->port(); }
  int attached() const { return attached_.load(); }
  int leaders_done() const { return leaders_done_.load(); }
  bool leader_client_gone() const { return leader_client_gone_.load(); }
  std::vector<Followed> followed() {
    std::lock_guard lock(m_);
    return followed_;
  }
  size_t followers_done() {
    std::lock_guard lock(m_);
    return followed_.size();
  }

  void exchange_done(pl::Exchange& x) override {
    leader_client_gone_ = x.ctx().client_gone;
    ++leaders_done_;
  }
  void exchange_finished(pl::Exchange& x) override {
    if (leader_ == &x) leader_ = nullptr;
    auto it = exchanges_.find(x.id());
    if (it == exchanges_.end()) return;
    ev_->retire(std::move(it->second));
    exchanges_.erase(it);
  }

private:
  glmp::core::upstream::Pool& pool() { return *pools_.begin()->second; }

  void dispatch(srv::Loop& loop, std::unique_ptr<srv::ClientConnection> conn) {
    pl::RequestContext ctx;
    const std::string uri = conn->request().getURI();
    ctx.path = uri;
    ctx.method = conn->request().getMethod();
    ctx.route = &config_.routes[0];
    ctx.flavour = pl::Flavour::OpenAI;
    ctx.request_id = std::string(conn->request().headers().get("X-Request-ID", "none"));
    if (uri.rfind("/v1/follow", 0) == 0) {
      if (uri == "/v1/follow-slow") {
        // Small socket buffers: its queue, not the kernel, takes what it does not read.
        const int small = 16 * 1024;
        ::setsockopt(conn->fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
      }
      pl::Fanout* f = leader_ ? leader_->fanout() : nullptr;
      if (f && f->attach(conn, std::move(ctx), [this](pl::RequestContext& c) {
            std::lock_guard lock(m_);
            followed_.push_back({c.request_id, c.client_gone, c.error, c.bytes_out, c.status});
          })) {
        ++attached_;
        return;
      }
      loop.reject(std::move(conn), 409, "nothing to follow");
      return;
    }
    const uint64_t id = next_id_++;
    auto x = std::make_unique<pl::Exchange>(id, loop, std::move(conn), *proxy_, pool(), chain_, buffer_.get(),
                                            config_.proxy.chunk_size, *this, std::move(ctx), false);
    pl::Exchange* raw = x.get();
    EXPECT_NE(raw->enable_followers(limits_), nullptr);
    exchanges_.emplace(id, std::move(x));
    leader_ = raw;
    raw->start();
  }

  cfg::Config config_;
  pl::Pools pools_;
  std::unique_ptr<pl::Proxy> proxy_;
  std::shared_ptr<const glmp::core::plugins::Chain> chain_ = std::make_shared<glmp::core::plugins::Chain>();
  std::unique_ptr<char[]> buffer_;
  pl::FanoutLimits limits_;
  std::unique_ptr<srv::Engine> engine_;
  srv::EventLoop* ev_ = nullptr;
  // Loop thread only.
  std::map<uint64_t, std::unique_ptr<pl::Exchange>> exchanges_;
  pl::Exchange* leader_ = nullptr;
  uint64_t next_id_ = 1;
  // Read by the test.
  std::atomic<int> attached_{0}, leaders_done_{0};
  std::atomic<bool> leader_client_gone_{false};
  std::mutex m_;
  std::vector<Followed> followed_;
};

struct Reply {
  std::string head;
  std::string body;  // de-chunked
  bool chunked = false;
  bool complete = false;  // terminating chunk, or Content-Length bytes
  bool eof = false;
  std::string header(const std::string& name) const {
    const std::string key = "\r\n" + name + ": ";
    const size_t at = head.find(key);
    if (at == std::string::npos) return "";
    const size_t from = at + key.size();
    return head.substr(from, head.find("\r\n", from) - from);
  }
  int status() const { return head.size() > 12 ? std::stoi(head.substr(9, 3)) : 0; }
};

// Parses what arrived so far.
Reply parse(const std::string& raw, bool eof) {
  Reply r;
  r.eof = eof;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  r.head = raw.substr(0, end + 2);
  r.chunked = r.header("Transfer-Encoding") == "chunked";
  size_t at = end + 4;
  if (!r.chunked) {
    const std::string cl = r.header("Content-Length");
    const size_t want = cl.empty() ? 0 : std::stoul(cl);
    r.body = raw.substr(at, want);
    r.complete = !cl.empty() && r.body.size() == want;
    return r;
  }
  for (;;) {
    const size_t line = raw.find("\r\n", at);
    if (line == std::string::npos) return r;
    const size_t size = std::stoul(raw.substr(at, line - at), nullptr, 16);
    if (size == 0) {
      r.complete = raw.size() >= line + 4;
      return r;
    }
    if (raw.size() < line + 2 + size + 2) return r;
    r.body.append(raw, line + 2, size);
    at = line + 2 + size + 2;
  }
}

// A client of the proxy on its own socket.
class Client {
public:
  Client(uint16_t port, const std::string& path, const std::string& id, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    send_all(fd_, "GET " + path + " HTTP/1.1\r\nHost: proxy\r\nX-Request-ID: " + id + "\r\n\r\n");
  }
  ~Client() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Reads until `until` holds for what arrived, the response is complete, EOF, or the timeout.
  Reply read(const std::function<bool(const Reply&)>& until = nullptr, std::chrono::milliseconds timeout = 15s) {
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      // Parsed when it may be over (parsing every read would make a big body quadratic).
      if (until || eof_ || SteadyClock::now() > deadline || may_be_complete()) {
        Reply r = parse(raw_, eof_);
        if (r.complete || eof_ || (until && until(r)) || SteadyClock::now() > deadline) return r;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) eof_ = true;
      else raw_.append(buf, static_cast<size_t>(n));
      received_.store(raw_.size(), std::memory_order_relaxed);
    }
  }
  // Bytes read so far (head and chunk framing included); readable from other threads.
  size_t received() const { return received_.load(std::memory_order_relaxed); }
  // Reads until the peer closes (after a complete response: the proxy closed it on purpose).
  bool read_eof(std::chrono::milliseconds timeout = 15s) {
    const auto deadline = SteadyClock::now() + timeout;
    while (!eof_ && SteadyClock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) eof_ = true;
      else raw_.append(buf, static_cast<size_t>(n));
    }
    return eof_;
  }

private:
  bool may_be_complete() const {
    const size_t end = raw_.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    if (raw_.size() >= 5 && raw_.compare(raw_.size() - 5, 5, "0\r\n\r\n") == 0) return true;
    const size_t cl = raw_.find("\r\nContent-Length: ");
    return cl != std::string::npos && cl < end && raw_.size() >= end + 4 + std::stoul(raw_.substr(cl + 18));
  }

  int fd_ = -1;
  std::string raw_;
  std::atomic<size_t> received_{0};
  bool eof_ = false;
};

const std::string kSseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

std::string sse_event(int i, size_t pad = 40) {
  return "data: {\"id\":" + std::to_string(i) + ",\"text\":\"" + std::string(pad + static_cast<size_t>(i % 7), 'a' + static_cast<char>(i % 26)) +
         "\"}\n\n";
}

// Starts reading on a thread: the proxy's clients are read concurrently.
std::future<Reply> read_async(Client& c) {
  return std::async(std::launch::async, [&c] { return c.read(); });
}

bool has_error_event(const std::string& body) {
  return body.find("data: {\"error\":") != std::string::npos;
}

}  // namespace

// Several clients of one streamed response: followers attached mid-stream get the events so far
// at once, then the rest; every body is byte-identical to the upstream's, each with its own id.
TEST(Fanout, StreamedBodyIsIdenticalForEveryClient) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; i < 300; ++i) expected += sse_event(i);
  const std::string early = expected.substr(0, sse_event(0).size() + sse_event(1).size());
  Upstream up([&](int fd) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    // The rest in pieces that do not follow event boundaries.
    for (size_t at = early.size(); at < expected.size(); at += 777) send_all(fd, chunk(expected.substr(at, 777)));
    send_all(fd, "0\r\n\r\n");
  });
  Harness h(up.port(), {});
  Client lead(h.port(), "/v1/lead", "lead-1");
  ASSERT_TRUE(first_sent.wait());
  const Reply so_far = lead.read([&](const Reply& r) { return r.body.size() >= early.size(); });
  ASSERT_EQ(so_far.body, early);
  Client f1(h.port(), "/v1/follow", "follow-1");
  Client f2(h.port(), "/v1/follow", "follow-2");
  Client f3(h.port(), "/v1/follow", "follow-3");
  ASSERT_TRUE(eventually([&] { return h.attached() == 3; }));
  // Attached mid-stream: the bytes so far arrive before the upstream sends another one.
  EXPECT_EQ(f1.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2), d = read_async(f3);
  const Reply replies[] = {a.get(), b.get(), c.get(), d.get()};
  const char* ids[] = {"lead-1", "follow-1", "follow-2", "follow-3"};
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(ids[i]);
    EXPECT_TRUE(replies[i].complete);
    EXPECT_EQ(replies[i].status(), 200);
    EXPECT_TRUE(replies[i].chunked);
    EXPECT_EQ(replies[i].header("Content-Type"), "text/event-stream");
    EXPECT_EQ(replies[i].header("X-Request-ID"), ids[i]);
    EXPECT_EQ(replies[i].body.size(), expected.size());
    EXPECT_TRUE(replies[i].body == expected);
  }
  ASSERT_TRUE(eventually([&] { return h.followers_done() == 3 && h.leaders_done() == 1; }));
  for (const auto& f : h.followed()) {
    EXPECT_FALSE(f.client_gone) << f.request_id;
    EXPECT_EQ(f.error, "") << f.request_id;
    EXPECT_EQ(f.bytes_out, expected.size()) << f.request_id;
    EXPECT_EQ(f.status, 200);
  }
  EXPECT_EQ(up.requests(), 1);  // one upstream request for four clients
}

// A follower that attaches before the upstream answered waits for the head, then gets it all.
TEST(Fanout, FollowerAttachedBeforeTheHeadGetsTheWholeResponse) {
  Gate asked, go;
  std::string expected;
  for (int i = 0; i < 50; ++i) expected += sse_event(i);
  Upstream up([&](int fd) {
    asked.open();
    go.wait();
    send_all(fd, kSseHead + chunk(expected) + "0\r\n\r\n");
  });
  Harness h(up.port(), {});
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client f(h.port(), "/v1/follow", "early");
  ASSERT_TRUE(eventually([&] { return h.attached() == 1; }));
  go.open();
  auto a = read_async(lead), b = read_async(f);
  const Reply ra = a.get(), rb = b.get();
  EXPECT_TRUE(ra.complete);
  EXPECT_TRUE(rb.complete);
  EXPECT_EQ(rb.header("X-Request-ID"), "early");
  EXPECT_TRUE(ra.body == expected);
  EXPECT_TRUE(rb.body == expected);
}

// A Content-Length response: every client gets the same length and the same bytes.
TEST(Fanout, ContentLengthBodyIsIdenticalForEveryClient) {
  Gate first_sent, go;
  std::string expected;
  for (size_t i = 0; expected.size() < 600 * 1024; ++i) expected += "{\"n\":" + std::to_string(i) + "},";
  Upstream up([&](int fd) {
    send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(expected.size()) +
                     "\r\n\r\n" + expected.substr(0, 1000));
    first_sent.open();
    go.wait();
    for (size_t at = 1000; at < expected.size(); at += 5000) send_all(fd, expected.substr(at, 5000));
  });
  Harness h(up.port(), {});
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  ASSERT_EQ(lead.read([](const Reply& r) { return r.body.size() >= 1000; }).body.size(), 1000u);
  Client f1(h.port(), "/v1/follow", "f1");
  Client f2(h.port(), "/v1/follow", "f2");
  ASSERT_TRUE(eventually([&] { return h.attached() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2);
  for (const Reply& r : {a.get(), b.get(), c.get()}) {
    EXPECT_TRUE(r.complete);
    EXPECT_FALSE(r.chunked);
    EXPECT_EQ(r.header("Content-Length"), std::to_string(expected.size()));
    EXPECT_TRUE(r.body == expected);
  }
}

// The first client leaves mid-stream: the upstream is read on and the follower gets everything.
TEST(Fanout, FirstClientLeavesFollowerFinishes) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; i < 400; ++i) expected += sse_event(i);
  const std::string early = sse_event(0);
  Upstream up([&](int fd) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    for (size_t at = early.size(); at < expected.size(); at += 1024) {
      send_all(fd, chunk(expected.substr(at, 1024)));
      std::this_thread::sleep_for(1ms);
    }
    send_all(fd, "0\r\n\r\n");
  });
  Harness h(up.port(), {});
  auto lead = std::make_unique<Client>(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f(h.port(), "/v1/follow", "follower");
  ASSERT_TRUE(eventually([&] { return h.attached() == 1; }));
  ASSERT_EQ(f.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  lead.reset();  // the first client hangs up
  go.open();
  const Reply r = f.read();
  EXPECT_TRUE(r.complete);
  EXPECT_TRUE(r.body == expected);
  EXPECT_FALSE(has_error_event(r.body));
  ASSERT_TRUE(eventually([&] { return h.leaders_done() == 1 && h.followers_done() == 1; }));
  EXPECT_TRUE(h.leader_client_gone());
  EXPECT_FALSE(h.followed()[0].client_gone);
}

// A follower that reads nothing is cut off past the backlog (its error event queued behind what
// it has not read), while the first client and a reading follower get the whole response.
TEST(Fanout, SlowFollowerIsCutOffOthersFinish) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; expected.size() < 6 * 1024 * 1024; ++i) expected += sse_event(i, 1000);
  const std::string early = sse_event(0, 1000);
  // The upstream keeps within 256 KiB of what the fast follower has read: a reader descheduled
  // on a loaded machine never falls past the backlog (only the one that never reads does).
  std::atomic<const Client*> pace{nullptr};
  Upstream up([&](int fd) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    for (size_t at = early.size(); at < expected.size(); at += 16384) {
      const auto deadline = SteadyClock::now() + 20s;
      const Client* fast = pace.load();
      while (fast && fast->received() + 256 * 1024 < at && SteadyClock::now() < deadline)
        std::this_thread::sleep_for(1ms);
      send_all(fd, chunk(expected.substr(at, 16384)));
    }
    send_all(fd, "0\r\n\r\n");
  });
  pl::FanoutLimits limits;
  limits.replay = 64 * 1024;
  limits.backlog = 512 * 1024;
  Harness h(up.port(), limits, 30s);
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client fast(h.port(), "/v1/follow", "fast");
  pace = &fast;
  ASSERT_TRUE(eventually([&] { return h.attached() == 1; }));
  // The slow one's socket buffers are small, so its queue grows past the backlog.
  Client slow(h.port(), "/v1/follow-slow", "slow", 16 * 1024);
  ASSERT_TRUE(eventually([&] { return h.attached() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(fast);
  const Reply ra = a.get(), rb = b.get();
  EXPECT_TRUE(ra.complete);
  EXPECT_TRUE(rb.complete);
  EXPECT_EQ(ra.body.size(), expected.size());
  EXPECT_EQ(rb.body.size(), expected.size());
  EXPECT_TRUE(ra.body == expected);
  EXPECT_TRUE(rb.body == expected);
  // Now the slow one reads: a prefix of the stream, then the error event, then the close.
  const Reply rs = slow.read();
  EXPECT_TRUE(rs.eof);
  EXPECT_FALSE(rs.complete);
  const size_t err = rs.body.find("data: {\"error\":");
  ASSERT_NE(err, std::string::npos);
  ASSERT_GE(err, 2u);
  // What it got is the stream's beginning; the error event starts on an event boundary.
  EXPECT_EQ(rs.body.substr(err - 2, 2), "\n\n");
  EXPECT_TRUE(rs.body.compare(0, err - 2, expected, 0, err - 2) == 0);
  EXPECT_LT(err, expected.size() / 2);
  ASSERT_TRUE(eventually([&] { return h.followers_done() == 2; }));
  for (const auto& f : h.followed()) {
    if (f.request_id == "slow") {
      EXPECT_NE(f.error.find("behind"), std::string::npos) << f.error;
    } else {
      EXPECT_EQ(f.error, "");
    }
  }
}

// The upstream cuts the stream mid-event: every client gets the error event, on an event
// boundary, and no terminating chunk; the connections close.
TEST(Fanout, UpstreamCutGivesEveryClientTheErrorEvent) {
  Gate first_sent, go;
  const std::string sent = sse_event(0) + sse_event(1) + "data: {\"half";
  Upstream up([&](int fd) {
    send_all(fd, kSseHead + chunk(sse_event(0)));
    first_sent.open();
    go.wait();
    send_all(fd, chunk(sent.substr(sse_event(0).size())));
    ::shutdown(fd, SHUT_RDWR);  // no terminating chunk
  });
  Harness h(up.port(), {});
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f1(h.port(), "/v1/follow", "f1");
  Client f2(h.port(), "/v1/follow", "f2");
  ASSERT_TRUE(eventually([&] { return h.attached() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2);
  for (const Reply& r : {a.get(), b.get(), c.get()}) {
    EXPECT_FALSE(r.complete);
    EXPECT_TRUE(r.eof);
    ASSERT_EQ(r.body.rfind(sent, 0), 0u) << r.body;
    // The half event is ended first, so the error arrives as an event of its own.
    EXPECT_EQ(r.body.substr(sent.size(), 2), "\n\n");
    EXPECT_TRUE(has_error_event(r.body.substr(sent.size())));
  }
  ASSERT_TRUE(eventually([&] { return h.followers_done() == 2; }));
  for (const auto& f : h.followed()) EXPECT_NE(f.error, "");
}

// Past the replay bound nobody can attach any more; those attached go on.
TEST(Fanout, AttachIsRefusedOnceTheRecordingOverflows) {
  Gate first_sent, go, more_sent;
  std::string expected;
  for (int i = 0; expected.size() < 100 * 1024; ++i) expected += sse_event(i, 200);
  Upstream up([&](int fd) {
    send_all(fd, kSseHead + chunk(expected.substr(0, 1000)));
    first_sent.open();
    go.wait();
    send_all(fd, chunk(expected.substr(1000)));
    more_sent.open();
    std::this_thread::sleep_for(100ms);
    send_all(fd, "0\r\n\r\n");
  });
  pl::FanoutLimits limits;
  limits.replay = 32 * 1024;
  Harness h(up.port(), limits);
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f1(h.port(), "/v1/follow", "f1");
  ASSERT_TRUE(eventually([&] { return h.attached() == 1; }));
  go.open();
  ASSERT_TRUE(more_sent.wait());
  ASSERT_GE(lead.read([&](const Reply& r) { return r.body.size() >= expected.size(); }).body.size(), expected.size());
  Client late(h.port(), "/v1/follow", "late");
  const Reply rl = late.read();
  EXPECT_EQ(rl.status(), 409);
  const Reply r1 = f1.read();
  EXPECT_TRUE(r1.complete);
  EXPECT_TRUE(r1.body == expected);
  EXPECT_EQ(h.attached(), 1);
}
