#pragma once
// Incremental HTTP/1.1 response parsing on llhttp, for upstream responses. Body bytes come out
// de-chunked, as views into the bytes fed (no copy). Interim 1xx responses (100 Continue, 103
// Early Hints) are skipped. A response cut short — EOF before the announced length, before the
// terminating chunk, or a malformed chunk — is an error, never a clean end: only a body delimited
// by the connection's close ends cleanly at EOF.

#include <llhttp.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "http/headers.hpp"

namespace glmp::core::http {

// An upstream's response head (status line and fields, or HTTP/2's decoded fields) beyond this is
// refused as garbage, whatever the protocol.
inline constexpr size_t kMaxResponseHeadBytes = 256 * 1024;

class ResponseParser {
public:
  enum class Event { NeedMore, HeadersDone, MessageDone, Error };
  using BodyFn = void (*)(void* user, std::string_view bytes);

  // The final response's header fields go to `headers` (emptied when a response begins);
  // head_request: the request was HEAD, so the response has no body whatever it announces.
  ResponseParser(Headers& headers, bool head_request);
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // Feeds bytes; stops after the final response's headers (HeadersDone) and at its end
  // (MessageDone). `consumed` bytes were used. Body bytes go to the sink.
  Event feed(const char* data, size_t len, size_t& consumed);
  // The upstream closed the connection.
  Event finish();
  void set_body_sink(BodyFn fn, void* user) {
    sink_ = fn;
    sink_user_ = user;
  }

  bool keep_alive() const { return llhttp_should_keep_alive(&parser_) != 0; }
  // Content-Length or chunked: the end is known without the connection closing.
  bool framed() const { return (parser_.flags & (F_CHUNKED | F_CONTENT_LENGTH)) != 0; }
  uint64_t body_bytes() const { return body_bytes_; }
  // After HeadersDone: the final response's status, reason phrase, and Content-Length (-1
  // without one).
  int status() const { return status_; }
  const std::string& reason() const { return reason_; }
  int64_t content_length() const { return content_length_; }
  const std::string& error() const { return error_; }

private:
  static int on_message_begin(llhttp_t*);
  static int on_status(llhttp_t*, const char*, size_t);
  static int on_header_field(llhttp_t*, const char*, size_t);
  static int on_header_value(llhttp_t*, const char*, size_t);
  static int on_header_value_complete(llhttp_t*);
  static int on_headers_complete(llhttp_t*);
  static int on_body(llhttp_t*, const char*, size_t);
  static int on_message_complete(llhttp_t*);

  Headers& headers_;
  bool head_request_;
  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  BodyFn sink_ = nullptr;
  void* sink_user_ = nullptr;
  std::string reason_, field_, value_;
  int status_ = 0;
  int64_t content_length_ = -1;
  size_t head_bytes_ = 0;
  uint64_t body_bytes_ = 0;
  bool interim_ = false;  // the message being parsed is a 1xx
  bool headers_done_ = false, message_done_ = false;
  std::string error_;
};

}  // namespace glmp::core::http
