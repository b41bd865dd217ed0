// EventLoop timers: due order, cancel, re-arm, and timers armed and cancelled from callbacks —
// also once their map nodes are recycled (arm() reuses the nodes of cancelled and fired timers).
#include "server/event_loop.hpp"

#include <gtest/gtest.h>

#include <chrono>
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
