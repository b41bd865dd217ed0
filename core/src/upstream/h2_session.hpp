#pragma once
// One HTTP/2 connection to an upstream, carrying many requests at once (docs/design.md, "Upstream
// HTTP/2"). nghttp2 does the framing, HPACK and flow-control bookkeeping; the session feeds it the
// bytes of its Connection (TCP or TLS, owned by one event loop) and writes what it produces.
//
// - Streams: an exchange (an H2Stream) submits its request and gets the response head, the body
//   pieces (views into the loop's read buffer, valid during the call) and the end.
// - Flow control: automatic WINDOW_UPDATEs are off. The connection window is given back as soon as
//   a DATA frame is read; a stream's window only when its exchange has relayed the bytes
//   (consume()), which it stops doing while its client is slow. So a slow client stalls its own
//   stream and never its neighbours, and memory per stream stays bounded by the stream window.
// - GOAWAY: no new streams; those the peer refused (above last_stream_id, or REFUSED_STREAM) end
//   with `refused` so their exchanges retry on another connection; the connection closes once the
//   accepted ones are done.
// - Liveness: an idle session sends a PING every ping_interval; one unanswered for
//   connect_timeout closes the connection. An idle session older than idle_timeout closes.
// Everything runs on the loop that owns the connection; nothing here takes a lock.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/headers.hpp"
#include "server/event_loop.hpp"
#include "upstream/pool.hpp"

typedef struct nghttp2_session nghttp2_session;

namespace glmp::core::upstream {

class H2Session;

// The request side of one stream, and what it is told. Owned by its user (an exchange), which
// must cancel() an open stream before it goes away.
class H2Stream {
public:
  virtual ~H2Stream() = default;
  // The final response head (1xx skipped): status, fields in *headers.
  virtual void h2_head(int status) = 0;
  // A body piece. The user relays it and calls session->consume(*this, n) when its client took it.
  virtual void h2_data(std::string_view bytes) = 0;
  // The stream is over: error_code 0 = complete (END_STREAM); `refused` = the peer never
  // processed it (REFUSED_STREAM, or above a GOAWAY's last_stream_id): safe to send again.
  virtual void h2_end(uint32_t error_code, bool refused, const std::string& why) = 0;

  // Set by the user before submit().
  http::Headers* h2_headers = nullptr;  // the response's fields go here
  std::string_view h2_body;             // the request body; must live until the stream ends
  // The session's bookkeeping.
  H2Session* h2_session = nullptr;
  int32_t h2_id = 0;
  size_t h2_body_sent = 0;
  size_t h2_unconsumed = 0;  // bytes relayed but not yet given back to the stream window
  size_t h2_slot = 0;        // index in the session's list of open streams
  bool h2_head_seen = false;  // the final head was delivered (h2_head)
  int h2_status = 0;          // the :status of the HEADERS block being read
  size_t h2_head_bytes = 0;   // decoded field bytes of the head so far (http::kMaxResponseHeadBytes)
  bool h2_head_too_large = false;
};

// The request to submit: pseudo-headers and fields, lowercase names.
struct H2Request {
  std::string method, path;  // :method, :path (with the query)
  std::vector<std::pair<std::string, std::string>> fields;  // lowercase names
};

// A Watcher only so that the loop can free it after the current batch of events (retire).
class H2Session final : public ConnectionUser, public server::Watcher {
public:
  // `conn` is connecting or established (then with ALPN h2, or plain for h2c); the session owns it.
  H2Session(Pool& pool, std::unique_ptr<Connection> conn, server::EventLoop& ev);
  ~H2Session() override;
  H2Session(const H2Session&) = delete;
  H2Session& operator=(const H2Session&) = delete;

  // Starts the handshake (or reads what an established connection holds). Called by the pool once
  // the session is in its loop's list: it may fail, and close, at once.
  void start();
  const std::string& error() const { return error_; }
  // Room for one more stream: alive, not going away, open streams below both limits.
  bool can_take() const;
  // Alive and not going away (it may free room later).
  bool usable() const { return !dead_ && !going_away_; }
  // Submits `s`'s request; false with `error` when nghttp2 refuses it.
  bool submit(H2Stream& s, const H2Request& req, std::string& error);
  // The user relayed `n` bytes of its stream: give them back to the stream's window.
  void consume(H2Stream& s, size_t n);
  // The user no longer wants the stream (client gone, timeout): RST_STREAM(CANCEL), detached.
  void cancel(H2Stream& s);

  size_t open_streams() const { return open_; }
  // Any thread (stats).
  size_t open_streams_now() const { return open_now_.load(std::memory_order_relaxed); }
  size_t loop() const { return loop_; }
  // The pool takes the connection back when the session closes.
  std::unique_ptr<Connection> take_connection() { return std::move(conn_); }
  bool dead() const { return dead_; }
  uint64_t serial() const { return serial_; }
  Connection& connection() { return *conn_; }

  void on_upstream_event(uint32_t events) override;
  void on_event(uint32_t) override {}  // the connection is the registered watcher

  // nghttp2's callbacks (C functions in the .cpp) reach these.
  struct Access;

private:
  friend struct Access;
  void establish();
  void start_session();
  void read_all();
  void flush();
  void after_io();
  // The connection is unusable: every open stream ends with `why`; the pool closes the session.
  void terminate(const std::string& why, bool connect_failure);
  // Done: the pool closes the connection and frees the session after this event.
  void close();
  void forget(H2Stream& s);
  void arm_tick();
  void on_tick();
  void stream_closed(H2Stream* s, int32_t id, uint32_t error_code);

  Pool& pool_;
  std::unique_ptr<Connection> conn_;
  server::EventLoop& ev_;
  nghttp2_session* ng_ = nullptr;
  uint64_t serial_;
  size_t loop_ = 0;
  std::vector<H2Stream*> users_;  // open streams with a user (cancelled ones are not here)
  bool closing_ = false;
  std::string error_;  // why it was terminated
  bool established_ = false;
  bool dead_ = false;
  bool going_away_ = false;
  int32_t goaway_last_id_ = 0x7fffffff;
  bool readable_ = false;
  int depth_ = 0;             // inside nghttp2 callbacks / our own event handling: flush at the end
  size_t open_ = 0;           // streams submitted and not closed (including cancelled ones)
  std::atomic<size_t> open_now_{0};
  std::string out_;           // frames nghttp2 produced that the socket has not taken yet
  size_t out_off_ = 0;
  Clock::time_point created_, idle_since_, ping_sent_{};
  bool ping_outstanding_ = false;
  server::EventLoop::Timer tick_;
};

}  // namespace glmp::core::upstream
