#pragma once
// What the two nghttp2 sessions of the proxy (upstream::H2Session, a client; server::H2Front, a
// server) set up and do alike: their callback table, built once per process from an `Access`
// struct of static functions, with automatic WINDOW_UPDATEs off (both give windows back only
// for bytes their other side took); and the gathering of nghttp2's output into one write.

#include <cstddef>
#include <string>

#include <nghttp2/nghttp2.h>

namespace glmp::core::http {

// Frames gathered into one write of a session.
inline constexpr size_t kH2WriteBatch = 64 * 1024;

// `Access` has on_begin_headers, on_header, on_frame_recv, on_data_chunk and on_stream_close.
// `no_closed_streams`: no bookkeeping of closed streams (priorities are not used).
template <class Access, bool NoClosedStreams>
struct H2Callbacks {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_option* opt = nullptr;
  H2Callbacks() {
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &Access::on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, &Access::on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &Access::on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &Access::on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &Access::on_stream_close);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    if (NoClosedStreams) nghttp2_option_set_no_closed_streams(opt, 1);
  }
  ~H2Callbacks() {
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
  }
  H2Callbacks(const H2Callbacks&) = delete;
  H2Callbacks& operator=(const H2Callbacks&) = delete;
  static const H2Callbacks& get() {
    static const H2Callbacks c;
    return c;
  }
};

// Appends what `ng` has to send to `out` (emptied first), up to about kH2WriteBatch bytes.
// 0, or nghttp2's (negative) error.
inline ssize_t gather_frames(nghttp2_session* ng, std::string& out) {
  out.clear();
  while (out.size() < kH2WriteBatch) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(ng, &data);
    if (n < 0) return n;
    if (n == 0) break;
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
  return 0;
}

}  // namespace glmp::core::http
