// glmp-load upstream: an event-driven stand-in for tests/mock-upstream, for benchmarks only.
//
// Written when the mock held a thread per connection and slept on it between stream events (5000
// concurrent streams = 5000 threads on the cores the proxy is measured on). This one runs
// --threads epoll loops (SO_REUSEPORT listeners), parses requests with llhttp and sends stream
// events from timers. It answers the subset of the mock the benchmarks use, byte for byte in the
// same shapes (tests/mock-upstream/README.md):
//
//   POST .../chat/completions   Authorization: Bearer KEY; OpenAI completion, SSE when
//                               "stream":true; "stream_options":{"include_usage":true} adds the
//                               usage chunk; x-mock-chunks, x-mock-delay-ms, x-mock-large-bytes
//   GET  /__mock/stats          {"connections","requests","completions","active","current_connections"}
//   GET  /health                {"status":"ok"}
//
// Anything else is a 404 (the Anthropic routes, echo, faults and stalls are not here: use
// tests/mock-upstream for those). A streamed response is generated as the socket takes it, in
// constant memory (large bodies included), so it never buffers more than ~256 KiB per connection.

#include <arpa/inet.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common.hpp"
#include "loop.hpp"

namespace glmp::load {
namespace {

constexpr std::size_t kMaxBody = 1 << 20;
constexpr std::size_t kOutHighWater = 256 * 1024;  // generate more stream bytes only below this
constexpr std::uint64_t kLargePiece = 16384;
constexpr std::uint64_t kMaxNonStreamLarge = 64ULL << 20;

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true); }

struct Stats {
  std::atomic<std::uint64_t> connections{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> completions{0};  // POST .../chat/completions received (scripts/bench counts upstream calls)
  std::atomic<std::int64_t> active{0};
  std::atomic<std::int64_t> current{0};
};

struct UpstreamOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  int threads = 1;
  std::string api_key = "test-upstream-key";
};

const std::string& filler() {
  static const std::string f = [] {
    std::string s;
    while (s.size() < kLargePiece) s += "abcdefghijklmnop";
    s.resize(kLargePiece);
    return s;
  }();
  return f;
}

std::string_view skip_ws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' || s.front() == '\r'))
    s.remove_prefix(1);
  return s;
}

// The value after "key": in a JSON object text (top level or not: a benchmark body is flat).
std::string_view json_value_after(std::string_view body, std::string_view quoted_key) {
  std::size_t from = 0;
  for (;;) {
    const auto pos = body.find(quoted_key, from);
    if (pos == std::string_view::npos) return {};
    std::string_view rest = skip_ws(body.substr(pos + quoted_key.size()));
    if (!rest.empty() && rest.front() == ':') return skip_ws(rest.substr(1));
    from = pos + 1;
  }
}

bool json_true_after(std::string_view body, std::string_view quoted_key) {
  return json_value_after(body, quoted_key).rfind("true", 0) == 0;
}

void append_chunk(std::string& out, std::string_view data) {
  char len[24];
  const int n = std::snprintf(len, sizeof len, "%zx\r\n", data.size());
  out.append(len, static_cast<std::size_t>(n));
  out.append(data);
  out.append("\r\n", 2);
}

class UpstreamLoop;

class UConn final : public Loop::Handler {
 public:
  UConn(UpstreamLoop& owner, int fd, std::uint64_t id);
  ~UConn() override;
  void on_io(std::uint32_t events) override;
  void on_timer(std::uint64_t gen);
  std::uint64_t id() const { return id_; }

  // llhttp callbacks
  int on_url(const char* at, std::size_t n) {
    url_.append(at, n);
    return 0;
  }
  int on_header_field(const char* at, std::size_t n) {
    field_.append(at, n);
    return 0;
  }
  int on_header_value(const char* at, std::size_t n) {
    value_.append(at, n);
    return 0;
  }
  int on_header_value_complete();
  int on_body(const char* at, std::size_t n) {
    if (body_.size() + n > kMaxBody) {
      too_large_ = true;
      return 0;
    }
    body_.append(at, n);
    return 0;
  }
  int on_message_complete();

 private:
  void close_conn();
  void feed(const char* data, std::size_t n);
  void start_response();
  void respond(int status, std::string_view reason, std::string_view type, std::string_view body);
  void error(int status, std::string_view reason, std::string_view message, std::string_view code);
  void generate();           // appends stream events while the out buffer is small and none is delayed
  bool emit_next_event();    // one event; false when it must wait for a timer
  void flush();
  void finish_response();
  void want_write(bool on);
  void reset_request();

  UpstreamLoop& owner_;
  int fd_;
  std::uint64_t id_;
  llhttp_t parser_{};
  std::string url_, field_, value_, body_;
  std::string authorization_;
  std::uint64_t chunks_ = 3, delay_ms_ = 0, large_bytes_ = 0;
  bool large_ = false, bad_control_ = false, too_large_ = false;
  std::string bad_control_name_;

  // Response in progress
  bool responding_ = false;
  bool keep_alive_ = true;
  bool chunked_ = true;
  bool streaming_ = false;
  bool waiting_timer_ = false;
  bool writing_ = false;
  std::uint64_t gen_ = 0;
  std::string out_;
  std::size_t out_off_ = 0;
  std::string head_, tail_, usage_;
  bool separate_usage_ = false;
  std::uint64_t pieces_ = 0, next_piece_ = 0;
  int stage_ = 0;  // 0 content, 1 finish, 2 usage, 3 done, 4 end
  std::string pending_in_;
};

class UpstreamLoop {
 public:
  UpstreamLoop(const UpstreamOptions& o, Stats& st, int listen_fd) : opt(o), stats(st), listen_fd_(listen_fd) {}

  void run() {
    Acceptor acceptor(*this);
    loop.add(listen_fd_, EPOLLIN, &acceptor);
    loop.run([this] {
      if (g_stop.load(std::memory_order_relaxed)) loop.stop();
    }, 100);
    loop.remove(listen_fd_);
    conns.clear();
  }

  void accept_all() {
    for (;;) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a transient error: the next readiness retries
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      stats.connections.fetch_add(1, std::memory_order_relaxed);
      stats.current.fetch_add(1, std::memory_order_relaxed);
      const std::uint64_t id = next_id_++;
      auto c = std::make_unique<UConn>(*this, fd, id);
      UConn* raw = c.get();
      conns.emplace(id, std::move(c));
      loop.add(fd, EPOLLIN | EPOLLRDHUP, raw);
    }
  }

  void retire(std::uint64_t id) {
    auto it = conns.find(id);
    if (it == conns.end()) return;
    loop.retire(std::move(it->second));
    conns.erase(it);
  }

  UConn* find(std::uint64_t id) {
    auto it = conns.find(id);
    return it == conns.end() ? nullptr : it->second.get();
  }

  const UpstreamOptions& opt;
  Stats& stats;
  Loop loop;
  std::unordered_map<std::uint64_t, std::unique_ptr<UConn>> conns;
  std::uint64_t next_mock_id = 1;

 private:
  struct Acceptor final : Loop::Handler {
    explicit Acceptor(UpstreamLoop& l) : owner(l) {}
    void on_io(std::uint32_t) override { owner.accept_all(); }
    UpstreamLoop& owner;
  };
  int listen_fd_;
  std::uint64_t next_id_ = 1;
};

llhttp_settings_t make_settings() {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_url = [](llhttp_t* p, const char* at, std::size_t n) { return static_cast<UConn*>(p->data)->on_url(at, n); };
  s.on_header_field = [](llhttp_t* p, const char* at, std::size_t n) {
    return static_cast<UConn*>(p->data)->on_header_field(at, n);
  };
  s.on_header_value = [](llhttp_t* p, const char* at, std::size_t n) {
    return static_cast<UConn*>(p->data)->on_header_value(at, n);
  };
  s.on_header_value_complete = [](llhttp_t* p) { return static_cast<UConn*>(p->data)->on_header_value_complete(); };
  s.on_body = [](llhttp_t* p, const char* at, std::size_t n) { return static_cast<UConn*>(p->data)->on_body(at, n); };
  s.on_message_complete = [](llhttp_t* p) { return static_cast<UConn*>(p->data)->on_message_complete(); };
  return s;
}

const llhttp_settings_t& settings() {
  static const llhttp_settings_t s = make_settings();
  return s;
}

UConn::UConn(UpstreamLoop& owner, int fd, std::uint64_t id) : owner_(owner), fd_(fd), id_(id) {
  llhttp_init(&parser_, HTTP_REQUEST, &settings());
  parser_.data = this;
}

UConn::~UConn() {
  if (fd_ >= 0) {
    ::close(fd_);
    owner_.stats.current.fetch_sub(1, std::memory_order_relaxed);
  }
}

void UConn::close_conn() {
  if (fd_ < 0) return;
  owner_.loop.remove(fd_);
  ::close(fd_);
  fd_ = -1;
  owner_.stats.current.fetch_sub(1, std::memory_order_relaxed);
  if (responding_) owner_.stats.active.fetch_sub(1, std::memory_order_relaxed);
  responding_ = false;
  owner_.retire(id_);  // last: may delete this after the batch
}

void UConn::reset_request() {
  url_.clear();
  field_.clear();
  value_.clear();
  body_.clear();
  authorization_.clear();
  chunks_ = 3;
  delay_ms_ = 0;
  large_bytes_ = 0;
  large_ = bad_control_ = too_large_ = false;
  bad_control_name_.clear();
}

int UConn::on_header_value_complete() {
  std::string name = field_;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  auto number = [&](std::uint64_t& out) {
    try {
      out = parse_uint(name, value_, 0, 1ULL << 50);
    } catch (const UsageError&) {
      bad_control_ = true;
      bad_control_name_ = name;
    }
  };
  if (name == "authorization") authorization_ = value_;
  else if (name == "x-mock-chunks") number(chunks_);
  else if (name == "x-mock-delay-ms") number(delay_ms_);
  else if (name == "x-mock-large-bytes") {
    number(large_bytes_);
    large_ = !bad_control_;
  } else if (name.rfind("x-mock-", 0) == 0) {
    bad_control_ = true;
    bad_control_name_ = name;
  }
  field_.clear();
  value_.clear();
  return 0;
}

int UConn::on_message_complete() {
  return HPE_PAUSED;  // one request at a time: feed() answers it, the rest waits in pending_in_
}

void UConn::on_io(std::uint32_t events) {
  if (fd_ < 0) return;
  if (events & (EPOLLERR | EPOLLHUP)) {
    close_conn();
    return;
  }
  if (events & EPOLLOUT) {
    flush();
    if (fd_ < 0) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP)) {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n > 0) {
        if (responding_) {
          pending_in_.append(buf, static_cast<std::size_t>(n));
          if (pending_in_.size() > kMaxBody * 2) {  // a peer that pipelines without reading
            close_conn();
            return;
          }
        } else {
          feed(buf, static_cast<std::size_t>(n));
          if (fd_ < 0) return;
        }
        if (static_cast<std::size_t>(n) < sizeof buf) break;
        continue;
      }
      if (n == 0) {
        close_conn();  // the peer closed (a proxy dropping a pooled connection, or mid-stream)
        return;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) close_conn();
      return;
    }
  }
}

void UConn::feed(const char* data, std::size_t n) {
  const llhttp_errno_t err = llhttp_execute(&parser_, data, n);
  if (err == HPE_OK) return;
  if (err == HPE_PAUSED) {
    const char* stop = llhttp_get_error_pos(&parser_);
    const std::size_t used = stop ? static_cast<std::size_t>(stop - data) : n;
    if (used < n) pending_in_.append(data + used, n - used);
    start_response();  // outside llhttp's callback: it may finish at once and resume the parser
    return;
  }
  if (fd_ < 0) return;
  keep_alive_ = false;
  responding_ = true;
  owner_.stats.active.fetch_add(1, std::memory_order_relaxed);
  error(400, "Bad Request", std::string("mock: malformed request: ") + llhttp_errno_name(err), "bad_request");
}

void UConn::start_response() {
  responding_ = true;
  ++gen_;
  owner_.stats.active.fetch_add(1, std::memory_order_relaxed);
  keep_alive_ = llhttp_should_keep_alive(&parser_) != 0;
  chunked_ = parser_.http_major > 1 || (parser_.http_major == 1 && parser_.http_minor >= 1);
  const auto method = static_cast<llhttp_method_t>(parser_.method);
  std::string_view path = url_;
  if (const auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  auto ends_with = [&](std::string_view s) { return path.size() >= s.size() && path.substr(path.size() - s.size()) == s; };

  if (path == "/__mock/stats") {
    const std::string out = "{\"connections\":" + std::to_string(owner_.stats.connections.load()) +
                            ",\"requests\":" + std::to_string(owner_.stats.requests.load()) +
                            ",\"completions\":" + std::to_string(owner_.stats.completions.load()) +
                            ",\"active\":" + std::to_string(owner_.stats.active.load() - 1) +
                            ",\"current_connections\":" + std::to_string(owner_.stats.current.load()) + "}";
    respond(200, "OK", "application/json", out);
    return;
  }
  owner_.stats.requests.fetch_add(1, std::memory_order_relaxed);
  if (path == "/health") {
    respond(200, "OK", "application/json", "{\"status\":\"ok\"}");
    return;
  }
  if (!ends_with("/chat/completions")) {
    error(404, "Not Found", "mock: no route for " + std::string(path), "not_found");
    return;
  }
  if (method != HTTP_POST) {
    error(405, "Method Not Allowed", "mock: method not allowed", "method_not_allowed");
    return;
  }
  owner_.stats.completions.fetch_add(1, std::memory_order_relaxed);
  if (bad_control_) {
    error(400, "Bad Request", "mock: bad control header " + bad_control_name_, "bad_control_header");
    return;
  }
  const std::string& key = owner_.opt.api_key;
  std::string_view auth = authorization_;
  if (auth.size() != key.size() + 7 || (auth.substr(0, 7) != "Bearer " && auth.substr(0, 7) != "bearer ") ||
      auth.substr(7) != key) {
    error(401, "Unauthorized", "mock-upstream: missing or invalid API key (Authorization: Bearer)", "invalid_api_key");
    return;
  }
  if (too_large_) {
    keep_alive_ = false;
    error(413, "Payload Too Large", "mock: body too large", "request_too_large");
    return;
  }
  std::string_view b = skip_ws(body_);
  if (b.empty() || b.front() != '{') {
    error(400, "Bad Request", "mock-upstream: request body must be a JSON object", "invalid_json");
    return;
  }
  std::string model = "\"glm-4.7\"";
  if (const auto v = json_value_after(body_, "\"model\""); !v.empty() && v.front() == '"') {
    const auto end = v.find('"', 1);
    if (end != std::string_view::npos && v.substr(0, end).find('\\') == std::string_view::npos)
      model = std::string(v.substr(0, end + 1));
  }
  const bool stream = json_true_after(body_, "\"stream\"");
  const bool include_usage = json_true_after(body_, "\"include_usage\"");
  const std::uint64_t prompt = std::max<std::uint64_t>(1, body_.size() / 4);
  pieces_ = large_ ? (large_bytes_ + kLargePiece - 1) / kLargePiece : chunks_;
  usage_ = "{\"prompt_tokens\":" + std::to_string(prompt) + ",\"completion_tokens\":" + std::to_string(pieces_) +
           ",\"total_tokens\":" + std::to_string(prompt + pieces_) + "}";
  const std::string id = std::to_string(owner_.next_mock_id++);
  const std::string created = std::to_string(static_cast<std::uint64_t>(std::time(nullptr)));

  if (!stream) {
    if (large_ && large_bytes_ > kMaxNonStreamLarge) {
      error(400, "Bad Request", "mock: x-mock-large-bytes is limited to 64 MiB without streaming", "too_large");
      return;
    }
    std::string body = "{\"id\":\"chatcmpl-mock-" + id + "\",\"object\":\"chat.completion\",\"created\":" + created +
                       ",\"model\":" + model +
                       ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"";
    if (large_) {
      for (std::uint64_t i = 0; i < pieces_; ++i)
        body.append(filler(), 0, std::min<std::uint64_t>(kLargePiece, large_bytes_ - i * kLargePiece));
    } else {
      for (std::uint64_t i = 0; i < pieces_; ++i) body += "tok" + std::to_string(i) + " ";
    }
    body += "\"},\"finish_reason\":\"stop\"}],\"usage\":" + usage_ + "}";
    respond(200, "OK", "application/json", body);
    return;
  }

  streaming_ = true;
  head_ = "data: {\"id\":\"chatcmpl-mock-" + id + "\",\"object\":\"chat.completion.chunk\",\"created\":" + created +
          ",\"model\":" + model + ",\"choices\":[";
  separate_usage_ = include_usage;
  tail_ = include_usage ? ",\"usage\":null}\n\n" : "}\n\n";
  next_piece_ = 0;
  stage_ = 0;
  out_ = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
  out_ += chunked_ ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n";
  if (!chunked_) keep_alive_ = false;
  out_ += "\r\n";
  std::string first = head_ + "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]" + tail_;
  if (chunked_) append_chunk(out_, first);
  else out_ += first;
  waiting_timer_ = false;
  generate();  // with a delay: schedules the first content event
  flush();
}

bool UConn::emit_next_event() {
  std::string ev;
  switch (stage_) {
    case 0: {
      if (next_piece_ >= pieces_) {
        stage_ = 1;
        return true;
      }
      ev = head_ + "{\"index\":0,\"delta\":{\"content\":\"";
      if (large_) ev.append(filler(), 0, std::min<std::uint64_t>(kLargePiece, large_bytes_ - next_piece_ * kLargePiece));
      else ev += "tok" + std::to_string(next_piece_) + " ";
      ev += "\"},\"finish_reason\":null}]";
      ev += tail_;
      ++next_piece_;
      break;
    }
    case 1:
      ev = head_ + "{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]" + tail_;
      stage_ = separate_usage_ ? 2 : 3;
      break;
    case 2:
      ev = head_ + "],\"usage\":" + usage_ + "}\n\n";
      stage_ = 3;
      break;
    case 3:
      ev = "data: [DONE]\n\n";
      stage_ = 4;
      break;
    default:
      return false;
  }
  if (chunked_) append_chunk(out_, ev);
  else out_ += ev;
  if (stage_ == 4 && chunked_) out_ += "0\r\n\r\n";
  return true;
}

void UConn::generate() {
  while (stage_ < 4 && out_.size() - out_off_ < kOutHighWater) {
    const bool content = stage_ == 0 && next_piece_ < pieces_;
    // With a delay, every content event after the first waits for its timer.
    if (content && delay_ms_ > 0 && !waiting_timer_) {
      waiting_timer_ = true;
      const std::uint64_t id_copy = id_, gen = gen_;
      UpstreamLoop& owner = owner_;
      owner_.loop.at(now_ns() + static_cast<std::int64_t>(delay_ms_) * 1000000, [&owner, id_copy, gen] {
        if (UConn* c = owner.find(id_copy)) c->on_timer(gen);
      });
      return;
    }
    if (content && waiting_timer_) return;
    emit_next_event();
  }
}

void UConn::on_timer(std::uint64_t gen) {
  if (fd_ < 0 || gen != gen_ || !streaming_) return;
  waiting_timer_ = false;
  emit_next_event();  // the delayed content event
  generate();         // and whatever follows without a delay, up to the next timer
  flush();
}

void UConn::respond(int status, std::string_view reason, std::string_view type, std::string_view body) {
  streaming_ = false;
  out_ = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\nContent-Type: " + std::string(type) +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  if (!keep_alive_) out_ += "Connection: close\r\n";
  out_ += "\r\n";
  out_ += body;
  stage_ = 4;
  flush();
}

void UConn::error(int status, std::string_view reason, std::string_view message, std::string_view code) {
  std::string m;
  for (const char c : message) {
    if (c == '"' || c == '\\') m += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) m += c;
  }
  respond(status, reason, "application/json",
          "{\"error\":{\"message\":\"" + m + "\",\"type\":\"invalid_request_error\",\"code\":\"" + std::string(code) +
              "\"}}");
}

void UConn::want_write(bool on) {
  if (on == writing_ || fd_ < 0) return;
  writing_ = on;
  owner_.loop.modify(fd_, EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u), this);
}

void UConn::flush() {
  while (fd_ >= 0) {
    if (out_off_ < out_.size()) {
      const ssize_t n = ::send(fd_, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
      if (n > 0) {
        out_off_ += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        want_write(true);
        return;
      }
      close_conn();
      return;
    }
    out_.clear();
    out_off_ = 0;
    if (streaming_ && stage_ < 4) {
      const std::size_t before = out_.size();
      generate();
      if (out_.size() == before) {  // waiting for a timer
        want_write(false);
        return;
      }
      continue;
    }
    want_write(false);
    if (responding_) finish_response();
    return;
  }
}

void UConn::finish_response() {
  responding_ = false;
  streaming_ = false;
  owner_.stats.active.fetch_sub(1, std::memory_order_relaxed);
  if (!keep_alive_) {
    ::shutdown(fd_, SHUT_WR);
    close_conn();
    return;
  }
  reset_request();
  llhttp_resume(&parser_);
  if (!pending_in_.empty()) {
    std::string in = std::move(pending_in_);
    pending_in_.clear();
    feed(in.data(), in.size());
  }
}

int bind_listener(const UpstreamOptions& o, std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, o.host.c_str(), &a.sin_addr) != 1 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4096) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

constexpr const char* kUpstreamUsage = R"(usage: glmp-load upstream [--host 127.0.0.1] [--port 0] [--threads 1]
                          [--api-key test-upstream-key]
Prints "LISTENING <port>" when ready; SIGTERM/SIGINT stop it (exit 0).
)";

}  // namespace

int upstream_main(int argc, char** argv) {
  UpstreamOptions o;
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    std::string v;
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUpstreamUsage, stdout);
      return 0;
    }
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      v = flag.substr(eq + 1);
      flag.resize(eq);
    } else {
      if (i + 1 >= argc) throw UsageError{flag + ": missing value"};
      v = argv[++i];
    }
    if (flag == "--host") o.host = v;
    else if (flag == "--port") o.port = static_cast<std::uint16_t>(parse_uint(flag, v, 0, 65535));
    else if (flag == "--threads") o.threads = static_cast<int>(parse_uint(flag, v, 1, 64));
    else if (flag == "--api-key") o.api_key = v;
    else throw UsageError{"upstream: unknown flag '" + flag + "'"};
  }
  raise_fd_limit(1024, "glmp-load upstream");
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);

  std::vector<int> fds;
  const int first = bind_listener(o, o.port);
  if (first < 0) {
    std::fprintf(stderr, "glmp-load upstream: cannot listen on %s:%u: %s\n", o.host.c_str(), o.port, std::strerror(errno));
    return 1;
  }
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(first, reinterpret_cast<sockaddr*>(&bound), &len);
  const std::uint16_t port = ntohs(bound.sin_port);
  fds.push_back(first);
  for (int i = 1; i < o.threads; ++i) {
    const int fd = bind_listener(o, port);
    if (fd < 0) {
      std::fprintf(stderr, "glmp-load upstream: SO_REUSEPORT listener %d: %s\n", i, std::strerror(errno));
      return 1;
    }
    fds.push_back(fd);
  }
  Stats stats;
  std::vector<std::unique_ptr<UpstreamLoop>> loops;
  for (const int fd : fds) loops.push_back(std::make_unique<UpstreamLoop>(o, stats, fd));
  std::printf("LISTENING %u\n", port);
  std::fflush(stdout);
  std::fprintf(stderr, "glmp-load upstream: listening on %s:%u (%d loop%s)\n", o.host.c_str(), port, o.threads,
               o.threads == 1 ? "" : "s");
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < loops.size(); ++i) threads.emplace_back([&, i] { loops[i]->run(); });
  loops[0]->run();
  for (auto& t : threads) t.join();
  for (const int fd : fds) ::close(fd);
  return 0;
}

}  // namespace glmp::load
