// EventLoop timers: due order, cancel, re-arm, and timers armed and cancelled from callbacks —
// also once their map nodes are recycled (arm() reuses the nodes of cancelled and fired timers).
// EventLoop::notify: events delivered after the work at hand, chained deliveries in the same
// batch, never to a retired watcher.
#include "server/event_loop.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using glmp::core::server::EventLoop;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Runs `setup` on the loop thread, then the loop until `done` says so (or 5 s pass).
template <class Setup, class Done>
void run_loop(EventLoop& ev, Setup setup, Done done) {
  const auto give_up = Clock::now() + std::chrono::seconds(5);
  ev.post(setup);
  ev.run([&] {
    if (done() || Clock::now() > give_up) ev.stop();
  });
}

TEST(EventLoopTimers, FireInDueOrderSkippingCancelledOnesAcrossRecycledNodes) {
  EventLoop ev;
  std::vector<int> fired;
  constexpr int kTimers = 200;  // more than the spare-node cap, so nodes are both new and reused
  std::vector<EventLoop::Timer> timers(kTimers);
  run_loop(
      ev,
      [&] {
        const auto base = Clock::now() + milliseconds(20);
        // Armed in reverse: the deadlines order them, not the arming.
        for (int i = kTimers - 1; i >= 0; --i)
          ev.arm(timers[i], base + milliseconds(i), [&fired, i] { fired.push_back(i); });
        for (int i = 0; i < kTimers; i += 2) ev.cancel(timers[i]);
        // The even ones again, later (the first re-arms take the cancelled timers' nodes), and
        // every other one of those cancelled once more.
        for (int i = 0; i < kTimers; i += 2)
          ev.arm(timers[i], base + milliseconds(250 + i), [&fired, i] { fired.push_back(1000 + i); });
        for (int i = 0; i < kTimers; i += 4) ev.cancel(timers[i]);
      },
      [&] { return fired.size() >= kTimers / 2 + kTimers / 4; });
  std::vector<int> expected;
  for (int i = 1; i < kTimers; i += 2) expected.push_back(i);
  for (int i = 2; i < kTimers; i += 4) expected.push_back(1000 + i);
  EXPECT_EQ(fired, expected);
  for (int i = 0; i < kTimers; i += 4) EXPECT_FALSE(timers[i]) << "a cancelled handle reads as disarmed";
}

// Same deadline: the order they were armed in.
TEST(EventLoopTimers, EqualDeadlinesFireInArmingOrder) {
  EventLoop ev;
  std::vector<EventLoop::Timer> timers(5);
  std::vector<int> fired;
  run_loop(
      ev,
      [&] {
        const auto at = Clock::now() + milliseconds(5);
        for (int i : {3, 1, 4, 0, 2}) ev.arm(timers[i], at, [&fired, i] { fired.push_back(i); });
      },
      [&] { return fired.size() == 5; });
  EXPECT_EQ(fired, (std::vector<int>{3, 1, 4, 0, 2}));
}

TEST(EventLoopTimers, RearmMovesTheDeadlineAndCallbacksMayArmAndCancel) {
  EventLoop ev;
  EventLoop::Timer a, b, c;
  std::vector<char> fired;
  run_loop(
      ev,
      [&] {
        const auto now = Clock::now();
        ev.arm(a, now + milliseconds(5), [&] { fired.push_back('x'); });
        ev.arm(a, now + milliseconds(30), [&] { fired.push_back('a'); });  // replaces the first
        ev.arm(b, now + milliseconds(10), [&] {
          fired.push_back('b');
          ev.cancel(b);  // its own, already fired: a no-op
          ev.arm(c, Clock::now() + milliseconds(5), [&] { fired.push_back('c'); });
        });
      },
      [&] { return fired.size() >= 3; });
  EXPECT_EQ(fired, (std::vector<char>{'b', 'c', 'a'}));
}

}  // namespace

namespace notify_tests {

using glmp::core::server::Watcher;

struct Recorder final : Watcher {
  Recorder(std::vector<std::string>& log, std::string name, bool* freed = nullptr) : log_(log), name_(std::move(name)), freed_(freed) {}
  ~Recorder() override {
    if (freed_) *freed_ = true;
  }
  void on_event(uint32_t events) override {
    log_.push_back(name_ + ":" + std::to_string(events));
    if (then) then();
  }
  std::function<void()> then;

private:
  std::vector<std::string>& log_;
  std::string name_;
  bool* freed_;
};

// A notification waits for the work at hand (here the posted function), deliveries chain within
// the same batch (a pipe's reader tells its writer), and a watcher retired before its turn is
// skipped, yet alive until the batch ends.
TEST(EventLoopNotify, DeliversAfterTheWorkAtHandChainsAndSkipsRetiredWatchers) {
  EventLoop ev;
  std::vector<std::string> log;
  bool c_freed = false, c_freed_at_tick = true;
  Recorder a(log, "a"), b(log, "b");
  auto c = std::make_unique<Recorder>(log, "c", &c_freed);
  Recorder* c_raw = c.get();
  a.then = [&] { ev.notify(&b, 4); };  // chained: delivered in the same batch
  b.then = [&] { log.push_back("b-done"); };
  int ticks = 0;
  bool done = false;
  ev.post([&] {
    ev.notify(&a, 1);
    ev.notify(c_raw, 1);
    ev.retire(std::move(c));  // retired before its turn: never delivered
    log.push_back("posted-end");
  });
  ev.run([&] {
    if (!log.empty() && !done) {
      done = true;
      c_freed_at_tick = c_freed;  // bury() runs after the tick: still alive here
    }
    if (done || ++ticks > 50) ev.stop();
  });
  EXPECT_EQ(log, (std::vector<std::string>{"posted-end", "a:1", "b:4", "b-done"}));
  EXPECT_FALSE(c_freed_at_tick);
  EXPECT_TRUE(c_freed);
}

// Notifying the same watcher twice delivers twice (each is an event, as epoll's are); a delivery
// that notifies itself again is still part of the batch, until it stops.
TEST(EventLoopNotify, RepeatsAndSelfNotificationsAreDeliveredInTheBatch) {
  EventLoop ev;
  std::vector<std::string> log;
  Recorder a(log, "a");
  int left = 3;
  a.then = [&] {
    if (--left > 0) ev.notify(&a, 2);
  };
  bool seen_at_tick = false;
  ev.post([&] {
    ev.notify(&a, 1);
  });
  ev.run([&] {
    if (!log.empty()) {
      seen_at_tick = log.size() == 3;
      ev.stop();
    }
  });
  EXPECT_TRUE(seen_at_tick) << "every delivery before the tick of its batch";
  EXPECT_EQ(log, (std::vector<std::string>{"a:1", "a:2", "a:2"}));
}

}  // namespace notify_tests
