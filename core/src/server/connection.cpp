#include "server/connection.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <ctime>
#include <cstring>
#include <sstream>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <Poco/Exception.h>
#include <Poco/Net/HTTPResponse.h>

#include "pipeline/errors.hpp"
#include "util/spares.hpp"
#include "pipeline/headers.hpp"
#include "pipeline/router.hpp"

namespace glmp::core::server {
namespace {

constexpr size_t kReadSize = 16 * 1024;      // one recv(2); also a whole TLS record's plaintext
constexpr size_t kTlsRecord = 16 * 1024;     // one SSL_write_ex: at most one full record
constexpr size_t kSmallWrite = 4 * 1024;     // writes below this are gathered until the next flush
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr auto kPollSlice = std::chrono::milliseconds(250);  // stop requests are noticed this fast

// A chunk's size line ("1a2b\r\n") into `out` (24 bytes); its length. Per relayed piece: no printf.
size_t chunk_size_line(char* out, size_t size) {
  const auto r = std::to_chars(out, out + 20, size, 16);
  r.ptr[0] = '\r';
  r.ptr[1] = '\n';
  return static_cast<size_t>(r.ptr + 2 - out);
}

// RFC 9110 IMF-fixdate, formatted once per second per thread.
const std::string& http_date() {
  thread_local time_t last = 0;
  thread_local std::string text;
  const time_t now = ::time(nullptr);
  if (now != last) {
    char buf[64];
    tm t{};
    ::gmtime_r(&now, &t);
    const size_t n = ::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &t);
    text.assign(buf, n);
    last = now;
  }
  return text;
}

// Body bytes go to `out` while a body read runs, and nowhere once it returns.
class BodySinkScope {
public:
  BodySinkScope(http::RequestParser& parser, std::string& out) : parser_(parser) { parser_.set_body_sink(&out); }
  ~BodySinkScope() { parser_.set_body_sink(nullptr); }
  BodySinkScope(const BodySinkScope&) = delete;
  BodySinkScope& operator=(const BodySinkScope&) = delete;

private:
  http::RequestParser& parser_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// ClientConnection

ClientConnection::ClientConnection(int fd, const Poco::Net::SocketAddress& peer, const Poco::Net::SocketAddress& local,
                                   const ConnectionLimits& limits, std::atomic<int>* open_count,
                                   const std::atomic<bool>* stopping, SSL* ssl)
    : fd_(fd), peer_(peer), local_(local), limits_(limits), open_count_(open_count), stopping_(stopping),
      parser_(limits.request), ssl_(ssl) {
  if (open_count_) open_count_->fetch_add(1, std::memory_order_relaxed);
  if (ssl_) {
    ::SSL_set_fd(ssl_, fd_);
    ::SSL_set_accept_state(ssl_);
    handshaking_ = true;
  }
  begin_request();
}

ClientConnection::~ClientConnection() {
  if (pipe_) pipe_->inner = nullptr;  // its slot goes now
  if (on_destroy) on_destroy(slot);
  request_.reset();
  if (ssl_) {
    close_notify();
    ::SSL_free(ssl_);
  }
  ::close(fd_);
  if (open_count_) open_count_->fetch_sub(1, std::memory_order_relaxed);
}

// ---- An HTTP/2 stream's lane ----

ssize_t ClientConnection::pipe_read(char* buf, size_t len) {
  LanePipe& p = *pipe_;
  const size_t n = std::min(len, p.pending());
  if (n == 0) {
    if (!p.front) return 0;  // the lane closed
    errno = EAGAIN;
    return -1;
  }
  std::memcpy(buf, p.request.data() + p.request_off, n);
  p.request_off += n;
  if (p.request_off == p.request.size()) {
    p.request.clear();
    p.request_off = 0;
  }
  if (p.front) p.front->request_taken();
  return static_cast<ssize_t>(n);
}

ssize_t ClientConnection::pipe_write(const iovec* iov, int count) {
  if (!pipe_->front) {
    errno = EPIPE;
    return -1;
  }
  // Only a loop-mode writer waits for EPOLLOUT; any other write is a small answer, taken whole.
  return pipe_->front->take_response(iov, count, loop_writes_);
}

void ClientConnection::leave_pipe() {
  if (!piped()) return;
  LanePipe& p = *pipe_;
  if (p.pending() > 0) in_.append(p.request, p.request_off);
  p.request.clear();
  p.request_off = 0;
  p.lent = true;
}

// ---- TLS ----

ClientConnection::Handshake ClientConnection::handshake_step(std::string& error) {
  if (!tls_peeked_) {
    // A TLS connection starts with a handshake record (0x16); a plain request line starts with a
    // method in capitals. Peeked, so OpenSSL still reads the whole ClientHello.
    unsigned char first = 0;
    ssize_t n;
    do n = ::recv(fd_, &first, 1, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n == 0) return Handshake::Closed;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? Handshake::NeedMore : Handshake::Closed;
    tls_peeked_ = true;
    if (first >= 'A' && first <= 'Z') {
      ::SSL_free(ssl_);  // nothing was read or written through it
      ssl_ = nullptr;
      handshaking_ = false;
      return Handshake::PlainHttp;
    }
  }
  ::ERR_clear_error();
  const int rc = ::SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshaking_ = false;
    tls_wants_ = 0;
    return Handshake::Done;
  }
  const int sys = errno;
  const int err = ::SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return Handshake::NeedMore;
  tls_broken_ = true;
  error.clear();
  while (const unsigned long e = ::ERR_get_error()) {
    if (!error.empty()) error += "; ";
    const char* reason = ::ERR_reason_error_string(e);
    error += reason ? reason : "error " + std::to_string(ERR_GET_REASON(e));
  }
  if (error.empty()) {
    error = err == SSL_ERROR_SYSCALL && sys != 0 ? std::string(std::strerror(sys))
                                                 : "the client closed the connection during the handshake";
  }
  return Handshake::Failed;
}

bool ClientConnection::tls_has_pending() const { return ::SSL_has_pending(ssl_) == 1; }

void ClientConnection::send_close_notify() {
  if (handshaking_ || tls_broken_ || tls_notified_) return;
  tls_notified_ = true;
  ::ERR_clear_error();
  ::SSL_shutdown(ssl_);  // one try: a full socket (or a peer gone) just gets no close_notify
  ::ERR_clear_error();
}

std::string_view ClientConnection::alpn() const {
  if (!ssl_) return {};
  const unsigned char* data = nullptr;
  unsigned int len = 0;
  ::SSL_get0_alpn_selected(ssl_, &data, &len);
  return data ? std::string_view(reinterpret_cast<const char*>(data), len) : std::string_view();
}

// An OpenSSL call that did not succeed, as recv(2)/send(2) would report it.
ssize_t ClientConnection::tls_failure(int rc, bool writing) {
  const int sys = errno;  // of the system call under OpenSSL, for SSL_ERROR_SYSCALL
  const int err = ::SSL_get_error(ssl_, rc);
  switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      tls_wants_ = err == SSL_ERROR_WANT_READ ? kWantRead : kWantWrite;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_ZERO_RETURN:  // close_notify received
      if (!writing) return 0;
      errno = EPIPE;
      return -1;
    case SSL_ERROR_SYSCALL: {
      tls_broken_ = true;
      const int e = sys;
      const bool queued = ::ERR_peek_error() != 0;
      ::ERR_clear_error();
      if (!writing && !queued && e == 0) return 0;  // EOF without close_notify: a client that just left
      errno = e != 0 && e != EAGAIN && e != EWOULDBLOCK ? e : ECONNRESET;
      return -1;
    }
    default:
      tls_broken_ = true;
      ::ERR_clear_error();
      errno = EPROTO;
      return -1;
  }
}

ssize_t ClientConnection::tls_read(char* buf, size_t len) {
  ::ERR_clear_error();
  size_t n = 0;
  const int rc = ::SSL_read_ex(ssl_, buf, len, &n);
  if (rc == 1) {
    tls_wants_ = 0;
    return static_cast<ssize_t>(n);
  }
  return tls_failure(rc, false);
}

// The iovecs in records of up to 16 KiB: each SSL_write_ex gets min(16 KiB, what is left) bytes,
// gathered when they span iovecs. The cut is a function of the bytes alone, so a write retried
// after EAGAIN (from the queue, or the worker's same iovecs) starts with the same bytes and at
// least the same length, which is what OpenSSL requires of a retry.
ssize_t ClientConnection::tls_write(const iovec* iov, int count) {
  char gather[kTlsRecord];
  size_t done = 0;
  int i = 0;
  size_t off = 0;  // into iov[i]
  for (;;) {
    while (i < count && off == iov[i].iov_len) {
      ++i;
      off = 0;
    }
    if (i == count) return static_cast<ssize_t>(done);
    const char* data = static_cast<const char*>(iov[i].iov_base) + off;
    size_t len = iov[i].iov_len - off;
    bool alone = len >= kTlsRecord;
    if (!alone) {
      alone = true;
      for (int j = i + 1; j < count && alone; ++j) alone = iov[j].iov_len == 0;
    }
    if (alone) {
      len = std::min(len, kTlsRecord);
    } else {
      len = 0;
      size_t o = off;
      for (int j = i; j < count && len < kTlsRecord;) {
        const size_t take = std::min(iov[j].iov_len - o, kTlsRecord - len);
        std::memcpy(gather + len, static_cast<const char*>(iov[j].iov_base) + o, take);
        len += take;
        o += take;
        if (o == iov[j].iov_len) {
          ++j;
          o = 0;
        }
      }
      data = gather;
    }
    ::ERR_clear_error();
    size_t n = 0;
    const int rc = ::SSL_write_ex(ssl_, data, len, &n);
    if (rc != 1) {
      const ssize_t r = tls_failure(rc, true);
      if (done > 0 && errno == EAGAIN) return static_cast<ssize_t>(done);
      return r;
    }
    tls_wants_ = 0;
    done += n;
    while (n > 0) {  // advance over what was written
      const size_t step = std::min(n, iov[i].iov_len - off);
      off += step;
      n -= step;
      if (off == iov[i].iov_len && n > 0) {
        ++i;
        off = 0;
      }
    }
  }
}

short ClientConnection::poll_events(short wanted) const {
  if (!ssl_ || tls_wants_ == 0) return wanted;
  return static_cast<short>(wanted | (tls_wants_ == kWantRead ? POLLIN : POLLOUT));
}

void ClientConnection::begin_request() {
  if (request_) request_->reset();  // one per connection: its header list keeps its capacity
  else request_ = std::make_unique<Request>(*this);
  parser_.begin(request_.get(), &request_->headers());
  body_done_ = false;
  continue_sent_ = false;
  write_timed_out_ = false;
}

// Feeds the buffered bytes (and, with none, an empty feed: that completes a body-less message).
ClientConnection::Progress ClientConnection::feed_buffered() {
  for (;;) {
    size_t used = 0;
    const auto ev = parser_.feed(in_.data() + in_off_, in_.size() - in_off_, used);
    in_off_ += used;
    if (in_off_ == in_.size()) {
      in_.clear();
      in_off_ = 0;
    }
    switch (ev) {
      case http::RequestParser::Event::HeadersDone: return Progress::HeadersDone;
      case http::RequestParser::Event::MessageDone: body_done_ = true; return Progress::NeedMore;
      case http::RequestParser::Event::Error: return Progress::Error;
      case http::RequestParser::Event::NeedMore: return Progress::NeedMore;
    }
  }
}

// Bytes just read, from a caller's buffer: header bytes are copied into the request by the parser
// and body bytes into the body, so only what follows a pause point (the body's first bytes after
// the headers, a pipelined request after a message) is kept in in_.
ClientConnection::Progress ClientConnection::feed_read(const char* data, size_t len) {
  size_t used = 0;
  const auto ev = parser_.feed(data, len, used);
  if (ev == http::RequestParser::Event::Error) return Progress::Error;
  if (used < len) in_.append(data + used, len - used);
  if (ev == http::RequestParser::Event::MessageDone) body_done_ = true;
  return ev == http::RequestParser::Event::HeadersDone ? Progress::HeadersDone : Progress::NeedMore;
}

// h2c with prior knowledge (RFC 9113 §3.3): the connection starts with the client preface. The
// first bytes are kept until they differ from it (then they are HTTP/1.1's, parsed as usual) or
// match it whole.
ClientConnection::Progress ClientConnection::first_bytes(const char* data, size_t len) {
  static constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  in_.append(data, len);
  const size_t k = std::min(in_.size() - in_off_, kPreface.size());
  if (std::string_view(in_).substr(in_off_, k) != kPreface.substr(0, k)) {
    h2c_check_ = false;
    return feed_buffered();
  }
  if (k < kPreface.size()) return Progress::NeedMore;
  h2c_check_ = false;
  return Progress::Http2;
}

std::string ClientConnection::take_buffered() {
  std::string out = in_.substr(in_off_);
  in_.clear();
  in_off_ = 0;
  return out;
}

ClientConnection::Progress ClientConnection::advance_buffered() {
  if (in_.empty() || h2c_check_) return Progress::NeedMore;
  return feed_buffered();
}

ClientConnection::Progress ClientConnection::advance_nonblocking() {
  if (!in_.empty() && !h2c_check_) {  // the start of a preface waits for the rest
    const Progress p = feed_buffered();
    if (p != Progress::NeedMore) return p;
  }
  char buf[kReadSize];
  // Until the socket has nothing more (the loop's events are edge-triggered); the header limits
  // bound what one connection can make it read.
  for (;;) {
    const ssize_t n = read_some(buf, sizeof buf);
    if (n > 0) {
      const Progress p = h2c_check_ ? first_bytes(buf, static_cast<size_t>(n)) : feed_read(buf, static_cast<size_t>(n));
      if (p != Progress::NeedMore) return p;
      continue;
    }
    if (n == 0) return Progress::Closed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Progress::NeedMore;
    return Progress::Closed;
  }
}

ClientConnection::Wait ClientConnection::wait_readable(Clock::time_point until) {
  if (ssl_ && ::SSL_has_pending(ssl_) == 1) return Wait::Ready;  // poll(2) cannot see these bytes
  for (;;) {
    if (stopping_ && stopping_->load(std::memory_order_relaxed)) return Wait::Stopped;
    const auto now = Clock::now();
    if (now >= until) return Wait::Timeout;
    const auto left = std::min(std::chrono::duration_cast<std::chrono::milliseconds>(until - now), kPollSlice);
    pollfd pfd{fd_, poll_events(POLLIN), 0};
    const int rc = ::poll(&pfd, 1, static_cast<int>(left.count()) + 1);
    if (rc > 0) return Wait::Ready;
    if (rc < 0 && errno != EINTR) return Wait::Stopped;
  }
}

ClientConnection::BodyResult ClientConnection::read_body(std::string& out) {
  const BodySinkScope sink(parser_, out);
  body_deadline_ = Clock::now() + limits_.body_timeout;
  if (parser_.expect_continue() && !continue_sent_ && !body_done_ && parser_.has_body()) {
    continue_sent_ = true;
    if (!send_all(kContinue)) return BodyResult::ClientGone;
  }
  auto failed = [&] { return parser_.error_status() == 413 ? BodyResult::TooLarge : BodyResult::Malformed; };
  if (feed_buffered() == Progress::Error) return failed();
  char buf[kReadSize];
  while (!body_done_) {
    switch (wait_readable(body_deadline_)) {
      case Wait::Ready: break;
      case Wait::Timeout: return BodyResult::Timeout;
      case Wait::Stopped: return BodyResult::ClientGone;
    }
    const ssize_t n = read_some(buf, sizeof buf);
    if (n == 0) return BodyResult::ClientGone;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return BodyResult::ClientGone;
    }
    if (feed_read(buf, static_cast<size_t>(n)) == Progress::Error) return failed();
  }
  return BodyResult::Ok;
}

bool ClientConnection::skip_body(uint64_t budget) {
  if (body_done_) return true;
  if (parser_.chunked() || parser_.content_length() > budget) return false;
  std::string discard;  // at most `budget` bytes
  return read_body(discard) == BodyResult::Ok;
}

ClientConnection::BodyStep ClientConnection::read_body_step(std::string& out) {
  const BodySinkScope sink(parser_, out);
  auto failed = [&] { return parser_.error_status() == 413 ? BodyStep::TooLarge : BodyStep::Malformed; };
  if (!in_.empty() || !body_done_) {
    if (feed_buffered() == Progress::Error) return failed();
  }
  char buf[kReadSize];
  while (!body_done_) {
    const ssize_t n = read_some(buf, sizeof buf);
    if (n == 0) return BodyStep::ClientGone;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return BodyStep::NeedMore;
      return BodyStep::ClientGone;
    }
    if (feed_read(buf, static_cast<size_t>(n)) == Progress::Error) return failed();
  }
  return BodyStep::Done;
}

void ClientConnection::send_continue() {
  continue_sent_ = true;
  send_all(kContinue);
}

bool ClientConnection::flush_queued() {
  while (out_off_ < out_.size()) {
    const ssize_t n = write_some(out_.data() + out_off_, out_.size() - out_off_);
    if (n > 0) {
      out_off_ += static_cast<size_t>(n);
      last_write_progress_ = Clock::now();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    return false;
  }
  out_.clear();
  out_off_ = 0;
  return true;
}

bool ClientConnection::send_all(iovec* iov, int count, std::chrono::milliseconds timeout) {
  if (loop_writes_) {
    // Never blocks: behind bytes already queued, or whatever one sendmsg does not take, queued.
    size_t total = 0;
    for (int i = 0; i < count; ++i) total += iov[i].iov_len;
    if (total == 0) return true;
    size_t skip = 0;
    if (out_off_ == out_.size()) {
      ssize_t n;
      do n = write_some(iov, count);
      while (n < 0 && errno == EINTR);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
      if (n > 0) {
        skip = static_cast<size_t>(n);
        last_write_progress_ = Clock::now();
      }
      if (skip == total) return true;
      out_.clear();
      out_off_ = 0;
      last_write_progress_ = Clock::now();  // the send timeout counts from the first queued byte
    }
    for (int i = 0; i < count; ++i) {
      const size_t len = iov[i].iov_len;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      out_.append(static_cast<const char*>(iov[i].iov_base) + skip, len - skip);
      skip = 0;
    }
    return true;
  }
  if (out_off_ < out_.size()) {  // what a loop queued goes first
    std::string queued = out_.substr(out_off_);
    out_.clear();
    out_off_ = 0;
    iovec q{queued.data(), queued.size()};
    if (!send_all(&q, 1, timeout)) return false;
  }
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(count);
  auto last_progress = Clock::now();
  while (msg.msg_iovlen > 0) {
    if (msg.msg_iov->iov_len == 0) {
      ++msg.msg_iov;
      --msg.msg_iovlen;
      continue;
    }
    const ssize_t n = write_some(msg.msg_iov, static_cast<int>(msg.msg_iovlen));
    if (n > 0) {
      last_progress = Clock::now();
      size_t left = static_cast<size_t>(n);
      while (left > 0) {
        if (left >= msg.msg_iov->iov_len) {
          left -= msg.msg_iov->iov_len;
          ++msg.msg_iov;
          --msg.msg_iovlen;
        } else {
          msg.msg_iov->iov_base = static_cast<char*>(msg.msg_iov->iov_base) + left;
          msg.msg_iov->iov_len -= left;
          left = 0;
        }
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The client is not reading: wait for room, at most `timeout` without progress.
      for (;;) {
        if (stopping_ && stopping_->load(std::memory_order_relaxed)) return false;
        const auto idle = Clock::now() - last_progress;
        if (idle >= timeout) {
          write_timed_out_ = true;
          return false;
        }
        const auto left = std::min(std::chrono::duration_cast<std::chrono::milliseconds>(timeout - idle), kPollSlice);
        pollfd pfd{fd_, poll_events(POLLOUT), 0};
        const int rc = ::poll(&pfd, 1, static_cast<int>(left.count()) + 1);
        if (rc > 0) {
          if (pfd.revents & (POLLERR | POLLHUP)) return false;
          break;
        }
        if (rc < 0 && errno != EINTR) return false;
      }
      continue;
    }
    return false;  // EPIPE, ECONNRESET, …: the client is gone
  }
  return true;
}

void ClientConnection::reject(int status, const std::string& message, std::chrono::milliseconds timeout,
                              const std::string& code) {
  const std::string& uri = parser_.target().empty() ? request_->getURI() : parser_.target();  // as much as arrived
  const auto flavour = pipeline::Router::guess_flavour(uri.empty() ? std::string_view("/") : std::string_view(uri));
  const std::string body = pipeline::error_body(flavour, {status, message, "", code});
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + pipeline::reason_phrase(status) +
                    "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nX-Request-ID: " + pipeline::generate_request_id() + "\r\nDate: " + http_date() +
                    "\r\nConnection: close\r\n\r\n" + body;
  iovec v{out.data(), out.size()};
  send_all(&v, 1, timeout);
}

// ---------------------------------------------------------------------------------------------
// Request

Request::Request(ClientConnection& conn) : conn_(conn) {}
Request::~Request() = default;

void Request::reset() {
  // As a fresh HTTPRequest (GET / HTTP/1.0, no headers) until the parser fills it in.
  clear();
  setMethod(HTTP_GET);
  setURI("/");
  setVersion(HTTP_1_0);
  headers_.clear();
  synced_ = false;
  response_ = nullptr;
  body_stream_.reset();
}

void Request::sync_poco_headers() {
  if (synced_) return;
  synced_ = true;
  for (const auto& [name, value] : headers_) add(name, value);
}

const Poco::Net::HTTPServerParams& Request::serverParams() const {
  static const Poco::Net::HTTPServerParams::Ptr params = new Poco::Net::HTTPServerParams;
  return *params;
}

// The pipeline reads bodies through ClientConnection::read_body; this stream is for code written
// against Poco's interface: it reads the whole body (same limits) and serves it from memory.
std::istream& Request::stream() {
  if (!body_stream_) {
    std::string body;
    conn_.read_body(body);
    body_stream_ = std::make_unique<std::istringstream>(std::move(body));
  }
  return *body_stream_;
}

// ---------------------------------------------------------------------------------------------
// Response

class Response::StreamBuf final : public std::streambuf {
public:
  explicit StreamBuf(Response& r) : r_(r) {}

protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    return r_.write(std::string_view(s, static_cast<size_t>(n)), r_.chunked_) ? n : 0;
  }
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    const char ch = traits_type::to_char_type(c);
    return r_.write(std::string_view(&ch, 1), r_.chunked_) ? c : traits_type::eof();
  }
  int sync() override { return r_.write({}, false) ? 0 : -1; }

private:
  Response& r_;
};

Response::Response(ClientConnection& conn, bool head_request, bool client_keep_alive)
    : conn_(conn), head_request_(head_request), keep_alive_(client_keep_alive), pending_(util::spare_string()) {
  setVersion(HTTP_1_1);  // what getKeepAlive() reads when no Connection header is set
}

Response::~Response() { util::give_string(pending_); }

void Response::head_block(std::string& block) {
  // A body the client sent but the handler did not read must not be parsed as the next request:
  // a short one is skipped after the response, anything else closes the connection.
  if (conn_.body_pending() && (conn_.parser().chunked() || conn_.parser().content_length() > 64 * 1024)) keep_alive_ = false;
  if (!getKeepAlive()) keep_alive_ = false;
  chunked_ = framing_ == Framing::Headers ? getChunkedTransferEncoding() : framing_ == Framing::Chunked;
  const int status = static_cast<int>(getStatus());
  const bool bodiless = head_request_ || status == 204 || status == 304 || status < 200;
  const bool has_length = framing_ == Framing::Headers ? hasContentLength() : framing_ == Framing::Length;
  if (!chunked_ && !has_length && !bodiless) keep_alive_ = false;  // ends with the connection
  erase("Connection");
  erase("Keep-Alive");
  block.reserve(block.size() + 256);
  block += "HTTP/1.1 ";
  block += std::to_string(status);
  block += ' ';
  block += getReason().empty() ? pipeline::reason_phrase(status) : getReason();
  block += "\r\n";
  auto append = [&block](const auto& headers) {
    for (const auto& [name, value] : headers) {
      block += name;
      block += ": ";
      block += value;
      block += "\r\n";
    }
  };
  // Date and X-Request-ID are stamped here, not kept as headers: no copies per response.
  if (stamp_date_ && !has("Date")) {
    block += "Date: ";
    block += http_date();
    block += "\r\n";
  }
  if (request_id_ && !has("X-Request-ID")) {
    block += "X-Request-ID: ";
    block += *request_id_;
    block += "\r\n";
  }
  if (framing_ == Framing::Chunked) {
    block += "Transfer-Encoding: chunked\r\n";
  } else if (framing_ == Framing::Length) {
    char digits[24];
    const auto r = std::to_chars(digits, digits + sizeof digits, length_);
    block += "Content-Length: ";
    block.append(digits, r.ptr);
    block += "\r\n";
  }
  append(*this);
  if (forwarded_) append(*forwarded_);
  if (!keep_alive_) block += "Connection: close\r\n";
  else if (conn_.request().getVersion() == Poco::Net::HTTPMessage::HTTP_1_0) block += "Connection: keep-alive\r\n";
  block += "\r\n";
}

void Response::start() {
  if (sent_) throw Poco::IllegalStateException("response already sent");
  sent_ = true;
  head_block(pending_);
}

std::ostream& Response::send() {
  start();
  buf_ = std::make_unique<StreamBuf>(*this);
  out_ = std::make_unique<std::ostream>(buf_.get());
  return *out_;
}

// Body bytes (framed as one chunk when `chunk_frame`); an empty view flushes what is pending.
bool Response::write(std::string_view body, bool chunk_frame) {
  if (failed_ || finished_) return false;
  if (head_request_) body = {};
  if (!body.empty() && pending_.size() + body.size() < kSmallWrite) {
    if (chunk_frame) {
      char hex[24];
      pending_.append(hex, chunk_size_line(hex, body.size()));
    }
    pending_.append(body);
    if (chunk_frame) pending_.append("\r\n");
    return true;
  }
  char hex[24];
  int hex_len = 0;
  if (chunk_frame && !body.empty()) hex_len = static_cast<int>(chunk_size_line(hex, body.size()));
  static const char crlf[] = "\r\n";
  iovec iov[4] = {{pending_.data(), pending_.size()},
                  {hex, static_cast<size_t>(hex_len)},
                  {const_cast<char*>(body.data()), body.size()},
                  {const_cast<char*>(crlf), chunk_frame && !body.empty() ? 2u : 0u}};
  const bool ok = conn_.send_all(iov, 4, conn_.limits().send_timeout);
  pending_.clear();
  if (!ok) failed_ = true;
  return ok;
}

void Response::sendContinue() {
  if (!conn_.send_all(kContinue)) failed_ = true;
}

void Response::sendBuffer(const void* buffer, std::size_t length) {
  setContentLength64(static_cast<Poco::Int64>(length));
  setChunkedTransferEncoding(false);
  std::ostream& out = send();
  write(std::string_view(static_cast<const char*>(buffer), length), false);
  write({}, false);
  if (failed_) out.setstate(std::ios::badbit);
}

void Response::sendFile(const std::string&, const std::string&) {
  throw Poco::NotImplementedException("sendFile");
}

void Response::redirect(const std::string& uri, HTTPStatus status) {
  setStatusAndReason(status);
  set("Location", uri);
  sendBuffer("", 0);
}

void Response::requireAuthentication(const std::string& realm) {
  setStatusAndReason(HTTP_UNAUTHORIZED);
  set("WWW-Authenticate", "Basic realm=\"" + realm + "\"");
  sendBuffer("", 0);
}

bool Response::finish() {
  if (finished_) return false;
  if (!sent_) {
    setStatusAndReason(HTTP_INTERNAL_SERVER_ERROR);
    sendBuffer("", 0);
  }
  if (!aborted_ && !failed_ && chunked_ && !head_request_) pending_.append("0\r\n\r\n");
  write({}, false);
  finished_ = true;
  return keep_alive_ && !aborted_ && !failed_;
}

}  // namespace glmp::core::server
