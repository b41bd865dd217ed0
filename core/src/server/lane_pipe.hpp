#pragma once
// The in-memory pipe between an HTTP/2 stream's lane and the inner HTTP/1.1 connection that serves
// it on the same loop (docs/design.md, "HTTP/2 for clients"). While the inner connection is on its
// loop, the request's bytes go into `request` and its response's bytes straight to the front
// (LaneEnd::take_response), so a stream costs no system call between the two; the inner
// connection learns of new bytes, or of room for its own, from EventLoop::notify on its slot, as
// it would from epoll. The lane's socket pair stays: it carries the bytes while the inner
// connection is lent to a worker (`lent`: blocking reads and writes poll a descriptor), and its
// close is how either side learns that the other one left. Loop thread only.

#include <sys/types.h>
#include <sys/uio.h>

#include <string>

namespace glmp::core::server {

class Watcher;

// The front's side of a pipe, as the inner connection sees it.
class LaneEnd {
public:
  virtual ~LaneEnd() = default;
  // Response bytes from the inner connection: how many the stream took (> 0), or -1 with errno
  // EAGAIN when its client is slow (the stream's queue is past its high watermark; the inner
  // connection is told EPOLLOUT when there is room again). `may_refuse` false: the bytes are taken
  // whatever the queue holds (a writer that cannot wait for an event: a small answer).
  virtual ssize_t take_response(const iovec* iov, int count, bool may_refuse) = 0;
  // The inner connection took request bytes out of the pipe (the stream's window may reopen).
  virtual void request_taken() = 0;
};

struct LanePipe {
  std::string request;      // request bytes the inner connection has not read yet
  size_t request_off = 0;
  LaneEnd* front = nullptr;  // null once the lane is closed: a read sees EOF, a write EPIPE
  Watcher* inner = nullptr;  // the inner connection's slot (null before it has one, and once it is gone)
  bool lent = false;         // the inner connection went to a worker: from then on the socket carries the bytes
  size_t pending() const { return request.size() - request_off; }
};

}  // namespace glmp::core::server
