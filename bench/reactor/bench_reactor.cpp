// Poco's SocketReactor against the engine's own EventLoop on one echo workload (docs/design.md,
// "The engine"). Run: build/release/bin/glmp-reactor-bench
//
// Workload: N connected socket pairs (AF_UNIX socketpair, or TCP over 127.0.0.1). The benchmark
// thread is the driver: one round writes a 64-byte message to every pair, then reads every reply
// and compares it byte for byte. The loop under test runs on its own thread and, on each readable
// event, makes one recv and one send of what it read (the same function for both loops):
//   - BM_PocoSocketReactor: Poco::Net::SocketReactor, one handler per socket registered with
//     addEventHandler and a Poco::NObserver<Handler, ReadableNotification> (level-triggered);
//   - BM_EventLoop: glmp's server::EventLoop, one Watcher per socket, EPOLLIN | EPOLLET.
//
// The figures are the counters, all of the loop thread over the measured rounds:
//   cpu_us/ev   CPU time (user + system, CLOCK_THREAD_CPUTIME_ID) per event
//   usr_us/ev   user-space part of it (/proc/self/task/TID/stat, clock-tick resolution)
//   allocs/ev   operator new calls per event (counting operator new below, loop thread only)
//   locks/ev    pthread_mutex_lock calls per event (interposed below, loop thread only)
//   ev/wake     events handled per wake-up of the loop (per epoll_wait that returned events)
//   ev/s        events per second of wall time
// "Time" is the wall time of one round (N events); "CPU" is the driver's, not the loop's.
// A round whose replies do not all come back intact, or a loop that handled any event other
// than one per message, fails the benchmark instead of reporting a figure.
#include <benchmark/benchmark.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <Poco/NObserver.h>
#include <Poco/Net/SocketNotification.h>
#include <Poco/Net/SocketReactor.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/StreamSocketImpl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/event_loop.hpp"

// ---- Counting: heap allocations and mutex locks made by the loop thread under test. ----------
// Only a thread that set t_counted is counted; it is the only writer of the counters.
namespace {
thread_local bool t_counted = false;
std::atomic<uint64_t> g_allocs{0};
std::atomic<uint64_t> g_locks{0};

inline void bump(std::atomic<uint64_t>& c) {
  if (t_counted) c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

using LockFn = int (*)(pthread_mutex_t*);
std::atomic<LockFn> g_real_lock{nullptr};

LockFn real_lock() {
  LockFn fn = g_real_lock.load(std::memory_order_acquire);
  if (fn == nullptr) {
    void* sym = ::dlsym(RTLD_NEXT, "pthread_mutex_lock");
    if (sym == nullptr) std::abort();
    std::memcpy(&fn, &sym, sizeof fn);
    g_real_lock.store(fn, std::memory_order_release);
  }
  return fn;
}
[[maybe_unused]] const LockFn g_resolved_at_start = real_lock();
}  // namespace

// libstdc++'s array and nothrow forms call these two. None of these is inlined: GCC would see
// malloc() paired with operator delete, or free() with operator new, and warn of a mismatch.
[[gnu::noinline]] void* operator new(std::size_t n) {
  bump(g_allocs);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t al) {
  bump(g_allocs);
  void* p = nullptr;
  const auto a = std::max(static_cast<std::size_t>(al), sizeof(void*));
  if (::posix_memalign(&p, a, n == 0 ? 1 : n) == 0) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

// Poco's Mutex/FastMutex and std::mutex all end here (Poco's libraries bind to the executable's
// definition, which is exported because they reference the symbol).
extern "C" int pthread_mutex_lock(pthread_mutex_t* m) noexcept {
  bump(g_locks);
  return real_lock()(m);
}

namespace {

using glmp::core::server::EventLoop;
using glmp::core::server::Watcher;

constexpr size_t kMessage = 64;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

void raise_fd_limit(rlim_t want) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
  rl.rlim_cur = std::min(want, rl.rlim_max);
  ::setrlimit(RLIMIT_NOFILE, &rl);
}

void set_nonblocking(int fd) {
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) fail("fcntl");
}

// N connected pairs: `driver` ends are blocking (5 s receive timeout, so a lost reply fails the
// benchmark instead of hanging it), `loop` ends are non-blocking and belong to the loop under test.
struct Pairs {
  std::vector<int> driver;
  std::vector<int> loop;

  Pairs(int n, bool tcp) {
    raise_fd_limit(static_cast<rlim_t>(2 * n + 256));
    int listener = -1;
    sockaddr_in addr{};
    if (tcp) {
      listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof addr;
      if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
          ::listen(listener, 128) != 0 ||
          ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        fail("listen");
    }
    for (int i = 0; i < n; ++i) {
      int d = -1, l = -1;
      if (tcp) {
        d = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (d < 0 || ::connect(d, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) fail("connect");
        l = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (l < 0) fail("accept");
        const int one = 1;
        ::setsockopt(d, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const linger abort_on_close{1, 0};  // no TIME_WAIT left behind by repeated runs
        ::setsockopt(d, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
      } else {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
        d = sv[0];
        l = sv[1];
      }
      const timeval timeout{5, 0};
      ::setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
      set_nonblocking(l);
      driver.push_back(d);
      loop.push_back(l);
    }
    if (listener >= 0) ::close(listener);
  }
  ~Pairs() {
    for (int fd : loop)
      if (fd >= 0) ::close(fd);
    for (int fd : driver) ::close(fd);
  }
  Pairs(const Pairs&) = delete;
  Pairs& operator=(const Pairs&) = delete;
};

// What the loop under test counts; written by the loop thread only, read by the driver when the
// loop is idle (all replies received) or stopped.
struct LoopCounters {
  std::atomic<uint64_t> events{0};   // readable events handled
  std::atomic<uint64_t> echoed{0};   // bytes read (and written back)
  std::atomic<uint64_t> odd{0};      // events with nothing to read, or a short write
  std::atomic<uint64_t> wakes{0};    // wake-ups that handled events
};

inline void add(std::atomic<uint64_t>& c, uint64_t n) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// The work per event, identical for both loops: one recv, one send. Counted before the send, so
// the counters are final by the time the driver has the reply.
inline void echo_once(int fd, LoopCounters& c) {
  char buf[4096];
  add(c.events, 1);
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n <= 0) {
    add(c.odd, 1);
    return;
  }
  add(c.echoed, static_cast<uint64_t>(n));
  if (::send(fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) add(c.odd, 1);  // the driver times out
}

// One round: a distinct message to every pair, then every reply, checked byte for byte.
bool round_trip(const Pairs& pairs, uint64_t round, std::string& error) {
  const size_t n = pairs.driver.size();
  char msg[kMessage];
  std::memset(msg, 'x', sizeof msg);
  std::memcpy(msg, &round, sizeof round);
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(msg + sizeof round, &i, sizeof i);
    if (::send(pairs.driver[i], msg, sizeof msg, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof msg)) {
      error = "send failed on pair " + std::to_string(i);
      return false;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(msg + sizeof round, &i, sizeof i);
    char reply[kMessage];
    size_t got = 0;
    while (got < sizeof reply) {
      const ssize_t r = ::recv(pairs.driver[i], reply + got, sizeof reply - got, 0);
      if (r <= 0) {
        error = "no reply on pair " + std::to_string(i) + " in round " + std::to_string(round);
        return false;
      }
      got += static_cast<size_t>(r);
    }
    if (std::memcmp(reply, msg, sizeof msg) != 0) {
      error = "wrong reply on pair " + std::to_string(i) + " in round " + std::to_string(round);
      return false;
    }
  }
  return true;
}

// The loop thread's clocks, read from the driver thread.
struct LoopThread {
  clockid_t cpu_clock{};
  pid_t tid = 0;

  double cpu_seconds() const {
    timespec ts{};
    ::clock_gettime(cpu_clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  // utime from /proc (clock ticks): only for the user/system split.
  double user_seconds() const {
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string line;
    std::getline(in, line);
    const auto paren = line.rfind(')');
    if (paren == std::string::npos) return 0;
    std::istringstream fields(line.substr(paren + 2));
    std::string field;
    for (int i = 3; i <= 14; ++i)  // the fields after the name start at 3; utime is 14
      if (!(fields >> field)) return 0;
    return std::strtod(field.c_str(), nullptr) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
};

struct Snapshot {
  double cpu, user, wall;
  uint64_t allocs, locks, events, echoed, odd, wakes;
  static Snapshot take(const LoopThread& t, const LoopCounters& c) {
    return {t.cpu_seconds(),
            t.user_seconds(),
            std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
            g_allocs.load(std::memory_order_relaxed),
            g_locks.load(std::memory_order_relaxed),
            c.events.load(std::memory_order_relaxed),
            c.echoed.load(std::memory_order_relaxed),
            c.odd.load(std::memory_order_relaxed),
            c.wakes.load(std::memory_order_relaxed)};
  }
};

// Starts `body` on the loop thread (counted), returns its clocks once it is running.
LoopThread start_loop_thread(std::thread& th, std::function<void()> body) {
  std::promise<pid_t> started;
  auto tid = started.get_future();
  th = std::thread([&started, body = std::move(body)] {
    t_counted = true;
    started.set_value(::gettid());
    body();
    t_counted = false;
  });
  LoopThread t;
  t.tid = tid.get();
  if (::pthread_getcpuclockid(th.native_handle(), &t.cpu_clock) != 0) fail("pthread_getcpuclockid");
  return t;
}

// Warm-up, the measured rounds, the counters; stops the loop with `stop` before validating.
void measure(benchmark::State& state, const Pairs& pairs, const LoopThread& lt, LoopCounters& c,
             std::thread& th, const std::function<void()>& stop) {
  const uint64_t n = pairs.driver.size();
  std::string error;
  uint64_t round = 0;
  const uint64_t warmup = std::max<uint64_t>(20, 2000 / n);
  bool ok = true;
  while (ok && round < warmup) ok = round_trip(pairs, round++, error);

  const Snapshot a = Snapshot::take(lt, c);
  uint64_t rounds = 0;
  for (auto _ : state) {
    if (!ok || !(ok = round_trip(pairs, round++, error))) break;
    ++rounds;
  }
  const Snapshot b = Snapshot::take(lt, c);
  stop();
  th.join();

  if (!ok) {
    state.SkipWithError(error.c_str());
    return;
  }
  const uint64_t messages = rounds * n;
  const uint64_t events = b.events - a.events;
  if (events != messages || b.echoed - a.echoed != messages * kMessage || b.odd != a.odd) {
    error = "loop handled " + std::to_string(events) + " events, " + std::to_string(b.echoed - a.echoed) +
            " bytes, " + std::to_string(b.odd - a.odd) + " odd events for " + std::to_string(messages) +
            " messages";
    state.SkipWithError(error.c_str());
    return;
  }
  const auto per_event = [&](double v) { return v / static_cast<double>(events); };
  state.counters["cpu_us/ev"] = per_event((b.cpu - a.cpu) * 1e6);
  state.counters["usr_us/ev"] = per_event((b.user - a.user) * 1e6);
  state.counters["allocs/ev"] = per_event(static_cast<double>(b.allocs - a.allocs));
  state.counters["locks/ev"] = per_event(static_cast<double>(b.locks - a.locks));
  state.counters["ev/wake"] =
      static_cast<double>(events) / static_cast<double>(std::max<uint64_t>(1, b.wakes - a.wakes));
  state.counters["ev/s"] = static_cast<double>(events) / (b.wall - a.wall);
}

// ---- (1) Poco::Net::SocketReactor, the idiomatic 1.11 way. ------------------------------------
class Reactor final : public Poco::Net::SocketReactor {
public:
  explicit Reactor(LoopCounters& c) : counters_(c) {}

protected:
  void onBusy() override { add(counters_.wakes, 1); }

private:
  LoopCounters& counters_;
};

class PocoEchoHandler {
public:
  PocoEchoHandler(int fd, LoopCounters& c) : fd_(fd), counters_(c) {}
  void on_readable(const Poco::AutoPtr<Poco::Net::ReadableNotification>&) { echo_once(fd_, counters_); }

private:
  int fd_;
  LoopCounters& counters_;
};

void BM_PocoSocketReactor(benchmark::State& state) {
  Pairs pairs(static_cast<int>(state.range(0)), state.range(1) != 0);
  LoopCounters counters;
  std::vector<std::unique_ptr<PocoEchoHandler>> handlers;
  std::vector<Poco::Net::StreamSocket> sockets;
  auto reactor = std::make_unique<Reactor>(counters);
  for (int& fd : pairs.loop) {
    sockets.emplace_back(new Poco::Net::StreamSocketImpl(fd));  // the socket now owns the fd
    handlers.push_back(std::make_unique<PocoEchoHandler>(fd, counters));
    reactor->addEventHandler(sockets.back(), Poco::NObserver<PocoEchoHandler, Poco::Net::ReadableNotification>(
                                                 *handlers.back(), &PocoEchoHandler::on_readable));
    fd = -1;
  }
  std::thread th;
  const LoopThread lt = start_loop_thread(th, [&] { reactor->run(); });
  measure(state, pairs, lt, counters, th, [&] { reactor->stop(); });
}
BENCHMARK(BM_PocoSocketReactor)
    ->ArgNames({"pairs", "tcp"})
    ->ArgsProduct({{1, 100, 1000}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- (2) glmp's server::EventLoop, a Watcher per socket. -------------------------------------
class EchoWatcher final : public Watcher {
public:
  EchoWatcher(int fd, LoopCounters& c) : fd_(fd), counters_(c) {}
  void on_event(uint32_t) override { echo_once(fd_, counters_); }

private:
  int fd_;
  LoopCounters& counters_;
};

void BM_EventLoop(benchmark::State& state) {
  Pairs pairs(static_cast<int>(state.range(0)), state.range(1) != 0);
  LoopCounters counters;
  EventLoop loop;
  std::vector<std::unique_ptr<EchoWatcher>> watchers;
  for (int fd : pairs.loop) {
    watchers.push_back(std::make_unique<EchoWatcher>(fd, counters));
    if (!loop.add(fd, EPOLLIN | EPOLLET, watchers.back().get())) fail("epoll_ctl");
  }
  // The tick runs after every epoll_wait: it counts those that handled events, as onBusy above.
  uint64_t seen = 0;
  const std::function<void()> tick = [&counters, &seen] {
    const uint64_t now = counters.events.load(std::memory_order_relaxed);
    if (now != seen) add(counters.wakes, 1);
    seen = now;
  };
  std::thread th;
  const LoopThread lt = start_loop_thread(th, [&] { loop.run(tick); });
  measure(state, pairs, lt, counters, th, [&] { loop.stop(); });
}
BENCHMARK(BM_EventLoop)
    ->ArgNames({"pairs", "tcp"})
    ->ArgsProduct({{1, 100, 1000}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
