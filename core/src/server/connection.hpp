#pragma once
// One client connection and the request/response objects the pipeline sees (docs/design.md,
// "HTTP/1.1 server and hostile input").
//
// A connection has exactly one owner at a time: its event loop (idle, receiving headers, or
// carrying a proxied request), or a worker thread it is lent to (admin and plugin routes, hooks of
// blocking plugins). Hand-overs go through a mutex-protected queue, so nothing in here is shared
// between threads. The socket is non-blocking throughout. Writes come in two modes: on a loop
// (loop_writes on) what the socket does not take at once is queued and flushed on EPOLLOUT; on a
// worker, a write waits with poll(2) against server.send_timeout without progress, as does a
// worker's body read against server.body_timeout.
//
// TLS (docs/design.md, "TLS listener"): when the engine hands a connection an SSL object, the
// handshake runs first, non-blocking, on the loop's events (handshake_step), and every read and
// write goes through read_some/write_some: plain recv/send(msg), or SSL_read_ex/SSL_write_ex with
// want-read/want-write reported as EAGAIN. The plain path pays one branch on ssl_ for it.
//
// Request and Response implement Poco's HTTPServerRequest/HTTPServerResponse, so the pipeline and
// the plugin host API keep one interface whatever parses the bytes.

#include <atomic>
#include <chrono>
#include <istream>
#include <memory>
#include <ostream>
#include <string>

#include <sys/socket.h>
#include <sys/uio.h>

#include <openssl/types.h>

#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SocketAddress.h>

#include "http/headers.hpp"
#include "http/request_parser.hpp"
#include "server/lane_pipe.hpp"

namespace glmp::core::server {

using Clock = std::chrono::steady_clock;

struct ConnectionLimits {
  http::RequestLimits request;
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{60'000};
  std::chrono::milliseconds keepalive_timeout{10'000};
  std::chrono::milliseconds send_timeout{30'000};
};

class Request;
class Response;

class ClientConnection {
public:
  // `ssl` (owned): a TLS connection, in accept state once constructed; null: plain HTTP.
  ClientConnection(int fd, const Poco::Net::SocketAddress& peer, const Poco::Net::SocketAddress& local,
                   const ConnectionLimits& limits, std::atomic<int>* open_count, const std::atomic<bool>* stopping,
                   SSL* ssl = nullptr);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  // Http2: the connection opened with HTTP/2's client preface (h2c with prior knowledge, only
  // after expect_h2c()); the preface and what followed it are buffered (take_buffered()).
  enum class Progress { NeedMore, HeadersDone, Error, Closed, Http2 };

  // Starts parsing the next request (a fresh Request object).
  void begin_request();
  // Feeds what is buffered, then reads without blocking until the socket has nothing more
  // (event loop). Closed = the peer closed (or reset) between requests.
  Progress advance_nonblocking();
  // Feeds only what is already buffered (pipelined bytes after a response).
  Progress advance_buffered();
  // A plain connection's first bytes are compared with HTTP/2's client preface before they reach
  // the HTTP/1.1 parser ([server] http2 on the plain listener).
  void expect_h2c() { h2c_check_ = true; }
  // The bytes read but not parsed (the HTTP/2 front takes the preface and what followed).
  std::string take_buffered();

  // Worker side, after HeadersDone: reads the body into `out` (grows with the bytes that arrive,
  // never sized from Content-Length). Sends 100 Continue first when the client asked for it.
  enum class BodyResult { Ok, TooLarge, Malformed, Timeout, ClientGone };
  BodyResult read_body(std::string& out);
  // Reads and drops what is left of the body (up to `budget` bytes) so the connection can be
  // reused; false when it cannot (too much left, timeout, error).
  bool skip_body(uint64_t budget);
  bool body_complete() const { return body_done_; }
  bool body_pending() const { return !body_done_ && parser_.has_body(); }

  // ---- Loop side ----
  // Reads the request body without blocking into `out` (grows with the bytes that arrive; the
  // caller sends 100 Continue first when continue_wanted()). Done when the body is complete.
  enum class BodyStep { Done, NeedMore, TooLarge, Malformed, ClientGone };
  BodyStep read_body_step(std::string& out);
  bool continue_wanted() const {
    return parser_.expect_continue() && !continue_sent_ && !body_done_ && parser_.has_body();
  }
  void send_continue();
  // Loop mode: writes never block; what the socket does not take is queued (see flush_queued).
  void set_loop_writes(bool on) { loop_writes_ = on; }
  bool loop_writes() const { return loop_writes_; }
  size_t queued() const { return out_.size() - out_off_; }
  // Sends what is queued without blocking; false when the client is gone.
  bool flush_queued();
  Clock::time_point last_write_progress() const { return last_write_progress_; }
  void mark_write_timed_out() { write_timed_out_ = true; }

  // Writes bounded by send_timeout without progress (loop mode: queued, never blocking) (also used by the loop for its
  // small error answers, with a short timeout). False when the client is gone or stopped reading.
  bool send_all(iovec* iov, int count, std::chrono::milliseconds timeout);
  bool send_all(std::string_view bytes) {
    iovec v{const_cast<char*>(bytes.data()), bytes.size()};
    return send_all(&v, 1, limits_.send_timeout);
  }
  // Answers a request that failed parsing (or a limit) with its status and a JSON error in the
  // flavour its path suggests (`code`: the OpenAI error code, "" = null), then the connection must
  // be closed. `timeout`: how long the answer may wait for room in the send buffer (0 from the
  // event loop).
  void reject(int status, const std::string& message, std::chrono::milliseconds timeout, const std::string& code = {});

  // ---- TLS ----
  bool secure() const { return ssl_ != nullptr; }
  // True until the TLS handshake is done (never for a plain connection).
  bool handshaking() const { return handshaking_; }
  enum class Handshake { Done, NeedMore, PlainHttp, Failed, Closed };
  // Loop thread, on the connection's events until it returns something else than NeedMore. The
  // first byte is peeked: an ASCII capital starts a plain HTTP request line (PlainHttp: the
  // connection is plain from then on, for the 400 that says so); anything else goes to OpenSSL.
  // Failed: `error` says why (OpenSSL's reason, never key material). Closed: the client left
  // before sending a byte.
  Handshake handshake_step(std::string& error);
  // A byte of the handshake has arrived (a handshake cut after it counts as failed).
  bool handshake_started() const { return tls_peeked_; }
  // OpenSSL holds bytes (decrypted or not) that epoll cannot report.
  bool tls_buffered() const { return ssl_ && tls_has_pending(); }
  // The last TLS operation waits for the socket to be writable (a read that has to write first).
  bool tls_wants_write() const { return ssl_ && tls_wants_ == kWantWrite; }
  // Sends close_notify once (SSL_shutdown, non-blocking: dropped if the socket is full); before
  // shutdown(SHUT_WR) and close. Nothing for a plain connection or one whose TLS failed.
  void close_notify() {
    if (ssl_) send_close_notify();
  }
  // The protocol ALPN selected ("" when none).
  std::string_view alpn() const;
  // The transport itself, for a protocol that runs over the connection instead of its HTTP/1.1
  // parser (HTTP/2: server::H2Front). recv(2)/send(2) contract, as read_some/write_some.
  ssize_t transport_read(char* buf, size_t len) { return read_some(buf, len); }
  ssize_t transport_write(const char* data, size_t len) { return write_some(data, len); }

  // ---- An HTTP/2 stream's lane (server/lane_pipe.hpp) ----
  // The inner end of a lane: reads and writes go through `pipe` while the connection is on its
  // loop; the descriptor stays for events and for a worker.
  void set_pipe(std::shared_ptr<LanePipe> pipe) { pipe_ = std::move(pipe); }
  LanePipe* pipe() const { return pipe_.get(); }
  // Loop thread, before the connection goes to a worker: the request bytes still in the pipe are
  // buffered here, and from now on the lane's socket carries the bytes (the front sees `lent`).
  void leave_pipe();

  int fd() const { return fd_; }
  const Poco::Net::SocketAddress& peer() const { return peer_; }
  // The peer's address as text ("127.0.0.1", "::1"), formatted once per connection.
  const std::string& peer_host() const {
    if (peer_host_.empty()) peer_host_ = peer_.host().toString();
    return peer_host_;
  }
  const Poco::Net::SocketAddress& local() const { return local_; }
  Request& request() { return *request_; }
  http::RequestParser& parser() { return parser_; }
  const ConnectionLimits& limits() const { return limits_; }
  bool write_timed_out() const { return write_timed_out_; }
  bool started() const { return parser_.started(); }

  // The loop's deadline for this connection (header or keep-alive), set when it takes it.
  Clock::time_point deadline{};
  // The loop's bookkeeping: its slot, told when the connection is destroyed.
  void* slot = nullptr;
  void (*on_destroy)(void* slot) = nullptr;
  // Set by the worker: the connection must close (after a lingering read) instead of serving more.
  bool close_after = false;

private:
  Progress feed_buffered();
  Progress feed_read(const char* data, size_t len);
  Progress first_bytes(const char* data, size_t len);
  enum class Wait { Ready, Timeout, Stopped };
  Wait wait_readable(Clock::time_point deadline);

  // The transport, one pair for every read and write site. recv(2)'s contract: > 0 bytes, 0 the
  // peer closed, -1 with errno (EAGAIN: nothing now; for TLS also an incomplete record, or a
  // want-write). Plain: the system call itself, behind one branch.
  ssize_t read_some(char* buf, size_t len) {
    if (ssl_) [[unlikely]] return tls_read(buf, len);
    if (piped()) return pipe_read(buf, len);
    return ::recv(fd_, buf, len, 0);
  }
  // > 0 bytes taken, -1 with errno (EAGAIN: the socket is full). TLS: the iovecs are gathered
  // into records of up to 16 KiB; a write that got EAGAIN must be retried with the same bytes
  // first (the queue keeps them), as OpenSSL requires.
  ssize_t write_some(const iovec* iov, int count) {
    if (ssl_) [[unlikely]] return tls_write(iov, count);
    if (piped()) return pipe_write(iov, count);
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = static_cast<size_t>(count);
    return ::sendmsg(fd_, &m, MSG_NOSIGNAL);
  }
  ssize_t write_some(const char* data, size_t len) {
    if (ssl_) [[unlikely]] {
      const iovec v{const_cast<char*>(data), len};
      return tls_write(&v, 1);
    }
    if (piped()) {
      const iovec v{const_cast<char*>(data), len};
      return pipe_write(&v, 1);
    }
    return ::send(fd_, data, len, MSG_NOSIGNAL);
  }
  // Reads and writes go through pipe_: an HTTP/2 lane whose inner connection is on its loop (a
  // worker's thread reads `lent`, set before the hand-over and never changed after).
  bool piped() const { return pipe_ && !pipe_->lent; }
  ssize_t pipe_read(char* buf, size_t len);
  ssize_t pipe_write(const iovec* iov, int count);
  bool tls_has_pending() const;
  void send_close_notify();
  ssize_t tls_read(char* buf, size_t len);
  ssize_t tls_write(const iovec* iov, int count);
  ssize_t tls_failure(int rc, bool writing);
  // poll(2) events the socket needs for the current operation, given what TLS last asked for.
  short poll_events(short wanted) const;

  static constexpr uint8_t kWantRead = 1, kWantWrite = 2;

  int fd_;
  Poco::Net::SocketAddress peer_, local_;
  mutable std::string peer_host_;
  const ConnectionLimits& limits_;
  std::atomic<int>* open_count_;
  const std::atomic<bool>* stopping_;
  http::RequestParser parser_;
  std::unique_ptr<Request> request_;
  std::string in_;      // bytes read but not parsed yet (beyond a pause point)
  size_t in_off_ = 0;
  bool body_done_ = false;
  bool continue_sent_ = false;
  bool write_timed_out_ = false;
  Clock::time_point body_deadline_{};
  bool loop_writes_ = false;
  std::string out_;     // loop mode: bytes the socket has not taken yet
  size_t out_off_ = 0;
  Clock::time_point last_write_progress_{};
  SSL* ssl_ = nullptr;
  bool handshaking_ = false;
  bool tls_peeked_ = false;    // the first byte was looked at
  bool tls_broken_ = false;    // a fatal TLS error or an unclean EOF: no close_notify
  bool tls_notified_ = false;  // close_notify sent
  uint8_t tls_wants_ = 0;      // kWantRead / kWantWrite: what the last TLS operation waits for
  std::shared_ptr<LanePipe> pipe_;  // an HTTP/2 lane's inner end (shared with the lane)
  bool h2c_check_ = false;          // the first bytes may be HTTP/2's client preface
};

// The request as the pipeline sees it. stream() reads the body through the connection.
class Request final : public Poco::Net::HTTPServerRequest {
public:
  explicit Request(ClientConnection& conn);
  ~Request() override;
  std::istream& stream() override;
  const Poco::Net::SocketAddress& clientAddress() const override { return conn_.peer(); }
  const Poco::Net::SocketAddress& serverAddress() const override { return conn_.local(); }
  const Poco::Net::HTTPServerParams& serverParams() const override;
  Poco::Net::HTTPServerResponse& response() const override { return *response_; }
  bool secure() const override { return conn_.secure(); }

  void set_response(Poco::Net::HTTPServerResponse* r) { response_ = r; }
  // Ready for the connection's next request.
  void reset();
  // The header fields as received, in order (the parser fills them; one list per connection,
  // its slots reused from request to request). The proxy path reads these; Poco's collection
  // (get(), has(), … of the base class) stays empty until sync_poco_headers().
  const http::Headers& headers() const { return headers_; }
  http::Headers& headers() { return headers_; }
  // Copies the fields into Poco's collection, for handlers written against HTTPServerRequest
  // (admin, health, stats, plugin routes). Idempotent per request.
  void sync_poco_headers();
  ClientConnection& connection() { return conn_; }
  const ClientConnection& connection() const { return conn_; }

private:
  ClientConnection& conn_;
  Poco::Net::HTTPServerResponse* response_ = nullptr;
  std::unique_ptr<std::istream> body_stream_;
  http::Headers headers_;
  bool synced_ = false;
};

// The response: headers and body written straight to the socket (writev), chunked or with a
// Content-Length. abort() ends it without the terminating chunk and closes the connection, so a
// client can always tell a cut response from a complete one.
class Response final : public Poco::Net::HTTPServerResponse {
public:
  Response(ClientConnection& conn, bool head_request, bool client_keep_alive);
  ~Response() override;
  void sendContinue() override;
  std::ostream& send() override;
  void sendFile(const std::string& path, const std::string& mediaType) override;
  void sendBuffer(const void* buffer, std::size_t length) override;
  void redirect(const std::string& uri, HTTPStatus status) override;
  void requireAuthentication(const std::string& realm) override;
  bool sent() const override { return sent_; }

  // The proxy's relay, without the ostream send() builds: start() is send() (the head is queued
  // with the first body bytes), write_body() frames one piece (a chunk when chunked), flush()
  // hands what is gathered to the connection. false when the client is gone or not reading.
  void start();
  bool write_body(std::string_view bytes) { return write(bytes, chunked_); }
  bool flush() { return write({}, false); }
  // Bytes gathered (the head, small body pieces) that flush() would send.
  bool has_pending() const { return !pending_.empty(); }
  // X-Request-ID, written with the head (unless set as a header); `id` must outlive start().
  void set_request_id(const std::string* id) { request_id_ = id; }
  // No Date header of the proxy's own (the forwarded headers carry the upstream's).
  void omit_date() { stamp_date_ = false; }
  // Headers sent after this response's own (the upstream's, already filtered), not copied into it.
  // The collection must outlive start().
  void forward_headers(const http::Headers* headers) { forwarded_ = headers; }
  // The relay's framing, kept here rather than as Transfer-Encoding / Content-Length headers in
  // the Poco collection (which head_block would search): chunked, or exactly `length` bytes.
  void set_framing(bool chunked, int64_t length) {
    framing_ = chunked ? Framing::Chunked : Framing::Length;
    length_ = length;
  }

  // Ends the response (flush; the terminating chunk unless aborted). Returns true when the
  // connection may carry another request.
  bool finish();
  void abort() { aborted_ = true; }
  bool aborted() const { return aborted_; }
  bool failed() const { return failed_; }  // a write failed (client gone or not reading)

private:
  class StreamBuf;
  friend class StreamBuf;
  void head_block(std::string& block);  // appends the status line and headers
  bool write(std::string_view body, bool chunk_frame);

  ClientConnection& conn_;
  bool head_request_;
  bool keep_alive_;
  bool sent_ = false, chunked_ = false, aborted_ = false, failed_ = false, finished_ = false;
  std::string pending_;  // header block and small writes not sent yet
  const http::Headers* forwarded_ = nullptr;
  enum class Framing { Headers, Chunked, Length };  // Headers: whatever the Poco collection says
  Framing framing_ = Framing::Headers;
  int64_t length_ = 0;
  const std::string* request_id_ = nullptr;
  bool stamp_date_ = true;
  std::unique_ptr<StreamBuf> buf_;
  std::unique_ptr<std::ostream> out_;
};

}  // namespace glmp::core::server
