#pragma once
// A raw-bytes HTTP/1.1 client for the hostile-client tests: it connects to 127.0.0.1:port, sends
// exactly the bytes it is given (in one write or in pieces with pauses), reads until the server
// closes or a deadline passes, and parses zero or more HTTP/1.1 responses out of what arrived
// (status, headers in order, body by Content-Length, chunked, or up to EOF), so the tests depend on
// nothing but the bytes on the wire. Plain POSIX sockets; every wait is bounded.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace glmp::hostile {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

struct RawResponse {
  std::string version;  // "HTTP/1.1"
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> fields;  // in order, names as received
  std::string body;                                         // de-chunked
  bool chunked = false;
  bool complete = false;  // the whole message (head and body) arrived

  // The values of `name` (any case) joined with ", "; "" when absent.
  std::string header(std::string_view name) const;
  size_t count(std::string_view name) const;
  bool has(std::string_view name) const { return count(name) > 0; }
  // The Connection header names the "close" token (any case, among other tokens).
  bool connection_close() const;
  bool interim() const { return status >= 100 && status < 200; }
};

struct Parsed {
  std::vector<RawResponse> responses;  // the last one may be incomplete
  std::string garbage;                 // from the first byte that does not parse as a response
};
// `eof`: the bytes are all there will be (a body without length then ends here).
Parsed parse_responses(std::string_view bytes, bool eof);

// What one read phase saw.
struct Exchange {
  std::string bytes;  // everything received on the connection so far
  std::vector<RawResponse> responses;
  std::string garbage;
  bool closed = false;  // the server closed the connection (FIN or RST)
  bool reset = false;   // by RST
  double elapsed_ms = 0;  // duration of the read phase

  // The final (non-1xx) responses received whole.
  std::vector<const RawResponse*> finals() const;
  size_t interims() const;
  // For failure messages: flags and the bytes, escaped and shortened.
  std::string describe() const;
};

class RawConn {
public:
  // Connects (blocking, 3 s deadline); throws std::runtime_error on failure. `rcvbuf` > 0 sets
  // SO_RCVBUF before connecting (a small window for slow-reader tests).
  explicit RawConn(uint16_t port, int rcvbuf = 0);
  ~RawConn();
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;
  RawConn(RawConn&& other) noexcept;
  RawConn& operator=(RawConn&& other) noexcept;

  int fd() const { return fd_; }
  // Sends all bytes (deadline `timeout`); false when the peer is gone or the deadline passed.
  bool send(std::string_view bytes, Ms timeout = 5s);
  // Sends each piece, pausing `pause` between them (reading nothing); false as soon as one fails.
  bool send_pieces(const std::vector<std::string>& pieces, Ms pause);

  // Reads until `done` holds for what arrived, the server closes, or `timeout` passes.
  Exchange read_until(const std::function<bool(const Exchange&)>& done, Ms timeout);
  // Reads until the server closes or `timeout` passes.
  Exchange read_until_closed(Ms timeout);
  // Reads until `finals` complete final responses arrived, the server closes, or `timeout` passes.
  Exchange read_responses(size_t finals, Ms timeout);

  bool peer_closed() const { return eof_; }
  const std::string& received() const { return in_; }
  void close();

private:
  // One poll + recv; false when nothing arrived before `timeout`.
  bool pump(Ms timeout);
  Exchange snapshot(double elapsed_ms) const;

  int fd_ = -1;
  std::string in_;
  bool eof_ = false;
  bool reset_ = false;
};

// Connects, sends `bytes` in one write, reads until the server closes or `timeout` passes.
Exchange exchange(uint16_t port, std::string_view bytes, Ms timeout = 3s);

// A request as bytes: "<method> <target> HTTP/1.1", "Host: 127.0.0.1" (unless `lines` has a
// Host), the header `lines` verbatim, a Content-Length for a non-empty body (unless `lines` has a
// Content-Length or Transfer-Encoding), the blank line, the body.
std::string request(std::string_view method, std::string_view target, const std::vector<std::string>& lines = {},
                    std::string_view body = "");

// `n` in lower-case hex (a chunk-size line without its CRLF).
std::string hex(size_t n);

// A string literal with its embedded NULs kept.
template <size_t N>
std::string lit(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// Bytes made printable (\r \n \xNN), cut to `max` characters.
std::string escape(std::string_view bytes, size_t max = 800);

// Raises this process's RLIMIT_NOFILE soft limit to at least `want` (up to the hard limit);
// children started afterwards inherit it. Returns the soft limit now in force.
unsigned long raise_fd_limit(unsigned long want);

}  // namespace glmp::hostile
