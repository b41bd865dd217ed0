#pragma once
// The mock upstream's HTTP/1.1 and HTTP/2 server: a few epoll event loops (one thread each) share
// one non-blocking listening socket. Each loop owns the connections it accepted: it reads and
// parses requests with llhttp, asks the handler for a Script, and plays the script's steps with
// non-blocking writes and timers. A connection that starts with the HTTP/2 preface, or selects h2
// with ALPN, runs an nghttp2 session instead (mock_h2.hpp). TLS (--https) is OpenSSL on the same
// non-blocking socket.

#include <openssl/ssl.h>

#include <memory>
#include <thread>
#include <vector>

#include "mock_handler.hpp"

namespace glmp::mock {

class Loop;

class Server {
 public:
  // `listen_fd` is a bound, listening socket (the server makes it non-blocking but does not own
  // it). `tls` is the server context for --https, or nullptr (the server sets its ALPN callback).
  Server(const Options& options, Stats& stats, int listen_fd, SSL_CTX* tls);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts options.loops loop threads.
  void start();
  // Stops accepting, shuts down and closes every open connection, and joins the loop threads.
  void stop();

 private:
  const Options& options_;
  Stats& stats_;
  int listen_fd_;
  SSL_CTX* tls_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<std::thread> threads_;
};

}  // namespace glmp::mock
