#pragma once
// HTTP/2 for the mock upstream: one nghttp2 server session per connection that became HTTP/2
// (h2c with prior knowledge on the plain listener, ALPN "h2" over TLS). The session does no I/O:
// the connection (mock_server.cpp) feeds it the bytes it read and sends the frames it produces,
// on its own non-blocking socket, from its own event loop.
//
// Every request stream gets the same Handler as an HTTP/1.1 request, and its script is played
// per stream: the HTTP/1.1 head the handler writes becomes HEADERS (hop-by-hop fields dropped),
// the bytes after it DATA, as they are produced; a wait is a per-stream timer, a reset is
// RST_STREAM(INTERNAL_ERROR). Steps are pulled only while the stream has little queued, and the
// queue drains only as HTTP/2 flow control lets it (the DATA callback defers when it is empty and
// the stream is resumed when more comes), so a 100 MB body takes constant memory and a peer that
// does not open its window stops the generation.

#include <nghttp2/nghttp2.h>
#include <time.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mock_handler.hpp"

namespace glmp::mock {

// CLOCK_MONOTONIC nanoseconds: the clock of both protocols' timers.
using Nanos = std::int64_t;
inline constexpr Nanos kMs = 1'000'000;
inline Nanos now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Nanos>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}


class H2Session {
 public:
  using Nanos = mock::Nanos;

  // Queues the server's SETTINGS (--max-concurrent-streams, --h2-window). The peer's client
  // preface is expected as the first bytes given to receive().
  H2Session(const Options& options, Stats& stats);
  ~H2Session();
  H2Session(const H2Session&) = delete;
  H2Session& operator=(const H2Session&) = delete;

  // Feeds bytes read from the peer. False when the session cannot go on (out of memory, a flood,
  // a broken preface): send what pump() still gives, then close.
  bool receive(const char* data, std::size_t len);
  // Plays the streams' scripts and appends the frames to send to `out` until it holds `limit`
  // bytes. True when it stopped at the limit (call again once `out` has been sent).
  bool pump(std::string& out, std::size_t limit);
  // Every byte pump() gave is in the kernel: the waits that were held for that start now.
  void drained(Nanos now);
  // Resets wait for the peer to acknowledge every byte sent (as on HTTP/1.1, so that the
  // RST_STREAM comes after the stream's last DATA in time, not only in order): while this is
  // true the connection polls the socket's unacknowledged bytes, and calls acked() at zero.
  bool awaiting_ack() const { return !ack_waiters_.empty(); }
  void acked();
  // The earliest stream timer (0: none); running the ones that are due.
  Nanos next_due();
  void on_timer(Nanos now);
  // Some stream is being answered (the connection's idle timeout does not run then).
  bool responding() const { return responding_ > 0; }
  // Nothing more to read or write (GOAWAY sent or received and every stream closed, or a
  // terminated session): close once the output is sent.
  bool finished() const;
  // GOAWAY(NO_ERROR) with the last stream processed (SIGTERM, the idle timeout).
  void goaway();
  bool failed() const { return failed_; }

 private:
  enum class Gate : std::uint8_t {
    None,
    Wait,       // a wait step: starts once the stream's bytes are framed and in the kernel
    WaitDrain,  // framed; waiting for the connection's output to reach the kernel
    Waiting,    // the wait's timer runs
    Reset,      // RST_STREAM once the stream's bytes are framed and acknowledged (at most 2 s)
    ResetAck,   // framed; waiting for the peer to acknowledge the connection's bytes
    Goaway,     // GOAWAY once the stream's bytes are framed
  };

  struct Stream {
    explicit Stream(std::int32_t sid);
    std::size_t buffered() const { return data.size() - off; }

    const std::int32_t id;
    Request req;
    bool bad = false;      // the request broke a limit: a 400 without running the handler
    bool started = false;  // the request is complete; the response is being played
    bool counted = false;  // counted in h2_streams
    bool ready = false;    // in ready_
    std::unique_ptr<Handler> handler;
    Script script;
    bool script_done = false;
    bool wrote = false;
    bool ended = false;  // reset or refused: nothing more is sent
    // The response: the handler's head until its blank line, then the body bytes not yet framed.
    std::string head;
    bool head_done = false;
    bool submitted = false;  // HEADERS queued
    bool deferred = false;   // the DATA callback deferred: resume when more is queued
    std::string data;
    std::size_t off = 0;
    Gate gate = Gate::None;
    std::uint64_t gate_ms = 0;
    Nanos due = 0;  // the stream's timer (a wait's end, a reset's deadline)
  };

  Stream* find(std::int32_t id);
  void mark_ready(Stream& s);
  void start(Stream& s);
  void run_stream(Stream& s);
  void consume_write(Stream& s, std::string bytes);
  void submit_head(Stream& s);
  void reset_stream(Stream& s, std::uint32_t error_code);
  void refuse(Stream& s);
  void set_timer(Stream& s, Nanos due);

  static int on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user);
  static int on_header(nghttp2_session* session, const nghttp2_frame* frame,
                       const std::uint8_t* name, std::size_t namelen, const std::uint8_t* value,
                       std::size_t valuelen, std::uint8_t flags, void* user);
  static int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user);
  static int on_data_chunk_recv(nghttp2_session* session, std::uint8_t flags,
                                std::int32_t stream_id, const std::uint8_t* data, std::size_t len,
                                void* user);
  static int on_stream_close(nghttp2_session* session, std::int32_t stream_id,
                             std::uint32_t error_code, void* user);
  static int on_frame_send(nghttp2_session* session, const nghttp2_frame* frame, void* user);
  static ssize_t read_data(nghttp2_session* session, std::int32_t stream_id, std::uint8_t* buf,
                           std::size_t length, std::uint32_t* data_flags,
                           nghttp2_data_source* source, void* user);

  const Options& opt_;
  Stats& stats_;
  nghttp2_session* session_ = nullptr;
  bool failed_ = false;
  int responding_ = 0;
  std::unordered_map<std::int32_t, std::unique_ptr<Stream>> streams_;
  std::vector<std::int32_t> ready_;
  std::vector<std::int32_t> batch_;
  std::vector<std::int32_t> drain_waiters_;
  std::vector<std::int32_t> ack_waiters_;
  std::vector<std::int32_t> refused_;  // RST_STREAM(REFUSED_STREAM) to write after the next GOAWAY
  bool goaway_out_ = false;            // mem_send is giving a GOAWAY that refused_ must follow
  std::priority_queue<std::pair<Nanos, std::int32_t>, std::vector<std::pair<Nanos, std::int32_t>>,
                      std::greater<>>
      timers_;
};

}  // namespace glmp::mock
