#include "upstream/h2_session.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <cstring>

#include <nghttp2/nghttp2.h>

#include "http/nghttp2_io.hpp"
#include "http/response_parser.hpp"
#include "util/scratch.hpp"

namespace glmp::core::upstream {
namespace {

// A stream's receive window: what one slow client can leave in flight beyond its queue (the same
// order as HTTP/1.1's high watermark). The connection's window is large and given back at once.
constexpr int32_t kStreamWindow = 256 * 1024;
constexpr int32_t kConnectionWindow = 64 * 1024 * 1024;
constexpr int kMaxReadRounds = 16;         // then the loop's other events go first

std::atomic<uint64_t> next_serial{1};

std::string code_text(uint32_t code) { return nghttp2_http2_strerror(code); }

}  // namespace

// The callbacks nghttp2 calls during mem_recv / mem_send, as friends of the session.
struct H2Session::Access {
  static H2Session& self(void* user_data) { return *static_cast<H2Session*>(user_data); }
  static H2Stream* stream(nghttp2_session* ng, int32_t id) {
    return static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(ng, id));
  }

  // A response head is collected block by block: a HEADERS block's fields are kept only when its
  // :status is final (>= 200); 1xx blocks are skipped, and blocks after the delivered head
  // (trailers) are not relayed.
  static int on_begin_headers(nghttp2_session* ng, const nghttp2_frame* frame, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (H2Stream* s = stream(ng, frame->hd.stream_id); s && !s->h2_head_seen && s->h2_headers) {
      s->h2_headers->clear();
      s->h2_status = 0;
      s->h2_head_bytes = 0;
    }
    return 0;
  }

  static int on_header(nghttp2_session* ng, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    H2Stream* s = stream(ng, frame->hd.stream_id);
    if (!s || s->h2_head_seen || !s->h2_headers) return 0;
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    // The same bound as an HTTP/1.1 head (name, value and ": " CRLF each): the stream is reset.
    s->h2_head_bytes += namelen + valuelen + 4;
    if (s->h2_head_bytes > http::kMaxResponseHeadBytes) {
      s->h2_head_too_large = true;
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (n == ":status") {
      int status = 0;
      for (char c : v) status = status * 10 + (c - '0');  // nghttp2 checked it: three digits
      s->h2_status = status;
      return 0;
    }
    if (s->h2_status < 200 || (!n.empty() && n.front() == ':')) return 0;
    s->h2_headers->add(n, v);
    return 0;
  }

  static int on_frame_recv(nghttp2_session* ng, const nghttp2_frame* frame, void* user_data) {
    H2Session& me = self(user_data);
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        H2Stream* s = stream(ng, frame->hd.stream_id);
        if (!s || s->h2_head_seen || s->h2_status < 200) return 0;  // 1xx, trailers, cancelled
        s->h2_head_seen = true;
        s->h2_head(s->h2_status);
        return 0;
      }
      case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) me.ping_outstanding_ = false;
        return 0;
      case NGHTTP2_GOAWAY:
        me.going_away_ = true;
        me.goaway_last_id_ = frame->goaway.last_stream_id;
        me.pool_.h2_going_away(me);
        return 0;
      default:
        return 0;
    }
  }

  static int on_data_chunk(nghttp2_session* ng, uint8_t, int32_t id, const uint8_t* data, size_t len, void*) {
    // The connection's window is given back at once: a slow stream never holds its neighbours.
    nghttp2_session_consume_connection(ng, len);
    H2Stream* s = stream(ng, id);
    if (!s) {
      nghttp2_session_consume_stream(ng, id, len);  // a cancelled stream's late bytes
      return 0;
    }
    s->h2_data(std::string_view(reinterpret_cast<const char*>(data), len));
    return 0;
  }

  static int on_stream_close(nghttp2_session* ng, int32_t id, uint32_t error_code, void* user_data) {
    self(user_data).stream_closed(stream(ng, id), id, error_code);
    return 0;
  }

  static ssize_t read_body(nghttp2_session* ng, int32_t id, uint8_t* buf, size_t length, uint32_t* flags, nghttp2_data_source*,
                           void*) {
    H2Stream* s = stream(ng, id);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // cancelled: the stream is reset
    const size_t n = std::min(length, s->h2_body.size() - s->h2_body_sent);
    std::memcpy(buf, s->h2_body.data() + s->h2_body_sent, n);
    s->h2_body_sent += n;
    if (s->h2_body_sent == s->h2_body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
};

using Callbacks = http::H2Callbacks<H2Session::Access, false>;

// ---------------------------------------------------------------------------------------------

H2Session::H2Session(Pool& pool, std::unique_ptr<Connection> conn, server::EventLoop& ev)
    : pool_(pool), conn_(std::move(conn)), ev_(ev), serial_(next_serial.fetch_add(1, std::memory_order_relaxed)) {
  conn_->user = this;
  created_ = idle_since_ = Clock::now();
  const auto& c = Callbacks::get();
  nghttp2_session_client_new2(&ng_, c.cb, this, c.opt);
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(http::kMaxResponseHeadBytes)},
  };
  nghttp2_submit_settings(ng_, NGHTTP2_FLAG_NONE, settings, sizeof settings / sizeof settings[0]);
  nghttp2_session_set_local_window_size(ng_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  established_ = conn_->established;
  loop_ = conn_->loop();
}

void H2Session::start() {
  arm_tick();
  ++depth_;
  if (!established_) establish();
  else readable_ = true;
  --depth_;
  after_io();
}

H2Session::~H2Session() {
  ev_.cancel(tick_);
  if (ng_) nghttp2_session_del(ng_);
}

bool H2Session::can_take() const {
  if (dead_ || going_away_) return false;
  const uint32_t peer = nghttp2_session_get_remote_settings(ng_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  const size_t limit = std::min<size_t>(static_cast<size_t>(pool_.config().max_streams_per_connection), peer);
  return open_ < limit;
}

bool H2Session::submit(H2Stream& s, const H2Request& req, std::string& error) {
  std::vector<nghttp2_nv> nv;
  nv.reserve(req.fields.size() + 4);
  const auto add = [&nv](std::string_view n, std::string_view v) {
    nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())), reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())),
                  n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
  };
  add(":method", req.method);
  add(":scheme", pool_.secure() ? "https" : "http");
  add(":authority", pool_.host_header());
  add(":path", req.path);
  for (const auto& [n, v] : req.fields) add(n, v);
  s.h2_body_sent = 0;
  s.h2_unconsumed = 0;
  s.h2_head_seen = false;
  s.h2_status = 0;
  s.h2_head_bytes = 0;
  s.h2_head_too_large = false;
  nghttp2_data_provider body{};
  body.read_callback = &Access::read_body;
  const bool with_body = !s.h2_body.empty();
  const int32_t id = nghttp2_submit_request(ng_, nullptr, nv.data(), nv.size(), with_body ? &body : nullptr, &s);
  if (id < 0) {
    error = "upstream '" + pool_.config().name + "' HTTP/2: " + nghttp2_strerror(id);
    return false;
  }
  s.h2_session = this;
  s.h2_id = id;
  s.h2_slot = users_.size();
  users_.push_back(&s);
  open_now_.store(++open_, std::memory_order_relaxed);
  pool_.h2_stream_opened(*this);
  if (depth_ == 0 && established_) flush();
  return true;
}

void H2Session::consume(H2Stream& s, size_t n) {
  if (dead_ || n == 0) return;
  nghttp2_session_consume_stream(ng_, s.h2_id, n);
  if (depth_ == 0 && established_) flush();
}

void H2Session::cancel(H2Stream& s) {
  const int32_t id = s.h2_id;
  forget(s);
  s.h2_session = nullptr;
  s.h2_id = 0;
  if (dead_) return;
  nghttp2_session_set_stream_user_data(ng_, id, nullptr);
  nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
  if (depth_ == 0 && established_) flush();
}

void H2Session::stream_closed(H2Stream* s, int32_t id, uint32_t error_code) {
  if (open_ > 0) --open_;
  open_now_.store(open_, std::memory_order_relaxed);
  if (open_ == 0) idle_since_ = Clock::now();
  pool_.h2_stream_closed(*this);
  if (!s) return;  // cancelled by its user
  forget(*s);
  s->h2_session = nullptr;
  s->h2_id = 0;
  const bool refused = error_code == NGHTTP2_REFUSED_STREAM || (going_away_ && id > goaway_last_id_);
  const std::string& name = pool_.config().name;
  std::string why;
  if (s->h2_head_too_large)
    why = "invalid response from upstream '" + name + "': headers larger than " + std::to_string(http::kMaxResponseHeadBytes) + " bytes";
  else if (s->h2_head_seen && error_code != NGHTTP2_NO_ERROR)
    why = "upstream '" + name + "' failed mid-response: the stream was reset (HTTP/2 " + code_text(error_code) + ")";
  else if (refused)
    why = "upstream '" + name + "' refused the stream (HTTP/2 " + code_text(error_code) + ")";
  else if (!s->h2_head_seen)
    why = "upstream '" + name + "' reset the stream before responding (HTTP/2 " + code_text(error_code) + ")";
  s->h2_end(error_code, refused, why);
}

void H2Session::on_upstream_event(uint32_t events) {
  if (dead_) return;
  ++depth_;
  if (!established_) {
    establish();
  } else {
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) readable_ = true;
    read_all();
    if (!dead_ && (events & EPOLLOUT)) flush();
  }
  --depth_;
  after_io();
}

void H2Session::establish() {
  switch (conn_->establish()) {
    case Connection::Io::WouldBlock:
      return;
    case Connection::Io::Ok:
      break;
    default:
      return terminate(conn_->error(), true);
  }
  if (pool_.secure() && !conn_->alpn_h2()) {
    return terminate("upstream '" + pool_.config().name + "' does not speak HTTP/2 (ALPN did not select h2; set protocol = \"auto\" or \"http1\")",
                     true);
  }
  established_ = true;
  readable_ = true;  // the server's SETTINGS may be there already
  flush();
  read_all();
}

void H2Session::read_all() {
  char* const buf = util::scratch();  // util::kScratchSize bytes
  for (int round = 0; !dead_; ++round) {
    if (!readable_ && !conn_->tls()) return;
    if (round >= kMaxReadRounds) {
      // Fairness: the rest is read after the loop's other events.
      ev_.post([this, serial = serial_, &pool = pool_, loop = loop_] {
        if (pool.h2_alive(loop, this, serial)) {
          ++depth_;
          read_all();
          --depth_;
          after_io();
        }
      });
      return;
    }
    size_t got = 0;
    const auto io = conn_->read(buf, util::kScratchSize, got);
    if (io == Connection::Io::WouldBlock) {
      readable_ = false;
      return;
    }
    if (io == Connection::Io::Eof) {
      return terminate("upstream '" + pool_.config().name + "' closed the HTTP/2 connection" +
                           (conn_->clean_eof() ? std::string() : ": " + conn_->error()),
                       false);
    }
    if (io == Connection::Io::Error) return terminate("upstream '" + pool_.config().name + "' HTTP/2 connection failed: " + conn_->error(), false);
    if (got < util::kScratchSize && !conn_->tls()) readable_ = false;
    const ssize_t rc = nghttp2_session_mem_recv(ng_, reinterpret_cast<const uint8_t*>(buf), got);
    if (rc < 0) {
      return terminate("upstream '" + pool_.config().name + "' broke the HTTP/2 protocol: " + nghttp2_strerror(static_cast<int>(rc)),
                       false);
    }
  }
}

void H2Session::flush() {
  if (dead_ || !established_) return;
  for (;;) {
    if (out_off_ == out_.size()) {
      out_off_ = 0;
      if (const ssize_t rc = http::gather_frames(ng_, out_); rc < 0)
        return terminate("upstream '" + pool_.config().name + "' HTTP/2: " + nghttp2_strerror(static_cast<int>(rc)), false);
      if (out_.empty()) return;
    }
    size_t sent = 0;
    const auto io = conn_->write(out_.data() + out_off_, out_.size() - out_off_, sent);
    if (io == Connection::Io::WouldBlock) return;  // EPOLLOUT continues
    if (io != Connection::Io::Ok) return terminate("upstream '" + pool_.config().name + "' HTTP/2 connection failed: " + conn_->error(), false);
    out_off_ += sent;
  }
}

// After our own event handling: send what the callbacks produced; close a finished session.
void H2Session::after_io() {
  if (depth_ > 0) return;
  if (!dead_) flush();
  if (!dead_ && established_ && nghttp2_session_want_read(ng_) == 0 && nghttp2_session_want_write(ng_) == 0 && out_off_ == out_.size()) {
    dead_ = true;  // GOAWAY exchanged and every accepted stream done
  }
  if (dead_) close();
}

void H2Session::terminate(const std::string& why, bool connect_failure) {
  if (dead_) return;
  dead_ = true;
  error_ = why;
  nghttp2_session_del(ng_);  // no callbacks from here on
  ng_ = nullptr;
  open_ = 0;
  open_now_.store(0, std::memory_order_relaxed);
  // Every stream still open ends with the connection's failure. Taken out first: a user may
  // submit a retry (on another session) from its callback. A connection that failed before it
  // was established never carried a byte of any request: those are safe to send again.
  std::vector<H2Stream*> users;
  users.swap(users_);
  for (H2Stream* s : users) {
    s->h2_session = nullptr;
    s->h2_id = 0;
    s->h2_end(NGHTTP2_INTERNAL_ERROR, connect_failure,
              s->h2_head_seen ? "upstream '" + pool_.config().name + "' failed mid-response: " + why : why);
  }
  close();
}

void H2Session::close() {
  if (closing_) return;
  closing_ = true;
  dead_ = true;
  pool_.h2_close(*this);
}

void H2Session::forget(H2Stream& s) {
  const size_t slot = s.h2_slot;
  if (slot >= users_.size() || users_[slot] != &s) return;
  users_[slot] = users_.back();
  users_[slot]->h2_slot = slot;
  users_.pop_back();
}

void H2Session::arm_tick() {
  const auto& cfg = pool_.config();
  auto every = std::chrono::milliseconds(1000);
  if (cfg.ping_interval.count() > 0) every = std::min(every, cfg.ping_interval);
  ev_.arm(tick_, ev_.now() + every, [this] { on_tick(); });
}

void H2Session::on_tick() {
  if (dead_) return;
  const auto& cfg = pool_.config();
  const auto now = Clock::now();
  if (!established_) {
    if (now - created_ > cfg.connect_timeout)
      return terminate("could not connect to upstream '" + cfg.name + "': timed out after " + std::to_string(cfg.connect_timeout.count()) + " ms", true);
  } else if (ping_outstanding_ && now - ping_sent_ > cfg.connect_timeout) {
    return terminate("upstream '" + cfg.name + "' did not answer an HTTP/2 PING within " + std::to_string(cfg.connect_timeout.count()) + " ms", false);
  } else if (open_ == 0 && now - idle_since_ > cfg.idle_timeout) {
    // Idle too long: said goodbye (GOAWAY), then closed.
    going_away_ = true;
    nghttp2_session_terminate_session(ng_, NGHTTP2_NO_ERROR);
    flush();
    return close();
  } else if (cfg.ping_interval.count() > 0 && open_ == 0 && !ping_outstanding_ && now - std::max(idle_since_, ping_sent_) >= cfg.ping_interval) {
    ping_outstanding_ = true;
    ping_sent_ = now;
    nghttp2_submit_ping(ng_, NGHTTP2_FLAG_NONE, nullptr);
    flush();
  }
  arm_tick();
}

}  // namespace glmp::core::upstream
