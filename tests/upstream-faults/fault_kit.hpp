#pragma once
// Tools for the broken-upstream suite: a scripted raw upstream (plain TCP or TLS) that reads a
// request and then writes exactly the bytes a test scripts and ends the connection as scripted
// (FIN, RST, silence, TLS without close_notify), and a raw client that records exactly what the
// proxy sent back and whether it closed the connection.

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace glmp::upfaults {

using namespace std::chrono_literals;

// One step of what the upstream does after reading a request.
struct Step {
  enum class Kind {
    Send,              // write `bytes` (through TLS when the upstream is TLS)
    Pause,             // wait `ms` (lets the proxy read what was sent before the next step)
    AwaitRelease,      // wait until the test calls release() (bounded by `ms`)
    StallUntilClosed,  // send nothing until the proxy closes the connection (bounded by `ms`)
    Fin,               // shutdown(SHUT_WR) without TLS close_notify, then close once the peer did
    TlsCloseNotify,    // SSL_shutdown (close_notify), then FIN as above
    Rst,               // SO_LINGER 0 + close: the peer sees ECONNRESET
  };
  Kind kind;
  std::string bytes;
  std::chrono::milliseconds ms{0};
};
inline Step send(std::string bytes) { return {Step::Kind::Send, std::move(bytes), 0ms}; }
inline Step pause(std::chrono::milliseconds ms) { return {Step::Kind::Pause, {}, ms}; }
inline Step await_release(std::chrono::milliseconds max = 8s) { return {Step::Kind::AwaitRelease, {}, max}; }
inline Step stall_until_closed(std::chrono::milliseconds max = 10s) { return {Step::Kind::StallUntilClosed, {}, max}; }
inline Step fin() { return {Step::Kind::Fin, {}, 0ms}; }
inline Step tls_close_notify() { return {Step::Kind::TlsCloseNotify, {}, 0ms}; }
inline Step rst() { return {Step::Kind::Rst, {}, 0ms}; }
// Without a closing step the connection stays open for the next request (keep-alive).
using Script = std::vector<Step>;

struct TlsFiles {
  std::string cert, key;
};

class ScriptedUpstream {
public:
  // The n-th request read (0-based, across connections) runs scripts[n]; the last script repeats.
  explicit ScriptedUpstream(std::vector<Script> scripts, std::optional<TlsFiles> tls = std::nullopt);
  ~ScriptedUpstream();
  ScriptedUpstream(const ScriptedUpstream&) = delete;
  ScriptedUpstream& operator=(const ScriptedUpstream&) = delete;

  uint16_t port() const { return port_; }
  void release() { released_ = true; }  // lets AwaitRelease steps continue
  int requests() const { return requests_.load(); }
  int connections() const { return connections_.load(); }
  // The raw bytes of the n-th request read ("" if none).
  std::string request(int n) const;
  // True once a StallUntilClosed step saw the proxy close the connection (polls up to `timeout`).
  bool wait_stall_closed(std::chrono::milliseconds timeout) const;

private:
  struct Conn;
  void accept_loop();
  void serve(int fd);
  bool read_request(Conn& c, std::string& buf, std::string& request);
  void run(Conn& c, const Script& script, bool& closed);

  std::vector<Script> scripts_;
  void* ssl_ctx_ = nullptr;  // SSL_CTX*
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false}, released_{false}, stall_closed_{false};
  std::atomic<int> requests_{0}, connections_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> requests_seen_;
  std::vector<std::thread> workers_;
  std::thread acceptor_;
};

// What the client received from the proxy for one request on a fresh connection.
struct ClientResult {
  std::string raw;          // every byte received, unparsed
  bool eof = false;         // the proxy closed the connection (FIN or RST) before the read stopped
  bool reset = false;       // ... with a RST
  bool timed_out = false;   // neither complete nor closed within the deadline
  std::string connect_error;
  // Parsed from raw:
  std::vector<int> interim;  // 1xx statuses before the final response
  bool headers_done = false;
  std::string status_line;   // of the final response
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-cased names, duplicates joined with ", "
  bool chunked = false;
  long long content_length = -1;
  std::string body;          // decoded (de-chunked) body received so far
  bool complete = false;     // the framing says the response ended (0 chunk / Content-Length reached)
  bool framing_error = false;
  std::string header(const std::string& name) const;
  std::string describe() const;  // for failure messages
};

// A POST with a JSON body, `Host`, `Content-Length` and the given X-Request-ID.
std::string post_request(const std::string& path, const std::string& body, const std::string& request_id,
                         const std::string& extra_headers = "");

// Sends `request` on a fresh connection and reads until the response is complete by its framing,
// the proxy closes the connection, or `deadline` passes. `on_data` sees the result parsed so far after
// every read (e.g. to release() the upstream once some event has reached the client).
ClientResult exchange(uint16_t port, const std::string& request, std::chrono::milliseconds deadline = 8s,
                      const std::function<void(const ClientResult&)>& on_data = {});

// Upstream response building blocks.
std::string chunk(const std::string& data);        // "<hex>\r\n<data>\r\n"
inline const std::string kLastChunk = "0\r\n\r\n";
std::string sse_head_chunked();                   // 200 text/event-stream, Transfer-Encoding: chunked
std::string sse_head_eof();                       // 200 text/event-stream, neither length nor chunked
std::string json_head_chunked();                  // 200 application/json, Transfer-Encoding: chunked
std::string json_head_eof();                      // 200 application/json, neither length nor chunked
std::string json_response(const std::string& body);  // complete 200 with Content-Length

// SSE events: the decoded body split into blocks at blank lines ("\n\n"); the text after the last
// blank line (an unterminated block) is returned as the last element only if non-empty.
std::vector<std::string> sse_blocks(const std::string& body);

}  // namespace glmp::upfaults
