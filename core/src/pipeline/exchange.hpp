#pragma once
// One proxied request on its event loop (docs/design.md, "Request flow" and "The engine"):
//
//   headers hooks → body (non-blocking, 100 Continue, 413/400/408) → JSON inspection → on_request
//   hooks → body edits → upstream connection (idle on this loop, a new one, or a wait in the
//   global queue) → connect + TLS handshake → request written → response headers (llhttp) →
//   on_response_headers → relay: each read (up to proxy.chunk_size) is parsed, its body pieces go
//   through usage extraction and on_response_body and are written to the client with writev;
//   what the client's socket does not take is queued, and past a high watermark the upstream is
//   not read until the queue drains below the low one → on_complete, access log, metrics.
//
// The client side is a ClientSink (sink.hpp): connection, Response, queue, send deadline.
//
// Recordings (recording.hpp): when a plugin asked for it (ctx.recording), the exchange records
// the response it relays (head, raw body pieces, end) so that other requests can follow it or
// replay it. An exchange whose plugin answered it from a recording (ctx.follow) makes no upstream
// call: it follows the recording instead (State::Follow), writing what the recording hands it to
// its own client, with the same sink, hooks, access log and metrics as any request; with the
// fallback flag, a recorded request that failed before its head sends it upstream on its own.
//
// Hooks run inline when every plugin of the chain declared itself non-blocking and the store
// never blocks; otherwise each hook phase runs on a worker thread while the exchange waits
// (parked: the loop neither reads nor writes its sockets), then continues on its loop.
// Everything else happens on the loop thread, without a lock.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "http/response_parser.hpp"
#include "pipeline/proxy.hpp"
#include "pipeline/request_context.hpp"
#include "pipeline/sink.hpp"
#include "pipeline/usage.hpp"
#include "plugins/chain.hpp"
#include "server/connection.hpp"
#include "server/engine.hpp"
#include "upstream/pool.hpp"
#include "util/spares.hpp"

namespace glmp::core::pipeline {

class Exchange;

// What an exchange needs from the server, and what the server learns when it ends.
struct ExchangeHost {
  virtual ~ExchangeHost() = default;
  // The request is over (response finished or abandoned): log it, count it.
  virtual void exchange_done(Exchange& x) = 0;
  // The exchange gave its connection back and can be freed (after the current event batch).
  virtual void exchange_finished(Exchange& x) = 0;
};

class Exchange final : public server::Watcher,
                       public upstream::ConnectionUser,
                       private upstream::H2Stream,
                       private upstream::H2Waiter,
                       private SinkOwner,
                       private Recording::Reader,
                       private Recording::Leader {
public:
  Exchange(uint64_t id, server::Loop& loop, std::unique_ptr<server::ClientConnection> client, Proxy& proxy,
           upstream::Pool& pool, std::shared_ptr<const plugins::Chain> chain, char* read_buffer, size_t read_capacity,
           ExchangeHost& host, RequestContext ctx, bool draining);
  ~Exchange() override;
  // One exchange per request: each thread keeps up to 256 freed blocks for the next ones, so this
  // object (a few KiB) never goes through malloc's slow path on the request path.
  static void* operator new(size_t size);
  static void operator delete(void* p, size_t size) noexcept;

  void start();
  // A connection (or, with nullptr, a free slot) for this exchange, which waits in the pool's queue.
  void on_delivered(std::unique_ptr<upstream::Connection> conn);
  // The server stops: ends the request now (client cut, upstream closed, on_complete run).
  void abort(const std::string& why);
  uint64_t id() const { return id_; }
  server::Loop& loop() { return loop_; }
  RequestContext& ctx() { return ctx_; }
  bool finished() const { return state_ == State::Finished; }

  void on_event(uint32_t events) override;             // the client socket
  void on_upstream_event(uint32_t events) override;    // the upstream socket

private:
  enum class State {
    HeaderHooks, Body, RequestHooks, Deferred, Follow, Acquire, Connect, Send, AwaitHead, ResponseHooks, Relay, Completing, Flushing, Finished
  };

  // Hook phases: inline, or on a worker while parked; `then` continues on the loop.
  template <class Work, class Then>
  void hooks(Work work, Then then);
  void park();
  void unpark();

  void after_header_hooks(plugins::HookResult r);
  void read_body();
  void after_body();
  void after_request_hooks(plugins::HookResult r);
  void go_upstream();
  // Follow mode (ctx.follow): the recording's bytes instead of an upstream response.
  void start_follow();
  void recording_ready() override;
  void begin_follow(const RecordedHead& head);
  void end_follow(bool complete);
  void fall_back();
  void followers_left() override;
  void acquire();
  void use(std::unique_ptr<upstream::Connection> conn);
  // HTTP/2: a stream on a session of this loop (or a wait for room), the request submitted.
  void acquire_h2();
  void submit_h2(upstream::H2Session& session);
  void h2_head(int status) override;
  void h2_data(std::string_view bytes) override;
  void h2_end(uint32_t error_code, bool refused, const std::string& why) override;
  void h2_room() override;
  // The upstream side goes: an HTTP/1.1 connection is closed (a failure counts), an HTTP/2 stream
  // is reset.
  void drop_upstream(bool failure);
  // The body pieces of one upstream read (pieces_), through usage, hooks, recording and client.
  void relay_pieces();
  void establish();
  void send_request();
  void read_upstream();
  void on_head_parsed(int status, int64_t content_length, std::string_view reason);
  void begin_response();
  void after_relay();
  void relay_from(size_t start);
  void end_relay();
  void write_client(std::string_view bytes, bool flush);
  void leader_left();
  server::ClientConnection& conn() { return sink_.conn(); }
  server::Response& resp() { return sink_.resp(); }
  void sink_stalled(ClientSink& sink, const std::string& why) override;
  void upstream_failed(int status, std::string failure, bool retryable);
  void upstream_done();
  void emit(std::string_view bytes, bool end);
  void fail(const ApiError& error);  // before the upstream: an error answer, then complete
  void client_gone(const std::string& why);
  void complete();
  void finish_response();
  void hand_back();
  void arm_timer(std::chrono::milliseconds in);
  void on_timer();
  void check_backpressure();

  uint64_t id_;
  server::Loop& loop_;
  Proxy& proxy_;
  upstream::Pool& pool_;
  plugins::ChainRun run_;
  bool inline_hooks_;
  // The loop's read buffer: every read is parsed and relayed before the loop reads anything else
  // (what the client does not take is copied to its queue), so one buffer serves all its streams.
  char* buf_;
  size_t buf_cap_;
  ExchangeHost& host_;
  RequestContext ctx_;
  ClientSink sink_;                 // the exchange's own client
  bool leading_ = false;  // this exchange relays ctx_.recording (set_leader)
  std::shared_ptr<Recording::Follower> follower_;  // follow mode: its place in the recording
  Recording::Take take_;
  bool follow_started_ = false;
  State state_ = State::HeaderHooks;
  bool parked_ = false;
  bool client_hup_ = false;  // a hang-up seen while parked

  // Upstream request and response.
  std::string request_bytes_ = util::spare_string();  // head + body, as written upstream
  size_t request_sent_ = 0;
  std::unique_ptr<upstream::Connection> up_;
  int attempt_ = 0;
  bool first_byte_ = false;
  http::Headers upstream_head_ = http::Headers::recycled();  // the upstream's response headers as parsed
  std::optional<http::ResponseParser> parser_;
  size_t filled_ = 0, used_ = 0;
  std::vector<std::string_view> pieces_;
  bool hide_usage_chunk_ = false;
  bool hidden_views_ = false;  // a follower relaying its recording's hidden view
  std::string hidden_view_;    // a leader's view of one read without the usage-only chunk
  bool keep_ = false;
  bool waiting_ = false;  // in the pool's waiter queue
  bool h2_waiting_ = false;      // waiting for room on an HTTP/2 session of this loop
  bool acquire_timed_ = false;   // the acquire_timeout deadline is armed
  std::string_view reason_;      // the upstream's reason phrase (HTTP/2: the status's standard one)
  bool draining_ = false;
  Clock::time_point wait_since_{};  // waiting for upstream bytes since
  bool sse_ = false, known_length_ = false;
  int64_t upstream_length_ = -1;  // the upstream's Content-Length, -1 without one
  std::optional<UsageExtractor> usage_;
  bool upstream_done_ = false;
  bool paused_ = false;          // backpressure: the upstream is not read
  bool leader_left_ = false;     // the own client left mid-relay; followers of its recording keep the upstream read
  bool up_readable_ = false;     // the upstream socket may hold bytes (an input event since the last short read)
  bool up_closing_ = false;      // the peer's FIN (or an error) was reported: its EOF is read without another event
  bool counted_stream_ = false;
  std::string upstream_error_;
  Clock::time_point last_upstream_io_{};
  Clock::time_point phase_start_{};
  Clock::time_point body_since_{};

  server::EventLoop::Timer timer_;
  server::EventLoop::Timer resume_;  // reading continues after the loop's other events
};

}  // namespace glmp::core::pipeline
