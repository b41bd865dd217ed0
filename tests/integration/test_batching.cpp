// Request coalescing (plugins/batching, semantics in its README.md) with the real binary over two
// event loops: identical requests in flight share one upstream call (streamed in both flavours
// and not), followers that join mid-stream, the deterministic / all modes, tenants kept apart,
// the leader's client leaving (mid-stream or before the head), a slow follower cut off, failures before the head (4xx to
// everyone, 429/5xx/timeout → the followers go upstream on their own), a failure mid-stream (an
// error event for everyone, nothing cached), max_followers / max_waiting / max_bytes, wait, admission and
// charging of followers (auth + ratelimit), metrics, /admin/batching and the access log.
//
// Concurrency without sleeps: the leader's upstream answer is made to last (x-mock-delay-ms per
// streamed event, x-mock-stall-ms before the head); the test waits until the mock reports it
// active, starts the followers, and waits until /admin/batching counts them as followers in
// progress before it lets anything happen that needs them attached. The x-mock-* headers are not
// part of the key and only the leader's go upstream.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
using Headers = std::map<std::string, std::string>;

const std::string kAdminToken = "batching-adm1n-t0ken";
const Headers kAdmin{{"Authorization", "Bearer " + kAdminToken}};

const std::string kChat = "/v1/chat/completions";
const std::string kMessages = "/v1/messages";
const std::string kT0 = ",\"temperature\":0";

std::string hdr(const Headers& h, const std::string& lower_name) {
  auto it = h.find(lower_name);
  return it == h.end() ? std::string() : it->second;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// Polls `pred` every 10 ms until it holds or `timeout` passes; returns its last value.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

std::string next_id(const std::string& tag) {
  static std::atomic<int> n{0};
  return "bt-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(n.fetch_add(1));
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client on a POSIX socket: its own receive buffer size, reads under the test's
// control (or none at all), chunked decoding, and when each decoded byte arrived.

class RawClient {
public:
  struct Mark {
    Clock::time_point at;
    size_t body_size;  // decoded body bytes after this read
  };

  explicit RawClient(uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error("socket failed");
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error(std::string("connect failed: ") + std::strerror(errno));
  }
  ~RawClient() { close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  void send(const std::string& path, const std::string& request_body, const Headers& request_headers) {
    std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    for (const auto& [k, v] : request_headers) req += k + ": " + v + "\r\n";
    req += "Content-Length: " + std::to_string(request_body.size()) + "\r\n\r\n" + request_body;
    size_t off = 0;
    while (off < req.size()) {
      const ssize_t n = ::send(fd_, req.data() + off, req.size() - off, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      off += static_cast<size_t>(n);
    }
    sent_at = Clock::now();
  }

  // Reads until `pred` holds, the response is complete, the peer closed, or `timeout`.
  bool read_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 15s) {
    const auto deadline = Clock::now() + timeout;
    char buf[16384];
    while (!pred()) {
      if (complete || eof) return pred();
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      const int rc = ::poll(&p, 1, static_cast<int>(left));
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof = true;
        if (n < 0) error = std::strerror(errno);
        if (!chunked_ && content_length_ < 0 && status != 0) complete = true;  // close-delimited
        continue;
      }
      raw_.append(buf, static_cast<size_t>(n));
      parse();
      marks.push_back({Clock::now(), body.size()});
    }
    return true;
  }
  bool read_to_end(std::chrono::milliseconds timeout = 15s) {
    return read_until([this] { return complete || eof; }, timeout);
  }
  bool read_until_seen(const std::string& needle, std::chrono::milliseconds timeout = 15s) {
    return read_until([&] { return contains(body, needle); }, timeout);
  }
  // When the first byte past `needle`'s end in the body arrived (nullopt if never).
  std::optional<Clock::time_point> seen(const std::string& needle) const {
    const size_t pos = body.find(needle);
    if (pos == std::string::npos) return std::nullopt;
    for (const auto& m : marks)
      if (m.body_size >= pos + needle.size()) return m.at;
    return std::nullopt;
  }
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  int status = 0;
  Headers headers;  // lower-cased names
  std::string body;  // decoded
  bool complete = false;  // the whole response arrived (terminal chunk / Content-Length)
  bool eof = false;
  std::string error;
  Clock::time_point sent_at;
  std::vector<Mark> marks;

private:
  void parse() {
    if (status == 0) {
      const size_t end = raw_.find("\r\n\r\n");
      if (end == std::string::npos) return;
      std::istringstream head(raw_.substr(0, end));
      std::string line;
      std::getline(head, line);
      status = std::atoi(line.substr(line.find(' ') + 1).c_str());
      while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        headers[name] = value;
      }
      chunked_ = contains(header("transfer-encoding"), "chunked");
      if (!chunked_ && !header("content-length").empty()) content_length_ = std::stol(header("content-length"));
      raw_.erase(0, end + 4);
      if (content_length_ == 0) complete = true;
    }
    if (complete) return;
    if (!chunked_) {
      body += raw_;
      raw_.clear();
      if (content_length_ >= 0 && static_cast<long>(body.size()) >= content_length_) complete = true;
      return;
    }
    for (;;) {
      if (chunk_left_ == 0) {
        const size_t eol = raw_.find("\r\n");
        if (eol == std::string::npos) return;
        const size_t size = std::stoul(raw_.substr(0, eol), nullptr, 16);
        if (size == 0) {
          if (raw_.size() < eol + 4) return;  // the empty trailer's CRLF
          complete = true;
          return;
        }
        raw_.erase(0, eol + 2);
        chunk_left_ = size + 2;  // with its CRLF
      }
      const size_t take = std::min(chunk_left_, raw_.size());
      if (take == 0) return;
      const size_t data = chunk_left_ > 2 ? std::min(take, chunk_left_ - 2) : 0;
      body.append(raw_, 0, data);
      raw_.erase(0, take);
      chunk_left_ -= take;
    }
  }

  int fd_ = -1;
  std::string raw_;
  bool chunked_ = false;
  long content_length_ = -1;
  size_t chunk_left_ = 0;
};

// ---------------------------------------------------------------------------------------------

struct BatchSetup {
  std::string batching = "";  // lines of the batching plugin's [plugins.settings]
  bool cache = false;
  bool ratelimit = false;
  std::string ratelimit_settings = "window = \"5h\"\n";
  std::string read_timeout = "10s";
};

// The SSE error event of a flavour, as the proxy ends a cut stream with it.
std::string error_event_marker(const std::string& path) {
  return path == kMessages ? "event: error\ndata: " : "data: {\"error\":";
}

class Batching : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;

  void start(const BatchSetup& s = {}) {
    for (const char* name : {"auth", "ratelimit", "cache", "batching"})
      ASSERT_TRUE(fs::exists(plugin_path(name))) << "plugin not built: " << plugin_path(name);
    mock = std::make_unique<Mock>(dir);
    auto upstream = [&](const std::string& name, const std::string& base, const std::string& header,
                        const std::string& value) {
      return "\n[upstreams." + name + "]\nbase_url = \"" + mock->base_url(base) + "\"\nauth_header = \"" + header +
             "\"\nauth_value = \"" + value + "\"\nmin_connections = 0\nmax_connections = 64\nread_timeout = \"" +
             s.read_timeout + "\"\nhealth_interval = \"0s\"\n";
    };
    std::string toml = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nmax_threads = 16\ndrain_timeout = \"5s\"\n"
                       "\n[proxy]\nmodel = \"glm-4.7\"\n"
                       "\n[log]\nlevel = \"information\"\naccess_log = \"" + dir.file("access.log") + "\"\n" +
                       upstream("openai", "/api/coding/paas/v4", "Authorization", "Bearer test-upstream-key") +
                       upstream("anthropic", "/api/anthropic", "x-api-key", "test-upstream-key") +
                       "\n[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"anthropic\"\n"
                       "\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\nstrip_prefix = \"/v1\"\n"
                       "\n[admin]\ntoken = \"" + kAdminToken + "\"\n" +
                       "\n[loader]\ndir = \"" + fs::path(plugin_path("auth")).parent_path().string() + "\"\n" +
                       "\n[[plugins]]\nname = \"auth\"\n";
    if (s.ratelimit) toml += "\n[[plugins]]\nname = \"ratelimit\"\n[plugins.settings]\n" + s.ratelimit_settings + "\n";
    if (s.cache) toml += "\n[[plugins]]\nname = \"cache\"\n";
    toml += "\n[[plugins]]\nname = \"batching\"\n";
    if (!s.batching.empty()) toml += "[plugins.settings]\n" + s.batching + "\n";
    ProxyOptions opts;
    opts.custom_toml = toml;
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  uint16_t port() const { return proxy->port(); }

  // A proxy key (plain text) from POST /admin/keys.
  std::string make_key(const std::string& name, long limit = 100'000'000) {
    const Response r = http(port(), "POST", "/admin/keys",
                            "{\"name\":\"" + name + "\",\"token_limit_per_5h\":" + std::to_string(limit) + "}", kAdmin);
    EXPECT_EQ(r.status, 201) << r.body;
    return r.status == 201 ? jget(r.body, "key") : std::string("<none>");
  }

  long upstream_requests() const { return mock->requests(); }
  long upstream_active() const { return mock->stats()["active"]; }
  // Waits until the mock has `n` requests in progress (the leader's upstream call is running).
  void wait_upstream_active(long n = 1) {
    ASSERT_TRUE(wait_until([&] { return upstream_active() >= n; })) << "the leader's upstream call never started";
  }

  std::string admin_batching() const { return http(port(), "GET", "/admin/batching", "", kAdmin).body; }
  // Waits until /admin/batching counts `n` followers in progress.
  bool wait_followers_active(long n) {
    return wait_until([&] { return jlong(admin_batching(), "followers_active") == n; });
  }

  Headers with_key(const std::string& key, Headers h = {}, const std::string& rid = "") const {
    h["Authorization"] = "Bearer " + key;
    if (!rid.empty()) h["X-Request-ID"] = rid;
    return h;
  }

  std::future<StreamedResponse> stream_async(const std::string& path, const std::string& body, Headers h) const {
    const uint16_t p = port();
    return std::async(std::launch::async, [p, path, body, h] { return http_stream(p, "POST", path, body, h, 30s); });
  }
  std::future<Response> call_async(const std::string& path, const std::string& body, Headers h) const {
    const uint16_t p = port();
    return std::async(std::launch::async, [p, path, body, h] { return http(p, "POST", path, body, h, 30s); });
  }
};

// What BatchingMode::round saw: the upstream requests a leader and its identical followers took,
// how many answers were COALESCED, and the bodies.
struct Round {
  long upstream = 0;
  int coalesced = 0;
  std::vector<std::string> bodies;  // leader first
};

// ---------------------------------------------------------------------------------------------
// 1. N identical requests in flight: one upstream call, byte-identical answers

TEST_F(Batching, OpenAIStreamFollowersShareOneUpstreamCallAndLateJoinersCatchUp) {
  start();
  const std::string key = make_key("k");
  const std::string body = openai_body(true, kT0);

  RawClient leader(port());
  leader.send(kChat, body, with_key(key, {{"x-mock-chunks", "6"}, {"x-mock-delay-ms", "250"}}));
  wait_upstream_active();

  std::vector<std::future<StreamedResponse>> followers;
  for (int i = 0; i < 3; ++i) followers.push_back(stream_async(kChat, body, with_key(key)));
  ASSERT_TRUE(wait_followers_active(3)) << admin_batching();

  // A follower that joins mid-stream, after the leader's client has seen two content events.
  ASSERT_TRUE(leader.read_until_seen("tok1")) << leader.body;
  std::unique_ptr<RawClient> late;
  std::thread late_reader([&] {
    late = std::make_unique<RawClient>(port());
    late->send(kChat, body, with_key(key));
    late->read_to_end();
  });
  ASSERT_TRUE(leader.read_to_end()) << leader.body;
  late_reader.join();

  ASSERT_EQ(leader.status, 200);
  EXPECT_TRUE(leader.complete) << leader.body;
  EXPECT_TRUE(contains(leader.body, "tok5")) << leader.body;
  EXPECT_TRUE(contains(leader.body, "data: [DONE]")) << leader.body;
  EXPECT_FALSE(contains(leader.body, "\"choices\":[]")) << "usage chunk shown to a client that did not ask:\n" << leader.body;
  EXPECT_NE(leader.header("x-cache-status"), "COALESCED");

  for (auto& f : followers) {
    const StreamedResponse s = f.get();
    ASSERT_EQ(s.status, 200) << s.error;
    EXPECT_TRUE(s.error.empty()) << s.error;
    EXPECT_EQ(hdr(s.headers, "x-cache-status"), "COALESCED");
    EXPECT_EQ(hdr(s.headers, "content-type").rfind("text/event-stream", 0), 0u) << hdr(s.headers, "content-type");
    EXPECT_EQ(s.body(), leader.body) << "a follower's body differs from the leader's";
  }

  ASSERT_TRUE(late);
  ASSERT_EQ(late->status, 200) << late->error;
  EXPECT_TRUE(late->complete) << late->body;
  EXPECT_EQ(late->header("x-cache-status"), "COALESCED");
  EXPECT_EQ(late->body, leader.body) << "the late joiner's body differs from the leader's";
  // It joined mid-stream (before the leader's client saw tok3) ...
  const auto leader_tok3 = leader.seen("tok3");
  ASSERT_TRUE(leader_tok3);
  EXPECT_LT(late->sent_at, *leader_tok3) << "test precondition: the late follower did not join mid-stream";
  // ... got the bytes so far at once (tok0 and tok1 long before the stream ended) ...
  const auto late_tok1 = late->seen("tok1");
  const auto leader_tok5 = leader.seen("tok5");
  ASSERT_TRUE(late_tok1 && leader_tok5);
  EXPECT_LT(*late_tok1, *leader_tok5) << "the catch-up bytes came only at the end";
  // ... then the rest live.
  const auto late_tok5 = late->seen("tok5");
  ASSERT_TRUE(late_tok5);
  EXPECT_GT(*late_tok5, *late_tok1);

  EXPECT_EQ(upstream_requests(), 1) << "identical requests in flight made more than one upstream call";
}

TEST_F(Batching, AnthropicStreamFollowersShareOneUpstreamCall) {
  start();
  const std::string key = make_key("k");
  const std::string body = anthropic_body(true, kT0);
  auto leader = stream_async(kMessages, body, with_key(key, {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "250"}}));
  wait_upstream_active();
  std::vector<std::future<StreamedResponse>> followers;
  for (int i = 0; i < 4; ++i) followers.push_back(stream_async(kMessages, body, with_key(key)));
  const StreamedResponse l = leader.get();
  ASSERT_EQ(l.status, 200) << l.error;
  EXPECT_TRUE(contains(l.body(), "tok3")) << l.body();
  EXPECT_TRUE(contains(l.body(), "event: message_stop")) << l.body();
  for (auto& f : followers) {
    const StreamedResponse s = f.get();
    ASSERT_EQ(s.status, 200) << s.error;
    EXPECT_TRUE(s.error.empty()) << s.error;
    EXPECT_EQ(hdr(s.headers, "x-cache-status"), "COALESCED");
    EXPECT_EQ(s.body(), l.body());
  }
  EXPECT_EQ(upstream_requests(), 1);
}

TEST_F(Batching, NonStreamedFollowersShareOneUpstreamCallInBothFlavours) {
  start();
  const std::string key = make_key("k");
  long expected_upstream = 0;
  for (const auto& [path, body] : {std::pair{kChat, openai_body(false, kT0)}, std::pair{kMessages, anthropic_body(false, kT0)}}) {
    SCOPED_TRACE(path);
    // Non-streamed answers ignore x-mock-delay-ms: the leader's upstream waits before its head.
    auto leader = call_async(path, body, with_key(key, {{"x-mock-stall-ms", "700"}}));
    wait_upstream_active();
    std::vector<std::future<Response>> followers;
    for (int i = 0; i < 3; ++i) followers.push_back(call_async(path, body, with_key(key)));
    const Response l = leader.get();
    ASSERT_EQ(l.status, 200) << l.body << l.error;
    EXPECT_TRUE(l.error.empty()) << l.error;
    EXPECT_NE(l.header("x-cache-status"), "COALESCED");
    for (auto& f : followers) {
      const Response r = f.get();
      ASSERT_EQ(r.status, 200) << r.body << r.error;
      EXPECT_TRUE(r.error.empty()) << r.error;
      EXPECT_EQ(r.header("x-cache-status"), "COALESCED");
      EXPECT_EQ(r.body, l.body);
      EXPECT_EQ(r.header("content-length"), l.header("content-length"));
    }
    ++expected_upstream;
    EXPECT_EQ(upstream_requests(), expected_upstream);
    ASSERT_TRUE(wait_until([&] { return upstream_active() == 0; }));
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Mode

class BatchingMode : public Batching {
protected:
  // A streamed leader with `body` and two identical followers while it runs.
  Round round(const std::string& key, const std::string& body) {
    Round out;
    const long before = upstream_requests();
    auto leader = stream_async(kChat, body, with_key(key, {{"x-mock-chunks", "3"}, {"x-mock-delay-ms", "300"}}));
    wait_upstream_active();
    std::vector<std::future<StreamedResponse>> followers;
    for (int i = 0; i < 2; ++i) followers.push_back(stream_async(kChat, body, with_key(key)));
    const StreamedResponse l = leader.get();
    EXPECT_EQ(l.status, 200) << l.error;
    out.bodies.push_back(l.body());
    for (auto& f : followers) {
      const StreamedResponse s = f.get();
      EXPECT_EQ(s.status, 200) << s.error;
      EXPECT_TRUE(contains(s.body(), "data: [DONE]")) << s.body();
      if (s.headers.count("x-cache-status") && s.headers.at("x-cache-status") == "COALESCED") ++out.coalesced;
      out.bodies.push_back(s.body());
    }
    out.upstream = upstream_requests() - before;
    wait_until([&] { return upstream_active() == 0; });
    return out;
  }
};

TEST_F(BatchingMode, DeterministicCoalescesOnlyTemperatureZero) {
  start();  // mode = "deterministic" by default
  const std::string key = make_key("k");
  for (const std::string t : {",\"temperature\":0", ",\"temperature\":0.0"}) {
    SCOPED_TRACE(t);
    const Round r = round(key, openai_body(true, t));
    EXPECT_EQ(r.upstream, 1);
    EXPECT_EQ(r.coalesced, 2);
    EXPECT_EQ(r.bodies[1], r.bodies[0]);
  }
  for (const std::string t : {"", ",\"temperature\":0.7"}) {
    SCOPED_TRACE(t.empty() ? "no temperature" : t);
    const Round r = round(key, openai_body(true, t));
    EXPECT_EQ(r.upstream, 3) << "a sampled request was coalesced in deterministic mode";
    EXPECT_EQ(r.coalesced, 0);
    EXPECT_NE(r.bodies[1], r.bodies[0]);  // each had its own upstream answer (its own id)
  }
}

TEST_F(BatchingMode, AllCoalescesSampledRequestsToo) {
  start({.batching = "mode = \"all\""});
  const std::string key = make_key("k");
  for (const std::string t : {"", ",\"temperature\":0.7", ",\"temperature\":0"}) {
    SCOPED_TRACE(t.empty() ? "no temperature" : t);
    const Round r = round(key, openai_body(true, t));
    EXPECT_EQ(r.upstream, 1);
    EXPECT_EQ(r.coalesced, 2);
    EXPECT_EQ(r.bodies[1], r.bodies[0]);
    EXPECT_EQ(r.bodies[2], r.bodies[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Tenants

TEST_F(Batching, TenantsNeverShareAFlight) {
  start();  // scope = "key"
  const std::string a = make_key("tenant-a");
  const std::string b = make_key("tenant-b");
  const std::string body = openai_body(true, kT0);
  auto leader = stream_async(kChat, body, with_key(a, {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "250"}}));
  wait_upstream_active();
  auto other_tenant = stream_async(kChat, body, with_key(b));
  auto same_tenant = stream_async(kChat, body, with_key(a));
  const StreamedResponse l = leader.get(), o = other_tenant.get(), s = same_tenant.get();
  ASSERT_EQ(l.status, 200) << l.error;
  ASSERT_EQ(o.status, 200) << o.error;
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_NE(hdr(o.headers, "x-cache-status"), "COALESCED") << "another key's request followed tenant A's flight";
  EXPECT_NE(o.body(), l.body());
  EXPECT_EQ(hdr(s.headers, "x-cache-status"), "COALESCED") << "the same key's request did not coalesce (control)";
  EXPECT_EQ(s.body(), l.body());
  EXPECT_EQ(upstream_requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. The leader's client leaves

TEST_F(Batching, LeaderClientDisconnectingMidStreamLetsFollowersFinish) {
  start();
  const std::string key = make_key("k");
  const std::string body = openai_body(true, kT0);
  const std::string leader_rid = next_id("leader");
  {
    RawClient leader(port());
    leader.send(kChat, body, with_key(key, {{"x-mock-chunks", "8"}, {"x-mock-delay-ms", "150"}}, leader_rid));
    wait_upstream_active();
    std::vector<std::string> rids;
    std::vector<std::future<StreamedResponse>> followers;
    for (int i = 0; i < 2; ++i) {
      rids.push_back(next_id("follower"));
      followers.push_back(stream_async(kChat, body, with_key(key, {}, rids.back())));
    }
    ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
    ASSERT_TRUE(leader.read_until_seen("tok0")) << leader.body;
    leader.close();  // gone after the first content event

    std::vector<std::string> bodies;
    for (auto& f : followers) {
      const StreamedResponse s = f.get();
      ASSERT_EQ(s.status, 200) << s.error;
      EXPECT_TRUE(s.error.empty()) << s.error;
      EXPECT_EQ(hdr(s.headers, "x-cache-status"), "COALESCED");
      const std::string b = s.body();
      EXPECT_TRUE(contains(b, "tok7")) << b;
      EXPECT_TRUE(contains(b, "data: [DONE]")) << b;
      EXPECT_FALSE(contains(b, error_event_marker(kChat))) << b;
      EXPECT_FALSE(contains(b, "\"choices\":[]")) << b;
      bodies.push_back(b);
    }
    EXPECT_EQ(bodies[0], bodies[1]);
    EXPECT_EQ(upstream_requests(), 1);

    // The followers' usage is the whole response's: the same as the same request made alone.
    const std::string ref_rid = next_id("reference");
    const StreamedResponse ref = http_stream(port(), "POST", kChat, body, with_key(key, {{"x-mock-chunks", "8"}}, ref_rid));
    ASSERT_EQ(ref.status, 200) << ref.error;
    EXPECT_EQ(upstream_requests(), 2);
    const std::string ref_line = proxy->wait_log({"\"id\":\"" + ref_rid + "\""});
    EXPECT_EQ(jlong(ref_line, "tokens_out"), 8) << ref_line;
    for (const auto& rid : rids) {
      const std::string line = proxy->wait_log({"\"id\":\"" + rid + "\""});
      EXPECT_EQ(jget(line, "origin"), "coalesced") << line;
      EXPECT_EQ(jlong(line, "status"), 200) << line;
      EXPECT_EQ(jlong(line, "tokens_in"), jlong(ref_line, "tokens_in")) << line;
      EXPECT_EQ(jlong(line, "tokens_out"), jlong(ref_line, "tokens_out")) << line;
    }
    const std::string leader_line = proxy->wait_log({"\"id\":\"" + leader_rid + "\""});
    EXPECT_EQ(jget(leader_line, "client_gone"), "true") << leader_line;
  }
}

// ---------------------------------------------------------------------------------------------
// 5. A slow follower

TEST_F(Batching, SlowFollowerIsCutOffWhileTheOthersFinish) {
  start();
  const std::string key = make_key("k");
  const std::string body = openai_body(true, kT0);
  // Far past what the kernel and the proxy buffer for a client that does not read (about 3 MB here)
  // plus the 2 MiB backlog.
  constexpr long kBytes = 12'000'000;
  const std::string slow_rid = next_id("slow"), fast_rid = next_id("fast");
  // The leader's upstream waits before its head, so both followers attach before any byte.
  auto leader = stream_async(kChat, body,
                             with_key(key, {{"x-mock-large-bytes", std::to_string(kBytes)}, {"x-mock-stall-ms", "400"},
                                            // 2 ms between 16 KiB events (8 MB/s at most): a client that reads
                                            // keeps up even on a loaded machine (unpaced, a reader descheduled
                                            // for a few ms falls 2 MiB behind), one that does not read falls
                                            // MiBs behind.
                                            {"x-mock-delay-ms", "2"}},
                                      next_id("leader")));
  wait_upstream_active();
  RawClient slow(port(), 4096);  // a small receive window, and it never reads until the end
  slow.send(kChat, body, with_key(key, {}, slow_rid));
  auto fast = stream_async(kChat, body, with_key(key, {}, fast_rid));
  ASSERT_TRUE(wait_followers_active(2)) << admin_batching();

  const StreamedResponse l = leader.get();
  const StreamedResponse f = fast.get();
  ASSERT_EQ(l.status, 200) << l.error;
  ASSERT_EQ(f.status, 200) << f.error;
  const std::string lb = l.body();
  EXPECT_TRUE(l.error.empty()) << l.error;
  EXPECT_TRUE(f.error.empty()) << f.error;
  EXPECT_GT(lb.size(), static_cast<size_t>(kBytes));
  EXPECT_TRUE(contains(lb.substr(lb.size() - 200), "data: [DONE]"));
  EXPECT_EQ(hdr(f.headers, "x-cache-status"), "COALESCED");
  if (f.body() != lb) ADD_FAILURE() << "the fast follower: " << proxy->wait_log({"\"id\":\"" + fast_rid + "\""});
  {
    const std::string fb = f.body();
    size_t diff = 0;
    while (diff < fb.size() && diff < lb.size() && fb[diff] == lb[diff]) ++diff;
    EXPECT_TRUE(fb == lb) << "the fast follower's body differs from the leader's (" << fb.size() << " vs " << lb.size()
                          << " bytes), first at " << diff << ": follower ..." << fb.substr(diff > 100 ? diff - 100 : 0, 300)
                          << "\n\nleader ..." << lb.substr(diff > 100 ? diff - 100 : 0, 300);
  }
  EXPECT_EQ(upstream_requests(), 1);

  // Only now does the slow follower read: what was buffered for it, then the error event, then the end.
  ASSERT_TRUE(slow.read_to_end(20s)) << "the slow follower's response never ended";
  EXPECT_EQ(slow.status, 200);
  EXPECT_EQ(slow.header("x-cache-status"), "COALESCED");
  EXPECT_FALSE(slow.complete) << "the slow follower got the whole response";
  EXPECT_LT(slow.body.size(), lb.size());
  const size_t err = slow.body.rfind("\n\n" + error_event_marker(kChat));
  ASSERT_NE(err, std::string::npos) << "no error event at the end of the slow follower's stream: ..."
                                    << slow.body.substr(slow.body.size() > 300 ? slow.body.size() - 300 : 0);
  EXPECT_TRUE(lb.compare(0, err + 2, slow.body, 0, err + 2) == 0) << "what the slow follower got is not a prefix of the response";
  EXPECT_FALSE(contains(slow.body, "data: [DONE]"));
  const std::string line = proxy->wait_log({"\"id\":\"" + slow_rid + "\""});
  EXPECT_TRUE(contains(line, "behind")) << line;
}

// ---------------------------------------------------------------------------------------------
// 6. Failures before the first byte

TEST_F(Batching, UpstreamClientErrorBeforeTheHeadGoesToEveryone) {
  start();
  const std::string key = make_key("k");
  long expected_upstream = 0;
  for (const auto& [path, body] : {std::pair{kChat, openai_body(false, kT0)}, std::pair{kMessages, anthropic_body(true, kT0)}}) {
    SCOPED_TRACE(path);
    auto leader = call_async(path, body,
                             with_key(key, {{"x-mock-status", "400"}, {"x-mock-stall-ms", "500"},
                                            {"x-mock-error-message", "the leader's request is bad"}}));
    wait_upstream_active();
    std::vector<std::future<Response>> followers;
    for (int i = 0; i < 2; ++i) followers.push_back(call_async(path, body, with_key(key)));
    ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
    const Response l = leader.get();
    ASSERT_EQ(l.status, 400) << l.body;
    EXPECT_TRUE(contains(l.body, "the leader's request is bad")) << l.body;
    for (auto& fut : followers) {
      const Response r = fut.get();
      EXPECT_EQ(r.status, 400) << r.body;
      EXPECT_EQ(r.body, l.body);
      EXPECT_EQ(r.header("x-cache-status"), "COALESCED");
    }
    ++expected_upstream;
    EXPECT_EQ(upstream_requests(), expected_upstream) << "a follower went upstream after a 4xx";
    ASSERT_TRUE(wait_until([&] { return upstream_active() == 0; }));
  }
}

TEST_F(Batching, LeaderThrottledOrFailingBeforeTheHeadSendsFollowersUpstream) {
  start();
  const std::string key = make_key("k");
  struct Case {
    int status;
    std::string path, body;
    bool stream;
  };
  const std::vector<Case> cases{{429, kChat, openai_body(false, kT0), false},
                                {500, kMessages, anthropic_body(true, kT0), true},
                                {503, kChat, openai_body(true, kT0), true}};
  long expected_upstream = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.status);
    // Only the leader's upstream call fails: the followers' own calls carry no x-mock-status.
    auto leader = call_async(c.path, c.body, with_key(key, {{"x-mock-status", std::to_string(c.status)}, {"x-mock-stall-ms", "500"}}));
    wait_upstream_active();
    std::vector<std::future<Response>> followers;
    for (int i = 0; i < 2; ++i) followers.push_back(call_async(c.path, c.body, with_key(key)));
    ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
    const Response l = leader.get();
    EXPECT_EQ(l.status, c.status) << l.body;
    std::vector<std::string> bodies;
    for (auto& fut : followers) {
      const Response r = fut.get();
      EXPECT_EQ(r.status, 200) << "a follower did not go upstream on its own: " << r.body;
      EXPECT_NE(r.header("x-cache-status"), "COALESCED");
      if (c.stream) {
        EXPECT_TRUE(contains(r.body, c.path == kMessages ? "message_stop" : "data: [DONE]")) << r.body;
      } else {
        EXPECT_EQ(jget(r.body, "choices.0.message.content"), "tok0 tok1 tok2 ") << r.body;
      }
      bodies.push_back(r.body);
    }
    EXPECT_NE(bodies[0], bodies[1]) << "the fallbacks shared one answer";
    expected_upstream += 3;
    EXPECT_EQ(upstream_requests(), expected_upstream);
  }
  EXPECT_EQ(jlong(admin_batching(), "fallbacks.leader_failed"), 6) << admin_batching();
  EXPECT_EQ(metric(settled_metrics(port()).body, "glmp_batching_fallbacks_total", {"reason=\"leader_failed\""}), 6);
}

TEST_F(Batching, LeaderUpstreamTimeoutSendsFollowersUpstream) {
  start({.read_timeout = "1s"});
  const std::string key = make_key("k");
  const std::string body = openai_body(false, kT0);
  auto leader = call_async(kChat, body, with_key(key, {{"x-mock-stall-ms", "4000"}}));
  wait_upstream_active();
  std::vector<std::future<Response>> followers;
  for (int i = 0; i < 2; ++i) followers.push_back(call_async(kChat, body, with_key(key)));
  ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
  const Response l = leader.get();
  EXPECT_EQ(l.status, 504) << l.body;
  for (auto& fut : followers) {
    const Response r = fut.get();
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.header("x-cache-status"), "COALESCED");
    EXPECT_EQ(jget(r.body, "choices.0.message.content"), "tok0 tok1 tok2 ") << r.body;
  }
  EXPECT_EQ(upstream_requests(), 3);
  EXPECT_EQ(jlong(admin_batching(), "fallbacks.leader_failed"), 2) << admin_batching();
}

// ---------------------------------------------------------------------------------------------
// 7. A failure mid-stream

TEST_F(Batching, MidStreamFailureReachesEveryoneAndNothingIsCached) {
  start({.cache = true});
  const std::string key = make_key("k");
  long expected_upstream = 0;
  for (const auto& [path, body] : {std::pair{kChat, openai_body(true, kT0)}, std::pair{kMessages, anthropic_body(true, kT0)}}) {
    SCOPED_TRACE(path);
    auto leader = stream_async(path, body,
                               with_key(key, {{"x-mock-chunks", "10"}, {"x-mock-reset-after", "2"},
                                              {"x-mock-delay-ms", "50"}, {"x-mock-stall-ms", "400"}}));
    wait_upstream_active();
    std::vector<std::future<StreamedResponse>> followers;
    for (int i = 0; i < 2; ++i) followers.push_back(stream_async(path, body, with_key(key)));
    ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
    std::vector<StreamedResponse> all{leader.get()};
    for (auto& f : followers) all.push_back(f.get());
    EXPECT_EQ(hdr(all[0].headers, "x-cache-status"), "MISS");
    std::string before_error;
    for (size_t i = 0; i < all.size(); ++i) {
      SCOPED_TRACE(i == 0 ? "leader" : "follower");
      const StreamedResponse& s = all[i];
      ASSERT_EQ(s.status, 200) << s.error;
      if (i > 0) {
        EXPECT_EQ(hdr(s.headers, "x-cache-status"), "COALESCED");
      }
      const std::string b = s.body();
      EXPECT_TRUE(contains(b, "tok1")) << b;
      EXPECT_FALSE(contains(b, "tok5")) << b;
      EXPECT_FALSE(contains(b, path == kMessages ? "message_stop" : "data: [DONE]")) << b;
      const size_t err = b.rfind(error_event_marker(path));
      ASSERT_NE(err, std::string::npos) << "no error event:\n" << b;
      if (i == 0) {
        before_error = b.substr(0, err);
      } else {
        EXPECT_EQ(b.substr(0, err), before_error);
      }
    }
    expected_upstream += 1;
    EXPECT_EQ(upstream_requests(), expected_upstream);

    // Nothing was cached: the same request again is a miss that reaches the upstream.
    const StreamedResponse again = http_stream(port(), "POST", path, body, with_key(key));
    ASSERT_EQ(again.status, 200) << again.error;
    EXPECT_EQ(hdr(again.headers, "x-cache-status"), "MISS");
    EXPECT_TRUE(contains(again.body(), path == kMessages ? "message_stop" : "data: [DONE]")) << again.body();
    expected_upstream += 1;
    EXPECT_EQ(upstream_requests(), expected_upstream);
  }
}

// ---------------------------------------------------------------------------------------------
// 8. max_followers, max_waiting

class BatchingLimits : public Batching {
protected:
  // A leader and `n` identical followers: the answers of the followers.
  std::vector<StreamedResponse> leader_and_followers(const std::string& key, int n) {
    const std::string body = openai_body(true, kT0);
    auto leader = stream_async(kChat, body, with_key(key, {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "250"}}));
    wait_upstream_active();
    std::vector<std::future<StreamedResponse>> followers;
    for (int i = 0; i < n; ++i) followers.push_back(stream_async(kChat, body, with_key(key)));
    const StreamedResponse l = leader.get();
    EXPECT_EQ(l.status, 200) << l.error;
    std::vector<StreamedResponse> out;
    for (auto& f : followers) {
      out.push_back(f.get());
      EXPECT_EQ(out.back().status, 200) << out.back().error;
      EXPECT_TRUE(contains(out.back().body(), "data: [DONE]")) << out.back().body();
      if (hdr(out.back().headers, "x-cache-status") == "COALESCED") {
        EXPECT_EQ(out.back().body(), l.body());
      } else {
        EXPECT_NE(out.back().body(), l.body());
      }
    }
    return out;
  }
  static int coalesced(const std::vector<StreamedResponse>& v) {
    int n = 0;
    for (const auto& s : v) n += s.headers.count("x-cache-status") && s.headers.at("x-cache-status") == "COALESCED";
    return n;
  }
};

TEST_F(BatchingLimits, MaxFollowersLetsTheRestGoUpstreamOnTheirOwn) {
  start({.batching = "max_followers = 2"});
  const std::string key = make_key("k");
  const auto followers = leader_and_followers(key, 4);
  EXPECT_EQ(coalesced(followers), 2);
  EXPECT_EQ(upstream_requests(), 3);
  EXPECT_EQ(jlong(admin_batching(), "fallbacks.max_followers"), 2) << admin_batching();
  EXPECT_EQ(metric(settled_metrics(port()).body, "glmp_batching_fallbacks_total", {"reason=\"max_followers\""}), 2);
}

TEST_F(BatchingLimits, MaxWaitingLetsTheRestGoUpstreamOnTheirOwn) {
  start({.batching = "max_waiting = 2"});
  const std::string key = make_key("k");
  const auto followers = leader_and_followers(key, 4);
  EXPECT_EQ(coalesced(followers), 2);
  EXPECT_EQ(upstream_requests(), 3);
  EXPECT_EQ(jlong(admin_batching(), "fallbacks.max_waiting"), 2) << admin_batching();
  EXPECT_EQ(metric(settled_metrics(port()).body, "glmp_batching_fallbacks_total", {"reason=\"max_waiting\""}), 2);
}

// ---------------------------------------------------------------------------------------------
// 9. wait

TEST_F(Batching, WaitLetsIdenticalRequestsJoinBeforeTheUpstreamCall) {
  start({.batching = "wait = \"600ms\""});
  const std::string key = make_key("k");
  const std::string body = openai_body(false, kT0);  // no x-mock-* header: the upstream answers at once
  const auto t0 = Clock::now();
  auto leader = call_async(kChat, body, with_key(key));
  ASSERT_TRUE(wait_until([&] { return jlong(admin_batching(), "flights_active") == 1; }, 5s)) << admin_batching();
  EXPECT_EQ(upstream_requests(), 0) << "the leader did not wait before going upstream";
  std::vector<std::future<Response>> followers;
  for (int i = 0; i < 2; ++i) followers.push_back(call_async(kChat, body, with_key(key)));
  const Response l = leader.get();
  const auto leader_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_EQ(l.status, 200) << l.body;
  EXPECT_GE(leader_ms, 550);
  for (auto& f : followers) {
    const Response r = f.get();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-cache-status"), "COALESCED");
    EXPECT_EQ(r.body, l.body);
  }
  EXPECT_EQ(upstream_requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. Accounting (auth + ratelimit + batching; scope "global" so that followers can have keys of
// their own)

class BatchingAccounting : public Batching {
protected:
  long used(const std::string& key) const {
    return jlong(http(port(), "GET", "/stats", "", {{"Authorization", "Bearer " + key}}).body,
                 "current_usage.tokens_used_in_current_window");
  }
  long used_until(const std::string& key, long want) const {
    long u = -1;
    wait_until([&] { return (u = used(key)) == want; }, 5s);
    return u;
  }

  // A leader (key `leader_key`) streams; while it runs, refused callers and then `follower_key`
  // send the same body. Returns the usage the leader's access-log line reports.
  long run(const std::string& leader_key, const std::string& follower_key, const std::string& over_quota_key) {
    const std::string body = openai_body(true, kT0);
    const std::string leader_rid = next_id("leader"), follower_rid = next_id("follower");
    auto leader = stream_async(kChat, body,
                               with_key(leader_key, {{"x-mock-chunks", "5"}, {"x-mock-delay-ms", "250"}}, leader_rid));
    wait_upstream_active();
    EXPECT_EQ(jlong(admin_batching(), "flights_active"), 1);
    // An unknown key and a key over its quota are refused, flight or not.
    const StreamedResponse unknown = http_stream(port(), "POST", kChat, body, with_key("pk_not_a_real_key_123456"));
    EXPECT_EQ(unknown.status, 401) << unknown.body();
    EXPECT_NE(hdr(unknown.headers, "x-cache-status"), "COALESCED");
    if (!over_quota_key.empty()) {
      const StreamedResponse over = http_stream(port(), "POST", kChat, body, with_key(over_quota_key));
      EXPECT_EQ(over.status, 429) << over.body();
      EXPECT_NE(hdr(over.headers, "x-cache-status"), "COALESCED");
    }
    EXPECT_EQ(jlong(admin_batching(), "followers"), 0) << "a refused request joined the flight: " << admin_batching();
    auto follower = stream_async(kChat, body, with_key(follower_key, {}, follower_rid));
    const StreamedResponse l = leader.get(), f = follower.get();
    EXPECT_EQ(l.status, 200) << l.error;
    EXPECT_EQ(f.status, 200) << f.error;
    EXPECT_EQ(hdr(f.headers, "x-cache-status"), "COALESCED");
    EXPECT_EQ(f.body(), l.body());
    const std::string leader_line = proxy->wait_log({"\"id\":\"" + leader_rid + "\""});
    const std::string follower_line = proxy->wait_log({"\"id\":\"" + follower_rid + "\""});
    EXPECT_EQ(jget(follower_line, "origin"), "coalesced") << follower_line;
    // The follower reports the leader's usage.
    EXPECT_EQ(jlong(follower_line, "tokens_in"), jlong(leader_line, "tokens_in")) << follower_line;
    EXPECT_EQ(jlong(follower_line, "tokens_out"), 5) << follower_line;
    return jlong(leader_line, "tokens_in") + jlong(leader_line, "tokens_out");
  }
};

TEST_F(BatchingAccounting, FollowersAreAdmittedAndNotChargedByDefault) {
  start({.batching = "scope = \"global\"", .ratelimit = true});
  const std::string leader_key = make_key("leader");
  const std::string follower_key = make_key("follower");
  const std::string over_key = make_key("over", 10);
  // Use up the small key's quota (a sampled request: not coalesced).
  ASSERT_EQ(http(port(), "POST", kChat, openai_body(false), with_key(over_key)).status, 200);
  ASSERT_TRUE(wait_until([&] { return used(over_key) >= 10; }, 5s)) << used(over_key);
  const long before = upstream_requests();

  const long usage = run(leader_key, follower_key, over_key);
  ASSERT_GT(usage, 0);
  EXPECT_EQ(upstream_requests() - before, 1);
  EXPECT_EQ(used_until(leader_key, usage), usage) << "the leader's key is charged the one upstream call";
  std::this_thread::sleep_for(200ms);  // on_complete has run (the log line is written after it): nothing comes later
  EXPECT_EQ(used(follower_key), 0) << "a follower was charged with charge_followers = false";
  EXPECT_EQ(used(leader_key), usage);
}

TEST_F(BatchingAccounting, ChargeFollowersChargesEachFollowersKey) {
  start({.batching = "scope = \"global\"\ncharge_followers = true", .ratelimit = true});
  const std::string leader_key = make_key("leader");
  const std::string follower_key = make_key("follower");
  const long usage = run(leader_key, follower_key, "");
  ASSERT_GT(usage, 0);
  EXPECT_EQ(upstream_requests(), 1);
  EXPECT_EQ(used_until(leader_key, usage), usage);
  EXPECT_EQ(used_until(follower_key, usage), usage) << "the follower's key is charged the usage as if it had made the call";
}

// ---------------------------------------------------------------------------------------------
// 11. Metrics, /admin/batching, the access log

TEST_F(Batching, MetricsAdminEndpointAndAccessLogShowFlightsAndFollowers) {
  start({.batching = "max_followers = 2"});
  const std::string key = make_key("k");

  // GET /admin/batching needs the admin token.
  const Response none = http(port(), "GET", "/admin/batching");
  EXPECT_TRUE(none.status == 401 || none.status == 403) << none.status << " " << none.body;
  const Response wrong = http(port(), "GET", "/admin/batching", "", {{"Authorization", "Bearer nope"}});
  EXPECT_TRUE(wrong.status == 401 || wrong.status == 403) << wrong.status << " " << wrong.body;
  const Response proxy_key = http(port(), "GET", "/admin/batching", "", with_key(key));
  EXPECT_TRUE(proxy_key.status == 401 || proxy_key.status == 403) << proxy_key.status << " " << proxy_key.body;

  // Flight 1: a leader, two followers, and a third over max_followers.
  const std::string body = openai_body(true, kT0);
  const std::string leader_rid = next_id("leader");
  auto leader = stream_async(kChat, body, with_key(key, {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "200"}}, leader_rid));
  wait_upstream_active();
  std::vector<std::string> rids;
  std::vector<std::future<StreamedResponse>> followers;
  for (int i = 0; i < 3; ++i) {
    rids.push_back(next_id("follower"));
    followers.push_back(stream_async(kChat, body, with_key(key, {}, rids.back())));
  }
  ASSERT_TRUE(wait_until([&] {
    const std::string a = admin_batching();
    return jlong(a, "followers_active") == 2 && jlong(a, "fallbacks.max_followers") == 1;
  })) << admin_batching();
  const std::string during = admin_batching();
  EXPECT_EQ(jlong(during, "flights_active"), 1) << during;
  EXPECT_EQ(metric(http(port(), "GET", "/metrics").body, "glmp_batching_flights_active"), 1);
  EXPECT_EQ(metric(http(port(), "GET", "/metrics").body, "glmp_batching_followers_active"), 2);
  ASSERT_EQ(leader.get().status, 200);
  std::vector<std::string> coalesced_rids, alone_rids;
  for (size_t i = 0; i < followers.size(); ++i) {
    const StreamedResponse s = followers[i].get();
    ASSERT_EQ(s.status, 200) << s.error;
    (hdr(s.headers, "x-cache-status") == "COALESCED" ? coalesced_rids : alone_rids).push_back(rids[i]);
  }
  ASSERT_EQ(coalesced_rids.size(), 2u);
  ASSERT_EQ(alone_rids.size(), 1u);

  // Flight 2: its leader fails before the head; its follower goes upstream on its own.
  const std::string body2 = openai_body(false, kT0);
  auto failing = call_async(kChat, body2, with_key(key, {{"x-mock-status", "503"}, {"x-mock-stall-ms", "400"}}));
  ASSERT_TRUE(wait_until([&] { return upstream_active() >= 1 && upstream_requests() == 3; })) << upstream_requests();
  const std::string fallback_rid = next_id("fallback");
  auto fallback = call_async(kChat, body2, with_key(key, {}, fallback_rid));
  ASSERT_TRUE(wait_followers_active(1)) << admin_batching();
  EXPECT_EQ(failing.get().status, 503);
  EXPECT_EQ(fallback.get().status, 200);
  EXPECT_EQ(upstream_requests(), 4);  // flight 1: 2, flight 2: the failing leader + the fallback

  const std::string m = settled_metrics(port()).body;
  EXPECT_EQ(metric(m, "glmp_batching_flights_total"), 2) << m;
  EXPECT_EQ(metric(m, "glmp_batching_followers_total"), 3) << m;  // every request that followed
  EXPECT_EQ(metric(m, "glmp_batching_fallbacks_total", {"reason=\"max_followers\""}), 1);
  EXPECT_EQ(metric(m, "glmp_batching_fallbacks_total", {"reason=\"leader_failed\""}), 1);
  EXPECT_EQ(metric(m, "glmp_batching_fallbacks_total", {"reason=\"max_waiting\""}), 0);
  EXPECT_EQ(metric(m, "glmp_recorded_responses_total", {"origin=\"coalesced\""}), 2) << "only answers served from a recording";
  EXPECT_EQ(metric(m, "glmp_batching_flights_active"), 0);
  EXPECT_EQ(metric(m, "glmp_batching_followers_active"), 0);
  EXPECT_GT(metric(m, "glmp_batching_bytes_shared_total"), 0);

  const Response admin = http(port(), "GET", "/admin/batching", "", kAdmin);
  ASSERT_EQ(admin.status, 200) << admin.body;
  EXPECT_EQ(jget(admin.body, "mode"), "deterministic");
  EXPECT_EQ(jlong(admin.body, "wait_ms"), 0);
  EXPECT_EQ(jlong(admin.body, "max_followers"), 2);
  EXPECT_EQ(jlong(admin.body, "max_waiting"), 1000);
  EXPECT_EQ(jlong(admin.body, "flights"), 2) << admin.body;
  EXPECT_EQ(jlong(admin.body, "followers"), 3) << admin.body;
  EXPECT_EQ(jlong(admin.body, "flights_active"), 0) << admin.body;
  EXPECT_EQ(jlong(admin.body, "followers_active"), 0) << admin.body;
  EXPECT_EQ(jlong(admin.body, "fallbacks.max_followers"), 1) << admin.body;
  EXPECT_EQ(jlong(admin.body, "fallbacks.max_waiting"), 0) << admin.body;
  EXPECT_EQ(jlong(admin.body, "fallbacks.leader_failed"), 1) << admin.body;

  for (const auto& rid : coalesced_rids) {
    const std::string line = proxy->wait_log({"\"id\":\"" + rid + "\""});
    EXPECT_TRUE(contains(line, "\"origin\":\"coalesced\"")) << line;
  }
  for (const auto& rid : {leader_rid, alone_rids[0], fallback_rid}) {
    const std::string line = proxy->wait_log({"\"id\":\"" + rid + "\""});
    EXPECT_FALSE(contains(line, "\"origin\":")) << line;
    EXPECT_EQ(jlong(line, "status"), 200) << line;
  }
}

TEST_F(Batching, LeaderClientLeavingBeforeTheHeadStillServesTheFollowers) {
  start();
  const std::string key = make_key("k");
  const std::string body = openai_body(true, kT0);
  RawClient leader(port());
  leader.send(kChat, body, with_key(key, {{"x-mock-stall-ms", "600"}, {"x-mock-chunks", "4"}}));
  wait_upstream_active();
  std::vector<std::future<StreamedResponse>> followers;
  for (int i = 0; i < 2; ++i) followers.push_back(stream_async(kChat, body, with_key(key)));
  ASSERT_TRUE(wait_followers_active(2)) << admin_batching();
  leader.close();  // before any byte of the answer
  std::vector<std::string> bodies;
  for (auto& f : followers) {
    const StreamedResponse s = f.get();
    ASSERT_EQ(s.status, 200) << s.error;
    EXPECT_TRUE(contains(s.body(), "tok3")) << s.body();
    EXPECT_TRUE(contains(s.body(), "data: [DONE]")) << s.body();
    bodies.push_back(s.body());
  }
  EXPECT_EQ(bodies[0], bodies[1]);
  // The leader's upstream call went on for them: one call.
  EXPECT_EQ(upstream_requests(), 1) << admin_batching();
}

// ---------------------------------------------------------------------------------------------
// max_bytes: a flight that outgrew it takes no new follower; the ones it has go on to the end.

TEST_F(Batching, FlightPastMaxBytesTakesNoNewFollowers) {
  start({.batching = "max_bytes = \"32KiB\""});
  const std::string key = make_key("k");
  const std::string body = openai_body(true, kT0);
  RawClient leader(port());
  // 12 events of 16 KiB, 80 ms apart; the head waits so that the first follower attaches early.
  leader.send(kChat, body,
              with_key(key, {{"x-mock-large-bytes", std::to_string(12 * 16384)}, {"x-mock-delay-ms", "80"},
                             {"x-mock-stall-ms", "300"}}));
  wait_upstream_active();
  auto early = stream_async(kChat, body, with_key(key));
  ASSERT_TRUE(wait_followers_active(1)) << admin_batching();
  // The leader's client has seen more than max_bytes of body: the recording kept no more.
  ASSERT_TRUE(leader.read_until([&] { return leader.body.size() > 64 * 1024; })) << leader.body.size();
  const StreamedResponse late = http_stream(port(), "POST", kChat, body, with_key(key));
  ASSERT_TRUE(leader.read_to_end());
  const StreamedResponse e = early.get();
  ASSERT_EQ(leader.status, 200);
  EXPECT_TRUE(leader.complete);
  ASSERT_EQ(e.status, 200) << e.error;
  EXPECT_EQ(hdr(e.headers, "x-cache-status"), "COALESCED");
  EXPECT_TRUE(e.body() == leader.body) << "the follower attached before max_bytes did not get the whole response ("
                                      << e.body().size() << " vs " << leader.body.size() << " bytes)";
  ASSERT_EQ(late.status, 200) << late.error;
  EXPECT_NE(hdr(late.headers, "x-cache-status"), "COALESCED") << "a flight past max_bytes took a new follower";
  EXPECT_TRUE(contains(late.body(), "data: [DONE]"));
  EXPECT_EQ(upstream_requests(), 2);
  const std::string a = admin_batching();
  EXPECT_EQ(jlong(a, "flights"), 2) << a;  // the late request led a flight of its own
  EXPECT_EQ(jlong(a, "followers"), 1) << a;
}

}  // namespace
