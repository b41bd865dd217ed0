#include "pipeline/fanout.hpp"

#include <sys/epoll.h>

#include <algorithm>

#include "pipeline/proxy.hpp"

namespace glmp::core::pipeline {
namespace {
// What a follower may fall behind beyond the catch-up write (the exchange's high watermark).
constexpr size_t kCatchUpSlack = 256 * 1024;
}  // namespace

// One follower: its request, its sink, and where it is in the response.
class Fanout::Follower final : public server::Watcher, public SinkOwner {
public:
  enum class State { Waiting, Live, Flushing, Done };

  Follower(Fanout& fanout, std::unique_ptr<server::ClientConnection> conn, RequestContext ctx, Done done,
           std::chrono::milliseconds send_timeout)
      : fanout_(fanout), ctx_(std::move(ctx)), sink_(fanout.loop_, std::move(conn), ctx_, *this, send_timeout), done_(std::move(done)) {}

  void on_event(uint32_t events) override {
    if (state_ == State::Done) return;
    if ((events & EPOLLOUT) && sink_.queued() > 0) {
      switch (sink_.on_writable()) {
        case ClientSink::Flush::Gone:
          return gone("client disconnected");
        case ClientSink::Flush::Drained:
          if (state_ == State::Flushing) return hand_back();
          break;
        case ClientSink::Flush::Pending:
          break;
      }
    }
    if (events & (EPOLLHUP | EPOLLERR)) return gone("client disconnected");
  }

  void sink_stalled(ClientSink&, const std::string& why) override { gone(why); }

  // After a write: a client that is gone is closed, one too far behind is cut off.
  void check() {
    if (state_ != State::Live) return;
    if (ctx_.client_gone) return gone("client disconnected");
    if (sink_.queued() > fanout_.limits_.backlog)
      cut("follower fell more than " + std::to_string(fanout_.limits_.backlog) + " bytes behind the response it follows");
  }

  // The response ended with `error`: a stream gets the error event; the response ends short.
  void cut(const std::string& error) {
    if (state_ != State::Live) return;
    if (ctx_.error.empty()) ctx_.error = error;
    if (fanout_.head_.sse && fanout_.head_.chunked) sink_.write(sink_.error_event(ctx_.flavour, error));
    abort_client(sink_.resp());
    end(false);
  }

  void complete(const Usage& usage) {
    if (state_ != State::Live) return;
    ctx_.usage = usage;
    end(true);
  }

  // No response to follow: an answer of its own.
  void refuse(const ApiError& error) {
    if (state_ != State::Waiting) return;
    if (fanout_.draining_) sink_.resp().setKeepAlive(false);
    send_error(sink_.resp(), ctx_, error);
    if (ctx_.error.empty()) ctx_.error = error.message;
    state_ = State::Live;
    end(true);
  }

  // The response's end (terminating chunk unless aborted), then the queue, then the hand-back.
  void end(bool may_keep) {
    const bool finished = sink_.resp().finish();
    if (sink_.resp().failed()) ctx_.client_gone = true;
    if (ctx_.client_gone) return gone("client disconnected");
    keep_ = may_keep && finished && !fanout_.draining_ && sink_.conn().body_complete();
    if (sink_.queued() > 0) {
      state_ = State::Flushing;
      sink_.arm_send_timer();
      return;
    }
    hand_back();
  }

  void gone(const std::string& why) {
    if (state_ == State::Done) return;
    ctx_.client_gone = true;
    if (ctx_.error.empty()) ctx_.error = why;
    keep_ = false;
    hand_back();
  }

  void hand_back() {
    state_ = State::Done;
    sink_.hand_back(keep_);
    fanout_.follower_done(*this);
  }

  Fanout& fanout_;
  RequestContext ctx_;
  ClientSink sink_;
  Done done_;
  State state_ = State::Waiting;
  bool keep_ = false;
};

struct Fanout::Busy {
  explicit Busy(Fanout& f) : f_(f) { ++f_.busy_; }
  ~Busy() {
    if (--f_.busy_ == 0 && f_.reap_due_) f_.reap();
  }
  Fanout& f_;
};

Fanout::Fanout(server::Loop& loop, FanoutOwner& owner, FanoutLimits limits, const bool& draining)
    : loop_(loop), owner_(owner), limits_(limits), draining_(draining) {
  limits_.backlog = std::max(limits_.backlog, limits_.replay + kCatchUpSlack);
}

// Followers still here (server stop) close with their connections; their `done` does not run.
Fanout::~Fanout() = default;

size_t Fanout::following() const {
  size_t n = 0;
  for (const auto& f : followers_) n += f->state_ == Follower::State::Waiting || f->state_ == Follower::State::Live;
  return n;
}

size_t Fanout::pending() const {
  size_t n = 0;
  for (const auto& f : followers_) n += f->state_ != Follower::State::Done;
  return n;
}

bool Fanout::attach(std::unique_ptr<server::ClientConnection>& conn, RequestContext ctx, Done done) {
  if (!can_attach() || !conn) return false;
  const auto send_timeout = conn->limits().send_timeout;
  followers_.push_back(std::make_unique<Follower>(*this, std::move(conn), std::move(ctx), std::move(done), send_timeout));
  Follower& f = *followers_.back();
  f.sink_.conn().set_loop_writes(true);
  if (loop_.attach(f.sink_.conn(), &f) & (EPOLLHUP | EPOLLERR)) {
    f.gone("client disconnected");
    return true;
  }
  if (started_) start_follower(f);
  return true;
}

void Fanout::start_follower(Follower& f) {
  if (draining_) f.sink_.resp().setKeepAlive(false);
  f.ctx_.upstream_status = head_.status;
  f.sink_.start(head_);
  f.state_ = Follower::State::Live;
  // The body so far in one write (one chunk when chunked), then it follows live.
  if (!replay_.empty()) f.sink_.write(replay_);
  else if (head_.chunked && !f.sink_.flush_head()) return f.gone("client disconnected");
  f.check();
}

void Fanout::start(ResponseHead head) {
  Busy busy(*this);
  head_ = std::move(head);
  started_ = true;
  const size_t n = followers_.size();
  for (size_t i = 0; i < n; ++i)
    if (followers_[i]->state_ == Follower::State::Waiting) start_follower(*followers_[i]);
}

void Fanout::relay(std::string_view bytes) {
  if (closed_ || bytes.empty()) return;
  Busy busy(*this);
  if (recording_) {
    if (replay_.size() + bytes.size() > limits_.replay) {
      recording_ = false;  // no more attaching; the memory goes now
      std::string().swap(replay_);
    } else {
      replay_.append(bytes);
    }
  }
  const size_t n = followers_.size();  // one attached from a callback below starts from the recording
  for (size_t i = 0; i < n; ++i) {
    Follower& f = *followers_[i];
    if (f.state_ != Follower::State::Live) continue;
    f.sink_.write(bytes);
    f.check();
  }
}

void Fanout::finish(const std::string& error, const Usage& usage) {
  end(error.empty() ? ApiError{} : ApiError{502, error}, &usage);
}

void Fanout::fail(const ApiError& error) { end(error, nullptr); }

// Ends every follower: those waiting for the head get `error` as a response of their own; started
// ones complete (no error, with `usage`) or are cut with the error (and are charged `usage`).
void Fanout::end(const ApiError& error, const Usage* usage) {
  if (closed_) return;
  Busy busy(*this);
  closed_ = true;
  const size_t n = followers_.size();
  for (size_t i = 0; i < n; ++i) {
    Follower& f = *followers_[i];
    if (f.state_ == Follower::State::Waiting) {
      f.refuse(error.message.empty() ? ApiError{502, "the response being followed ended without a head"} : error);
    } else if (error.message.empty() && usage) {
      f.complete(*usage);
    } else {
      if (usage) f.ctx_.usage = *usage;
      f.cut(error.message);
    }
  }
}

void Fanout::follower_done(Follower& f) {
  if (f.done_) {
    Done done = std::move(f.done_);
    f.done_ = nullptr;
    done(f.ctx_);
  }
  reap_due_ = true;
  if (busy_ > 0) return;
  reap();
  owner_.followers_changed();
}

void Fanout::reap() {
  reap_due_ = false;
  for (auto it = followers_.begin(); it != followers_.end();) {
    if ((*it)->state_ == Follower::State::Done) {
      loop_.ev().retire(std::move(*it));  // its event may be the one running
      it = followers_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace glmp::core::pipeline
