#include "pipeline/exchange.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <charconv>

#include <Poco/Net/HTTPResponse.h>
#include <nghttp2/nghttp2.h>

#include "pipeline/errors.hpp"
#include "pipeline/headers.hpp"

namespace glmp::core::pipeline {
namespace {

// Backpressure: past kHighWater bytes queued for the client the upstream is no longer read; it is
// read again once the queue is down to kLowWater. Memory per slow client stays bounded.
constexpr size_t kHighWater = 256 * 1024;
constexpr size_t kLowWater = 64 * 1024;
constexpr uint32_t kReadable = EPOLLIN | EPOLLRDHUP;
// HTTP/2: a request the upstream refused (REFUSED_STREAM, GOAWAY) is sent again at most this often.
constexpr int kMaxRefusedRetries = 3;

bool is_event_stream(std::string_view ct) { return ct.substr(0, 17) == "text/event-stream"; }

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

// Freed exchange blocks of this thread (see Exchange::operator new).
struct SpareBlocks {
  static constexpr size_t kMax = 256;
  void* blocks[kMax];
  size_t n = 0;
  ~SpareBlocks() {
    while (n > 0) ::operator delete(blocks[--n], sizeof(Exchange));
  }
};
thread_local SpareBlocks spare_blocks;

}  // namespace

void* Exchange::operator new(size_t size) {
  if (size == sizeof(Exchange) && spare_blocks.n > 0) return spare_blocks.blocks[--spare_blocks.n];
  return ::operator new(size);
}

void Exchange::operator delete(void* p, size_t size) noexcept {
  if (size == sizeof(Exchange) && spare_blocks.n < SpareBlocks::kMax) {
    spare_blocks.blocks[spare_blocks.n++] = p;
    return;
  }
  ::operator delete(p, size);
}

Exchange::Exchange(uint64_t id, server::Loop& loop, std::unique_ptr<server::ClientConnection> client, Proxy& proxy,
                   upstream::Pool& pool, std::shared_ptr<const plugins::Chain> chain, char* read_buffer, size_t read_capacity,
                   ExchangeHost& host, RequestContext ctx, bool draining)
    : id_(id),
      loop_(loop),
      proxy_(proxy),
      pool_(pool),
      run_(chain),
      inline_hooks_(chain->inline_hooks),
      buf_(read_buffer),
      buf_cap_(read_capacity),
      host_(host),
      ctx_(std::move(ctx)),
      sink_(loop, std::move(client), ctx_, *this, proxy.config().server.send_timeout),
      draining_(draining) {
  if (draining_) resp().setKeepAlive(false);
}

Exchange::~Exchange() {
  if (leading_) ctx_.recording->set_leader(nullptr, nullptr);
  if (follower_) ctx_.follow->recording->detach(follower_);
  if (waiting_) pool_.remove_waiter({loop_.index(), id_});
  if (h2_waiting_) pool_.h2_unwait(loop_.index(), this);
  drop_upstream(false);
  if (counted_stream_) proxy_.stream_ended();
  http::Headers::recycle(upstream_head_);
  util::give_string(request_bytes_);
  loop_.ev().cancel(timer_);
  loop_.ev().cancel(resume_);
}

// ---------------------------------------------------------------------------------------------
// Hooks: inline, or on a worker while the exchange is parked.

template <class Work, class Then>
void Exchange::hooks(Work work, Then then) {
  auto guarded = [this, work]() mutable {
    try {
      return work();
    } catch (const std::exception& e) {
      if (ctx_.error.empty()) ctx_.error = e.what();
      return plugins::HookResult::Error;
    }
  };
  if (!inline_hooks_) {
    park();
    Exchange* self = this;
    const bool queued = loop_.engine().submit([self, guarded, then]() mutable {
      const plugins::HookResult r = guarded();
      self->loop_.ev().post([self, r, then]() mutable {
        self->unpark();
        then(r);
      });
    });
    if (queued) return;
    unpark();  // no worker to take it (stopping, or the queue is full): run here
  }
  then(guarded());
}

// While parked the loop drops the exchange's events (the sockets are registered edge-triggered,
// for good); what they would have said is caught up on when it resumes.
void Exchange::park() {
  parked_ = true;
  conn().set_loop_writes(false);  // a plugin may stream its own answer from the worker
}

void Exchange::unpark() {
  parked_ = false;
  conn().set_loop_writes(true);
  if (conn().queued() > 0 && !conn().flush_queued()) client_hup_ = true;
}

void Exchange::arm_timer(std::chrono::milliseconds in) {
  loop_.ev().arm(timer_, loop_.ev().now() + in, [this] { on_timer(); });
}

// ---------------------------------------------------------------------------------------------
// Request side

void Exchange::start() {
  conn().set_loop_writes(true);
  if (loop_.attach(conn(), this) & (EPOLLHUP | EPOLLERR)) client_hup_ = true;
  proxy_.map_headers(conn().request(), ctx_);
  hooks([this] { return run_.request_headers(ctx_); }, [this](plugins::HookResult r) { after_header_hooks(r); });
}

void Exchange::fail(const ApiError& error) {
  send_error(resp(), ctx_, error);
  if (ctx_.recording) ctx_.recording->fail(ctx_.usage, error);  // its followers get the same answer (or fall back)
  complete();
}

void Exchange::after_header_hooks(plugins::HookResult r) {
  if (r != plugins::HookResult::Continue) {
    resp().setKeepAlive(false);  // the unread body must not be parsed as the next request
    answer_refusal(resp(), ctx_);
    complete();
    return;
  }
  const uint64_t limit = proxy_.config().server.max_request_body;
  if (conn().parser().content_length() > limit) {  // refused before a byte of it is read
    resp().setKeepAlive(false);
    fail({413, "request body of " + std::to_string(conn().parser().content_length()) + " bytes exceeds the limit of " +
                   std::to_string(limit) + " bytes"});
    return;
  }
  state_ = State::Body;
  body_since_ = Clock::now();
  if (conn().continue_wanted()) conn().send_continue();
  read_body();
}

void Exchange::read_body() {
  const auto& sc = proxy_.config().server;
  auto refuse = [&](ApiError e) {
    loop_.ev().cancel(timer_);
    resp().setKeepAlive(false);  // the unread rest of the body must never be parsed as a request
    fail(e);
  };
  switch (conn().read_body_step(ctx_.body)) {  // grows with the bytes that arrive, never from the header
    case server::ClientConnection::BodyStep::Done:
      loop_.ev().cancel(timer_);
      after_body();
      return;
    case server::ClientConnection::BodyStep::NeedMore:
      // The deadline counts from the end of the headers; armed only for a body still on its way.
      if (!timer_) loop_.ev().arm(timer_, body_since_ + sc.body_timeout, [this] { on_timer(); });
      return;
    case server::ClientConnection::BodyStep::TooLarge:
      return refuse({413, "request body exceeds the limit of " + std::to_string(sc.max_request_body) + " bytes"});
    case server::ClientConnection::BodyStep::Malformed:
      return refuse({400, "malformed request body: " + conn().parser().error_message()});
    case server::ClientConnection::BodyStep::ClientGone:
      ctx_.client_gone = true;
      return refuse({400, "the client closed the connection before sending the whole body"});
  }
}

void Exchange::after_body() {
  ctx_.bytes_in = ctx_.body.size();
  ctx_.marks.received = ctx_.since_start();
  if (!proxy_.inspect_body(conn().request(), resp(), ctx_)) {
    complete();
    return;
  }
  state_ = State::RequestHooks;
  hooks([this] { return run_.request(ctx_); }, [this](plugins::HookResult r) { after_request_hooks(r); });
}

void Exchange::after_request_hooks(plugins::HookResult r) {
  if (ctx_.follow && r == plugins::HookResult::Responded && !ctx_.early_response && !ctx_.plugin_stream) return start_follow();
  if (r != plugins::HookResult::Continue) {
    answer_refusal(resp(), ctx_);
    complete();
    return;
  }
  if (ctx_.defer_upstream_ms > 0) {
    // A plugin asked the upstream call to wait (e.g. for identical requests to join it).
    state_ = State::Deferred;
    ctx_.marks.deferred = ctx_.since_start();
    arm_timer(std::chrono::milliseconds(std::min<uint32_t>(ctx_.defer_upstream_ms, 10000)));
    return;
  }
  go_upstream();
}

void Exchange::go_upstream() {
  if (!pool_.config().auth_error.empty()) {
    // After the chain: a client without a valid key learns nothing about the configuration.
    fail({503, "proxy configuration error: " + pool_.config().auth_error, "", "upstream_not_configured"});
    return;
  }
  try {
    hide_usage_chunk_ = proxy_.finalize_body(ctx_);
    proxy_.upstream_request(ctx_, pool_, request_bytes_);
  } catch (const std::exception& e) {
    if (ctx_.error.empty()) ctx_.error = e.what();
    fail({500, std::string("internal error: ") + e.what()});
    return;
  }
  if (ctx_.recording) {
    ctx_.recording->set_leader(&loop_, this);
    leading_ = true;
  }
  phase_start_ = Clock::now();
  ctx_.marks.upstream_start = ctx_.since_start(phase_start_);
  acquire();
}

// ---------------------------------------------------------------------------------------------
// Upstream connection

void Exchange::acquire() {
  state_ = State::Acquire;
  if (pool_.h2()) return acquire_h2();
  if (attempt_ == 0) {
    if (auto c = pool_.take_idle(loop_.index())) return use(std::move(c));
  }
  std::string error;
  if (auto c = pool_.open(loop_.index(), error)) return use(std::move(c));
  if (!error.empty()) return upstream_failed(502, error, false);
  // Every slot is taken: wait in the pool's queue for a released connection or a freed slot.
  waiting_ = true;
  pool_.add_waiter({loop_.index(), id_});
  arm_timer(pool_.config().acquire_timeout);
}

void Exchange::acquire_h2() {
  std::string error;
  if (upstream::H2Session* session = pool_.h2_session(loop_.index(), error)) return submit_h2(*session);
  if (!error.empty()) return upstream_failed(502, error, false);
  // Every connection is taken: wait for room on a session of this loop, or (none here) for a
  // connection slot anywhere. One acquire_timeout deadline for the whole wait.
  if (pool_.h2_has_usable(loop_.index())) {
    h2_waiting_ = true;
    pool_.h2_wait(loop_.index(), this);
  } else {
    waiting_ = true;
    pool_.add_waiter({loop_.index(), id_});
  }
  if (!acquire_timed_) {
    acquire_timed_ = true;
    arm_timer(pool_.config().acquire_timeout);
  }
}

void Exchange::h2_room() {
  h2_waiting_ = false;
  // After the event that freed the room (a session callback may be on the stack).
  loop_.ev().arm(resume_, loop_.ev().now(), [this] {
    if (state_ == State::Acquire && !waiting_ && !h2_waiting_) acquire();
  });
}

void Exchange::submit_h2(upstream::H2Session& session) {
  loop_.ev().cancel(timer_);
  acquire_timed_ = false;
  thread_local upstream::H2Request request;
  proxy_.upstream_request_h2(ctx_, pool_, request);
  h2_headers = &upstream_head_;
  h2_body = ctx_.body;
  upstream_head_.clear();
  first_byte_ = false;
  filled_ = used_ = 0;
  state_ = State::AwaitHead;
  ctx_.marks.upstream_ready = ctx_.since_start();
  // One deadline for sending the request and for its response's head (read_timeout).
  arm_timer(pool_.config().read_timeout);
  std::string error;
  // A session that fails while sending ends this stream through h2_end.
  if (!session.submit(*this, request, error)) upstream_failed(502, error, false);
}

void Exchange::h2_head(int status) {
  if (state_ != State::AwaitHead) return;
  first_byte_ = true;
  int64_t length = -1;
  if (const std::string_view cl = upstream_head_.get("Content-Length"); !cl.empty()) {
    int64_t v = 0;
    const auto r = std::from_chars(cl.data(), cl.data() + cl.size(), v);
    if (r.ec == std::errc() && r.ptr == cl.data() + cl.size() && v >= 0) length = v;
  }
  on_head_parsed(status, length, Poco::Net::HTTPResponse::getReasonForStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status)));
}

void Exchange::h2_data(std::string_view bytes) {
  if (state_ != State::Relay) {
    if (h2_session) h2_session->consume(*this, bytes.size());
    return;
  }
  last_upstream_io_ = loop_.ev().now();
  h2_unconsumed += bytes.size();
  pieces_.push_back(bytes);
  relay_pieces();
  // The stream's window opens again only for bytes the client took (or queued below the high
  // watermark): a slow client holds its own stream back, never its neighbours.
  if (h2_session && !paused_ && h2_unconsumed > 0) {
    h2_session->consume(*this, h2_unconsumed);
    h2_unconsumed = 0;
  }
}

void Exchange::h2_end(uint32_t error_code, bool refused, const std::string& why) {
  const auto& name = pool_.config().name;
  if (state_ == State::AwaitHead) {
    if (error_code == NGHTTP2_NO_ERROR)
      return upstream_failed(502, "upstream '" + name + "' ended the stream without a response", false);
    // Refused streams were never processed: sent again, on another connection when this one goes away.
    return upstream_failed(502, why, refused && attempt_ < kMaxRefusedRetries);
  }
  if (state_ != State::Relay) return;
  if (error_code == NGHTTP2_NO_ERROR) {
    upstream_done_ = true;
    loop_.ev().cancel(timer_);
  } else {
    upstream_error_ = why;
  }
  after_relay();
}

void Exchange::drop_upstream(bool failure) {
  if (up_) pool_.discard(std::move(up_), failure);
  if (h2_session) h2_session->cancel(*this);
  h2_unconsumed = 0;
}

void Exchange::on_delivered(std::unique_ptr<upstream::Connection> conn) {
  if (state_ != State::Acquire || !waiting_) {
    if (conn) pool_.keep_idle(std::move(conn));
    else pool_.pass_slot();
    return;
  }
  waiting_ = false;
  loop_.ev().cancel(timer_);
  if (conn) return use(std::move(conn));
  acquire();  // a slot was freed: open a connection in it
}

void Exchange::use(std::unique_ptr<upstream::Connection> conn) {
  loop_.ev().cancel(timer_);
  up_ = std::move(conn);
  up_->user = this;
  up_readable_ = up_closing_ = false;  // while idle, any input made the pool close it
  first_byte_ = false;
  if (up_->established) return send_request();
  state_ = State::Connect;
  arm_timer(pool_.config().connect_timeout);
  establish();
}

void Exchange::establish() {
  switch (up_->establish()) {
    case upstream::Connection::Io::Ok:
      if (pool_.speaks_h2(*up_)) {
        // "auto" over https: the upstream chose h2. The connection becomes a session of this loop.
        loop_.ev().cancel(timer_);
        upstream::H2Session* session = pool_.adopt_h2(std::move(up_));
        if (!session) return upstream_failed(502, "upstream '" + pool_.config().name + "' HTTP/2 connection failed", false);
        return submit_h2(*session);
      }
      return send_request();
    case upstream::Connection::Io::WouldBlock:
      return;  // the next edge-triggered event continues
    default:
      return upstream_failed(502, up_->error(), false);
  }
}

void Exchange::send_request() {
  if (state_ != State::Send) {
    state_ = State::Send;
    request_sent_ = 0;
    ctx_.marks.upstream_ready = ctx_.since_start();
    // One deadline for writing the request and for its response's headers (both read_timeout).
    arm_timer(pool_.config().read_timeout);
  }
  while (request_sent_ < request_bytes_.size()) {
    size_t n = 0;
    switch (up_->write(request_bytes_.data() + request_sent_, request_bytes_.size() - request_sent_, n)) {
      case upstream::Connection::Io::Ok:
        request_sent_ += n;
        continue;
      case upstream::Connection::Io::WouldBlock:
        return;  // the next edge-triggered event continues
      default:
        // Reset/EPIPE on a reused socket before any byte was read: the stale-socket race.
        return upstream_failed(502, "upstream '" + pool_.config().name + "' connection failed: " + up_->error(),
                               up_->reused && attempt_ == 0);
    }
  }
  state_ = State::AwaitHead;
  parser_.emplace(upstream_head_, ctx_.method == "HEAD");
  // The answer is read when its event comes (or came while the request was being written): no
  // speculative read that finds nothing.
  read_upstream();
}

void Exchange::upstream_failed(int status, std::string failure, bool retryable) {
  drop_upstream(!retryable);
  if (retryable) {
    // Once, on a fresh connection: the upstream closed a kept-alive socket before reading the request.
    ++attempt_;
    state_ = State::Acquire;
    return acquire();
  }
  loop_.ev().cancel(timer_);
  ctx_.upstream_status = 0;
  fail({status, failure, "", status == 504 ? "upstream_timeout" : "upstream_unavailable"});
}

void Exchange::on_upstream_event(uint32_t events) {
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) up_readable_ = true;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) up_closing_ = true;  // read on to the end: no edge follows
  if (parked_) return;
  switch (state_) {
    case State::Connect:
      return establish();
    case State::Send:
      return send_request();
    case State::AwaitHead:
    case State::Relay:
      return read_upstream();  // nothing while paused: resuming reads what arrived
    default:
      return;
  }
}

void Exchange::read_upstream() {
  if (h2_session || (pool_.h2() && !up_)) {
    // HTTP/2: the session reads; resuming gives the stream's window back.
    if (h2_session && !paused_ && h2_unconsumed > 0) {
      h2_session->consume(*this, h2_unconsumed);
      h2_unconsumed = 0;
    }
    return;
  }
  const auto& name = pool_.config().name;
  for (int round = 0;; ++round) {
    if (parked_ || paused_ || (state_ != State::AwaitHead && state_ != State::Relay)) return;
    if (round >= 16) {
      // Fairness: the rest is read after the loop's other events (edge-triggered: it must be).
      loop_.ev().arm(resume_, loop_.ev().now(), [this] { read_upstream(); });
      return;
    }
    // Plain TCP, edge-triggered: after a short read (or EAGAIN) the socket was empty, and whatever
    // arrives later raises an event; until then a recv would only find nothing (as nginx does).
    // TLS reads until EAGAIN: OpenSSL may hold bytes epoll cannot see.
    if (!up_readable_ && !up_->tls()) {
      if (wait_since_ == Clock::time_point{}) wait_since_ = Clock::now();
      return;
    }
    size_t got = 0;
    const auto io = up_->read(buf_, buf_cap_, got);
    const auto now = Clock::now();
    if (io == upstream::Connection::Io::WouldBlock) {
      up_readable_ = false;
      if (wait_since_ == Clock::time_point{}) wait_since_ = now;
      return;
    }
    if (io == upstream::Connection::Io::Ok && got < buf_cap_ && !up_closing_) up_readable_ = false;
    if (wait_since_ != Clock::time_point{} && state_ == State::Relay) ctx_.upstream_time += now - wait_since_;
    wait_since_ = {};
    if (io == upstream::Connection::Io::Ok) {
      last_upstream_io_ = now;
      first_byte_ = true;
      filled_ = got;
      if (state_ == State::AwaitHead) {
        used_ = 0;
        const auto ev = parser_->feed(buf_, filled_, used_);
        if (ev == http::ResponseParser::Event::Error)
          return upstream_failed(502, "invalid response from upstream '" + name + "': " + parser_->error(), false);
        if (ev == http::ResponseParser::Event::HeadersDone)
          return on_head_parsed(parser_->status(), parser_->content_length(), parser_->reason());
        continue;
      }
      relay_from(0);
      continue;
    }
    if (io == upstream::Connection::Io::Eof) {
      if (state_ == State::AwaitHead) {
        if (!first_byte_)
          return upstream_failed(502, "upstream closed the connection without responding", up_->reused && attempt_ == 0);
        parser_->finish();
        return upstream_failed(502, "invalid response from upstream '" + name + "': " + parser_->error(), false);
      }
      // A body delimited by the close ends here (unless TLS was cut without close_notify);
      // anything else was cut.
      const auto end = up_->clean_eof() ? parser_->finish() : http::ResponseParser::Event::Error;
      if (end != http::ResponseParser::Event::Error) {
        upstream_done();
      } else if (upstream_length_ >= 0) {
        upstream_error_ = "upstream '" + name + "' closed the response after " + std::to_string(parser_->body_bytes()) +
                          " of " + std::to_string(upstream_length_) + " bytes";
      } else {
        parser_->finish();
        upstream_error_ = "upstream '" + name + "' " + (up_->clean_eof() ? parser_->error() : up_->error());
      }
      return end_relay();
    }
    // Io::Error
    if (state_ == State::AwaitHead) {
      const std::string& e = up_->error();
      if (e.rfind("TLS error", 0) == 0) return upstream_failed(502, e, false);
      return upstream_failed(502, "upstream '" + name + "' connection failed: " + e, up_->reused && attempt_ == 0 && !first_byte_);
    }
    upstream_error_ = "upstream '" + name + "' failed mid-response: " + up_->error();
    return end_relay();
  }
}

void Exchange::on_timer() {
  const auto& ucfg = pool_.config();
  const auto now = loop_.ev().now();
  switch (state_) {
    case State::Deferred:
      return go_upstream();
    case State::Body:
      resp().setKeepAlive(false);
      return fail({408, "request body not received within " + ms(proxy_.config().server.body_timeout)});
    case State::Acquire:
      acquire_timed_ = false;
      if (h2_waiting_) {
        pool_.h2_unwait(loop_.index(), this);
        h2_waiting_ = false;
      } else if (!waiting_ || !pool_.remove_waiter({loop_.index(), id_})) {
        if (!pool_.h2()) return;  // a delivery is on its way
        // HTTP/2: woken but not served yet (h2_room's retry is queued): the deadline has passed.
        loop_.ev().cancel(resume_);
      }
      waiting_ = false;
      pool_.count_timeout();
      return fail({503,
                   "upstream busy: upstream '" + ucfg.name + "': all " + std::to_string(ucfg.max_connections) +
                       " connections are busy (waited " + ms(ucfg.acquire_timeout) + ")",
                   "", "upstream_pool_exhausted"});
    case State::Connect:
      return upstream_failed(502, "could not connect to upstream '" + ucfg.name + "': timed out after " + ms(ucfg.connect_timeout), false);
    case State::Send:
      return upstream_failed(502, "could not connect to upstream '" + ucfg.name + "': sending the request timed out after " + ms(ucfg.read_timeout), false);
    case State::AwaitHead:
      return upstream_failed(504, "upstream '" + ucfg.name + "' did not respond within " + ms(ucfg.read_timeout), false);
    case State::Relay:
      if (paused_ || now - last_upstream_io_ < ucfg.read_timeout) {
        // Reading resumed since (or the client is the slow one): the deadline moves.
        loop_.ev().arm(timer_, (paused_ ? now : last_upstream_io_) + ucfg.read_timeout, [this] { on_timer(); });
        return;
      }
      upstream_error_ = "upstream '" + ucfg.name + "' stalled for more than " + ms(ucfg.read_timeout) + " mid-response";
      return end_relay();
    default:
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// Response side

void Exchange::on_head_parsed(int status, int64_t content_length, std::string_view reason) {
  const Clock::time_point now = Clock::now();
  ctx_.upstream_time += now - phase_start_;
  ctx_.marks.upstream_head = ctx_.since_start(now);
  ctx_.upstream_status = status;
  reason_ = reason;
  // Read before the headers move out of upstream_head_.
  sse_ = is_event_stream(upstream_head_.get("Content-Type"));
  upstream_length_ = content_length;
  map_response_headers(upstream_head_, ctx_.response_headers);
  ctx_.response_headers.erase("X-Request-ID");  // the client gets the proxy's (resp() stamps it)
  state_ = State::ResponseHooks;
  // on_response_headers and on_response_body run on the loop for every plugin (ABI: they only
  // compute; they see each chunk as it is relayed).
  run_.response_headers(ctx_);
  begin_response();
}

void Exchange::begin_response() {
  const bool success = ctx_.upstream_status >= 200 && ctx_.upstream_status < 300;
  hide_usage_chunk_ = hide_usage_chunk_ && sse_ && success;
  usage_.emplace(ctx_.flavour, sse_, hide_usage_chunk_);
  if (sse_) {
    proxy_.stream_started();  // counted from the first byte relayed until the stream ends
    counted_stream_ = true;
  }
  // Responses that never carry a body (RFC 9110 §6.4.1): nothing to relay.
  const bool no_body = ctx_.method == "HEAD" || ctx_.upstream_status == 204 || ctx_.upstream_status == 304;
  known_length_ = upstream_length_ >= 0 && !hide_usage_chunk_;
  const ResponseHead head{ctx_.upstream_status,
                          std::string(reason_),
                          &ctx_.response_headers,
                          ctx_.response_headers.has("Date"),
                          !no_body && !known_length_,
                          no_body ? std::max<int64_t>(upstream_length_, 0) : upstream_length_,
                          sse_};
  sink_.start(head);
  if (!known_length_ && used_ == filled_) {
    // Streams: the client sees the status at once, before the first event. (With a known length,
    // the headers wait for the body; body bytes that came with the headers leave with them in
    // relay_from's one write.)
    sink_.flush_head();
  }
  if (leading_) {
    RecordedHead recorded{ctx_.upstream_status, std::string(reason_), http::Headers(), sse_, no_body, upstream_length_,
                          hide_usage_chunk_};
    recorded.headers = ctx_.response_headers;
    ctx_.recording->start(std::move(recorded));
  }
  if (parser_)
    parser_->set_body_sink(
        [](void* list, std::string_view bytes) { static_cast<std::vector<std::string_view>*>(list)->push_back(bytes); }, &pieces_);
  pieces_.reserve(8);
  state_ = State::Relay;
  last_upstream_io_ = Clock::now();
  // The headers' deadline stays armed and becomes the stall deadline, which moves lazily:
  // on_timer re-arms it from the last upstream read.
  if (!parser_) return;  // HTTP/2: the body comes in h2_data
  relay_from(used_);  // the body bytes that came with the headers
  if (state_ == State::Relay) read_upstream();
}

// Parses buf_[start, filled_), relays the body pieces, and ends the relay when it is over.
void Exchange::relay_from(size_t start) {
  size_t consumed = 0;
  const auto ev = parser_->feed(buf_ + start, filled_ - start, consumed);
  used_ = start + consumed;
  if (ev == http::ResponseParser::Event::Error)
    upstream_error_ = "upstream '" + pool_.config().name + "' sent a broken response: " + parser_->error();
  else if (ev == http::ResponseParser::Event::MessageDone)
    upstream_done();  // released before the client sees the last byte: its next request finds it idle
  relay_pieces();
}

void Exchange::relay_pieces() {
  // The pieces are views into buf_, relayed before the next read reuses it: gathered, then one
  // write for the whole read (the head too, when it came with body bytes of a stream). A
  // recording gets them as the upstream sent them (one chunk per read), after the own client.
  // When the leader hides the usage-only chunk, the recording also gets what its client got: its
  // followers that hide it too relay that view as it is.
  const bool record_view = leading_ && hide_usage_chunk_;
  if (record_view) hidden_view_.clear();
  for (std::string_view piece : pieces_) {
    const std::string_view out = usage_->feed(piece);
    if (record_view) hidden_view_.append(out);
    emit(out, false);
  }
  if (leading_) ctx_.recording->append(pieces_, record_view ? std::optional<std::string_view>(hidden_view_) : std::nullopt);
  pieces_.clear();
  sink_.flush();
  after_relay();
}

void Exchange::after_relay() {
  if (upstream_done_ || !upstream_error_.empty()) return end_relay();
  if (ctx_.client_gone) {
    if (!leading_ || ctx_.recording->followers() == 0) return end_relay();
    if (!leader_left_) leader_left();  // the upstream is read on for the followers
    return;
  }
  check_backpressure();
}

void Exchange::upstream_done() {
  upstream_done_ = true;
  loop_.ev().cancel(timer_);
  // Bytes after the response, or a response that ends with the connection: never reused.
  if (parser_->keep_alive() && used_ == filled_ && !up_->buffered()) pool_.release(std::move(up_));
  else pool_.discard(std::move(up_), false);
}

void Exchange::emit(std::string_view bytes, bool end) {
  if (!bytes.empty() || end) run_.response_body(ctx_, bytes, end);
  write_client(bytes, end);
}

// Body bytes for the own client, gathered until relay_from's flush (unless `flush`).
void Exchange::write_client(std::string_view bytes, bool flush) { sink_.write(bytes, flush); }

// Backpressure follows the exchange's own client only, while it is connected; followers of its
// recording are cut when they fall behind (Recording), they never pause the upstream.
void Exchange::check_backpressure() {
  if (ctx_.client_gone) return;
  const size_t queued = conn().queued();
  if (!paused_ && queued > kHighWater) {
    paused_ = true;
  } else if (paused_ && queued <= kLowWater) {
    paused_ = false;
    read_upstream();  // edge-triggered: whatever arrived meanwhile is read now
  }
}

void Exchange::sink_stalled(ClientSink&, const std::string& why) { client_gone(why); }

// The exchange's own client left mid-relay while others follow: its socket is shut (the client
// sees the end at once), and the upstream is read on, unpaused, for the followers.
void Exchange::leader_left() {
  leader_left_ = true;
  if (ctx_.error.empty()) ctx_.error = "client disconnected";
  sink_.cancel_send_timer();
  ::shutdown(conn().fd(), SHUT_RDWR);
  if (paused_) {
    paused_ = false;
    read_upstream();
  }
}

// The last follower of the recording left (posted to this loop by the recording).
void Exchange::followers_left() {
  if (state_ == State::Relay && ctx_.client_gone && ctx_.recording->followers() == 0) end_relay();
}

// The client is gone (hang-up, write error, or not reading within send_timeout).
void Exchange::client_gone(const std::string& why) {
  ctx_.client_gone = true;
  if (ctx_.error.empty()) ctx_.error = why;
  switch (state_) {
    case State::Relay:
      if (leading_ && ctx_.recording->followers() > 0) {
        if (!leader_left_) leader_left();
        return;
      }
      return end_relay();
    case State::Flushing:
      return hand_back();
    case State::Follow:
      end_follow(false);
      return;
    case State::Body:
    case State::Deferred:
      loop_.ev().cancel(timer_);
      return complete();
    case State::Acquire:
    case State::Connect:
    case State::Send:
    case State::AwaitHead:
      loop_.ev().cancel(timer_);
      if (waiting_ && pool_.remove_waiter({loop_.index(), id_})) waiting_ = false;
      if (h2_waiting_) {
        pool_.h2_unwait(loop_.index(), this);
        h2_waiting_ = false;
      }
      drop_upstream(false);  // it may have started: never reuse it
      state_ = State::Completing;
      return complete();
    default:
      return;  // Completing: finish_response will see it
  }
}

void Exchange::on_event(uint32_t events) {
  if (parked_) {
    if (events & (EPOLLHUP | EPOLLERR)) client_hup_ = true;
    return;
  }
  if (ctx_.client_gone && state_ == State::Relay) return;  // it left; the followers keep the relay going
  if ((events & EPOLLOUT) && conn().queued() > 0) {
    const ClientSink::Flush flushed = sink_.on_writable();
    if (flushed == ClientSink::Flush::Gone) return client_gone("client disconnected");
    if (flushed == ClientSink::Flush::Drained && state_ == State::Flushing) return hand_back();
    if (state_ == State::Relay) check_backpressure();
    if (state_ == State::Follow && conn().queued() <= kLowWater) recording_ready();  // take what waits
  }
  if (state_ == State::Body && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return read_body();
  if (events & (EPOLLHUP | EPOLLERR)) return client_gone("client disconnected");
}

// ---------------------------------------------------------------------------------------------
// Follow mode: the answer comes from another request's recording (ctx_.follow).

void Exchange::start_follow() {
  state_ = State::Follow;
  ctx_.marks.follow_start = ctx_.since_start();
  follower_ = ctx_.follow->recording->attach(loop_, this);
  if (!follower_) {
    // It failed or outgrew its limit since the plugin looked.
    if (ctx_.follow->fallback) return fall_back();
    return fail({502, "the response being followed can no longer be followed"});
  }
  recording_ready();  // what is there already (all of it, for a finished recording)
}

// Posted by the recording (or called when the client can take more): takes the inbox.
void Exchange::recording_ready() {
  if (state_ != State::Follow || !follower_) return;
  // Backpressure: what waits stays in the inbox (shared, not copied) until the client takes
  // more; the recording cuts this follower if it falls too far behind.
  if (follow_started_ && conn().queued() > kHighWater) return;
  Recording& rec = *ctx_.follow->recording;
  rec.take(*follower_, take_);
  if (!follow_started_) {
    if (take_.state == Recording::State::Waiting) return;  // the head comes later
    if (!rec.started()) {
      // The recorded request failed before its head: on our own, or its answer.
      rec.detach(follower_);
      follower_.reset();
      if (ctx_.follow->fallback) return fall_back();
      return fail(rec.failure());
    }
    const RecordedHead& head = rec.head();
    if (ctx_.follow->fallback && (head.status == 429 || head.status >= 500)) {
      rec.detach(follower_);
      follower_.reset();
      return fall_back();
    }
    begin_follow(head);
  }
  if (take_.cut) {
    if (ctx_.error.empty())
      ctx_.error = "follower fell more than " + std::to_string(rec.backlog()) + " bytes behind the response it follows";
    take_.chunks.clear();
    return end_follow(false);
  }
  for (const auto& chunk : take_.chunks) {
    if (hidden_views_) write_client(*chunk.hidden, false);  // the leader's view (usage chunk hidden)
    else if (usage_) write_client(usage_->feed(*chunk.raw), false);  // this client's own view
    else write_client(*chunk.raw, false);
  }
  take_.chunks.clear();
  sink_.flush();
  if (ctx_.client_gone) return end_follow(false);
  if (take_.state == Recording::State::Complete) return end_follow(true);
  if (take_.state == Recording::State::Failed) {
    if (ctx_.error.empty()) ctx_.error = rec.failure().message;
    return end_follow(false);
  }
}

void Exchange::begin_follow(const RecordedHead& head) {
  follow_started_ = true;
  ctx_.marks.follow_head = ctx_.since_start();
  ctx_.origin = ctx_.follow->origin;
  for (auto& [name, value] : ctx_.follow->headers) {  // the plugin's headers for this answer
    std::erase_if(ctx_.extra_response_headers, [&](const auto& kv) { return iequals(kv.first, name); });
    ctx_.extra_response_headers.emplace_back(name, value);
  }
  ctx_.response_headers = head.headers;  // what plugins' on_complete reads (response_header)
  sse_ = head.sse;
  const bool success = head.status >= 200 && head.status < 300;
  // This client's own view: the usage-only chunk hidden when it did not ask for usage.
  hide_usage_chunk_ = sse_ && success && proxy_.finalize_body(ctx_);
  // The leader computed the hidden view once for everyone; else this client hides it itself.
  hidden_views_ = hide_usage_chunk_ && head.hidden_views;
  if (hide_usage_chunk_ && !hidden_views_) usage_.emplace(ctx_.flavour, sse_, true);
  if (sse_) {
    proxy_.stream_started();
    counted_stream_ = true;
  }
  known_length_ = head.content_length >= 0 && !hide_usage_chunk_;
  const ResponseHead rh{head.status,
                        head.reason,
                        &ctx_.response_headers,
                        ctx_.response_headers.has("Date"),
                        !head.no_body && !known_length_,
                        head.no_body ? std::max<int64_t>(head.content_length, 0) : head.content_length,
                        sse_};
  sink_.start(rh);
  if (!known_length_) sink_.flush_head();  // a stream's client sees the status before the first event
}

// The followed response ended for this client: complete (its usage is the recording's) or cut
// (the client left, fell behind, the recording failed mid-body, the server stops).
void Exchange::end_follow(bool complete_ok) {
  Recording& rec = *ctx_.follow->recording;
  if (follower_) {
    rec.detach(follower_);
    follower_.reset();
  }
  state_ = State::Completing;
  if (complete_ok && (usage_ || hidden_views_)) {
    const std::string_view rest = hidden_views_ ? std::string_view(rec.hidden_tail()) : usage_->finish();
    if (!rest.empty()) write_client(rest, true);
  }
  if (!ctx_.usage_set) ctx_.usage = rec.final_usage();
  if (!complete_ok && !ctx_.client_gone) {
    // Like a cut upstream: a stream gets the flavour's error event; the response ends without its
    // terminating chunk (or short of its length) and the connection closes.
    if (sse_ && !known_length_) write_client(sink_.error_event(ctx_.flavour, ctx_.error), true);
    abort_client(resp());
  }
  complete();
}

// The followed request failed before its head: this one goes upstream on its own.
void Exchange::fall_back() {
  ctx_.follow.reset();
  ctx_.origin = Origin::Upstream;
  go_upstream();
}

// ---------------------------------------------------------------------------------------------
// The end

void Exchange::end_relay() {
  if (state_ != State::Relay) return;
  state_ = State::Completing;
  loop_.ev().cancel(timer_);
  // After a failure, what the extractor still holds is an unfinished event: counted, not relayed.
  const std::string_view rest = usage_->finish();
  if (!ctx_.client_gone && upstream_error_.empty()) emit(rest, true);
  if (!ctx_.usage_set) ctx_.usage = usage_->usage();
  if (leading_) {
    // Followers get the end (or the failure, as an error event of their own flavour).
    if (upstream_done_ && upstream_error_.empty())
      ctx_.recording->complete(usage_->usage(), !sse_ || (usage_->saw_terminal_event() && !usage_->saw_error_event()), rest);
    else
      ctx_.recording->fail(usage_->usage(), {502, upstream_error_.empty() ? std::string("the response being followed ended early") : upstream_error_});
  }
  if (ctx_.client_gone) {
    drop_upstream(false);  // the upstream may still be sending: never reuse that socket
    if (ctx_.error.empty()) ctx_.error = "client disconnected";
    return complete();
  }
  if (!upstream_error_.empty()) {
    drop_upstream(true);
    ctx_.error = upstream_error_;
    // A stream gets the flavour's error event so SDKs raise instead of hanging; either way the
    // response ends without its terminating chunk (or short of its length) and the connection
    // closes, so no client can take it for complete.
    if (sse_ && !known_length_) {
      // A half-relayed event is ended first, so the error arrives as an event of its own.
      emit(sink_.error_event(ctx_.flavour, upstream_error_), true);
    }
    abort_client(resp());
  }
  complete();
}

void Exchange::complete() {
  state_ = State::Completing;
  ctx_.marks.ended = ctx_.since_start();
  // A recording not ended yet ends here: its request got an error answer, a refusal, an answer
  // from another recording, or its client left early. Its followers fall back or get the answer.
  if (ctx_.recording) {
    const int status = ctx_.status >= 400 ? ctx_.status : 502;
    ctx_.recording->fail(ctx_.usage, {status, ctx_.client_gone    ? std::string("the request being followed was cancelled")
                                              : ctx_.error.empty() ? std::string("the request being followed ended without a response")
                                                                   : ctx_.error});
  }
  if (leading_) {
    ctx_.recording->set_leader(nullptr, nullptr);
    leading_ = false;
  }
  hooks(
      [this] {
        run_.complete(ctx_);
        return plugins::HookResult::Continue;
      },
      [this](plugins::HookResult) { finish_response(); });
}

void Exchange::finish_response() {
  if (client_hup_) ctx_.client_gone = true;
  keep_ = resp().finish() && !draining_ && !ctx_.client_gone && conn().body_complete();
  if (resp().failed()) ctx_.client_gone = true;
  if (conn().write_timed_out() && ctx_.error.empty())
    ctx_.error = stopped_reading(proxy_.config().server.send_timeout);
  if (counted_stream_) {
    proxy_.stream_ended();
    counted_stream_ = false;
  }
  host_.exchange_done(*this);
  if (!ctx_.client_gone && conn().queued() > 0) {
    state_ = State::Flushing;
    sink_.arm_send_timer();
    return;
  }
  hand_back();
}

void Exchange::hand_back() {
  if (state_ == State::Finished) return;
  state_ = State::Finished;
  loop_.ev().cancel(timer_);
  loop_.ev().cancel(resume_);
  sink_.hand_back(keep_);  // a client gone is closed whatever keep_ says
  host_.exchange_finished(*this);
}

void Exchange::abort(const std::string& why) {
  if (state_ == State::Finished || parked_) return;
  inline_hooks_ = true;  // the workers are gone: what is left runs here
  draining_ = true;
  switch (state_) {
    case State::Relay:
      upstream_error_ = why;
      return end_relay();
    case State::Flushing:
      ctx_.client_gone = true;
      return hand_back();
    case State::Completing:
      return;
    case State::Follow:
      if (follow_started_) {
        ctx_.error = why;
        return end_follow(false);
      }
      ctx_.follow->recording->detach(follower_);
      follower_.reset();
      return fail({503, why, "", "server_stopping"});
    default:
      loop_.ev().cancel(timer_);
      if (waiting_ && pool_.remove_waiter({loop_.index(), id_})) waiting_ = false;
      if (h2_waiting_) {
        pool_.h2_unwait(loop_.index(), this);
        h2_waiting_ = false;
      }
      drop_upstream(false);
      if (!resp().sent()) return fail({503, why, "", "server_stopping"});
      return complete();
  }
}

}  // namespace glmp::core::pipeline
