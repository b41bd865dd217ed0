#include "fault_kit.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace glmp::upfaults {
namespace {

// Writes to a peer that already left must fail with EPIPE, not kill the test binary.
[[maybe_unused]] const bool kIgnoreSigpipe = [] {
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}();

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) > 0;
}

using Clock = std::chrono::steady_clock;

}  // namespace

// One accepted connection: raw fd, optionally wrapped in TLS.
struct ScriptedUpstream::Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  ~Conn() {
    if (ssl) SSL_free(ssl);  // never sends close_notify by itself
    if (fd >= 0) ::close(fd);
  }
  // Waits up to `ms` for bytes to read.
  bool ready(int ms) const { return (ssl && SSL_pending(ssl) > 0) || readable(fd, ms); }
  // >0 bytes, 0 orderly end (FIN, or close_notify), <0 error/reset.
  long read(char* buf, size_t n) {
    if (!ssl) {
      ssize_t r = ::recv(fd, buf, n, 0);
      return r < 0 ? -1 : static_cast<long>(r);
    }
    int r = SSL_read(ssl, buf, static_cast<int>(n));
    if (r > 0) return r;
    const int err = SSL_get_error(ssl, r);
    ERR_clear_error();
    return err == SSL_ERROR_ZERO_RETURN ? 0 : -1;
  }
  bool write(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      if (ssl) {
        int w = SSL_write(ssl, bytes.data() + off, static_cast<int>(bytes.size() - off));
        if (w <= 0) {
          ERR_clear_error();
          return false;
        }
        off += static_cast<size_t>(w);
      } else {
        ssize_t w = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (w <= 0) return false;
        off += static_cast<size_t>(w);
      }
    }
    return true;
  }
};

ScriptedUpstream::ScriptedUpstream(std::vector<Script> scripts, std::optional<TlsFiles> tls)
    : scripts_(std::move(scripts)) {
  if (scripts_.empty()) throw std::invalid_argument("ScriptedUpstream needs at least one script");
  if (tls) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, tls->cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, tls->key.c_str(), SSL_FILETYPE_PEM) != 1) {
      if (ctx) SSL_CTX_free(ctx);
      throw std::runtime_error("cannot set up the TLS upstream context");
    }
    ssl_ctx_ = ctx;
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error(std::string("scripted upstream cannot listen: ") + std::strerror(errno));
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

ScriptedUpstream::~ScriptedUpstream() {
  stop_ = true;
  acceptor_.join();  // polls in short slices and sees stop_
  ::close(listen_fd_);
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mutex_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();  // every wait in serve() is sliced and watches stop_
  if (ssl_ctx_) SSL_CTX_free(static_cast<SSL_CTX*>(ssl_ctx_));
}

std::string ScriptedUpstream::request(int n) const {
  std::lock_guard lock(mutex_);
  return n >= 0 && n < static_cast<int>(requests_seen_.size()) ? requests_seen_[static_cast<size_t>(n)] : std::string();
}

bool ScriptedUpstream::wait_stall_closed(std::chrono::milliseconds timeout) const {
  const auto deadline = Clock::now() + timeout;
  while (!stall_closed_ && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  return stall_closed_;
}

void ScriptedUpstream::accept_loop() {
  while (!stop_) {
    if (!readable(listen_fd_, 50)) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ++connections_;
    std::lock_guard lock(mutex_);
    workers_.emplace_back([this, fd] { serve(fd); });
  }
}

void ScriptedUpstream::serve(int fd) {
  Conn c;
  c.fd = fd;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{5, 0};  // bounds the blocking TLS handshake and record reads
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (ssl_ctx_) {
    c.ssl = SSL_new(static_cast<SSL_CTX*>(ssl_ctx_));
    SSL_set_fd(c.ssl, fd);
    if (SSL_accept(c.ssl) != 1) {
      ERR_clear_error();
      return;
    }
  }
  std::string buf;
  bool closed = false;
  while (!closed && !stop_) {
    std::string request;
    if (!read_request(c, buf, request)) return;
    const int index = requests_++;
    {
      std::lock_guard lock(mutex_);
      requests_seen_.push_back(request);
    }
    run(c, scripts_[std::min(static_cast<size_t>(index), scripts_.size() - 1)], closed);
  }
}

bool ScriptedUpstream::read_request(Conn& c, std::string& buf, std::string& request) {
  const auto deadline = Clock::now() + 15s;
  char tmp[16384];
  auto fill = [&]() -> bool {
    while (!stop_ && Clock::now() < deadline) {
      if (!c.ready(20)) continue;
      long n = c.read(tmp, sizeof tmp);
      if (n <= 0) return false;
      buf.append(tmp, static_cast<size_t>(n));
      return true;
    }
    return false;
  };
  size_t end;
  while ((end = buf.find("\r\n\r\n")) == std::string::npos)
    if (!fill()) return false;
  size_t length = 0;
  const std::string head = lower(buf.substr(0, end));
  if (auto pos = head.find("\r\ncontent-length:"); pos != std::string::npos)
    length = std::stoul(head.substr(pos + 17));
  while (buf.size() < end + 4 + length)
    if (!fill()) return false;
  request = buf.substr(0, end + 4 + length);
  buf.erase(0, end + 4 + length);
  return true;
}

void ScriptedUpstream::run(Conn& c, const Script& script, bool& closed) {
  // Waits until `done()` or the bound passes, in slices that watch stop_.
  auto wait_until = [&](std::chrono::milliseconds max, const std::function<bool()>& done) {
    const auto deadline = Clock::now() + max;
    while (!stop_ && !done() && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
  };
  // After our FIN: wait (bounded) for the peer's close so that nothing it still sends turns into a RST.
  auto drain_raw = [&](std::chrono::milliseconds max) {
    const auto deadline = Clock::now() + max;
    char tmp[4096];
    while (!stop_ && Clock::now() < deadline) {
      if (!readable(c.fd, 20)) continue;
      if (::recv(c.fd, tmp, sizeof tmp, 0) <= 0) return;
    }
  };
  for (const Step& step : script) {
    switch (step.kind) {
      case Step::Kind::Send:
        if (!c.write(step.bytes)) {
          closed = true;
          return;
        }
        break;
      case Step::Kind::Pause:
        wait_until(step.ms, [] { return false; });
        break;
      case Step::Kind::AwaitRelease:
        wait_until(step.ms, [this] { return released_.load(); });
        break;
      case Step::Kind::StallUntilClosed: {
        const auto deadline = Clock::now() + step.ms;
        char tmp[4096];
        while (!stop_ && Clock::now() < deadline) {
          if (!readable(c.fd, 20)) continue;
          if (::recv(c.fd, tmp, sizeof tmp, 0) <= 0) {  // the proxy gave up on us
            stall_closed_ = true;
            closed = true;
            return;
          }
        }
        break;
      }
      case Step::Kind::TlsCloseNotify:
        if (c.ssl) SSL_shutdown(c.ssl);
        [[fallthrough]];
      case Step::Kind::Fin:
        ::shutdown(c.fd, SHUT_WR);
        drain_raw(5s);
        closed = true;
        return;
      case Step::Kind::Rst: {
        linger lg{1, 0};
        ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (c.ssl) {
          SSL_free(c.ssl);
          c.ssl = nullptr;
        }
        ::close(c.fd);
        c.fd = -1;
        closed = true;
        return;
      }
    }
  }
}

// ---- client ----

std::string ClientResult::header(const std::string& name) const {
  auto it = headers.find(lower(name));
  return it == headers.end() ? std::string() : it->second;
}

std::string ClientResult::describe() const {
  std::ostringstream os;
  os << "status=" << status << " complete=" << complete << " eof=" << eof << " reset=" << reset
     << " timed_out=" << timed_out << " chunked=" << chunked << " framing_error=" << framing_error;
  if (!connect_error.empty()) os << " connect_error=" << connect_error;
  std::string shown = raw.size() > 4000 ? raw.substr(0, 2000) + "\n[...]\n" + raw.substr(raw.size() - 2000) : raw;
  os << "\n--- raw bytes received ---\n" << shown << "\n--- end ---";
  return os.str();
}

namespace {

void parse(ClientResult& r) {
  r.interim.clear();
  r.headers.clear();
  r.headers_done = r.chunked = r.complete = r.framing_error = false;
  r.status = 0;
  r.content_length = -1;
  r.body.clear();
  const std::string& raw = r.raw;
  size_t pos = 0;
  for (;;) {
    const size_t end = raw.find("\r\n\r\n", pos);
    if (end == std::string::npos) return;
    std::istringstream head(raw.substr(pos, end - pos));
    std::string line;
    std::getline(head, line);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    int status = 0;
    if (line.rfind("HTTP/", 0) == 0 && line.size() >= 12) status = std::atoi(line.c_str() + 9);
    if (status >= 100 && status < 200) {
      r.interim.push_back(status);
      pos = end + 4;
      continue;
    }
    r.status_line = line;
    r.status = status;
    while (std::getline(head, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      auto& slot = r.headers[lower(line.substr(0, colon))];
      slot = slot.empty() ? value : slot + ", " + value;
    }
    r.headers_done = true;
    pos = end + 4;
    break;
  }
  r.chunked = lower(r.header("transfer-encoding")).find("chunked") != std::string::npos;
  if (!r.header("content-length").empty()) r.content_length = std::atoll(r.header("content-length").c_str());
  if (r.status == 204 || r.status == 304) {
    r.complete = true;
    return;
  }
  if (r.chunked) {
    for (;;) {
      const size_t eol = raw.find("\r\n", pos);
      if (eol == std::string::npos) return;
      std::string size_text = raw.substr(pos, eol - pos);
      size_text = size_text.substr(0, size_text.find(';'));
      if (size_text.empty() || size_text.size() > 15 ||
          size_text.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
        r.framing_error = true;
        return;
      }
      const size_t size = std::stoul(size_text, nullptr, 16);
      if (size == 0) {
        // Optional trailers, then the blank line.
        if (raw.compare(eol + 2, 2, "\r\n") == 0 || raw.find("\r\n\r\n", eol) != std::string::npos) r.complete = true;
        return;
      }
      if (raw.size() < eol + 2 + size + 2) {
        r.body += raw.substr(eol + 2, std::min(size, raw.size() - (eol + 2)));  // a partial chunk, as far as it came
        return;
      }
      if (raw.compare(eol + 2 + size, 2, "\r\n") != 0) {
        r.framing_error = true;
        return;
      }
      r.body += raw.substr(eol + 2, size);
      pos = eol + 2 + size + 2;
    }
  }
  if (r.content_length >= 0) {
    r.body = raw.substr(pos, static_cast<size_t>(r.content_length));
    r.complete = static_cast<long long>(raw.size() - pos) >= r.content_length;
    return;
  }
  r.body = raw.substr(pos);  // close-delimited: only the connection's end ends it
}

}  // namespace

std::string post_request(const std::string& path, const std::string& body, const std::string& request_id,
                         const std::string& extra_headers) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Request-ID: " +
         request_id + "\r\n" + extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

ClientResult exchange(uint16_t port, const std::string& request, std::chrono::milliseconds deadline,
                      const std::function<void(const ClientResult&)>& on_data) {
  ClientResult r;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    r.connect_error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return r;
  }
  size_t off = 0;
  while (off < request.size()) {
    ssize_t w = ::send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  const auto end = Clock::now() + deadline;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) {
      r.timed_out = true;
      break;
    }
    if (!readable(fd, static_cast<int>(std::min<long long>(left, 50)))) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) {
      r.eof = true;
      break;
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      r.eof = true;
      r.reset = errno == ECONNRESET;
      break;
    }
    r.raw.append(buf, static_cast<size_t>(n));
    parse(r);
    if (on_data) on_data(r);
    if (r.complete || r.framing_error) break;
  }
  ::close(fd);
  parse(r);
  return r;
}

// ---- response building blocks ----

std::string chunk(const std::string& data) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return size + data + "\r\n";
}

std::string sse_head_chunked() {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
}

std::string sse_head_eof() {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
}

std::string json_head_chunked() {
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
}

std::string json_head_eof() { return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"; }

std::string json_response(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

std::vector<std::string> sse_blocks(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  for (;;) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    out.push_back(body.substr(pos, end - pos));
    pos = end + 2;
  }
  if (pos < body.size()) out.push_back(body.substr(pos));
  return out;
}

}  // namespace glmp::upfaults
