#include "loop.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace glmp::load {

Loop::Loop() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (epfd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
}

Loop::~Loop() {
  if (epfd_ >= 0) ::close(epfd_);
}

void Loop::add(int fd, std::uint32_t events, Handler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0)
    throw std::runtime_error(std::string("epoll_ctl(ADD): ") + std::strerror(errno));
}

void Loop::modify(int fd, std::uint32_t events, Handler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) != 0)
    throw std::runtime_error(std::string("epoll_ctl(MOD): ") + std::strerror(errno));
}

void Loop::remove(int fd) { ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void Loop::at(std::int64_t due_ns, std::function<void()> fn) { timers_.push(Timer{due_ns, seq_++, std::move(fn)}); }

void Loop::run(const std::function<void()>& tick, int max_wait_ms) {
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  while (!stop_.load(std::memory_order_relaxed)) {
    int wait_ms = max_wait_ms;
    if (!timers_.empty()) {
      const std::int64_t left = timers_.top().due - now_ns();
      // Round up: waking a little late is fine, waking early only spins.
      wait_ms = left <= 0 ? 0 : std::min<std::int64_t>(max_wait_ms, (left + 999999) / 1000000);
    }
    const int n = ::epoll_wait(epfd_, events, kMaxEvents, wait_ms);
    if (n < 0 && errno != EINTR) throw std::runtime_error(std::string("epoll_wait: ") + std::strerror(errno));
    for (int i = 0; i < n; ++i) static_cast<Handler*>(events[i].data.ptr)->on_io(events[i].events);
    graveyard_.clear();
    const std::int64_t now = now_ns();
    while (!timers_.empty() && timers_.top().due <= now) {
      auto fn = std::move(const_cast<Timer&>(timers_.top()).fn);
      timers_.pop();
      fn();
    }
    if (tick) tick();
    graveyard_.clear();
  }
}

}  // namespace glmp::load
