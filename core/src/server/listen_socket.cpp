#include "server/listen_socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>

#include <Poco/Net/NetException.h>
#include <Poco/Net/ServerSocketImpl.h>
#include <Poco/Net/StreamSocketImpl.h>

namespace glmp::core::server {
namespace {

class AcceptedSocketImpl final : public Poco::Net::StreamSocketImpl {
public:
  AcceptedSocketImpl(poco_socket_t fd, const Poco::Net::SocketAddress& peer, const Poco::Net::SocketAddress& local)
      : Poco::Net::StreamSocketImpl(fd), peer_(peer), local_(local) {}
  bool poll(const Poco::Timespan& timeout, int mode) override { return poll_socket(sockfd(), timeout, mode); }
  Poco::Net::SocketAddress peerAddress() override { return peer_; }
  Poco::Net::SocketAddress address() override { return local_; }

private:
  Poco::Net::SocketAddress peer_, local_;
};

class ListenSocketImpl final : public Poco::Net::ServerSocketImpl {
public:
  Poco::Net::SocketImpl* acceptConnection(Poco::Net::SocketAddress& client) override {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    int fd;
    do {
      fd = ::accept4(sockfd(), reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) error();  // throws the matching Poco exception
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    client = Poco::Net::SocketAddress(reinterpret_cast<sockaddr*>(&peer), peer_len);
    if (!local_known_) {
      local_ = address();
      local_known_ = true;
    }
    return new AcceptedSocketImpl(fd, client, local_);
  }

private:
  // Only the TCPServer's accept thread calls acceptConnection, so no lock is needed.
  bool local_known_ = false;
  Poco::Net::SocketAddress local_;
};

}  // namespace

bool poll_socket(int fd, const Poco::Timespan& timeout, int mode) {
  pollfd pfd{fd, 0, 0};
  if (mode & Poco::Net::Socket::SELECT_READ) pfd.events |= POLLIN;
  if (mode & Poco::Net::Socket::SELECT_WRITE) pfd.events |= POLLOUT;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(timeout.totalMicroseconds());
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const int rc = ::poll(&pfd, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
    if (rc > 0) {
      if (pfd.revents & (POLLERR | POLLHUP)) return (mode & (Poco::Net::Socket::SELECT_READ | Poco::Net::Socket::SELECT_ERROR)) != 0;
      return (pfd.revents & (POLLIN | POLLOUT)) != 0;
    }
    if (rc == 0) return false;
    if (errno != EINTR) throw Poco::Net::NetException("poll failed", errno);
  }
}

ListenSocket::ListenSocket(const Poco::Net::SocketAddress& address, int backlog)
    : Poco::Net::ServerSocket(new ListenSocketImpl, true) {
  impl()->bind(address, true);
  impl()->listen(backlog);
}

}  // namespace glmp::core::server
