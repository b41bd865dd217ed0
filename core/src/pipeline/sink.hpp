#pragma once
// One client a response is relayed to (docs/design.md, "The engine", relay): its connection, its
// server::Response, its write queue and send deadline, its share of the request's outcome
// (client_gone, bytes_out, ttfb in its RequestContext). The upstream side (Exchange) feeds it body
// pieces; each exchange has one for its own client (also one that follows a recording).
//
// Loop thread only. The relay path (write) is inline and does what the exchange did before the
// split: frame, one sendmsg, queue the rest, arm the send deadline when something is queued.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "pipeline/request_context.hpp"
#include "server/connection.hpp"
#include "server/engine.hpp"

namespace glmp::core::pipeline {

class ClientSink;

// A response's status line, headers and framing, as the exchange's own client and every
// follower get it.
struct ResponseHead {
  int status = 200;
  std::string reason;
  const http::Headers* headers = nullptr;  // the upstream's, mapped; lives with the exchange
  bool omit_date = false;                                   // they carry the upstream's Date
  bool chunked = false;
  int64_t content_length = 0;  // when not chunked
  bool sse = false;
};

// Told when a sink's client took nothing for send_timeout (the connection is marked timed out).
class SinkOwner {
public:
  virtual void sink_stalled(ClientSink& sink, const std::string& why) = 0;

protected:
  ~SinkOwner() = default;
};

class ClientSink {
public:
  // `ctx` (its request) must outlive the sink; ctx.request and ctx.response are pointed here.
  ClientSink(server::Loop& loop, std::unique_ptr<server::ClientConnection> conn, RequestContext& ctx, SinkOwner& owner,
             std::chrono::milliseconds send_timeout);
  ~ClientSink();
  ClientSink(const ClientSink&) = delete;
  ClientSink& operator=(const ClientSink&) = delete;

  server::ClientConnection& conn() { return *conn_; }
  server::Response& resp() { return resp_; }
  RequestContext& ctx() { return ctx_; }
  // The response is over: the connection goes back to the loop — closed when the client is gone
  // (ctx.client_gone), else kept alive for its next request or closed after a lingering read.
  void hand_back(bool keep);

  // Starts the response with `head` (plus this request's own extra headers); sets ctx.status.
  void start(const ResponseHead& head);

  // One body piece, framed by the response (a chunk when chunked). A failed write sets
  // ctx.client_gone; what the socket does not take is queued and the send deadline armed.
  // With flush = false the piece is only gathered (small pieces wait in the response's buffer;
  // a large one leaves at once with what was gathered) until flush(): the relay writes every
  // piece of one upstream read, then flushes once, so one read costs one sendmsg.
  void write(std::string_view bytes, bool flush = true) {
    if (bytes.empty() || ctx_.client_gone) return;
    if (bytes.size() >= 2) {
      tail_[0] = bytes[bytes.size() - 2];
      tail_[1] = bytes.back();
    } else {
      tail_[0] = tail_[1];
      tail_[1] = bytes.back();
    }
    if (!resp_.write_body(bytes)) {
      ctx_.client_gone = true;
      return;
    }
    ctx_.bytes_out += bytes.size();
    if (flush) this->flush();
    else if (conn_->queued() > 0) arm_send_timer();  // a large piece left at once
  }
  // Sends what write(…, false) and start() gathered; sets ttfb with the first bytes.
  void flush() {
    if (ctx_.client_gone || !resp_.has_pending()) return;
    const bool ok = resp_.flush();
    if (!ctx_.ttfb) ctx_.ttfb = Clock::now() - ctx_.start;
    if (!ok) {
      ctx_.client_gone = true;
      return;
    }
    if (conn_->queued() > 0) arm_send_timer();
  }
  // The head of a stream, at once (before the first event): flush(); false when the client is gone.
  bool flush_head();
  size_t queued() const { return conn_->queued(); }

  // EPOLLOUT: sends what is queued. Gone: the client is gone; Drained: the queue is empty (the
  // send deadline is cancelled); Pending: bytes remain.
  enum class Flush { Gone, Drained, Pending };
  Flush on_writable();

  // Armed while bytes are queued: no progress for send_timeout → the owner's sink_stalled.
  void arm_send_timer();
  void cancel_send_timer();
  std::chrono::milliseconds send_timeout() const { return send_timeout_; }

  // The flavour's error event for `message`, preceded by what ends a half-relayed event, so it
  // arrives as an event of its own.
  std::string error_event(Flavour flavour, const std::string& message) const;

private:
  server::Loop& loop_;
  std::unique_ptr<server::ClientConnection> conn_;
  RequestContext& ctx_;
  server::Response resp_;
  SinkOwner& owner_;
  std::chrono::milliseconds send_timeout_;
  char tail_[2] = {'\n', '\n'};  // the last two bytes relayed: is the client at an event boundary?
  server::EventLoop::Timer send_timer_;
};

// Why a client was cut for not reading ("client stopped reading for more than 30000 ms").
std::string stopped_reading(std::chrono::milliseconds send_timeout);

}  // namespace glmp::core::pipeline
