#include "http/request_parser.hpp"

#include <array>
#include <cstring>

#include "pipeline/headers.hpp"  // iequals

namespace glmp::core::http {
namespace {

RequestParser& self(llhttp_t* p) { return *static_cast<RequestParser*>(p->data); }

// RFC 9110 tchar: the characters a header name may contain.
constexpr std::array<bool, 256> kTchar = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = t[c - 'a' + 'A'] = true;
  for (const char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

// Bytes a header value may not contain: control characters other than HTAB, and DEL.
constexpr std::array<bool, 256> kValueControl = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) t[c] = c != '\t';
  t[0x7f] = true;
  return t;
}();

// A piece of the request line (up to its '\n' or the end of the data fed; `prev` is the byte
// before it): exactly one SP between its three parts (RFC 9112 §3), which llhttp does not insist
// on, so no HTAB and no SP after a SP.
bool request_line_ok(const char* p, size_t n, char prev) {
  if (std::memchr(p, '\t', n) != nullptr) return false;
  const char* const end = p + n;
  const char* sp = p;
  while ((sp = static_cast<const char*>(std::memchr(sp, ' ', static_cast<size_t>(end - sp)))) != nullptr) {
    if ((sp == p ? prev : sp[-1]) == ' ') return false;
    ++sp;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Codings a server may know but the proxy does not implement for requests (RFC 9112 §7).
bool known_coding(std::string_view c) {
  using pipeline::iequals;
  return iequals(c, "gzip") || iequals(c, "x-gzip") || iequals(c, "deflate") || iequals(c, "compress") ||
         iequals(c, "x-compress");
}

}  // namespace

RequestParser::RequestParser(const RequestLimits& limits) : limits_(limits) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = on_message_begin;
  settings_.on_url = on_url;
  settings_.on_header_field = on_header_field;
  settings_.on_header_value = on_header_value;
  settings_.on_header_value_complete = on_header_value_complete;
  settings_.on_headers_complete = on_headers_complete;
  settings_.on_body = on_body;
  settings_.on_message_complete = on_message_complete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

void RequestParser::begin(Poco::Net::HTTPRequest* head, Headers* headers) {
  head_ = head;
  headers_ = headers;
  content_length_ = 0;
  sink_ = nullptr;
  url_.clear();
  field_.clear();
  value_.clear();
  header_count_ = 0;
  header_bytes_ = 0;
  body_bytes_ = 0;
  last_byte_ = '\n';  // a request starting with SP/HTAB is refused like an obs-fold
  first_line_ = true;
  headers_done_ = message_done_ = expect_continue_ = false;
}

int RequestParser::fail(int status, std::string message) {
  if (error_status_ == 0) {
    error_status_ = status;
    error_message_ = std::move(message);
  }
  return -1;
}

// obs-fold (a line starting with SP/HTAB inside the header section) is refused: RFC 9112 §5.2
// lets a server reject it, and a proxy that unfolds differently from its upstream is a smuggling
// vector. llhttp accepts it, so the header bytes are scanned here: only the byte after each '\n'
// matters for it, so the scan hops from line to line (memchr), and checks the request line.
bool RequestParser::scan_header_bytes(const char* data, size_t len) {
  size_t i = 0;
  while (i < len) {
    if (last_byte_ == '\n' && (data[i] == ' ' || data[i] == '\t')) return false;
    const void* lf = std::memchr(data + i, '\n', len - i);
    const size_t line_end = lf == nullptr ? len : static_cast<size_t>(static_cast<const char*>(lf) - data);
    if (first_line_ && !request_line_ok(data + i, line_end - i, last_byte_)) return false;
    if (lf == nullptr) {
      last_byte_ = data[len - 1];
      break;
    }
    first_line_ = false;
    last_byte_ = '\n';
    i = line_end + 1;
  }
  return true;
}

RequestParser::Event RequestParser::feed(const char* data, size_t len, size_t& consumed) {
  consumed = 0;
  if (error_status_) return Event::Error;
  const bool in_headers = !headers_done_;
  const llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  if (err == HPE_OK) {
    consumed = len;
  } else if (err == HPE_PAUSED) {
    consumed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
    llhttp_resume(&parser_);
  } else {
    if (error_status_ == 0) {
      const char* reason = llhttp_get_error_reason(&parser_);
      // llhttp reports both a syntactically broken version token and an unknown version as
      // HPE_INVALID_VERSION; only the latter is a 505.
      const bool unknown_version = err == HPE_INVALID_VERSION && reason && std::strcmp(reason, "Invalid HTTP version") == 0;
      fail(unknown_version ? 505 : 400, reason && *reason ? reason : llhttp_errno_name(err));
    }
    return Event::Error;
  }
  if (in_headers) {
    const size_t header_part = headers_done_ ? consumed : len;
    if (!scan_header_bytes(data, header_part)) {
      fail(400, "malformed request line or obsolete line folding (obs-fold) in the headers");
      return Event::Error;
    }
    header_bytes_ += header_part;
    if (header_bytes_ > limits_.max_header_bytes) {
      fail(431, "request headers exceed " + std::to_string(limits_.max_header_bytes) + " bytes");
      return Event::Error;
    }
    if (headers_done_) return Event::HeadersDone;
  }
  if (message_done_) return Event::MessageDone;
  return Event::NeedMore;
}

RequestParser::Event RequestParser::finish() {
  if (error_status_) return Event::Error;
  const llhttp_errno_t err = llhttp_finish(&parser_);
  if ((err == HPE_OK || err == HPE_PAUSED) && (message_done_ || !started())) return Event::MessageDone;
  fail(400, "connection closed in the middle of a request");
  return Event::Error;
}

bool RequestParser::keep_alive() const { return llhttp_should_keep_alive(&parser_) != 0; }
bool RequestParser::chunked() const { return (parser_.flags & F_CHUNKED) != 0; }
bool RequestParser::has_body() const { return chunked() || ((parser_.flags & F_CONTENT_LENGTH) && content_length() > 0); }
uint64_t RequestParser::content_length() const {
  return (parser_.flags & F_CONTENT_LENGTH) && !chunked() ? content_length_ : 0;
}

int RequestParser::on_message_begin(llhttp_t* p) {
  auto& s = self(p);
  if (s.head_ == nullptr || s.headers_ == nullptr) return s.fail(400, "unexpected request");
  return 0;
}

int RequestParser::on_url(llhttp_t* p, const char* at, size_t n) {
  auto& s = self(p);
  if (s.url_.size() + n > s.limits_.max_uri_bytes)
    return s.fail(414, "request-target exceeds " + std::to_string(s.limits_.max_uri_bytes) + " bytes");
  s.url_.append(at, n);
  return 0;
}

int RequestParser::on_header_field(llhttp_t* p, const char* at, size_t n) {
  return self(p).append_header_part(self(p).field_, at, n);
}

int RequestParser::on_header_value(llhttp_t* p, const char* at, size_t n) {
  return self(p).append_header_part(self(p).value_, at, n);
}

// One header line (name + value, arriving in pieces) may not exceed the header limit on its own.
int RequestParser::append_header_part(std::string& part, const char* at, size_t n) {
  part.append(at, n);
  if (field_.size() + value_.size() > limits_.max_header_bytes)
    return fail(431, "a request header exceeds " + std::to_string(limits_.max_header_bytes) + " bytes");
  return 0;
}

int RequestParser::on_header_value_complete(llhttp_t* p) {
  auto& s = self(p);
  if (++s.header_count_ > s.limits_.max_headers)
    return s.fail(431, "more than " + std::to_string(s.limits_.max_headers) + " request headers");
  for (unsigned char c : s.field_)
    if (!kTchar[c]) return s.fail(400, "invalid character in a header name (whitespace before the colon?)");
  for (unsigned char c : s.value_)
    if (kValueControl[c]) return s.fail(400, "control character in a header value");
  s.headers_->add(s.field_, trim(s.value_));  // into a reused slot: no allocation once warm
  s.field_.clear();
  s.value_.clear();
  return 0;
}

int RequestParser::check_head() {
  auto& h = *head_;
  if (parser_.http_major == 0) return fail(400, "invalid request line (HTTP/0.9 is not supported)");
  if (parser_.http_major != 1 || parser_.http_minor > 1)
    return fail(505, "HTTP version " + std::to_string(parser_.http_major) + "." + std::to_string(parser_.http_minor) +
                         " not supported");
  h.setMethod(llhttp_method_name(static_cast<llhttp_method_t>(parser_.method)));
  h.setURI(url_);
  h.setVersion(parser_.http_minor == 1 ? Poco::Net::HTTPMessage::HTTP_1_1 : Poco::Net::HTTPMessage::HTTP_1_0);

  size_t hosts = 0;
  std::vector<std::string_view> codings;
  for (const auto& [name, value] : *headers_) {
    if (pipeline::iequals(name, "host")) ++hosts;
    if (pipeline::iequals(name, "transfer-encoding")) {
      std::string_view v = value;
      size_t pos = 0;
      while (pos <= v.size()) {
        size_t comma = v.find(',', pos);
        if (comma == std::string_view::npos) comma = v.size();
        codings.push_back(trim(v.substr(pos, comma - pos)));
        pos = comma + 1;
      }
    }
    if (pipeline::iequals(name, "expect")) {
      if (!pipeline::iequals(trim(value), "100-continue")) return fail(417, "unsupported Expect: " + value);
      if (parser_.http_minor == 1) expect_continue_ = true;
    }
  }
  if (hosts > 1) return fail(400, "more than one Host header");
  if (hosts == 0 && parser_.http_minor == 1) return fail(400, "HTTP/1.1 request without a Host header");
  if (!codings.empty()) {
    if (parser_.http_minor == 0) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    size_t chunked = 0;
    for (auto c : codings) {
      if (pipeline::iequals(c, "chunked")) ++chunked;
      else if (!known_coding(c)) return fail(501, "Transfer-Encoding '" + std::string(c) + "' is not implemented");
    }
    if (!pipeline::iequals(codings.back(), "chunked") || chunked != 1)
      return fail(400, "invalid Transfer-Encoding: chunked must be the last coding, once");
    if (codings.size() > 1) return fail(501, "Transfer-Encoding other than chunked is not implemented");
  }
  return 0;
}

int RequestParser::on_headers_complete(llhttp_t* p) {
  auto& s = self(p);
  if (s.check_head() != 0) return -1;
  s.content_length_ = p->content_length;  // llhttp parsed it (one value, digits only)
  s.headers_done_ = true;
  return HPE_PAUSED;
}

int RequestParser::on_body(llhttp_t* p, const char* at, size_t n) {
  auto& s = self(p);
  s.body_bytes_ += n;
  if (s.sink_) {
    if (s.sink_->size() + n > s.limits_.max_body)
      return s.fail(413, "request body exceeds the limit of " + std::to_string(s.limits_.max_body) + " bytes");
    s.sink_->append(at, n);
  }
  return 0;
}

int RequestParser::on_message_complete(llhttp_t* p) {
  self(p).message_done_ = true;
  return HPE_PAUSED;
}

}  // namespace glmp::core::http
