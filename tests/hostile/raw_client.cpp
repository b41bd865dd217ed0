#include "raw_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace glmp::hostile {
namespace {

using Clock = std::chrono::steady_clock;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Comma-separated tokens of a header value, trimmed and lower-cased.
std::vector<std::string> tokens(std::string_view value) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= value.size()) {
    size_t comma = value.find(',', start);
    if (comma == std::string_view::npos) comma = value.size();
    const std::string_view t = trim(value.substr(start, comma - start));
    if (!t.empty()) out.push_back(lower(t));
    start = comma + 1;
  }
  return out;
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

}  // namespace

std::string RawResponse::header(std::string_view name) const {
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!iequals(k, name)) continue;
    if (!out.empty()) out += ", ";
    out += v;
  }
  return out;
}

size_t RawResponse::count(std::string_view name) const {
  size_t n = 0;
  for (const auto& [k, v] : fields) n += iequals(k, name) ? 1 : 0;
  return n;
}

bool RawResponse::connection_close() const {
  for (const auto& t : tokens(header("Connection")))
    if (t == "close") return true;
  return false;
}

Parsed parse_responses(std::string_view b, bool eof) {
  Parsed out;
  size_t pos = 0;
  while (pos < b.size()) {
    const std::string_view rest = b.substr(pos);
    const std::string_view http = "HTTP/";
    if (rest.substr(0, http.size()) != http.substr(0, std::min(http.size(), rest.size()))) {
      out.garbage = std::string(rest);
      break;
    }
    RawResponse r;
    const size_t line_end = b.find("\r\n", pos);
    if (line_end == std::string_view::npos) {  // a status line still arriving
      out.responses.push_back(std::move(r));
      break;
    }
    // Status line: HTTP-version SP 3DIGIT SP reason
    const std::string_view line = b.substr(pos, line_end - pos);
    const size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos || line.size() < sp1 + 4 || !std::isdigit(static_cast<unsigned char>(line[sp1 + 1])) ||
        !std::isdigit(static_cast<unsigned char>(line[sp1 + 2])) || !std::isdigit(static_cast<unsigned char>(line[sp1 + 3])) ||
        (line.size() > sp1 + 4 && line[sp1 + 4] != ' ')) {
      out.garbage = std::string(rest);
      break;
    }
    r.version = std::string(line.substr(0, sp1));
    r.status = std::stoi(std::string(line.substr(sp1 + 1, 3)));
    r.reason = line.size() > sp1 + 5 ? std::string(line.substr(sp1 + 5)) : std::string();
    // Header fields up to the blank line.
    size_t p = line_end + 2;
    bool head_done = false;
    bool bad = false;
    while (true) {
      const size_t eol = b.find("\r\n", p);
      if (eol == std::string_view::npos) break;
      if (eol == p) {
        p += 2;
        head_done = true;
        break;
      }
      const std::string_view field = b.substr(p, eol - p);
      const size_t colon = field.find(':');
      if (colon == std::string_view::npos) {
        bad = true;
        break;
      }
      r.fields.emplace_back(std::string(field.substr(0, colon)), std::string(trim(field.substr(colon + 1))));
      p = eol + 2;
    }
    if (bad) {
      out.garbage = std::string(rest);
      break;
    }
    if (!head_done) {
      out.responses.push_back(std::move(r));
      break;
    }
    pos = p;
    if (r.interim() || r.status == 204 || r.status == 304) {
      r.complete = true;
      out.responses.push_back(std::move(r));
      continue;
    }
    bool chunked = false;
    for (const auto& t : tokens(r.header("Transfer-Encoding"))) chunked = chunked || t == "chunked";
    if (chunked) {
      r.chunked = true;
      bool done = false;
      while (true) {
        const size_t eol = b.find("\r\n", pos);
        if (eol == std::string_view::npos) break;
        std::string_view size_line = b.substr(pos, eol - pos);
        size_line = trim(size_line.substr(0, size_line.find(';')));
        if (size_line.empty() || size_line.size() > 15 ||
            size_line.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) {
          bad = true;
          break;
        }
        const size_t size = std::stoull(std::string(size_line), nullptr, 16);
        if (size == 0) {
          // Trailer fields, then the blank line.
          size_t q = eol + 2;
          while (true) {
            const size_t tl = b.find("\r\n", q);
            if (tl == std::string_view::npos) break;
            if (tl == q) {
              pos = q + 2;
              done = true;
              break;
            }
            q = tl + 2;
          }
          break;
        }
        if (b.size() < eol + 2 + size + 2) break;
        if (b.substr(eol + 2 + size, 2) != "\r\n") {
          bad = true;
          break;
        }
        r.body.append(b.substr(eol + 2, size));
        pos = eol + 2 + size + 2;
      }
      if (bad) {
        out.responses.push_back(std::move(r));
        out.garbage = std::string(b.substr(pos));
        break;
      }
      r.complete = done;
      out.responses.push_back(std::move(r));
      if (!done) break;
      continue;
    }
    const std::string cl = r.header("Content-Length");
    if (!cl.empty() && cl.find_first_not_of("0123456789") == std::string::npos && cl.size() < 16) {
      const size_t length = std::stoull(cl);
      const size_t have = std::min(length, b.size() - pos);
      r.body = std::string(b.substr(pos, have));
      r.complete = have == length;
      pos += have;
      out.responses.push_back(std::move(r));
      if (have < length) break;
      continue;
    }
    // No length: the body runs to the end of the connection.
    r.body = std::string(b.substr(pos));
    r.complete = eof;
    pos = b.size();
    out.responses.push_back(std::move(r));
  }
  return out;
}

std::vector<const RawResponse*> Exchange::finals() const {
  std::vector<const RawResponse*> out;
  for (const auto& r : responses)
    if (r.complete && !r.interim()) out.push_back(&r);
  return out;
}

size_t Exchange::interims() const {
  size_t n = 0;
  for (const auto& r : responses) n += r.complete && r.interim() ? 1 : 0;
  return n;
}

std::string Exchange::describe() const {
  std::string out = "[closed=" + std::string(closed ? "yes" : "no") + (reset ? " (RST)" : "") +
                    ", responses=" + std::to_string(responses.size()) + ", " + std::to_string(bytes.size()) +
                    " bytes in " + std::to_string(static_cast<long>(elapsed_ms)) + " ms] ";
  return out + escape(bytes);
}

RawConn::RawConn(uint16_t port, int rcvbuf) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) {
      const std::string why = std::strerror(errno);
      close();
      throw std::runtime_error("connect: " + why);
    }
    pollfd p{fd_, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, 3000) != 1 || ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      close();
      throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed: " +
                               (err ? std::strerror(err) : "timeout"));
    }
  }
}

RawConn::~RawConn() { close(); }

RawConn::RawConn(RawConn&& other) noexcept
    : fd_(other.fd_), in_(std::move(other.in_)), eof_(other.eof_), reset_(other.reset_) {
  other.fd_ = -1;
}

RawConn& RawConn::operator=(RawConn&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    in_ = std::move(other.in_);
    eof_ = other.eof_;
    reset_ = other.reset_;
    other.fd_ = -1;
  }
  return *this;
}

void RawConn::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool RawConn::send(std::string_view bytes, Ms timeout) {
  if (fd_ < 0) return false;
  const auto deadline = Clock::now() + timeout;
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      const int left = remaining_ms(deadline);
      if (left == 0 || ::poll(&p, 1, left) <= 0) return false;
      if (p.revents & (POLLERR | POLLHUP)) return false;
      continue;
    }
    return false;  // EPIPE, ECONNRESET, …
  }
  return true;
}

bool RawConn::send_pieces(const std::vector<std::string>& pieces, Ms pause) {
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i > 0) std::this_thread::sleep_for(pause);  // reads nothing meanwhile
    if (!send(pieces[i])) return false;
  }
  return true;
}

bool RawConn::pump(Ms timeout) {
  if (fd_ < 0 || eof_) return false;
  pollfd p{fd_, POLLIN, 0};
  const int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (rc <= 0) return false;
  char buf[65536];
  const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
  if (n > 0) {
    in_.append(buf, static_cast<size_t>(n));
    return true;
  }
  if (n == 0) {
    eof_ = true;
  } else if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN) {
    eof_ = true;
    reset_ = true;
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    eof_ = true;
  }
  return n > 0;
}

Exchange RawConn::snapshot(double elapsed_ms) const {
  Exchange x;
  x.bytes = in_;
  Parsed parsed = parse_responses(in_, eof_);
  x.responses = std::move(parsed.responses);
  x.garbage = std::move(parsed.garbage);
  x.closed = eof_;
  x.reset = reset_;
  x.elapsed_ms = elapsed_ms;
  return x;
}

Exchange RawConn::read_until(const std::function<bool(const Exchange&)>& done, Ms timeout) {
  const auto t0 = Clock::now();
  const auto deadline = t0 + timeout;
  size_t checked = static_cast<size_t>(-1);
  while (true) {
    if (done && in_.size() != checked) {
      checked = in_.size();
      Exchange x = snapshot(ms_since(t0));
      if (done(x)) return x;
    }
    if (eof_ || fd_ < 0) break;
    // At the deadline, what has already arrived is still taken (a zero-timeout poll).
    const int left = remaining_ms(deadline);
    if (!pump(Ms(left)) && left == 0) break;
  }
  return snapshot(ms_since(t0));
}

Exchange RawConn::read_until_closed(Ms timeout) { return read_until(nullptr, timeout); }

Exchange RawConn::read_responses(size_t finals, Ms timeout) {
  return read_until([finals](const Exchange& x) { return x.finals().size() >= finals; }, timeout);
}

Exchange exchange(uint16_t port, std::string_view bytes, Ms timeout) {
  RawConn c(port);
  c.send(bytes);
  return c.read_until_closed(timeout);
}

std::string request(std::string_view method, std::string_view target, const std::vector<std::string>& lines,
                    std::string_view body) {
  const auto has = [&](std::string_view name) {
    for (const auto& l : lines) {
      const size_t colon = l.find(':');
      if (colon != std::string::npos && iequals(trim(std::string_view(l).substr(0, colon)), name)) return true;
    }
    return false;
  };
  std::string out;
  out.append(method).append(" ").append(target).append(" HTTP/1.1\r\n");
  if (!has("Host")) out += "Host: 127.0.0.1\r\n";
  for (const auto& l : lines) out.append(l).append("\r\n");
  if (!body.empty() && !has("Content-Length") && !has("Transfer-Encoding"))
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += "\r\n";
  out.append(body);
  return out;
}

std::string hex(size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  do {
    out.insert(out.begin(), digits[n & 15]);
    n >>= 4;
  } while (n != 0);
  return out;
}

std::string escape(std::string_view bytes, size_t max) {
  std::string out;
  static const char* hex = "0123456789abcdef";
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n\n";
    else if (c == '\\') out += "\\\\";
    else if (c >= 0x20 && c < 0x7f) out.push_back(static_cast<char>(c));
    else {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
    if (out.size() >= max) {
      out += "…(" + std::to_string(bytes.size()) + " bytes)";
      break;
    }
  }
  return out;
}

unsigned long raise_fd_limit(unsigned long want) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  if (lim.rlim_cur < want) {
    lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(want, lim.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &lim);
    ::getrlimit(RLIMIT_NOFILE, &lim);
  }
  return static_cast<unsigned long>(lim.rlim_cur);
}

}  // namespace glmp::hostile
