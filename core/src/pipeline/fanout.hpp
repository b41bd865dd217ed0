#pragma once
// Other clients following one exchange's response (docs/design.md, "The engine", relay): the
// upstream is read once, by the exchange; every follower is a ClientSink with its own queue.
//
//   exchange.enable_followers()  → a Fanout, before the response starts; the body relayed to the
//                                  exchange's client is recorded (up to limits.replay bytes)
//   fanout.attach(conn, ctx, done) → a client of the same loop follows: it gets the status and
//                                  headers the first client got (its own X-Request-ID, Date and
//                                  extra headers), the body recorded so far in one write, then
//                                  the live bytes; before the head arrives it waits for it
//
// The upstream is paused only for the exchange's own client, while it is connected. A follower
// never slows anyone: past limits.backlog bytes queued for it, it is cut off (the flavour's error
// event for a stream; the response ends short, its queue is flushed within send_timeout, then the
// connection closes). A follower that takes nothing for send_timeout is closed. When the first
// client leaves, the exchange keeps reading while anyone follows. An upstream failure gives every
// follower its error event; an exchange that ends without a response head gives waiting followers
// a 502. At its end a follower's connection goes back to the loop (kept alive or closed) and its
// `done` runs with its RequestContext (status, bytes_out, ttfb, usage, client_gone, error).
//
// Loop thread only: no locks, no thread per follower.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/errors.hpp"
#include "pipeline/request_context.hpp"
#include "pipeline/sink.hpp"
#include "server/engine.hpp"

namespace glmp::core::pipeline {

struct FanoutLimits {
  // Body bytes kept so a follower can attach mid-response. Past it the recording is dropped and
  // attach() refuses (followers already attached go on).
  size_t replay = 1024 * 1024;
  // Bytes queued for one follower before it is cut off. At least replay + the exchange's high
  // watermark, so the catch-up write alone never cuts a follower.
  size_t backlog = 2 * 1024 * 1024;
};

// What the exchange learns from its fanout (event callbacks only: never from inside a Fanout call
// the exchange made).
class FanoutOwner {
public:
  // A follower ended (and was handed back): following() or pending() may have dropped.
  virtual void followers_changed() = 0;

protected:
  ~FanoutOwner() = default;
};


class Fanout {
public:
  using Done = std::function<void(RequestContext&)>;

  Fanout(server::Loop& loop, FanoutOwner& owner, FanoutLimits limits, const bool& draining);
  ~Fanout();
  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;

  // A connection of this loop (its request headers read, its body read or not needed) follows the
  // response. False when it can no longer be followed (ended, or the recording overflowed); the
  // connection then stays with the caller (`conn` untouched).
  bool attach(std::unique_ptr<server::ClientConnection>& conn, RequestContext ctx, Done done);
  bool can_attach() const { return !closed_ && recording_; }
  size_t following() const;  // followers still being relayed to (or waiting for the head)
  size_t pending() const;    // followers not handed back yet (including those flushing their end)
  const FanoutLimits& limits() const { return limits_; }
  // The body so far, byte for byte as relayed; null once it outgrew limits.replay.
  const std::string* recording() const { return recording_ ? &replay_ : nullptr; }

  // ---- From the exchange ----
  void start(ResponseHead head);
  void relay(std::string_view bytes);
  // The response is over: complete (`error` empty) or failed (every follower gets `error`).
  void finish(const std::string& error, const Usage& usage);
  // The exchange ended without a response head (or before finish): waiting followers get `error`
  // as a response of their own, started ones are cut with it.
  void fail(const ApiError& error);

private:
  void end(const ApiError& error, const Usage* usage);
  class Follower;
  friend class Follower;
  void start_follower(Follower& f);
  void follower_done(Follower& f);
  void reap();
  struct Busy;

  server::Loop& loop_;
  FanoutOwner& owner_;
  FanoutLimits limits_;
  const bool& draining_;
  std::vector<std::unique_ptr<Follower>> followers_;
  std::string replay_;
  bool recording_ = true;
  bool started_ = false, closed_ = false;
  ResponseHead head_;
  int busy_ = 0;         // inside a call from the exchange: followers are reaped at its end
  bool reap_due_ = false;
};

}  // namespace glmp::core::pipeline
