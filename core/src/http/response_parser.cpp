#include "http/response_parser.hpp"

namespace glmp::core::http {
namespace {


ResponseParser& self(llhttp_t* p) { return *static_cast<ResponseParser*>(p->data); }

}  // namespace

ResponseParser::ResponseParser(Headers& headers, bool head_request)
    : headers_(headers), head_request_(head_request) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = on_message_begin;
  settings_.on_status = on_status;
  settings_.on_header_field = on_header_field;
  settings_.on_header_value = on_header_value;
  settings_.on_header_value_complete = on_header_value_complete;
  settings_.on_headers_complete = on_headers_complete;
  settings_.on_body = on_body;
  settings_.on_message_complete = on_message_complete;
  llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
  parser_.data = this;
}

ResponseParser::Event ResponseParser::feed(const char* data, size_t len, size_t& consumed) {
  consumed = 0;
  if (!error_.empty()) return Event::Error;
  if (message_done_) return Event::MessageDone;
  const bool was_headers_done = headers_done_;
  const llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  if (err == HPE_OK) {
    consumed = len;
  } else if (err == HPE_PAUSED) {
    consumed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
    llhttp_resume(&parser_);
  } else {
    if (error_.empty()) {
      const char* reason = llhttp_get_error_reason(&parser_);
      error_ = std::string("malformed response: ") + (reason && *reason ? reason : llhttp_errno_name(err));
    }
    return Event::Error;
  }
  if (!was_headers_done) {
    head_bytes_ += consumed;
    if (!headers_done_ && head_bytes_ > kMaxResponseHeadBytes) {
      error_ = "malformed response: headers larger than " + std::to_string(kMaxResponseHeadBytes) + " bytes";
      return Event::Error;
    }
    if (headers_done_) return Event::HeadersDone;
  }
  return message_done_ ? Event::MessageDone : Event::NeedMore;
}

ResponseParser::Event ResponseParser::finish() {
  if (!error_.empty()) return Event::Error;
  if (message_done_) return Event::MessageDone;
  const llhttp_errno_t err = llhttp_finish(&parser_);
  if ((err == HPE_OK || err == HPE_PAUSED) && message_done_) return Event::MessageDone;
  error_ = headers_done_ ? "closed the connection mid-response (after " + std::to_string(body_bytes_) + " body bytes)"
                         : "closed the connection before the response headers were complete";
  return Event::Error;
}

int ResponseParser::on_message_begin(llhttp_t* p) {
  auto& s = self(p);
  s.headers_.clear();
  s.reason_.clear();
  s.field_.clear();
  s.value_.clear();
  return 0;
}

int ResponseParser::on_status(llhttp_t* p, const char* at, size_t n) {
  self(p).reason_.append(at, n);
  return 0;
}

int ResponseParser::on_header_field(llhttp_t* p, const char* at, size_t n) {
  self(p).field_.append(at, n);
  return 0;
}

int ResponseParser::on_header_value(llhttp_t* p, const char* at, size_t n) {
  self(p).value_.append(at, n);
  return 0;
}

int ResponseParser::on_header_value_complete(llhttp_t* p) {
  auto& s = self(p);
  size_t n = s.value_.size();
  while (n > 0 && (s.value_[n - 1] == ' ' || s.value_[n - 1] == '\t')) --n;
  s.headers_.add(s.field_, std::string_view(s.value_.data(), n));
  s.field_.clear();
  s.value_.clear();
  return 0;
}

int ResponseParser::on_headers_complete(llhttp_t* p) {
  auto& s = self(p);
  const int status = p->status_code;
  if (status == 101) {
    s.error_ = "malformed response: unexpected 101 Switching Protocols";
    return -1;
  }
  if (status < 200) {  // interim: skipped, the final response follows on the same connection
    s.interim_ = true;
    return 0;
  }
  s.interim_ = false;
  s.status_ = status;
  // llhttp parsed Content-Length (one value, digits only; never with Transfer-Encoding).
  s.content_length_ = (p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED) ? static_cast<int64_t>(p->content_length) : -1;
  s.headers_done_ = true;
  // Stop here so the caller maps the headers before any body byte; a HEAD response has no body,
  // so its message completes at once (and pauses in on_message_complete).
  return s.head_request_ ? 1 : HPE_PAUSED;
}

int ResponseParser::on_body(llhttp_t* p, const char* at, size_t n) {
  auto& s = self(p);
  s.body_bytes_ += n;
  if (s.sink_) s.sink_(s.sink_user_, std::string_view(at, n));
  return 0;
}

int ResponseParser::on_message_complete(llhttp_t* p) {
  auto& s = self(p);
  if (s.interim_) {
    s.interim_ = false;
    return 0;
  }
  s.message_done_ = true;
  return HPE_PAUSED;
}

}  // namespace glmp::core::http
