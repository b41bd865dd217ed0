#include "server/poll.hpp"

#include <poll.h>

#include <cerrno>
#include <chrono>

#include <Poco/Net/NetException.h>
#include <Poco/Net/Socket.h>

namespace glmp::core::server {

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

}  // namespace glmp::core::server
