// glmp-load: a minimal epoll loop with timers, one per thread. Level-triggered; a handler gets the
// epoll event bits of its fd. Timers are (due, callback) in a min-heap; a callback that must not
// outlive its owner captures an id and looks the owner up (owners never cancel timers). Handlers
// are retired, not deleted, while a batch of events is being dispatched.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <vector>

namespace glmp::load {

class Loop {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    virtual void on_io(std::uint32_t events) = 0;
  };

  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void add(int fd, std::uint32_t events, Handler* h);
  void modify(int fd, std::uint32_t events, Handler* h);
  void remove(int fd);

  void at(std::int64_t due_ns, std::function<void()> fn);

  // Deletes a handler after the current batch of events: a later event of the same batch may
  // still point at it (it must ignore events once its fd is closed).
  void retire(std::unique_ptr<Handler> h) { graveyard_.push_back(std::move(h)); }

  // Runs ready timers and I/O until stop(): each round waits at most max_wait_ms (so a caller's
  // tick, run after every round, notices shared flags within that long).
  void run(const std::function<void()>& tick, int max_wait_ms = 10);
  void stop() { stop_.store(true, std::memory_order_relaxed); }

 private:
  struct Timer {
    std::int64_t due;
    std::uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Timer& o) const { return due != o.due ? due > o.due : seq > o.seq; }
  };
  int epfd_ = -1;
  std::atomic<bool> stop_{false};
  std::uint64_t seq_ = 0;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  std::vector<std::unique_ptr<Handler>> graveyard_;
};

}  // namespace glmp::load
