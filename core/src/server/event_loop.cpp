#include "server/event_loop.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include <Poco/Exception.h>

namespace glmp::core::server {
namespace {
constexpr int kMaxWaitMs = 200;
constexpr int kBatch = 256;

class WakeWatcher final : public Watcher {
public:
  void on_event(uint32_t) override {}
};
WakeWatcher g_wake;  // stateless: marks the eventfd in a batch
}  // namespace

EventLoop::EventLoop() {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw Poco::SystemException("epoll/eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = &g_wake;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  spare_timers_.reserve(kSpareTimers);
}

EventLoop::~EventLoop() {
  bury();
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

bool EventLoop::add(int fd, uint32_t events, Watcher* w) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = w;
  return ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

bool EventLoop::modify(int fd, uint32_t events, Watcher* w) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = w;
  return ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void EventLoop::remove(int fd) { ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::retire(std::unique_ptr<Watcher> w) {
  if (!w) return;
  w->retired = true;
  graveyard_.push_back(std::move(w));
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(post_mutex_);
    posted_.push_back(std::move(fn));
  }
  // One eventfd write per burst: the loop clears the flag before it drains the queue.
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  }
}

void EventLoop::stop() {
  stop_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void EventLoop::drain_posted() {
  std::vector<std::function<void()>> batch;
  wake_pending_.store(false, std::memory_order_release);
  {
    std::lock_guard lock(post_mutex_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

void EventLoop::arm(Timer& t, Clock::time_point at, std::function<void()> fn) {
  cancel(t);
  t.at = at;
  t.seq = next_seq_++;
  if (spare_timers_.empty()) {
    timers_.emplace(std::make_pair(at, t.seq), std::move(fn));
    return;
  }
  TimerMap::node_type node = std::move(spare_timers_.back());
  spare_timers_.pop_back();
  node.key() = std::make_pair(at, t.seq);
  node.mapped() = std::move(fn);
  timers_.insert(std::move(node));
}

void EventLoop::cancel(Timer& t) {
  if (!t) return;
  recycle(timers_.extract(std::make_pair(t.at, t.seq)));
  t.seq = 0;
}

void EventLoop::recycle(TimerMap::node_type node) {
  if (!node) return;
  node.mapped() = nullptr;  // what the callback captured goes now
  if (spare_timers_.size() < kSpareTimers) spare_timers_.push_back(std::move(node));
}

void EventLoop::run_timers() {
  // Only timers due at the batch's time: a timer armed by a callback for "now" runs next round.
  while (!timers_.empty() && timers_.begin()->first.first <= now_) {
    auto node = timers_.extract(timers_.begin());
    node.mapped()();
    recycle(std::move(node));
  }
}

void EventLoop::run(const std::function<void()>& tick) {
  thread_id_ = std::this_thread::get_id();
  epoll_event events[kBatch];
  while (!stop_.load(std::memory_order_acquire)) {
    int wait_ms = kMaxWaitMs;
    if (!timers_.empty()) {
      const auto until = timers_.begin()->first.first - Clock::now();
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until).count() + 1;
      wait_ms = ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms, kMaxWaitMs));
    }
    const int n = ::epoll_wait(epoll_fd_, events, kBatch, wait_ms);
    now_ = Clock::now();
    bool woken = false;
    for (int i = 0; i < n; ++i) {
      auto* w = static_cast<Watcher*>(events[i].data.ptr);
      if (w == &g_wake) {
        uint64_t v;
        [[maybe_unused]] auto r = ::read(wake_fd_, &v, sizeof v);
        woken = true;
        continue;
      }
      if (!w->retired) w->on_event(events[i].events);
    }
    if (woken || wake_pending_.load(std::memory_order_acquire)) drain_posted();
    run_timers();
    tick();
    run_notified();  // before bury(): a notified watcher is alive until then (retired at worst)
    bury();
  }
  // Whatever was posted last (hand-backs from workers) is run, so nothing is leaked.
  drain_posted();
  run_notified();
  bury();
}

// Until none is left: a delivery may notify others (a pipe's write tells its reader, whose read
// tells the writer there is room), which are still part of this batch.
void EventLoop::run_notified() {
  while (!notified_.empty()) {
    notifying_.swap(notified_);
    for (const Notified& n : notifying_)
      if (!n.w->retired) n.w->on_event(n.events);
    notifying_.clear();
  }
}

// A watcher freed here may retire others (a connection its slot): until none is left.
void EventLoop::bury() {
  while (!graveyard_.empty()) {
    std::vector<std::unique_ptr<Watcher>> dead;
    dead.swap(graveyard_);
    dead.clear();
  }
}

}  // namespace glmp::core::server
