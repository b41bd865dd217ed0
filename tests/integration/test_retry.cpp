// The stale-socket retry rule, against a scripted raw TCP upstream: a request is retried once on a
// fresh connection only when a kept-alive socket closes before any response byte; never otherwise.
#include <gtest/gtest.h>

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/StreamSocket.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

#include "harness.hpp"

using namespace glmp::test;

namespace {

// What the scripted upstream does with the n-th request it reads (0-based, across connections).
enum class Act { Respond, CloseSilently, CloseAfterPartialHeaders, ResetAfterPartialHeaders, CloseAfterPartialBody };

class ScriptedUpstream {
public:
  explicit ScriptedUpstream(std::vector<Act> script) : script_(std::move(script)), server_(Poco::Net::SocketAddress("127.0.0.1", 0)) {
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~ScriptedUpstream() {
    stop_ = true;
    thread_.join();  // the accept loop polls with a short timeout and sees stop_
    server_.close();
    for (auto& t : workers_) t.join();
  }
  uint16_t port() const { return server_.address().port(); }
  int requests() const { return requests_.load(); }
  int connections() const { return connections_.load(); }

private:
  void accept_loop() {
    while (!stop_) {
      try {
        if (!server_.poll(Poco::Timespan(0, 50'000), Poco::Net::Socket::SELECT_READ)) continue;
        // One owner per connection, handed to its worker: no Poco socket object is shared.
        auto sock = std::make_shared<Poco::Net::StreamSocket>(server_.acceptConnection());
        ++connections_;
        std::lock_guard lock(mutex_);
        workers_.emplace_back([this, sock] { serve(*sock); });
      } catch (...) {
        return;
      }
    }
  }
  void serve(Poco::Net::StreamSocket& s) {
    s.setReceiveTimeout(Poco::Timespan(5, 0));
    std::string buf;
    char tmp[4096];
    for (;;) {
      // Read one request: headers + Content-Length body.
      size_t end;
      while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
        int n = 0;
        try { n = s.receiveBytes(tmp, sizeof tmp); } catch (...) { return; }
        if (n <= 0) return;
        buf.append(tmp, static_cast<size_t>(n));
      }
      size_t cl = 0;
      auto pos = buf.find("Content-Length: ");
      if (pos != std::string::npos && pos < end) cl = std::stoul(buf.substr(pos + 16));
      while (buf.size() < end + 4 + cl) {
        int n = s.receiveBytes(tmp, sizeof tmp);
        if (n <= 0) return;
        buf.append(tmp, static_cast<size_t>(n));
      }
      buf.erase(0, end + 4 + cl);
      const int index = requests_++;
      const Act act = index < static_cast<int>(script_.size()) ? script_[static_cast<size_t>(index)] : Act::Respond;
      if (act == Act::CloseSilently) { s.close(); return; }
      if (act == Act::CloseAfterPartialBody) {
        const std::string partial = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":";
        s.sendBytes(partial.data(), static_cast<int>(partial.size()));
        s.close();
        return;
      }
      if (act == Act::CloseAfterPartialHeaders || act == Act::ResetAfterPartialHeaders) {
        const std::string partial = "HTTP/1.1 200 OK\r\nContent-Type: appl";
        s.sendBytes(partial.data(), static_cast<int>(partial.size()));
        if (act == Act::ResetAfterPartialHeaders) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the proxy has read the bytes
          s.setLinger(true, 0);  // close → RST
        }
        s.close();
        return;
      }
      const std::string body = R"({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})";
      const std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body;
      s.sendBytes(resp.data(), static_cast<int>(resp.size()));
    }
  }

  std::vector<Act> script_;
  Poco::Net::ServerSocket server_;
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0}, connections_{0};
};

std::unique_ptr<Proxy> proxy_for(const TempDir& dir, uint16_t port) {
  ProxyOptions opts;
  // One event loop: idle upstream connections are kept per loop, and these scripts need the
  // second request to reuse the first one's connection whichever loop accepts its client.
  opts.server_extra = "workers = 1\n";
  opts.openai_base = "http://127.0.0.1:" + std::to_string(port);
  opts.anthropic_base = opts.openai_base;
  return std::make_unique<Proxy>(dir, nullptr, opts);
}

TEST(StaleRetry, KeptAliveSocketClosedBeforeAnyByteIsRetriedOnce) {
  TempDir dir;
  ScriptedUpstream up({Act::Respond, Act::CloseSilently, Act::Respond});
  auto proxy = proxy_for(dir, up.port());
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  // Second request goes out on the kept-alive socket, which the upstream closes without a byte:
  // the proxy retries it on a fresh connection and the client never notices.
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(up.requests(), 3);
  EXPECT_EQ(up.connections(), 2);
}

TEST(StaleRetry, FreshConnectionClosedBeforeAnyByteIsNotRetried) {
  TempDir dir;
  ScriptedUpstream up({Act::CloseSilently, Act::Respond});
  auto proxy = proxy_for(dir, up.port());
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_EQ(up.requests(), 1) << "a request on a fresh connection must never be sent twice";
}

TEST(StaleRetry, PartialHeadersAreNeverRetried) {
  TempDir dir;
  ScriptedUpstream up({Act::Respond, Act::CloseAfterPartialHeaders, Act::Respond});
  auto proxy = proxy_for(dir, up.port());
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(up.requests(), 2) << "the upstream may have started working on it: no retry";
  // The next request works on a new connection.
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

// A reset (not a clean close) after part of the headers: a byte arrived, so no retry either.
TEST(StaleRetry, ResetAfterPartialHeadersIsNeverRetried) {
  TempDir dir;
  ScriptedUpstream up({Act::Respond, Act::ResetAfterPartialHeaders, Act::Respond});
  auto proxy = proxy_for(dir, up.port());
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  const Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_EQ(up.requests(), 2) << "the upstream may have started working on it: no retry";
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

TEST(StaleRetry, PartialBodyIsNeverRetriedAndNeverLooksComplete) {
  TempDir dir;
  ScriptedUpstream up({Act::Respond, Act::CloseAfterPartialBody, Act::Respond});
  auto proxy = proxy_for(dir, up.port());
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  Response r = http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false));
  EXPECT_FALSE(r.error.empty()) << "status " << r.status << " body " << r.body;
  EXPECT_EQ(up.requests(), 2);
  EXPECT_NO_THROW(proxy->wait_log({"closed the response after 6 of 100 bytes"}));
  EXPECT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

}  // namespace
