#include "mock_h2.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string_view>

namespace glmp::mock {

namespace {

// A stream pulls script steps only while less than this is queued and not yet framed.
constexpr std::size_t kStreamHighWater = 32 * 1024;
// A reset waits at most this long for the stream's queued bytes to be framed (flow control) and
// acknowledged by the peer.
constexpr Nanos kResetWait = 2000 * kMs;
// The request limits the HTTP/1.1 side answers with a 400 (Poco's); here the stream gets the 400.
constexpr std::size_t kMaxUri = 16384;
constexpr std::size_t kMaxName = 256;
constexpr std::size_t kMaxValue = 8192;
constexpr std::size_t kMaxFields = 100;

std::string_view view(const std::uint8_t* p, std::size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

nghttp2_nv make_nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2).
bool hop_by_hop(std::string_view name) {
  return name == "connection" || name == "keep-alive" || name == "proxy-connection" ||
         name == "transfer-encoding" || name == "upgrade" || name == "te";
}

}  // namespace

H2Session::Stream::Stream(std::int32_t sid) : id(sid) {
  req.version_major = 2;
  req.version_minor = 0;
}

H2Session::H2Session(const Options& options, Stats& stats) : opt_(options), stats_(stats) {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_option* option = nullptr;
  if (nghttp2_session_callbacks_new(&callbacks) != 0 || nghttp2_option_new(&option) != 0) {
    if (callbacks != nullptr) nghttp2_session_callbacks_del(callbacks);
    failed_ = true;
    return;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &H2Session::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &H2Session::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &H2Session::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                            &H2Session::on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &H2Session::on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, &H2Session::on_frame_send);
  // Benchmarks open and close many streams a second: no stream-close bookkeeping for priorities.
  nghttp2_option_set_no_closed_streams(option, 1);
  // x-mock-header-bytes may ask for a head beyond nghttp2's 64 KiB default: it is sent (in
  // CONTINUATION frames), for the peer to refuse.
  nghttp2_option_set_max_send_header_block_length(option, 4u << 20);
  const int rv = nghttp2_session_server_new2(&session_, callbacks, this, option);
  nghttp2_session_callbacks_del(callbacks);
  nghttp2_option_del(option);
  if (rv != 0) {
    session_ = nullptr;
    failed_ = true;
    return;
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, opt_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, opt_.h2_window},
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2) != 0) failed_ = true;
  // The connection's receive window starts at 65535 whatever the settings say: a larger
  // --h2-window raises it too (a WINDOW_UPDATE on stream 0).
  if (opt_.h2_window > 65535 &&
      nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                            static_cast<std::int32_t>(opt_.h2_window)) != 0) {
    failed_ = true;
  }
}

H2Session::~H2Session() {
  // nghttp2_session_del calls no callback; the streams (scripts, handlers) go after it.
  if (session_ != nullptr) nghttp2_session_del(session_);
  streams_.clear();
}

H2Session::Stream* H2Session::find(std::int32_t id) {
  const auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void H2Session::mark_ready(Stream& s) {
  if (s.ready) return;
  s.ready = true;
  ready_.push_back(s.id);
}

void H2Session::set_timer(Stream& s, Nanos due) {
  s.due = due;
  timers_.emplace(due, s.id);
}

bool H2Session::receive(const char* data, std::size_t len) {
  if (failed_) return false;
  const ssize_t rv =
      nghttp2_session_mem_recv(session_, reinterpret_cast<const std::uint8_t*>(data), len);
  if (rv < 0) {
    if (opt_.verbose) {
      std::fprintf(stderr, "mock-upstream: h2: %s\n", nghttp2_strerror(static_cast<int>(rv)));
    }
    failed_ = true;
    return false;
  }
  return true;
}

bool H2Session::pump(std::string& out, std::size_t limit) {
  if (session_ == nullptr) return false;
  for (;;) {
    while (!ready_.empty()) {
      batch_.swap(ready_);
      for (const std::int32_t id : batch_) {
        if (Stream* s = find(id)) {
          s->ready = false;
          run_stream(*s);
        }
      }
      batch_.clear();
    }
    if (out.size() >= limit) return true;
    const std::uint8_t* p = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &p);
    if (n < 0) {
      failed_ = true;
      return false;
    }
    if (n == 0) {
      if (ready_.empty()) return false;
      continue;
    }
    out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    if (goaway_out_) {
      // The GOAWAY of a refusal is out: its RST_STREAM(REFUSED_STREAM) follows it. Written here
      // because nghttp2 has closed the stream with the GOAWAY (it is above last_stream_id) and,
      // with no other stream left, would drop an RST_STREAM queued after it.
      goaway_out_ = false;
      for (const std::int32_t id : refused_) {
        const auto sid = static_cast<std::uint32_t>(id);
        const char frame[13] = {0, 0, 4, static_cast<char>(NGHTTP2_RST_STREAM), 0,
                                static_cast<char>((sid >> 24) & 0x7f), static_cast<char>(sid >> 16),
                                static_cast<char>(sid >> 8), static_cast<char>(sid),
                                0, 0, 0, static_cast<char>(NGHTTP2_REFUSED_STREAM)};
        out.append(frame, sizeof frame);
      }
      refused_.clear();
    }
  }
}

void H2Session::drained(Nanos now) {
  for (const std::int32_t id : drain_waiters_) {
    Stream* s = find(id);
    if (s == nullptr || s->gate != Gate::WaitDrain) continue;
    s->gate = Gate::Waiting;
    set_timer(*s, now + static_cast<Nanos>(s->gate_ms) * kMs);
  }
  drain_waiters_.clear();
}

void H2Session::acked() {
  for (const std::int32_t id : ack_waiters_) {
    Stream* s = find(id);
    if (s != nullptr && s->gate == Gate::ResetAck) reset_stream(*s, NGHTTP2_INTERNAL_ERROR);
  }
  ack_waiters_.clear();
}

Nanos H2Session::next_due() {
  while (!timers_.empty()) {
    const auto [due, id] = timers_.top();
    const Stream* s = find(id);
    if (s != nullptr && s->due == due &&
        (s->gate == Gate::Waiting || s->gate == Gate::Reset || s->gate == Gate::ResetAck)) {
      return due;
    }
    timers_.pop();  // stale: the stream is gone or its timer changed
  }
  return 0;
}

void H2Session::on_timer(Nanos now) {
  while (!timers_.empty() && timers_.top().first <= now) {
    const auto [due, id] = timers_.top();
    timers_.pop();
    Stream* s = find(id);
    if (s == nullptr || s->due != due) continue;
    if (s->gate == Gate::Waiting) {
      s->gate = Gate::None;
      s->due = 0;
      mark_ready(*s);
    } else if (s->gate == Gate::Reset || s->gate == Gate::ResetAck) {
      mark_ready(*s);  // the deadline: reset whatever is still queued or unacknowledged
    }
  }
}

bool H2Session::finished() const {
  return session_ == nullptr ||
         (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0);
}

void H2Session::goaway() {
  if (session_ == nullptr) return;
  (void)nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                              nullptr, 0);
}

// The request is complete: run the handler (or answer the 400 for a request over a limit).
void H2Session::start(Stream& s) {
  if (s.started) return;
  s.started = true;
  ++responding_;
  if (s.bad) {
    s.counted = true;
    stats_.h2_streams.fetch_add(1);
    const nghttp2_nv nva[] = {make_nv(":status", "400"), make_nv("content-length", "0")};
    (void)nghttp2_submit_response(session_, s.id, nva, 2, nullptr);
    s.submitted = true;
    s.script_done = true;
    s.ended = true;
    return;
  }
  s.handler = make_handler(opt_, stats_, s.req);
  s.script = s.handler->run();
  mark_ready(s);
}

// Plays the stream's script as far as it can now: pulls steps while little is queued, stops at
// gates (a wait, a reset, a GOAWAY) until the queued bytes are framed, then queues HEADERS as
// soon as the head is complete and resumes the DATA when more came.
void H2Session::run_stream(Stream& s) {
  if (!s.started || s.ended) return;
  for (;;) {
    if (s.gate == Gate::Wait) {
      if (s.buffered() > 0) break;  // read_data makes the stream ready again as it drains
      s.gate = Gate::WaitDrain;
      drain_waiters_.push_back(s.id);
      break;
    }
    if (s.gate == Gate::WaitDrain || s.gate == Gate::Waiting) break;
    if (s.gate == Gate::Reset || s.gate == Gate::ResetAck) {
      if (now_ns() >= s.due) {
        if (s.head_done && !s.submitted) submit_head(s);
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
        return;
      }
      if (s.gate == Gate::Reset && s.buffered() == 0) {
        // Framed: once the connection's output is in the kernel and acknowledged, acked().
        s.gate = Gate::ResetAck;
        ack_waiters_.push_back(s.id);
      }
      break;
    }
    if (s.gate == Gate::Goaway) {
      if (s.buffered() > 0) break;
      // last_stream_id = this stream: the streams the peer opened after it are refused (nghttp2
      // closes them once the GOAWAY is out); this one and the earlier ones go on.
      (void)nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_NO_ERROR, nullptr, 0);
      s.gate = Gate::None;
      continue;
    }
    if (s.script_done || s.buffered() >= kStreamHighWater) break;
    bool more = false;
    try {
      more = s.script.next();
    } catch (const std::exception& e) {
      if (s.wrote) {
        reset_stream(s, NGHTTP2_INTERNAL_ERROR);
        return;
      }
      consume_write(s, s.handler->internal_error(e));
    }
    if (!more) {
      // As on HTTP/1.1: the script's locals (the active-request count) go before the last bytes.
      s.script_done = true;
      s.script.reset();
      s.handler.reset();
      break;
    }
    Step& step = s.script.step();
    if (!s.counted && step.kind != Step::Kind::Refuse) {
      s.counted = true;
      stats_.h2_streams.fetch_add(1);
    }
    switch (step.kind) {
      case Step::Kind::Write:
        s.wrote = true;
        consume_write(s, std::move(step.bytes));
        break;
      case Step::Kind::Wait:
        if (step.ms > 0) {
          s.gate = Gate::Wait;
          s.gate_ms = step.ms;
        }
        break;
      case Step::Kind::Reset:
        s.gate = Gate::Reset;
        set_timer(s, now_ns() + kResetWait);
        break;
      case Step::Kind::Goaway:
        s.gate = Gate::Goaway;
        break;
      case Step::Kind::Refuse:
        refuse(s);
        return;
    }
  }
  if (s.head_done && !s.submitted) {
    submit_head(s);
  } else if (s.submitted && s.deferred && (s.buffered() > 0 || s.script_done)) {
    s.deferred = false;
    (void)nghttp2_session_resume_data(session_, s.id);
  }
}

// A Write step: the head (up to its blank line) is kept for HEADERS, the rest is DATA.
void H2Session::consume_write(Stream& s, std::string bytes) {
  if (!s.head_done) {
    if (s.head.empty()) {
      s.head = std::move(bytes);
    } else {
      s.head += bytes;
    }
    const auto end = s.head.find("\r\n\r\n");
    if (end == std::string::npos) return;
    s.data.assign(s.head, end + 4, std::string::npos);
    s.off = 0;
    s.head.resize(end + 2);  // the header lines, each ending with CRLF
    s.head_done = true;
    return;
  }
  if (s.off > 0) {
    s.data.erase(0, s.off);
    s.off = 0;
  }
  if (s.data.empty()) {
    s.data = std::move(bytes);
  } else {
    s.data += bytes;
  }
}

// HEADERS from the handler's HTTP/1.1 head: the status code, then the fields (lowercase names)
// in their order, without the hop-by-hop ones. Without a body to come, END_STREAM is on it.
void H2Session::submit_head(Stream& s) {
  s.submitted = true;
  const std::string_view head = s.head;
  std::size_t line_end = head.find("\r\n");
  const std::string_view status_line = head.substr(0, line_end);
  const auto sp = status_line.find(' ');
  std::string_view status = sp == std::string_view::npos ? "500" : status_line.substr(sp + 1, 3);
  std::vector<std::string> names;
  std::vector<std::string_view> values;
  std::size_t pos = line_end + 2;
  while (pos < head.size()) {
    line_end = head.find("\r\n", pos);
    if (line_end == std::string_view::npos) line_end = head.size();
    const std::string_view line = head.substr(pos, line_end - pos);
    pos = line_end + 2;
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string name = lower(trim(line.substr(0, colon)));
    if (name.empty() || hop_by_hop(name)) continue;
    names.push_back(std::move(name));
    values.push_back(trim(line.substr(colon + 1)));
  }
  std::vector<nghttp2_nv> nva;
  nva.reserve(names.size() + 1);
  nva.push_back(make_nv(":status", status));
  for (std::size_t i = 0; i < names.size(); ++i) nva.push_back(make_nv(names[i], values[i]));
  const bool body = !(s.script_done && s.buffered() == 0);
  nghttp2_data_provider provider{};
  provider.source.ptr = &s;
  provider.read_callback = &H2Session::read_data;
  if (nghttp2_submit_response(session_, s.id, nva.data(), nva.size(), body ? &provider : nullptr) !=
      0) {
    reset_stream(s, NGHTTP2_INTERNAL_ERROR);
  }
  s.head.clear();
  s.head.shrink_to_fit();
}

void H2Session::reset_stream(Stream& s, std::uint32_t error_code) {
  s.ended = true;
  s.script_done = true;
  s.script.reset();
  s.handler.reset();
  s.data.clear();
  s.off = 0;
  (void)nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id, error_code);
}

// x-mock-goaway-refuse: the stream was never processed. GOAWAY with the stream before it as the
// last one (nghttp2 closes this stream and any later one once it is sent), then
// RST_STREAM(REFUSED_STREAM) for it (pump writes it right after the GOAWAY).
void H2Session::refuse(Stream& s) {
  s.ended = true;
  s.script_done = true;
  s.script.reset();
  s.handler.reset();
  const std::int32_t last = std::max<std::int32_t>(0, s.id - 2);
  if (nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, nullptr, 0) != 0) {
    reset_stream(s, NGHTTP2_REFUSED_STREAM);
    return;
  }
  refused_.push_back(s.id);
}

// ---------------------------------------------------------------------------------------------
// nghttp2 callbacks

int H2Session::on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  const std::int32_t id = frame->hd.stream_id;
  self.streams_[id] = std::make_unique<Stream>(id);
  self.stats_.note_open_streams(self.streams_.size());
  return 0;
}

int H2Session::on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name,
                         std::size_t namelen, const std::uint8_t* value, std::size_t valuelen,
                         std::uint8_t, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  Stream* s = self.find(frame->hd.stream_id);
  if (s == nullptr || s->started) return 0;
  const std::string_view n = view(name, namelen);
  const std::string_view v = view(value, valuelen);
  Request& req = s->req;
  if (!n.empty() && n.front() == ':') {
    if (n == ":method") {
      req.method.assign(v);
    } else if (n == ":path") {
      req.uri.assign(v);
      if (req.uri.size() > kMaxUri) s->bad = true;
    } else if (n == ":authority") {
      // Reported as the Host header an HTTP/1.1 client sends.
      if (req.headers.size() >= kMaxFields) {
        s->bad = true;
      } else {
        req.add_header("host", std::string(v));
      }
    }
    return 0;  // :scheme
  }
  if (namelen > kMaxName || valuelen > kMaxValue || req.headers.size() >= kMaxFields) {
    s->bad = true;
    return 0;
  }
  if (n == "cookie") {
    // Cookie crumbs are one header again (RFC 9113 8.2.3).
    for (auto& [k, val] : req.headers) {
      if (k == "cookie") {
        val += "; ";
        val += v;
        return 0;
      }
    }
  }
  req.add_header(std::string(n), std::string(v));
  return 0;
}

int H2Session::on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  Stream* s = self.find(frame->hd.stream_id);
  if (s == nullptr) return 0;
  const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST && !end &&
      !s->bad && s->req.expect_continue()) {
    // Expect: 100-continue, as the HTTP/1.1 side: a 100 before the body is read.
    const nghttp2_nv nva[] = {make_nv(":status", "100")};
    (void)nghttp2_submit_headers(session, NGHTTP2_FLAG_NONE, s->id, nullptr, nva, 1, nullptr);
  }
  if (end) self.start(*s);
  return 0;
}

int H2Session::on_data_chunk_recv(nghttp2_session*, std::uint8_t, std::int32_t stream_id,
                                  const std::uint8_t* data, std::size_t len, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  Stream* s = self.find(stream_id);
  if (s != nullptr && !s->started) s->req.body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int H2Session::on_stream_close(nghttp2_session*, std::int32_t stream_id, std::uint32_t,
                               void* user) {
  auto& self = *static_cast<H2Session*>(user);
  const auto it = self.streams_.find(stream_id);
  if (it == self.streams_.end()) return 0;
  if (it->second->started) --self.responding_;
  self.streams_.erase(it);  // the script and its handler with it
  return 0;
}

int H2Session::on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    self.stats_.goaways.fetch_add(1);
    if (!self.refused_.empty()) self.goaway_out_ = true;
  }
  return 0;
}

ssize_t H2Session::read_data(nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length,
                             std::uint32_t* data_flags, nghttp2_data_source* source, void* user) {
  auto& self = *static_cast<H2Session*>(user);
  Stream& s = *static_cast<Stream*>(source->ptr);
  const std::size_t avail = s.buffered();
  if (avail == 0) {
    if (s.script_done && !s.ended) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    s.deferred = true;  // run_stream resumes it when more is queued
    return NGHTTP2_ERR_DEFERRED;
  }
  const std::size_t n = std::min(avail, length);
  std::memcpy(buf, s.data.data() + s.off, n);
  s.off += n;
  if (s.off == s.data.size()) {
    s.data.clear();
    s.off = 0;
    if (s.script_done) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  self.mark_ready(s);  // room for more steps, or a gate that waited for this
  return static_cast<ssize_t>(n);
}

}  // namespace glmp::mock
