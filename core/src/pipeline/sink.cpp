#include "pipeline/sink.hpp"

#include "pipeline/errors.hpp"
#include "pipeline/proxy.hpp"  // set_status

namespace glmp::core::pipeline {

std::string stopped_reading(std::chrono::milliseconds send_timeout) {
  return "client stopped reading for more than " + std::to_string(send_timeout.count()) + " ms";
}

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

void ClientSink::start(const ResponseHead& head) {
  set_status(resp_, head.status, head.reason);
  // The server stamps Date unless the upstream's is forwarded: never sent twice.
  if (head.omit_date) resp_.omit_date();
  resp_.forward_headers(head.headers);  // written after resp_'s own, never copied
  for (const auto& [k, v] : ctx_.extra_response_headers) resp_.add(k, v);
  resp_.set_framing(head.chunked, head.content_length);
  ctx_.status = head.status;
  resp_.start();
}

bool ClientSink::flush_head() {
  flush();
  return !ctx_.client_gone;
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
    owner_.sink_stalled(*this, stopped_reading(send_timeout_));
  });
}

void ClientSink::cancel_send_timer() { loop_.ev().cancel(send_timer_); }

void ClientSink::hand_back(bool keep) {
  cancel_send_timer();
  std::unique_ptr<server::ClientConnection> conn = std::move(conn_);
  loop_.attach(*conn, nullptr);
  conn->set_loop_writes(false);
  if (ctx_.client_gone) return;  // nothing more can reach it: it closes here
  if (keep) loop_.keep(std::move(conn));
  else loop_.linger(std::move(conn));
}

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
