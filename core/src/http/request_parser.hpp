#pragma once
// Incremental HTTP/1.1 request parsing on llhttp, strict (docs/design.md, "HTTP/1.1 server and
// hostile input"). Bytes go in as they arrive; the parser stops (pauses) when a request's headers
// are complete and again when its message is complete, so the caller decides what happens between
// (dispatch to a worker, read the body into a buffer, answer the next pipelined request).
//
// Beyond what llhttp refuses by itself (bad request lines, bare CR/LF, control characters in
// values, Content-Length with Transfer-Encoding, duplicate or malformed Content-Length, bad chunk
// sizes), this adds the rules llhttp leaves to its user: whitespace before a header's colon,
// obs-fold, versions other than 1.0/1.1, Host (exactly one for 1.1), Transfer-Encoding codings the
// proxy does not implement (501), Expect other than 100-continue (417), and the size limits.

#include <llhttp.h>

#include <cstdint>
#include <string>
#include <string_view>

#include <Poco/Net/HTTPRequest.h>

#include "http/headers.hpp"

namespace glmp::core::http {

struct RequestLimits {
  size_t max_header_bytes = 32 * 1024;  // request line + headers
  size_t max_headers = 100;
  size_t max_uri_bytes = 8 * 1024;
  uint64_t max_body = 32u << 20;  // applies to bodies read into a sink (413)
};

class RequestParser {
public:
  enum class Event { NeedMore, HeadersDone, MessageDone, Error };

  explicit RequestParser(const RequestLimits& limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Starts filling `head` (method, URI, version) and `headers` (its header fields, in order) with
  // the next request. Call once per request before feeding its first byte. The fields go to the
  // proxy's own list, not to `head`'s collection (server::Request::sync_poco_headers copies them
  // there for the handlers that read it).
  void begin(Poco::Net::HTTPRequest* head, Headers* headers);

  // Feeds bytes. `consumed` is set to the number of bytes used; the rest belongs to a later call
  // (after HeadersDone the body, after MessageDone the next pipelined request). Body bytes go to
  // the sink (set_body_sink); without one they are counted and dropped.
  Event feed(const char* data, size_t len, size_t& consumed);
  // The peer closed the connection: completes a message that is delimited by EOF (never the case
  // for requests), else Error when a message was in progress.
  Event finish();

  void set_body_sink(std::string* sink) { sink_ = sink; }

  // After HeadersDone.
  bool keep_alive() const;
  bool expect_continue() const { return expect_continue_; }
  bool has_body() const;            // Content-Length > 0 or chunked
  bool chunked() const;
  uint64_t content_length() const;  // 0 when chunked or absent
  // True once any byte of the current request has been fed (the header deadline starts then).
  bool started() const { return header_bytes_ > 0; }
  bool in_body() const { return headers_done_ && !message_done_; }

  // After Error: the status to answer with (400, 413, 414, 417, 431, 501, 505) and why.
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }
  // The request-target received so far (for an error's flavour before the headers are complete).
  const std::string& target() const { return url_; }

private:
  static int on_message_begin(llhttp_t*);
  static int on_url(llhttp_t*, const char*, size_t);
  static int on_header_field(llhttp_t*, const char*, size_t);
  static int on_header_value(llhttp_t*, const char*, size_t);
  static int on_header_value_complete(llhttp_t*);
  static int on_headers_complete(llhttp_t*);
  static int on_body(llhttp_t*, const char*, size_t);
  static int on_message_complete(llhttp_t*);
  int fail(int status, std::string message);
  int append_header_part(std::string& part, const char* at, size_t n);
  int check_head();
  bool scan_header_bytes(const char* data, size_t len);

  RequestLimits limits_;
  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  Poco::Net::HTTPRequest* head_ = nullptr;
  Headers* headers_ = nullptr;
  uint64_t content_length_ = 0;  // llhttp's, read when the headers are complete
  std::string* sink_ = nullptr;
  std::string url_, field_, value_;
  bool in_value_ = false;
  size_t header_count_ = 0;
  size_t header_bytes_ = 0;
  uint64_t body_bytes_ = 0;
  char last_byte_ = 0;  // obs-fold detection across feeds
  bool first_line_ = true;  // still in the request line
  bool headers_done_ = false, message_done_ = false, expect_continue_ = false;
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace glmp::core::http
