#pragma once
// HTTP/2 from clients (docs/design.md, "HTTP/2 for clients"): one client connection that ALPN made
// h2, served by an nghttp2 server session on its loop. Every stream is carried to the HTTP/1.1
// server of the same loop over a lane whose inner end is an ordinary ClientConnection (with the
// client's address), so routing, plugins, the relay, usage, limits and timeouts are exactly those
// of HTTP/1.1. The front translates: a stream's request becomes an HTTP/1.1 request on its lane (a
// Content-Length body as it is, any other body chunked), and the lane's HTTP/1.1 response becomes
// the stream's HEADERS and DATA. A lane is an in-memory pipe (server/lane_pipe.hpp) while its
// inner connection is on the loop, and a socket pair otherwise (a worker serves it); the pair's
// close is how each side learns that the other left. Lanes are kept alive and reused by the next
// streams, so a request costs no socket pair, and no system call between the two sides, once the
// connection is warm.
//
// Flow control is backpressure both ways: request DATA is acknowledged (WINDOW_UPDATE) only while
// the lane holds at most a high watermark the inner connection has not read; a stream whose client
// does not take its DATA refuses more of its inner connection's bytes past a high watermark, so
// that connection's queue fills and the exchange stops reading its upstream, as for a slow
// HTTP/1.1 client, while the other streams go on.
//
// A stream the client resets, or a connection that ends, closes its lanes: the inner connections
// see their client gone, as when an HTTP/1.1 client disconnects. Loop thread only.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/headers.hpp"
#include "http/response_parser.hpp"
#include "server/connection.hpp"
#include "server/event_loop.hpp"

typedef struct nghttp2_session nghttp2_session;

namespace glmp::core::server {

class Loop;

struct H2FrontOptions {
  uint32_t max_concurrent_streams = 128;
};

class H2Front final : public Watcher {
public:
  // `conn`: its TLS handshake done with ALPN "h2"; its slot keeps delivering its socket's events,
  // to this front (Loop::attach).
  H2Front(Loop& loop, std::unique_ptr<ClientConnection> conn, const H2FrontOptions& options);
  ~H2Front() override;
  H2Front(const H2Front&) = delete;
  H2Front& operator=(const H2Front&) = delete;

  // Sends the server preface and reads what arrived with the handshake.
  void start();
  // The client socket's events.
  void on_event(uint32_t events) override;
  // Draining (the server stops): GOAWAY; the connection closes once its streams are done.
  void drain();
  bool closed() const { return closed_; }

  struct Access;  // nghttp2's callbacks
  class Lane;

private:
  friend struct Access;
  friend class Lane;
  void read_client();
  bool receive(const char* data, size_t len);
  void flush();
  // After our own event handling: write what nghttp2 produced, close a finished session.
  void after_io();
  void close(const char* why);
  void on_tick();
  void arm_tick();
  Lane* lane_for(int32_t stream_id);
  void lane_readable(Lane& lane);
  bool lane_bytes(Lane& lane, const char* data, size_t len);
  void lane_writable(Lane& lane);
  ssize_t lane_take(Lane& lane, const iovec* iov, int count, bool may_refuse);
  void lane_taken(Lane& lane);
  void schedule_flush();
  // The stream's client is slow: its lane is not read (nor its pipe taken) until after_io finds room.
  void pause(Lane& lane);
  void lane_done(Lane& lane, bool reusable);
  // A response the front answers itself (a request it cannot translate).
  void answer(int32_t stream_id, int status, const std::string& message);

  Loop& loop_;
  std::unique_ptr<ClientConnection> conn_;
  H2FrontOptions options_;
  nghttp2_session* ng_ = nullptr;
  std::vector<std::unique_ptr<Lane>> lanes_;  // every lane, busy or idle
  std::vector<Lane*> idle_;                   // lanes ready for a new stream
  std::string out_;                           // frames the socket has not taken yet
  size_t out_off_ = 0;
  int depth_ = 0;        // inside our own event handling: flush at the end
  bool flush_scheduled_ = false;  // an EPOLLOUT of our own is due (EventLoop::notify)
  bool closed_ = false;
  bool draining_ = false;
  size_t open_streams_ = 0;
  size_t paused_lanes_ = 0;  // lanes at their stream's high watermark, resumed by after_io
  Clock::time_point last_activity_{}, last_write_progress_{};
  EventLoop::Timer tick_;
};

}  // namespace glmp::core::server
