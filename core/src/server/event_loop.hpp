#pragma once
// One event loop (docs/design.md, "The engine"): an epoll instance driven by one thread, its
// timers, and a queue through which other threads hand it work. Everything registered with a loop
// is touched only by that loop's thread, so nothing in a request's hot path takes a lock.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace glmp::core::server {

using Clock = std::chrono::steady_clock;

// Something with a descriptor on a loop; epoll's data.ptr points at it.
class Watcher {
public:
  virtual ~Watcher() = default;
  virtual void on_event(uint32_t events) = 0;
  // Set by EventLoop::retire: events of the current batch that still name it are dropped.
  bool retired = false;
};

class EventLoop {
public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs until stop() (any thread). `tick` runs after every batch of events (at least every 200 ms).
  void run(const std::function<void()>& tick);
  void stop();

  bool add(int fd, uint32_t events, Watcher* w);
  bool modify(int fd, uint32_t events, Watcher* w);
  void remove(int fd);
  // Frees `w` once the current batch of events is handled (its fd must be removed already).
  void retire(std::unique_ptr<Watcher> w);

  // Thread-safe: runs `fn` on the loop thread, soon.
  void post(std::function<void()> fn);

  // Loop thread: delivers `events` to `w` as epoll would, once the current batch (its events,
  // posted work, timers and tick) is handled, unless `w` is retired by then. For readiness that no
  // descriptor reports: an in-memory pipe (server/lane_pipe.hpp) or work a watcher defers to the
  // end of the batch. `w` must be freed only through retire().
  void notify(Watcher* w, uint32_t events) { notified_.push_back({w, events}); }

  // Timers, loop thread only. A Timer is its own handle: cancel() and re-arming need nothing else.
  struct Timer {
    Clock::time_point at{};
    uint64_t seq = 0;
    explicit operator bool() const { return seq != 0; }
  };
  void arm(Timer& t, Clock::time_point at, std::function<void()> fn);
  void cancel(Timer& t);

  bool in_loop_thread() const { return std::this_thread::get_id() == thread_id_; }
  // The time at the start of the current batch (one clock read per batch, not per event).
  Clock::time_point now() const { return now_; }

private:
  using TimerMap = std::map<std::pair<Clock::time_point, uint64_t>, std::function<void()>>;
  void drain_posted();
  void run_timers();
  void run_notified();
  void recycle(TimerMap::node_type node);
  void bury();
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread::id thread_id_{};
  Clock::time_point now_ = Clock::now();

  std::mutex post_mutex_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> wake_pending_{false};

  uint64_t next_seq_ = 1;
  TimerMap timers_;
  // Nodes of cancelled and fired timers, reused by arm(): a request arms and cancels a few timers,
  // and this way without a heap allocation each (at most kSpareTimers kept).
  static constexpr size_t kSpareTimers = 64;
  std::vector<TimerMap::node_type> spare_timers_;
  std::vector<std::unique_ptr<Watcher>> graveyard_;
  struct Notified {
    Watcher* w;
    uint32_t events;
  };
  std::vector<Notified> notified_, notifying_;  // two, swapped: no allocation once warm
};

}  // namespace glmp::core::server
