#pragma once
// A private redis-server for tests: started on a random free loopback port with persistence off,
// stoppable (SIGKILL, as a crash would) and restartable on the same port. Header-only so unit and
// integration tests can both use it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

namespace glmp::test {

class RedisServer {
public:
  // Throws std::runtime_error when redis-server is missing or does not come up.
  RedisServer() : port_(free_port()) { start(); }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  uint16_t port() const { return port_; }
  std::string url(int db = 0) const { return "redis://127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db); }
  bool running() const { return pid_ > 0; }

  void start() {
    if (pid_ > 0) return;
    const std::string port = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::setpgid(0, 0);
      std::vector<std::string> args{"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                    "no", "--dir", "/tmp", "--loglevel", "warning", "--daemonize", "no"};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      FILE* devnull = std::fopen("/dev/null", "w");
      if (devnull) {
        ::dup2(fileno(devnull), 1);
        ::dup2(fileno(devnull), 2);
      }
      ::execvp("redis-server", argv.data());
      std::_Exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (ping()) return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("redis-server exited at start (is it installed? scripts/test installs it)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    stop();
    throw std::runtime_error("redis-server did not answer PING on port " + port);
  }

  // SIGKILL: what a crash or a network partition looks like to clients.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  bool ping() const {
    try {
      Poco::Net::StreamSocket s;
      s.connect(Poco::Net::SocketAddress("127.0.0.1", port_), Poco::Timespan(0, 200'000));
      s.setReceiveTimeout(Poco::Timespan(0, 500'000));
      s.sendBytes("PING\r\n", 6);
      char buf[16] = {};
      const int n = s.receiveBytes(buf, sizeof buf);
      return n >= 5 && std::string(buf, 5) == "+PONG";
    } catch (...) {
      return false;
    }
  }

private:
  static uint16_t free_port() {
    Poco::Net::ServerSocket s(Poco::Net::SocketAddress("127.0.0.1", 0));
    return s.address().port();
  }

  uint16_t port_;
  pid_t pid_ = -1;
};

}  // namespace glmp::test
