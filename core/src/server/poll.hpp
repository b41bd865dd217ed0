#pragma once
// One raw poll(2) on a socket. Poco 1.11's SocketImpl::poll builds a fresh epoll instance per call
// (epoll_create, epoll_ctl, epoll_wait, close); the upstream pool's idle check uses this instead.

#include <Poco/Timespan.h>

namespace glmp::core::server {

// Poco's mode bits (SELECT_READ/WRITE/ERROR) and a timeout. Returns true when any requested
// condition holds (EOF and errors count as readable).
bool poll_socket(int fd, const Poco::Timespan& timeout, int mode);

}  // namespace glmp::core::server
