#include "pipeline/sink.hpp"

#include "pipeline/errors.hpp"

namespace glmp::core::pipeline {

std::string format_ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

ClientSink::ClientSink(server::Loop& loop, std::unique_ptr<server::ClientConnection> conn, RequestContext& ctx,
                       SinkOwner& owner, std::chrono::milliseconds send_timeout)
    : loop_(loop),
      conn_(std::move(conn)),
      ctx_(ctx),
      resp_(*conn_, ctx.method == "HEAD", conn_->parser().keep_alive()),
      owner_(owner),
      send_timeout_(send_timeout) {
  ctx_.request = &conn_->request();
  ctx_.response = &resp_;
  conn_->request().set_response(&resp_);
  resp_.set_request_id(&ctx_.request_id);
}

ClientSink::~ClientSink() { loop_.ev().cancel(send_timer_); }

bool ClientSink::flush_head() {
  const bool ok = resp_.flush();
  if (!ok) ctx_.client_gone = true;
  ctx_.ttfb = Clock::now() - ctx_.start;
  return ok;
}

ClientSink::Flush ClientSink::on_writable() {
  if (!conn_->flush_queued()) return Flush::Gone;
  if (conn_->queued() > 0) return Flush::Pending;
  loop_.ev().cancel(send_timer_);
  return Flush::Drained;
}

void ClientSink::arm_send_timer() {
  if (send_timer_) return;
  loop_.ev().arm(send_timer_, conn_->last_write_progress() + send_timeout_, [this] {
    send_timer_ = {};
    if (!conn_ || conn_->queued() == 0) return;
    if (loop_.ev().now() - conn_->last_write_progress() < send_timeout_) return arm_send_timer();
    conn_->mark_write_timed_out();
    owner_.sink_stalled(*this, "client stopped reading for more than " + format_ms(send_timeout_));
  });
}

void ClientSink::cancel_send_timer() { loop_.ev().cancel(send_timer_); }

std::string ClientSink::error_event(Flavour flavour, const std::string& message) const {
  const std::string body = sse_error_event(flavour, {502, message});
  const std::string_view prefix = tail_[1] != '\n' ? "\n\n" : tail_[0] != '\n' ? "\n" : "";
  std::string event;
  event.reserve(prefix.size() + body.size());
  event.append(prefix);
  event.append(body);
  return event;
}

}  // namespace glmp::core::pipeline
