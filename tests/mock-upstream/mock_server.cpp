#include "mock_server.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "mock_h2.hpp"

namespace glmp::mock {

namespace {

// Output queued beyond this stops the pulling of script steps until the peer takes some.
constexpr std::size_t kHighWater = 64 * 1024;
constexpr std::size_t kReadChunk = 64 * 1024;
// A reset waits at most this long for the peer to acknowledge what was sent, then polls every ms.
constexpr Nanos kAckWait = 2000 * kMs;
constexpr Nanos kAckPoll = 1 * kMs;
// After accept() fails for lack of descriptors, the listener rests this long.
constexpr Nanos kAcceptPause = 100 * kMs;
// The request limits of Poco's HTTP server (HTTPRequest / MessageHeader), answered with a 400.
constexpr std::size_t kMaxUri = 16384;
constexpr std::size_t kMaxName = 256;
constexpr std::size_t kMaxValue = 8192;
constexpr std::size_t kMaxFields = 100;

// What Poco's server sent for a request it could not parse, before it closed the connection.
constexpr std::string_view kBadRequest = "HTTP/1.1 400 Bad Request\r\nConnection: Close\r\n\r\n";

// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 3.4).
constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ALPN (--https): the first of the mock's protocols (--alpn, in its order) that the client
// offers; none = no ALPN (HTTP/1.1).
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void* arg) {
  const Options& opt = *static_cast<const Options*>(arg);
  for (const std::string& proto : opt.alpn) {
    for (unsigned int i = 0; i < inlen;) {
      const unsigned int len = in[i];
      if (i + 1 + len > inlen) break;
      if (len == proto.size() && std::memcmp(in + i + 1, proto.data(), len) == 0) {
        *out = in + i + 1;
        *outlen = static_cast<unsigned char>(len);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + len;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

constexpr std::uint64_t kListenerId = 0;
constexpr std::uint64_t kWakeId = 1;

}  // namespace

class Conn;

// One event loop: an epoll set, a timer heap, and the connections it accepted.
class Loop {
 public:
  Loop(const Options& options, Stats& stats, int listen_fd, SSL_CTX* tls);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void run();
  void request_stop();  // any thread

  // For the connections.
  const Options& opt;
  Stats& stats;
  Nanos now = 0;
  char* read_buffer() { return read_buf_.data(); }
  const llhttp_settings_t& parser_settings() const { return settings_; }
  // The connection's single timer: fires at `due` (ns, CLOCK_MONOTONIC); 0 cancels it.
  void set_timer(Conn& c, Nanos due);

 private:
  struct Entry {
    Nanos due;
    std::uint64_t id;
    bool operator>(const Entry& o) const { return due > o.due; }
  };

  void accept_all();
  void run_timers();
  Nanos next_due() const;
  void watch_listener(bool on);

  int listen_fd_;
  SSL_CTX* tls_;
  int epfd_ = -1;
  int wake_fd_ = -1;
  bool stop_ = false;
  bool listening_ = false;
  Nanos listener_resume_ = 0;
  std::uint64_t next_id_ = 2;
  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> timers_;
  std::string read_buf_;
  llhttp_settings_t settings_{};
};

// One client connection: reads and parses requests while idle, plays one response script at a
// time (requests that arrive meanwhile wait, in order, as with Poco's server). A connection that
// starts with the HTTP/2 preface (or negotiates "h2" with ALPN) is handed to an H2Session instead,
// which plays many streams at once over the same socket.
class Conn {
 public:
  Conn(Loop& loop, std::uint64_t id, int fd, SSL* ssl);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  void start();
  void on_event(std::uint32_t events);
  void on_timer();
  // SIGTERM: shut the socket down both ways (the peer sees a FIN) and close it.
  void shutdown_for_stop();
  bool dead() const { return state_ == State::Dead; }

  const std::uint64_t id;
  Nanos due = 0;         // when the connection's timer should fire (0: none)
  Nanos queued_due = 0;  // the heap entry that stands for it (0: none)

 private:
  enum class State { Handshake, Reading, Responding, H2, Closing, Dead };
  enum class Gate { None, Wait, Waiting, Reset };

  void drive();
  bool handshake();
  void start_h2();
  bool h2_drive();
  void h2_arm_timer();
  bool read_requests();
  bool play();
  void start_response();
  bool finish_response();
  void feed(const char* data, std::size_t len, std::size_t& used);
  long read_some(char* buf, std::size_t cap);
  bool flush();
  std::size_t pending() const { return out_.size() - out_off_; }
  void queue(std::string bytes);
  void bad_request();
  void close_gracefully();
  void close_now(bool reset);
  void arm_idle() { loop_.set_timer(*this, loop_.now + idle_ns_); }

  static Conn& self(llhttp_t* p) { return *static_cast<Conn*>(p->data); }
  static int on_message_begin(llhttp_t* p);
  static int on_url(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_field(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_body(llhttp_t* p, const char* at, std::size_t n);
  static int on_message_complete(llhttp_t* p);
  friend class Loop;

  Loop& loop_;
  int fd_;
  SSL* ssl_;
  State state_;
  Nanos idle_ns_;
  bool readable_ = false;  // edge-triggered: the socket may have bytes we have not read
  bool writable_ = true;   // edge-triggered: the last write did not fill the socket

  // Request parsing.
  llhttp_t parser_{};
  std::string in_;  // bytes read but not yet parsed (a pipelined request)
  Request req_;
  std::string field_;
  std::string value_;
  bool started_ = false;
  bool message_done_ = false;
  bool parse_error_ = false;
  bool send_continue_ = false;

  // The response being played.
  std::unique_ptr<Handler> handler_;
  Script script_;
  bool script_done_ = false;
  bool wrote_ = false;
  bool keep_alive_ = true;
  Gate gate_ = Gate::None;
  std::uint64_t gate_ms_ = 0;
  Nanos ack_deadline_ = 0;
  std::string out_;
  std::size_t out_off_ = 0;

  // HTTP/2.
  bool detect_ = false;  // the first bytes may still turn out to be the HTTP/2 preface
  std::unique_ptr<H2Session> h2_;
  Nanos idle_from_ = 0;  // HTTP/2: when the connection last read bytes or answered a stream
};

// ---------------------------------------------------------------------------------------------
// Conn

Conn::Conn(Loop& loop, std::uint64_t conn_id, int fd, SSL* ssl)
    : id(conn_id),
      loop_(loop),
      fd_(fd),
      ssl_(ssl),
      state_(ssl != nullptr ? State::Handshake : State::Reading),
      idle_ns_(static_cast<Nanos>(loop.opt.keepalive_timeout_ms) * kMs),
      detect_(ssl == nullptr) {
  llhttp_init(&parser_, HTTP_REQUEST, &loop.parser_settings());
  parser_.data = this;
}

Conn::~Conn() {
  script_.reset();  // the script's locals first (the active-request count)
  handler_.reset();
  h2_.reset();
  if (fd_ >= 0) ::close(fd_);
  if (ssl_ != nullptr) SSL_free(ssl_);
  loop_.stats.current_connections.fetch_sub(1);
}

void Conn::start() {
  // Poco waited the keep-alive timeout for the first request too (and for a TLS handshake).
  arm_idle();
  drive();
}

void Conn::on_event(std::uint32_t events) {
  if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
    // The peer reset the connection (or both directions are shut): nothing more can be sent.
    close_now(false);
    return;
  }
  if ((events & (EPOLLIN | EPOLLRDHUP)) != 0) readable_ = true;
  if ((events & EPOLLOUT) != 0) {
    writable_ = true;
    // A TLS read can wait for the socket to be writable (SSL_ERROR_WANT_WRITE): retry it too.
    if (ssl_ != nullptr) readable_ = true;
  }
  drive();
}

void Conn::on_timer() {
  switch (state_) {
    case State::Handshake:
    case State::Reading:
      // Idle for the keep-alive timeout, between requests or in the middle of one: close.
      close_now(false);
      return;
    case State::Responding:
      if (gate_ == Gate::Waiting) gate_ = Gate::None;  // a wait step is over
      drive();                                         // (a reset re-checks the peer's ACKs)
      return;
    case State::H2: {
      const Nanos now = now_ns();
      if (!h2_->responding() && now >= idle_from_ + idle_ns_) {
        // Idle (no stream being answered) for the keep-alive timeout: GOAWAY, then close.
        h2_->goaway();
        if (out_off_ > 0) {
          out_.erase(0, out_off_);
          out_off_ = 0;
        }
        (void)h2_->pump(out_, out_.size() + kHighWater);
        if (flush()) close_gracefully();
        return;
      }
      h2_->on_timer(now);
      drive();
      return;
    }
    case State::Closing:
    case State::Dead:
      return;
  }
}

void Conn::drive() {
  for (;;) {
    switch (state_) {
      case State::Handshake:
        if (!handshake()) return;
        continue;
      case State::Reading:
        if (!read_requests()) return;
        continue;
      case State::Responding:
        if (!play()) return;
        continue;
      case State::H2:
        if (!h2_drive()) return;
        continue;
      case State::Closing:
        if (!flush()) return;
        if (pending() == 0) close_gracefully();
        return;
      case State::Dead:
        return;
    }
  }
}

bool Conn::handshake() {
  ERR_clear_error();
  const int r = SSL_accept(ssl_);
  if (r == 1) {
    readable_ = true;  // OpenSSL may already hold the first request's bytes
    const unsigned char* proto = nullptr;
    unsigned int proto_len = 0;
    SSL_get0_alpn_selected(ssl_, &proto, &proto_len);
    if (proto_len == 2 && std::memcmp(proto, "h2", 2) == 0) {
      start_h2();
      return true;
    }
    // Without ALPN, a client may still speak HTTP/2 with prior knowledge.
    detect_ = proto_len == 0;
    state_ = State::Reading;
    return true;
  }
  switch (SSL_get_error(ssl_, r)) {
    case SSL_ERROR_WANT_READ:
      readable_ = false;
      return false;
    case SSL_ERROR_WANT_WRITE:
      writable_ = false;
      return false;
    default:
      close_now(false);
      return false;
  }
}

// Returns > 0 bytes read, 0 at the peer's end of stream, -1 when nothing is there now, -2 on an
// error.
long Conn::read_some(char* buf, std::size_t cap) {
  if (ssl_ == nullptr) {
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, cap, 0);
      if (n >= 0) return static_cast<long>(n);
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
    }
  }
  ERR_clear_error();
  const int n = SSL_read(ssl_, buf, static_cast<int>(std::min<std::size_t>(cap, INT_MAX)));
  if (n > 0) return n;
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_READ:
      return -1;
    case SSL_ERROR_WANT_WRITE:
      writable_ = false;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    default:
      return -2;
  }
}

void Conn::feed(const char* data, std::size_t len, std::size_t& used) {
  const llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  if (err == HPE_OK) {
    used = len;
  } else if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
    // Paused at the end of a request: the rest is the next request, parsed after the response.
    used = static_cast<std::size_t>(llhttp_get_error_pos(&parser_) - data);
    if (err == HPE_PAUSED)
      llhttp_resume(&parser_);
    else
      llhttp_resume_after_upgrade(&parser_);
  } else {
    used = len;
    parse_error_ = true;
  }
}

bool Conn::read_requests() {
  // A request that was read with the previous one (pipelined) comes first.
  if (!in_.empty() && !detect_) {
    std::size_t used = 0;
    feed(in_.data(), in_.size(), used);
    in_.erase(0, used);
  }
  for (;;) {
    if (parse_error_) {
      bad_request();
      return state_ != State::Dead;
    }
    if (send_continue_) {
      // Expect: 100-continue, answered before the body is read, as Poco's server did.
      send_continue_ = false;
      queue(req_.version() + " 100 Continue\r\n\r\n");
      if (!flush()) return false;
    }
    if (message_done_) {
      start_response();
      return true;
    }
    if (!readable_) return false;
    char* buf = loop_.read_buffer();
    const long n = read_some(buf, kReadChunk);
    if (n == -1) {
      readable_ = false;
      return false;
    }
    if (n == -2) {
      close_now(false);
      return false;
    }
    if (n == 0) {
      if (detect_) {
        // The end came before the first bytes were told apart: they are HTTP/1.1's, parsed as
        // ever (the next read sees the end again).
        detect_ = false;
        std::size_t used = 0;
        if (!in_.empty()) feed(in_.data(), in_.size(), used);
        in_.erase(0, used);
        continue;
      }
      // The peer is done. In the middle of a request, that is a bad request (Poco's 400).
      if (started_) {
        bad_request();
        return state_ != State::Dead;
      }
      close_now(false);
      return false;
    }
    // A short read drained the socket: wait for the next edge instead of reading EAGAIN.
    if (ssl_ == nullptr && static_cast<std::size_t>(n) < kReadChunk) readable_ = false;
    arm_idle();
    if (detect_) {
      // The first bytes of a connection: HTTP/2's client preface, or HTTP/1.1.
      in_.append(buf, static_cast<std::size_t>(n));
      const std::size_t k = std::min(in_.size(), kH2Preface.size());
      if (std::string_view(in_).substr(0, k) == kH2Preface.substr(0, k)) {
        if (k < kH2Preface.size()) continue;  // a prefix of it so far: read on
        start_h2();
        return true;
      }
      detect_ = false;
      std::size_t used = 0;
      feed(in_.data(), in_.size(), used);
      in_.erase(0, used);
      continue;
    }
    std::size_t used = 0;
    feed(buf, static_cast<std::size_t>(n), used);
    if (used < static_cast<std::size_t>(n))
      in_.append(buf + used, static_cast<std::size_t>(n) - used);
  }
}

void Conn::start_response() {
  state_ = State::Responding;
  loop_.set_timer(*this, 0);
  handler_ = make_handler(loop_.opt, loop_.stats, req_);
  script_ = handler_->run();
  script_done_ = false;
  wrote_ = false;
  gate_ = Gate::None;
  ack_deadline_ = 0;
}

void Conn::queue(std::string bytes) {
  if (pending() == 0) {
    out_ = std::move(bytes);
    out_off_ = 0;
    return;
  }
  if (out_off_ > 0) {
    out_.erase(0, out_off_);
    out_off_ = 0;
  }
  out_ += bytes;
}

// Plays the script: pulls steps while the output queue is below the high-water mark, writes,
// and parks at waits and resets until the queue has drained. True when the response is complete
// and the connection reads the next request.
bool Conn::play() {
  for (;;) {
    if (gate_ != Gate::None) {
      if (!flush()) return false;
      if (pending() > 0) return false;  // EPOLLOUT resumes
      if (gate_ == Gate::Wait) {
        // Every byte before the wait is in the kernel: now the wait starts.
        gate_ = Gate::Waiting;
        loop_.set_timer(*this, now_ns() + static_cast<Nanos>(gate_ms_) * kMs);
        return false;
      }
      if (gate_ == Gate::Waiting) return false;  // on_timer resumes
      // Reset: once the peer has acknowledged everything (or 2 s), abort with an RST.
      const Nanos now = now_ns();
      if (ack_deadline_ == 0) ack_deadline_ = now + kAckWait;
      int unacked = 0;
      if (now >= ack_deadline_ || ::ioctl(fd_, SIOCOUTQ, &unacked) != 0 || unacked <= 0) {
        close_now(true);
        return false;
      }
      loop_.set_timer(*this, now + kAckPoll);
      return false;
    }
    if (pending() >= kHighWater) {
      if (!flush()) return false;
      if (pending() >= kHighWater) return false;
      continue;
    }
    if (script_done_) {
      if (!flush()) return false;
      if (pending() > 0) return false;
      return finish_response();
    }
    bool more = false;
    try {
      more = script_.next();
    } catch (const std::exception& e) {
      if (wrote_) {
        close_now(false);
        return false;
      }
      queue(handler_->internal_error(e));
      more = false;
    }
    if (!more) {
      // The script is over: its locals go now (the active-request count drops before the last
      // bytes are flushed, as it did when Poco's handler returned).
      script_done_ = true;
      keep_alive_ = handler_->keep_alive();
      script_.reset();
      handler_.reset();
      continue;
    }
    Step& step = script_.step();
    switch (step.kind) {
      case Step::Kind::Write:
        wrote_ = true;
        queue(std::move(step.bytes));
        break;
      case Step::Kind::Wait:
        if (step.ms > 0) {
          gate_ = Gate::Wait;
          gate_ms_ = step.ms;
        }
        break;
      case Step::Kind::Reset:
        gate_ = Gate::Reset;
        break;
      case Step::Kind::Goaway:  // HTTP/2 only
      case Step::Kind::Refuse:
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

void Conn::start_h2() {
  detect_ = false;
  state_ = State::H2;
  loop_.stats.h2_connections.fetch_add(1);
  h2_ = std::make_unique<H2Session>(loop_.opt, loop_.stats);
  idle_from_ = now_ns();
  if (!in_.empty()) {
    (void)h2_->receive(in_.data(), in_.size());  // the preface and whatever came with it
    in_.clear();
    in_.shrink_to_fit();
  }
}

// Reads what the peer sent into the session, sends what the session produces (up to the
// high-water mark queued, then EPOLLOUT resumes), and closes when the session is over.
bool Conn::h2_drive() {
  for (;;) {
    while (readable_ && !h2_->failed()) {
      char* buf = loop_.read_buffer();
      const long n = read_some(buf, kReadChunk);
      if (n == -1) {
        readable_ = false;
        break;
      }
      if (n <= 0) {  // the peer's end, or an error: nothing more can come
        close_now(false);
        return false;
      }
      if (ssl_ == nullptr && static_cast<std::size_t>(n) < kReadChunk) readable_ = false;
      idle_from_ = now_ns();
      (void)h2_->receive(buf, static_cast<std::size_t>(n));
    }
    if (out_off_ > 0) {
      out_.erase(0, out_off_);
      out_off_ = 0;
    }
    const bool more = h2_->pump(out_, kHighWater);
    if (!flush()) return false;
    if (pending() > 0) break;  // EPOLLOUT resumes
    h2_->drained(now_ns());
    if (h2_->failed() || h2_->finished()) {
      close_gracefully();
      return false;
    }
    if (!more && h2_->awaiting_ack()) {
      // A stream reset waits until the peer has acknowledged every byte (polled every ms); not
      // while nghttp2 still holds frames that pump() left for the next round.
      int unacked = 0;
      if (::ioctl(fd_, SIOCOUTQ, &unacked) != 0 || unacked <= 0) {
        h2_->acked();
        continue;  // send the RST_STREAMs
      }
    }
    if (!more) break;
  }
  h2_arm_timer();
  return false;
}

// The connection's timer: the earliest stream timer, or the idle timeout when no stream is
// being answered (counted from the last bytes read or the last stream answered).
void Conn::h2_arm_timer() {
  if (h2_->responding()) idle_from_ = now_ns();
  Nanos next = h2_->next_due();
  if (!h2_->responding()) {
    const Nanos idle = idle_from_ + idle_ns_;
    if (next == 0 || idle < next) next = idle;
  }
  if (h2_->awaiting_ack()) {
    const Nanos poll = now_ns() + kAckPoll;
    if (next == 0 || poll < next) next = poll;
  }
  loop_.set_timer(*this, next);
}

bool Conn::finish_response() {
  req_.clear();
  started_ = false;
  message_done_ = false;
  if (!keep_alive_) {
    close_gracefully();
    return false;
  }
  state_ = State::Reading;
  arm_idle();
  return true;
}

// Writes what is queued until the socket is full. False when the connection died.
bool Conn::flush() {
  while (out_off_ < out_.size()) {
    if (!writable_) return true;
    const char* p = out_.data() + out_off_;
    const std::size_t len = out_.size() - out_off_;
    if (ssl_ == nullptr) {
      const ssize_t n = ::send(fd_, p, len, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          writable_ = false;
          return true;
        }
        close_now(false);
        return false;
      }
      out_off_ += static_cast<std::size_t>(n);
      if (static_cast<std::size_t>(n) < len) writable_ = false;  // the socket is full
    } else {
      ERR_clear_error();
      const int n = SSL_write(ssl_, p, static_cast<int>(std::min<std::size_t>(len, INT_MAX)));
      if (n <= 0) {
        switch (SSL_get_error(ssl_, n)) {
          case SSL_ERROR_WANT_WRITE:
            writable_ = false;
            return true;
          case SSL_ERROR_WANT_READ:
            readable_ = false;
            return true;
          default:
            close_now(false);
            return false;
        }
      }
      out_off_ += static_cast<std::size_t>(n);
    }
  }
  out_.clear();
  out_off_ = 0;
  return true;
}

void Conn::bad_request() {
  script_.reset();
  handler_.reset();
  loop_.set_timer(*this, 0);
  state_ = State::Closing;
  queue(std::string(kBadRequest));
  if (flush() && pending() == 0) close_gracefully();
}

void Conn::close_gracefully() {
  if (state_ == State::Dead) return;
  if (ssl_ != nullptr) {
    ERR_clear_error();
    (void)SSL_shutdown(ssl_);  // close_notify, as Poco's secure socket sent on close
  }
  close_now(false);
}

void Conn::close_now(bool reset) {
  if (state_ == State::Dead) return;
  state_ = State::Dead;
  loop_.set_timer(*this, 0);
  script_.reset();
  handler_.reset();
  h2_.reset();
  if (fd_ >= 0) {
    if (reset) {
      const ::linger lg{1, 0};
      ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    ::close(fd_);
    fd_ = -1;
  }
}

void Conn::shutdown_for_stop() {
  if (state_ == State::H2 && fd_ >= 0) {
    // HTTP/2: a GOAWAY first (best effort: what the socket takes now).
    h2_->goaway();
    if (out_off_ > 0) {
      out_.erase(0, out_off_);
      out_off_ = 0;
    }
    (void)h2_->pump(out_, out_.size() + kHighWater);
    writable_ = true;
    if (!flush()) return;  // the connection died meanwhile
  }
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  close_now(false);
}

// llhttp callbacks. Headers are stored as Poco's NameValueCollection kept them: a repeated name
// (any case) goes right after the earlier ones, so lookups and iteration see the same order.

int Conn::on_message_begin(llhttp_t* p) {
  Conn& c = self(p);
  c.started_ = true;
  c.req_.clear();
  c.field_.clear();
  c.value_.clear();
  return 0;
}

int Conn::on_url(llhttp_t* p, const char* at, std::size_t n) {
  Conn& c = self(p);
  c.req_.uri.append(at, n);
  return c.req_.uri.size() > kMaxUri ? -1 : 0;
}

int Conn::on_header_field(llhttp_t* p, const char* at, std::size_t n) {
  Conn& c = self(p);
  c.field_.append(at, n);
  return c.field_.size() > kMaxName ? -1 : 0;
}

int Conn::on_header_value(llhttp_t* p, const char* at, std::size_t n) {
  Conn& c = self(p);
  c.value_.append(at, n);
  return c.value_.size() > kMaxValue ? -1 : 0;
}

int Conn::on_header_value_complete(llhttp_t* p) {
  Conn& c = self(p);
  auto& headers = c.req_.headers;
  if (headers.size() >= kMaxFields) return -1;
  while (!c.value_.empty() && (c.value_.back() == ' ' || c.value_.back() == '\t')) {
    c.value_.pop_back();
  }
  c.req_.add_header(std::move(c.field_), std::move(c.value_));
  c.field_.clear();
  c.value_.clear();
  return 0;
}

int Conn::on_headers_complete(llhttp_t* p) {
  Conn& c = self(p);
  c.req_.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
  c.req_.version_major = p->http_major;
  c.req_.version_minor = p->http_minor;
  c.send_continue_ = c.req_.expect_continue();
  return 0;
}

int Conn::on_body(llhttp_t* p, const char* at, std::size_t n) {
  self(p).req_.body.append(at, n);
  return 0;
}

int Conn::on_message_complete(llhttp_t* p) {
  self(p).message_done_ = true;
  return HPE_PAUSED;
}

// ---------------------------------------------------------------------------------------------
// Loop

Loop::Loop(const Options& options, Stats& s, int listen_fd, SSL_CTX* tls)
    : opt(options), stats(s), listen_fd_(listen_fd), tls_(tls), read_buf_(kReadChunk, '\0') {
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wake_fd_ < 0)
    throw std::runtime_error(std::string("epoll: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  ::epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  watch_listener(true);

  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &Conn::on_message_begin;
  settings_.on_url = &Conn::on_url;
  settings_.on_header_field = &Conn::on_header_field;
  settings_.on_header_value = &Conn::on_header_value;
  settings_.on_header_value_complete = &Conn::on_header_value_complete;
  settings_.on_headers_complete = &Conn::on_headers_complete;
  settings_.on_body = &Conn::on_body;
  settings_.on_message_complete = &Conn::on_message_complete;
}

Loop::~Loop() {
  conns_.clear();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (epfd_ >= 0) ::close(epfd_);
}

void Loop::watch_listener(bool on) {
  if (on == listening_) return;
  epoll_event ev{};
  // Every loop watches the one listening socket; EPOLLEXCLUSIVE wakes one of them per connection.
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = kListenerId;
  ::epoll_ctl(epfd_, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, listen_fd_, &ev);
  listening_ = on;
}

void Loop::request_stop() {
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void Loop::set_timer(Conn& c, Nanos due) {
  c.due = due;
  if (due == 0) return;  // a stale heap entry is skipped when it comes up
  if (c.queued_due == 0 || due < c.queued_due) {
    timers_.push(Entry{due, c.id});
    c.queued_due = due;
  }
}

Nanos Loop::next_due() const {
  Nanos due = timers_.empty() ? 0 : timers_.top().due;
  if (listener_resume_ != 0 && (due == 0 || listener_resume_ < due)) due = listener_resume_;
  return due;
}

void Loop::run_timers() {
  if (listener_resume_ != 0 && listener_resume_ <= now) {
    listener_resume_ = 0;
    watch_listener(true);
  }
  while (!timers_.empty() && timers_.top().due <= now) {
    const Entry e = timers_.top();
    timers_.pop();
    const auto it = conns_.find(e.id);
    if (it == conns_.end()) continue;
    Conn& c = *it->second;
    if (c.queued_due != e.due) continue;  // superseded by an earlier entry
    c.queued_due = 0;
    if (c.due == 0) continue;  // cancelled
    if (c.due > now) {         // pushed back (the idle timer moves on every read)
      timers_.push(Entry{c.due, c.id});
      c.queued_due = c.due;
      continue;
    }
    c.due = 0;
    c.on_timer();
    if (c.dead()) conns_.erase(it);
  }
}

void Loop::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        if (opt.verbose) std::fprintf(stderr, "mock-upstream: accept: %s\n", std::strerror(errno));
        watch_listener(false);
        listener_resume_ = now + kAcceptPause;
      }
      return;  // EAGAIN: another loop took it, or nothing more to accept
    }
    stats.connections.fetch_add(1);
    stats.current_connections.fetch_add(1);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL* ssl = nullptr;
    if (tls_ != nullptr) {
      ssl = SSL_new(tls_);
      if (ssl == nullptr || SSL_set_fd(ssl, fd) != 1) {
        if (ssl != nullptr) SSL_free(ssl);
        ::close(fd);
        stats.current_connections.fetch_sub(1);
        continue;
      }
      SSL_set_accept_state(ssl);
      SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    const std::uint64_t id = next_id_++;
    auto conn = std::make_unique<Conn>(*this, id, fd, ssl);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = id;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) continue;  // ~Conn closes it
    Conn& c = *conn;
    conns_.emplace(id, std::move(conn));
    c.start();
    if (c.dead()) conns_.erase(id);
  }
}

void Loop::run() {
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  bool have_pwait2 = true;
  now = now_ns();
  while (!stop_) {
    const Nanos due = next_due();
    int n = 0;
    if (have_pwait2) {
      timespec ts{};
      timespec* tsp = nullptr;
      if (due != 0) {
        const Nanos wait = std::max<Nanos>(0, due - now_ns());
        ts.tv_sec = static_cast<time_t>(wait / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(wait % 1'000'000'000);
        tsp = &ts;
      }
      n = ::epoll_pwait2(epfd_, events, kMaxEvents, tsp, nullptr);
      if (n < 0 && errno == ENOSYS) {
        have_pwait2 = false;
        continue;
      }
    } else {
      int ms = -1;
      if (due != 0) ms = static_cast<int>((std::max<Nanos>(0, due - now_ns()) + kMs - 1) / kMs);
      n = ::epoll_wait(epfd_, events, kMaxEvents, ms);
    }
    if (n < 0 && errno != EINTR) {
      std::fprintf(stderr, "mock-upstream: epoll: %s\n", std::strerror(errno));
      break;
    }
    now = now_ns();
    for (int i = 0; i < n; ++i) {
      const std::uint64_t id = events[i].data.u64;
      if (id == kListenerId) {
        accept_all();
      } else if (id == kWakeId) {
        stop_ = true;
      } else if (const auto it = conns_.find(id); it != conns_.end()) {
        it->second->on_event(events[i].events);
        if (it->second->dead()) conns_.erase(it);
      }
    }
    now = now_ns();
    run_timers();
  }
  // Stopping: as Poco's stopAll(true), every open connection is shut down, whatever it was doing.
  watch_listener(false);
  for (auto& [id, conn] : conns_) conn->shutdown_for_stop();
  conns_.clear();
}

// ---------------------------------------------------------------------------------------------
// Server

Server::Server(const Options& options, Stats& stats, int listen_fd, SSL_CTX* tls)
    : options_(options), stats_(stats), listen_fd_(listen_fd), tls_(tls) {
  const int flags = ::fcntl(listen_fd_, F_GETFL, 0);
  ::fcntl(listen_fd_, F_SETFL, flags | O_NONBLOCK);
  if (tls_ != nullptr) {
    SSL_CTX_set_alpn_select_cb(tls_, &select_alpn, const_cast<Options*>(&options_));
  }
  for (int i = 0; i < options_.loops; ++i) {
    loops_.push_back(std::make_unique<Loop>(options_, stats_, listen_fd_, tls_));
  }
}

Server::~Server() { stop(); }

void Server::start() {
  for (auto& loop : loops_) {
    Loop* l = loop.get();
    threads_.emplace_back([l] { l->run(); });
  }
}

void Server::stop() {
  for (auto& loop : loops_) loop->request_stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

}  // namespace glmp::mock
