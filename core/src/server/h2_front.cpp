#include "server/h2_front.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nghttp2/nghttp2.h>

#include "http/nghttp2_io.hpp"
#include "pipeline/errors.hpp"
#include "pipeline/headers.hpp"
#include "pipeline/router.hpp"
#include "server/engine.hpp"
#include "util/scratch.hpp"

namespace glmp::core::server {
namespace {

constexpr int kMaxReadRounds = 16;         // then the loop's other events go first
// A stream's response bytes waiting for the client (its window, the socket): past the high
// watermark its lane is no longer read, below the low one again.
constexpr size_t kHighWater = 256 * 1024;
constexpr size_t kLowWater = 64 * 1024;
constexpr uint32_t kLaneEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr auto kTick = std::chrono::seconds(1);

void append_lower(std::string& out, std::string_view s) {
  for (char c : s) out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c);
}

void append_hex(std::string& out, size_t n) {
  char buf[20];
  int i = sizeof buf;
  do {
    buf[--i] = "0123456789abcdef"[n & 15];
    n >>= 4;
  } while (n > 0);
  out.append(buf + i, sizeof buf - static_cast<size_t>(i));
}

}  // namespace

// One lane to the loop's HTTP/1.1 server (a socket pair and its in-memory pipe); carries one
// stream at a time.
class H2Front::Lane final : public Watcher, public LaneEnd {
public:
  Lane(H2Front& front, int socket) : front_(front), fd(socket), pipe(std::make_shared<LanePipe>()) { pipe->front = this; }
  ~Lane() override {
    pipe->front = nullptr;
    if (fd >= 0) ::close(fd);
  }
  ssize_t take_response(const iovec* iov, int count, bool may_refuse) override {
    return front_.lane_take(*this, iov, count, may_refuse);
  }
  void request_taken() override { front_.lane_taken(*this); }
  // The inner connection reads the pipe (it is on the loop), not the socket (it is on a worker).
  bool piped() const { return !pipe->lent; }
  void on_event(uint32_t events) override {
    if (front_.closed_) return;
    ++front_.depth_;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) readable = true;
    if (events & EPOLLOUT) front_.lane_writable(*this);
    if (stream_id != 0 && readable) front_.lane_readable(*this);
    --front_.depth_;
    front_.after_io();
  }

  // Ready for the stream `id`.
  void begin(int32_t id) {
    stream_id = id;
    method.clear();
    path.clear();
    authority.clear();
    fields.clear();
    cookie.clear();
    to_inner.clear();
    to_inner_off = 0;
    unacked = 0;
    field_bytes = 0;
    chunked = false;
    has_length = false;
    request_done = false;
    head_sent = false;
    discard = false;
    response.reset();
    response_headers.clear();
    body.clear();
    body_off = 0;
    response_started = false;
    response_done = false;
    deferred = false;
  }
  size_t body_queued() const { return body.size() - body_off; }

  H2Front& front_;
  int fd;
  std::shared_ptr<LanePipe> pipe;  // shared with the inner connection
  int32_t stream_id = 0;  // 0: idle
  bool readable = false;  // edge-triggered: the socket may hold bytes
  bool paused = false;    // not read past the high watermark (counted in paused_lanes_)
  bool broken = false;    // never reused (EOF, error, a stream cut)
  // The request, as it arrives.
  std::string method, path, authority;
  std::string fields;  // "name: value\r\n" lines, lowercase names
  std::string cookie;  // the cookie fields, joined with "; " (RFC 9113 §8.2.3)
  size_t field_bytes = 0;
  std::string to_inner;  // HTTP/1.1 bytes not written into the lane yet
  size_t to_inner_off = 0;
  size_t unacked = 0;  // DATA bytes not acknowledged to the client: once written into the socket, or read from the pipe
  bool chunked = false;
  bool has_length = false;  // the request came with a content-length field
  bool request_done = false;
  bool head_sent = false;
  bool discard = false;  // the inner side stopped reading: request bytes are dropped
  // The response, as the lane answers.
  http::Headers response_headers;
  std::unique_ptr<http::ResponseParser> response;
  std::string body;  // DATA not taken by nghttp2 yet
  size_t body_off = 0;
  bool response_started = false;
  bool response_done = false;
  bool deferred = false;  // the data provider said "later": resume when bytes come
};

// ---------------------------------------------------------------------------------------------
// nghttp2's callbacks

struct H2Front::Access {
  static H2Front& self(void* user) { return *static_cast<H2Front*>(user); }
  static Lane* lane(nghttp2_session* ng, int32_t id) { return static_cast<Lane*>(nghttp2_session_get_stream_user_data(ng, id)); }

  static int on_begin_headers(nghttp2_session* ng, const nghttp2_frame* frame, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    H2Front& me = self(user);
    Lane* l = me.lane_for(frame->hd.stream_id);
    if (!l) {
      nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, l);
    ++me.open_streams_;
    return 0;
  }

  static int on_header(nghttp2_session* ng, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    Lane* l = lane(ng, frame->hd.stream_id);
    if (!l || l->head_sent) return 0;  // trailers are dropped
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    // Bounded as the HTTP/1.1 head would be (the inner parser answers 431 past its own limit);
    // beyond twice that, decoded bytes (an HPACK bomb) are not even kept.
    l->field_bytes += namelen + valuelen + 4;
    if (l->field_bytes > 2 * l->front_.conn_->limits().request.max_header_bytes) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (n == ":method") l->method.assign(v);
    else if (n == ":path") l->path.assign(v);
    else if (n == ":authority") l->authority.assign(v);
    else if (!n.empty() && n.front() == ':') return 0;  // :scheme (the inner server is the proxy itself)
    else if (n == "cookie") {
      if (!l->cookie.empty()) l->cookie += "; ";
      l->cookie.append(v);
    } else {
      if (n == "host" && !l->authority.empty()) return 0;
      if (n == "content-length") l->has_length = true;
      l->fields.append(n).append(": ").append(v).append("\r\n");
    }
    return 0;
  }

  static int on_frame_recv(nghttp2_session* ng, const nghttp2_frame* frame, void* user) {
    H2Front& me = self(user);
    const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        Lane* l = lane(ng, frame->hd.stream_id);
        if (!l) return 0;
        if (!l->head_sent) {
          if (l->method.empty() || (l->path.empty() && l->method != "CONNECT")) {
            me.answer(frame->hd.stream_id, 400, "HTTP/2 request without :method or :path");
            return 0;
          }
          if (l->method == "CONNECT") {
            me.answer(frame->hd.stream_id, 405, "CONNECT is not supported");
            return 0;
          }
          // The HTTP/1.1 head: the body as it comes with a Content-Length, chunked without one.
          std::string& out = l->to_inner;
          out.append(l->method).append(" ").append(l->path).append(" HTTP/1.1\r\n");
          if (!l->authority.empty()) out.append("host: ").append(l->authority).append("\r\n");
          out.append(l->fields);
          if (!l->cookie.empty()) out.append("cookie: ").append(l->cookie).append("\r\n");
          if (!end && !l->has_length) {
            l->chunked = true;
            out.append("transfer-encoding: chunked\r\n");
          }
          out.append("\r\n");
          l->head_sent = true;
          l->response_headers.clear();
          l->response = std::make_unique<http::ResponseParser>(l->response_headers, l->method == "HEAD");
          l->response->set_body_sink([](void* lp, std::string_view bytes) { static_cast<Lane*>(lp)->body.append(bytes); }, l);
          l->fields.clear();
          l->fields.shrink_to_fit();
        }
        if (end && !l->request_done) {
          l->request_done = true;
          if (l->chunked) l->to_inner.append("0\r\n\r\n");
        }
        me.lane_writable(*l);
        return 0;
      }
      case NGHTTP2_DATA: {
        if (!end) return 0;
        Lane* l = lane(ng, frame->hd.stream_id);
        if (!l || l->request_done) return 0;
        l->request_done = true;
        if (l->chunked) l->to_inner.append("0\r\n\r\n");
        me.lane_writable(*l);
        return 0;
      }
      default:
        return 0;
    }
  }

  static int on_data_chunk(nghttp2_session* ng, uint8_t, int32_t id, const uint8_t* data, size_t len, void* user) {
    H2Front& me = self(user);
    // The connection's window is given back at once; a stream's once its bytes are in its lane.
    nghttp2_session_consume_connection(ng, len);
    Lane* l = lane(ng, id);
    if (!l || !l->head_sent) {
      nghttp2_session_consume_stream(ng, id, len);
      return 0;
    }
    if (l->chunked) {
      append_hex(l->to_inner, len);
      l->to_inner.append("\r\n");
    }
    l->to_inner.append(reinterpret_cast<const char*>(data), len);
    if (l->chunked) l->to_inner.append("\r\n");
    l->unacked += len;
    me.lane_writable(*l);
    return 0;
  }

  static int on_stream_close(nghttp2_session* ng, int32_t id, uint32_t error_code, void* user) {
    H2Front& me = self(user);
    Lane* l = lane(ng, id);
    if (!l) return 0;
    nghttp2_session_set_stream_user_data(ng, id, nullptr);
    if (me.open_streams_ > 0) --me.open_streams_;
    // Reusable only after a complete exchange: anything else leaves the inner request half-sent or
    // its response half-read, and closing the lane tells the inner connection its client is gone.
    me.lane_done(*l, error_code == NGHTTP2_NO_ERROR && l->request_done && l->response_done && l->to_inner_off == l->to_inner.size());
    return 0;
  }

  static ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags, nghttp2_data_source* source,
                           void*) {
    Lane* l = static_cast<Lane*>(source->ptr);
    const size_t n = std::min(length, l->body_queued());
    std::memcpy(buf, l->body.data() + l->body_off, n);
    l->body_off += n;
    if (l->body_off == l->body.size()) {
      l->body.clear();
      l->body_off = 0;
    }
    if (l->body_queued() == 0 && l->response_done) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    }
    if (n == 0) {
      l->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    return static_cast<ssize_t>(n);
  }
};

using Callbacks = http::H2Callbacks<H2Front::Access, true>;

// ---------------------------------------------------------------------------------------------

H2Front::H2Front(Loop& loop, std::unique_ptr<ClientConnection> conn, const H2FrontOptions& options)
    : loop_(loop), conn_(std::move(conn)), options_(options) {
  const Callbacks& c = Callbacks::get();
  nghttp2_session_server_new2(&ng_, c.cb, this, c.opt);
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(conn_->limits().request.max_header_bytes)},
  };
  nghttp2_submit_settings(ng_, NGHTTP2_FLAG_NONE, settings, sizeof settings / sizeof settings[0]);
  last_activity_ = last_write_progress_ = loop_.ev().now();
}

H2Front::~H2Front() {
  loop_.ev().cancel(tick_);
  for (auto& l : lanes_) {
    if (l->fd >= 0) loop_.ev().remove(l->fd);
  }
  if (ng_) nghttp2_session_del(ng_);
}

void H2Front::start() {
  arm_tick();
  ++depth_;
  // h2c: the preface (and what followed) was read by the HTTP/1.1 side, which recognised it.
  if (const std::string early = conn_->take_buffered(); early.empty() || receive(early.data(), early.size()))
    read_client();  // the client's preface may have come with the handshake's last flight
  --depth_;
  after_io();
}

void H2Front::on_event(uint32_t events) {
  flush_scheduled_ = false;
  if (closed_) return;
  ++depth_;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_client();
  if (!closed_ && ((events & EPOLLOUT) || conn_->tls_wants_write())) flush();
  --depth_;
  after_io();
}

void H2Front::read_client() {
  char* const buf = util::scratch();  // util::kScratchSize bytes
  for (int round = 0; !closed_; ++round) {
    if (round >= kMaxReadRounds) {
      // Fairness: the rest after the loop's other events (the front outlives this: retired).
      loop_.ev().post([this] {
        if (closed_) return;
        ++depth_;
        read_client();
        --depth_;
        after_io();
      });
      return;
    }
    const ssize_t n = conn_->transport_read(buf, util::kScratchSize);
    if (n == 0) return close("client closed");
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      return close("read error");
    }
    if (!receive(buf, static_cast<size_t>(n))) return;
    // Read on until EAGAIN: a TLS read returns one record at most, so a short read does not mean
    // the socket is empty (edge-triggered: stopping early would wait for the next event).
  }
}

// The client's bytes to nghttp2. False once the connection is closed: nghttp2 queued the GOAWAY
// that says why (a protocol error), which is sent first.
bool H2Front::receive(const char* data, size_t len) {
  last_activity_ = loop_.ev().now();
  if (nghttp2_session_mem_recv(ng_, reinterpret_cast<const uint8_t*>(data), len) >= 0) return true;
  flush();
  close("protocol error");
  return false;
}

void H2Front::flush() {
  if (closed_) return;
  for (;;) {
    if (out_off_ == out_.size()) {
      out_off_ = 0;
      if (http::gather_frames(ng_, out_) < 0) return close("HTTP/2 error");
      if (out_.empty()) return;
    }
    const ssize_t n = conn_->transport_write(out_.data() + out_off_, out_.size() - out_off_);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // EPOLLOUT goes on
      if (errno == EINTR) continue;
      return close("write error");
    }
    out_off_ += static_cast<size_t>(n);
    last_write_progress_ = loop_.ev().now();
  }
}

void H2Front::after_io() {
  if (depth_ > 0 || closed_) return;
  // Lanes paused by a full stream whose client took some of it meanwhile read on (looked for
  // only while there are any).
  if (paused_lanes_ > 0) {
    for (auto& l : lanes_) {
      if (!l->paused || l->body_queued() > kLowWater) continue;
      l->paused = false;
      --paused_lanes_;
      // A piped inner connection writes its queue on EPOLLOUT; the socket is read in any case
      // (a worker's bytes, or the close).
      if (l->piped() && l->pipe->inner) loop_.ev().notify(l->pipe->inner, EPOLLOUT);
      ++depth_;
      lane_readable(*l);
      --depth_;
      if (closed_) return;
    }
  }
  flush();
  if (closed_) return;
  if (nghttp2_session_want_read(ng_) == 0 && nghttp2_session_want_write(ng_) == 0 && out_off_ == out_.size())
    close("session over");
}

H2Front::Lane* H2Front::lane_for(int32_t stream_id) {
  Lane* l = nullptr;
  if (!idle_.empty()) {
    l = idle_.back();
    idle_.pop_back();
  } else {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return nullptr;
    auto lane = std::make_unique<Lane>(*this, fds[0]);
    if (!loop_.ev().add(fds[0], kLaneEvents, lane.get())) {
      ::close(fds[1]);
      return nullptr;
    }
    // The inner end: an HTTP/1.1 connection of this loop, from the client's address.
    Engine& engine = loop_.engine();
    auto inner = std::make_unique<ClientConnection>(fds[1], conn_->peer(), conn_->local(), conn_->limits(), engine.open_counter(),
                                                    &engine.stopping(), nullptr);
    inner->set_pipe(lane->pipe);
    inner->deadline = loop_.ev().now() + conn_->limits().keepalive_timeout;
    loop_.keep(std::move(inner));
    l = lane.get();
    lanes_.push_back(std::move(lane));
  }
  l->begin(stream_id);
  return l;
}

void H2Front::lane_writable(Lane& l) {
  if (l.piped()) {
    LanePipe& p = *l.pipe;
    // (to_inner_off moves only on the socket, which a lane never leaves once it takes it.)
    if (!l.discard && !l.to_inner.empty()) {
      if (!p.inner) {
        l.broken = true;  // the inner connection is gone: the rest of the request is dropped
        l.discard = true;
      } else {
        if (p.pending() == 0) {
          p.request.swap(l.to_inner);  // no copy; to_inner keeps the pipe's spent buffer
          p.request_off = 0;
        } else {
          p.request.append(l.to_inner);
        }
        loop_.ev().notify(p.inner, EPOLLIN);
      }
    }
    l.to_inner.clear();
    lane_taken(l);
    return;
  }
  while (!l.discard && l.to_inner_off < l.to_inner.size()) {
    const ssize_t n = ::send(l.fd, l.to_inner.data() + l.to_inner_off, l.to_inner.size() - l.to_inner_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // EPOLLOUT goes on
      // The inner connection stopped reading: it answered before the whole request came (a 431,
      // a 413, an early error) and closed. The rest of the request is dropped; the answer, read
      // from the lane, still goes to the client.
      l.broken = true;
      l.discard = true;
      break;
    }
    l.to_inner_off += static_cast<size_t>(n);
  }
  l.to_inner.clear();
  l.to_inner_off = 0;
  if (l.unacked > 0 && l.stream_id != 0) {  // in the lane (or dropped): the client may send more
    nghttp2_session_consume_stream(ng_, l.stream_id, l.unacked);
    l.unacked = 0;
  }
}

void H2Front::lane_readable(Lane& l) {
  char* const buf = util::scratch();  // util::kScratchSize bytes
  while (l.readable && l.stream_id != 0 && !l.response_done) {
    if (l.body_queued() > kHighWater) return pause(l);  // the client is slow on this stream: its lane waits
    const ssize_t n = ::recv(l.fd, buf, util::kScratchSize, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        l.readable = false;
        return;
      }
    }
    if (n <= 0) {
      // The inner connection closed: after a complete response that is the end of a
      // Connection: close exchange; before, the response was cut.
      l.readable = false;
      l.broken = true;
      const bool ok = l.response && l.response->finish() == http::ResponseParser::Event::MessageDone;
      if (ok) {
        l.response_done = true;
        if (!l.response_started) {
          // A response whose end is the close and that has not started: nothing to say but that.
          nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, l.stream_id, NGHTTP2_INTERNAL_ERROR);
        } else if (l.deferred) {
          l.deferred = false;
          nghttp2_session_resume_data(ng_, l.stream_id);
        }
      } else {
        nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, l.stream_id, NGHTTP2_INTERNAL_ERROR);
      }
      return;
    }
    if (!lane_bytes(l, buf, static_cast<size_t>(n))) return;
  }
}

// Response bytes of a lane's inner connection (from its pipe or its socket) become the stream's
// HEADERS and DATA. False when the response is broken (the stream is reset; the parser dropped).
bool H2Front::lane_bytes(Lane& l, const char* data, size_t len) {
  if (!l.response) return true;  // bytes without a request to answer: dropped
  size_t off = 0;
  while (off < len && !l.response_done) {
    size_t used = 0;
    const auto ev = l.response->feed(data + off, len - off, used);
    off += used;
    if (ev == http::ResponseParser::Event::Error) {
      l.broken = true;
      l.response.reset();
      nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, l.stream_id, NGHTTP2_INTERNAL_ERROR);
      return false;
    }
    if (ev == http::ResponseParser::Event::HeadersDone) {
      // HEADERS: the status and the fields, lowercase, without the connection-specific ones.
      thread_local std::vector<std::string> names;
      thread_local std::vector<nghttp2_nv> nv;
      names.clear();
      nv.clear();
      const std::string status = std::to_string(l.response->status());
      // Connection-specific fields (RFC 9113 §8.2.2) are the proxy's hop-by-hop list.
      for (const auto& [name, value] : l.response_headers) {
        std::string lower;
        if (!pipeline::is_hop_by_hop(name)) append_lower(lower, name);
        names.push_back(std::move(lower));
      }
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(":status")), reinterpret_cast<uint8_t*>(const_cast<char*>(status.data())), 7,
                    status.size(), NGHTTP2_NV_FLAG_NONE});
      size_t k = 0;
      for (const auto& [name, value] : l.response_headers) {
        const std::string& lower = names[k++];
        if (lower.empty()) continue;
        nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(lower.data())), reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                      lower.size(), value.size(), NGHTTP2_NV_FLAG_NONE});  // copied by nghttp2
      }
      nghttp2_data_provider provider{};
      provider.source.ptr = &l;
      provider.read_callback = &Access::read_body;
      l.response_started = true;
      if (nghttp2_submit_response(ng_, l.stream_id, nv.data(), nv.size(), &provider) != 0) {
        l.broken = true;
        l.response.reset();
        nghttp2_submit_rst_stream(ng_, NGHTTP2_FLAG_NONE, l.stream_id, NGHTTP2_INTERNAL_ERROR);
        return false;
      }
      continue;
    }
    if (ev == http::ResponseParser::Event::MessageDone) {
      l.response_done = true;
      if (!l.response->keep_alive()) l.broken = true;
    }
  }
  if (l.deferred && (l.body_queued() > 0 || l.response_done)) {
    l.deferred = false;
    nghttp2_session_resume_data(ng_, l.stream_id);
  }
  return true;
}

void H2Front::pause(Lane& l) {
  if (l.paused) return;
  l.paused = true;
  ++paused_lanes_;
}

// Response bytes written by a piped inner connection (LaneEnd::take_response).
ssize_t H2Front::lane_take(Lane& l, const iovec* iov, int count, bool may_refuse) {
  size_t total = 0;
  for (int i = 0; i < count; ++i) total += iov[i].iov_len;
  // (A closed front has cleared every pipe's `front`: its inner connections get EPIPE before this.)
  // Past the high watermark the inner connection keeps its bytes (its exchange stops reading
  // the upstream) until after_io finds room and tells it EPOLLOUT.
  if (may_refuse && l.body_queued() > kHighWater && l.response && !l.response_done) {
    pause(l);
    errno = EAGAIN;
    return -1;
  }
  size_t done = 0;
  for (int i = 0; i < count && l.response && !l.response_done; ++i) {
    const char* p = static_cast<const char*>(iov[i].iov_base);
    size_t len = iov[i].iov_len;
    while (len > 0 && l.response && !l.response_done) {
      if (may_refuse && done > 0 && l.body_queued() > kHighWater) {
        pause(l);
        schedule_flush();
        return static_cast<ssize_t>(done);
      }
      const size_t step = std::min(len, util::kScratchSize);
      lane_bytes(l, p, step);
      p += step;
      len -= step;
      done += step;
    }
  }
  schedule_flush();
  return static_cast<ssize_t>(total);  // bytes past the response's end (or a broken one) are dropped
}

// A piped inner connection read request bytes: DATA it has taken reopens the stream's window
// while the pipe holds at most the high watermark.
void H2Front::lane_taken(Lane& l) {
  if (l.unacked == 0 || l.stream_id == 0) return;
  if (!l.discard && l.piped() && l.pipe->pending() > kHighWater) return;
  nghttp2_session_consume_stream(ng_, l.stream_id, l.unacked);
  l.unacked = 0;
  schedule_flush();
}

// Frames waiting because of another watcher's work (a piped inner connection's response) go out
// once this batch of events is handled: the responses of many streams share a TLS write.
void H2Front::schedule_flush() {
  if (flush_scheduled_ || closed_ || depth_ > 0) return;
  flush_scheduled_ = true;
  loop_.ev().notify(this, EPOLLOUT);
}

void H2Front::lane_done(Lane& l, bool reusable) {
  l.stream_id = 0;
  if (l.paused) {
    l.paused = false;
    --paused_lanes_;
  }
  l.response.reset();
  // A lane whose inner connection went to a worker is not reused: its socket carries its bytes
  // from then on (server/lane_pipe.hpp), which the pipe spares every other stream.
  if (reusable && !l.broken && l.piped() && !draining_ && !closed_) {
    l.to_inner.clear();
    l.body.clear();
    idle_.push_back(&l);
    return;
  }
  // Closed: the inner connection sees its client gone (or its keep-alive end): its pipe reads EOF,
  // its socket the close.
  l.pipe->front = nullptr;
  loop_.ev().remove(l.fd);
  ::shutdown(l.fd, SHUT_RDWR);
  ::close(l.fd);
  l.fd = -1;
  Lane* raw = &l;
  auto it = std::find_if(lanes_.begin(), lanes_.end(), [raw](const std::unique_ptr<Lane>& p) { return p.get() == raw; });
  if (it != lanes_.end()) {
    loop_.ev().retire(std::move(*it));  // its event may be on the stack
    lanes_.erase(it);
  }
}

void H2Front::answer(int32_t stream_id, int status, const std::string& message) {
  Lane* l = Access::lane(ng_, stream_id);
  if (l) l->broken = true;  // its inner connection never got a request: closed with the stream
  static thread_local std::string body;
  body = pipeline::error_body(pipeline::Router::guess_flavour(l && !l->path.empty() ? std::string_view(l->path) : std::string_view("/")),
                              {status, message, "", ""});
  const std::string st = std::to_string(status);
  const std::string len = std::to_string(body.size());
  const nghttp2_nv nv[] = {
      {reinterpret_cast<uint8_t*>(const_cast<char*>(":status")), reinterpret_cast<uint8_t*>(const_cast<char*>(st.data())), 7, st.size(),
       NGHTTP2_NV_FLAG_NONE},
      {reinterpret_cast<uint8_t*>(const_cast<char*>("content-type")), reinterpret_cast<uint8_t*>(const_cast<char*>("application/json")), 12,
       16, NGHTTP2_NV_FLAG_NONE},
      {reinterpret_cast<uint8_t*>(const_cast<char*>("content-length")), reinterpret_cast<uint8_t*>(const_cast<char*>(len.data())), 14,
       len.size(), NGHTTP2_NV_FLAG_NONE},
  };
  if (l) {
    l->body = body;
    l->body_off = 0;
    l->response_done = true;
    l->response_started = true;
    l->request_done = true;
    nghttp2_data_provider provider{};
    provider.source.ptr = l;
    provider.read_callback = &Access::read_body;
    nghttp2_submit_response(ng_, stream_id, nv, 3, &provider);
  } else {
    nghttp2_submit_response(ng_, stream_id, nv, 3, nullptr);
  }
}

void H2Front::drain() {
  if (closed_ || draining_) return;
  draining_ = true;
  // The streams already received finish; any later one is refused.
  nghttp2_submit_goaway(ng_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(ng_), NGHTTP2_NO_ERROR, nullptr, 0);
  for (Lane* l : idle_) l->broken = true;
  std::vector<Lane*> idle;
  idle.swap(idle_);
  for (Lane* l : idle) lane_done(*l, false);
  if (depth_ == 0) after_io();
}

void H2Front::close(const char*) {
  if (closed_) return;
  closed_ = true;
  loop_.ev().cancel(tick_);
  idle_.clear();
  // Every lane goes: the inner connections of open streams see their client gone.
  while (!lanes_.empty()) {
    Lane& l = *lanes_.back();
    l.broken = true;
    lane_done(l, false);
  }
  conn_.reset();              // close_notify, close; its slot goes after this event
  loop_.front_closed(*this);  // the front is freed after this event
}

void H2Front::arm_tick() {
  loop_.ev().arm(tick_, loop_.ev().now() + kTick, [this] { on_tick(); });
}

// Deadlines, checked once a second: an idle connection (no stream open) closes after
// keepalive_timeout; a client that takes nothing of what is queued for send_timeout is cut.
void H2Front::on_tick() {
  if (closed_) return;
  const auto now = loop_.ev().now();
  const ConnectionLimits& limits = conn_->limits();
  if (out_off_ < out_.size() && now - last_write_progress_ > limits.send_timeout) return close("client stopped reading");
  if (open_streams_ == 0 && now - last_activity_ > limits.keepalive_timeout) {
    nghttp2_session_terminate_session(ng_, NGHTTP2_NO_ERROR);
    flush();
    return close("idle");
  }
  arm_tick();
}

}  // namespace glmp::core::server
