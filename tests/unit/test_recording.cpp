// Unit tests for core/src/pipeline/recording (suite Recording: the class alone, on the loops of a
// real server::Engine) and for follow mode of core/src/pipeline/exchange (suite Follow: real
// pipeline::Exchange objects on a two-loop engine, over loopback TCP, against a scripted
// in-process upstream).
//
// The Follow harness is wired like Server: a request to /v1/lead becomes an Exchange whose
// response is recorded (ctx.recording); a request to /v1/follow… or /v1/replay becomes an
// Exchange answered from the current leader's recording (ctx.follow, set before it starts). A
// one-plugin chain answers such a request (on_request returns Responded while ctx.follow is set,
// as the ABI adapter does after request_follow), which is what makes Exchange::after_request_hooks
// start following instead of calling the upstream. The upstream script runs on its own thread per
// connection and waits on gates the test opens, so "mid-stream" is a fixed point, not a timing.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <Poco/Net/SocketAddress.h>

#include "config/config.hpp"
#include "pipeline/exchange.hpp"
#include "pipeline/proxy.hpp"
#include "pipeline/recording.hpp"
#include "plugins/chain.hpp"
#include "server/engine.hpp"
#include "upstream/pool.hpp"

namespace cfg = glmp::core::config;
namespace pl = glmp::core::pipeline;
namespace srv = glmp::core::server;
namespace plg = glmp::core::plugins;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using Rec = pl::Recording;

namespace {

// ---------------------------------------------------------------------------------------------
// Shared helpers

class Gate {
public:
  void open() {
    std::lock_guard lock(m_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }

private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Runs `fn` when the scope ends (gates opened on every path, so no script waits out its timeout).
class AtExit {
public:
  explicit AtExit(std::function<void()> fn) : fn_(std::move(fn)) {}
  ~AtExit() { fn_(); }
  AtExit(const AtExit&) = delete;
  AtExit& operator=(const AtExit&) = delete;

private:
  std::function<void()> fn_;
};

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = SteadyClock::now() + timeout;
  while (!cond()) {
    if (SteadyClock::now() > deadline) return cond();
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Recording alone: the loops of a started engine (nothing connects to it).

class Loops {
public:
  explicit Loops(int n = 2) {
    srv::EngineOptions options;
    options.loops = n;
    options.max_threads = 1;
    engine_ = std::make_unique<srv::Engine>(Poco::Net::SocketAddress("127.0.0.1", 0), options,
                                            [](srv::Loop& loop, std::unique_ptr<srv::ClientConnection> c) {
                                              loop.reject(std::move(c), 404, "nothing here");
                                            });
    engine_->start();
  }
  ~Loops() { engine_->stop(); }
  srv::Loop& loop(size_t i) { return engine_->loop(i); }
  // Runs `fn` on loop i and waits for it (everything posted to that loop before has run too).
  void run(size_t i, const std::function<void()>& fn) {
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    loop(i).ev().post([done, fn] {
      fn();
      done->set_value();
    });
    fut.wait();
  }
  void sync(size_t i) {
    run(i, [] {});
  }
  // Blocks loop i until the returned gate opens; `then` runs on the loop just after.
  std::shared_ptr<Gate> block(size_t i, std::function<void()> then = nullptr) {
    auto gate = std::make_shared<Gate>();
    auto entered = std::make_shared<Gate>();
    loop(i).ev().post([gate, entered, then] {
      entered->open();
      gate->wait(20s);
      if (then) then();
    });
    entered->wait();
    return gate;
  }

private:
  std::unique_ptr<srv::Engine> engine_;
};

// Counts its notifications (and whether one ever came off its loop); takes nothing itself.
class CountingReader final : public Rec::Reader {
public:
  explicit CountingReader(srv::Loop& loop) : loop_(loop) {}
  virtual ~CountingReader() = default;
  void recording_ready() override {
    if (!loop_.ev().in_loop_thread()) off_loop = true;
    calls.fetch_add(1);
  }
  std::atomic<int> calls{0};
  std::atomic<bool> off_loop{false};

private:
  srv::Loop& loop_;
};

class CountingLeader final : public Rec::Leader {
public:
  explicit CountingLeader(srv::Loop& loop) : loop_(loop) {}
  virtual ~CountingLeader() = default;
  void followers_left() override {
    if (!loop_.ev().in_loop_thread()) off_loop = true;
    calls.fetch_add(1);
  }
  std::atomic<int> calls{0};
  std::atomic<bool> off_loop{false};

private:
  srv::Loop& loop_;
};

pl::RecordedHead sse_head(int status = 200) {
  pl::RecordedHead h;
  h.status = status;
  h.reason = status == 200 ? "OK" : "Error";
  h.headers.add("Content-Type", "text/event-stream");
  h.sse = true;
  return h;
}

pl::RecordedHead json_head(int status, int64_t length) {
  pl::RecordedHead h;
  h.status = status;
  h.reason = "X";
  h.headers.add("Content-Type", "application/json");
  h.content_length = length;
  return h;
}

std::vector<std::string> strings(const Rec::Take& t) {
  std::vector<std::string> out;
  for (const auto& c : t.chunks) out.push_back(*c.raw);
  return out;
}

Rec::Take take(Rec& rec, Rec::Follower& f) {
  Rec::Take t;
  rec.take(f, t);
  return t;
}

}  // namespace

// The whole life of a recording with a follower attached before the head: Waiting, then the head,
// the body chunks (one per append, pieces joined, empty appends ignored), the end; notifications
// come on the follower's loop.
TEST(Recording, StartAppendCompleteWithAFollowerAttachedBeforeTheHead) {
  Loops loops;
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  CountingReader reader(loops.loop(0));
  EXPECT_TRUE(rec.followable());
  EXPECT_FALSE(rec.started());
  EXPECT_EQ(rec.flavour(), pl::Flavour::OpenAI);
  EXPECT_EQ(rec.info().state, Rec::State::Waiting);
  EXPECT_EQ(rec.info().status, 0);

  auto f = rec.attach(loops.loop(0), &reader);
  ASSERT_TRUE(f);
  EXPECT_EQ(rec.followers(), 1u);
  Rec::Take t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Waiting);
  EXPECT_TRUE(t.chunks.empty());
  EXPECT_FALSE(t.cut);
  loops.sync(0);
  EXPECT_EQ(reader.calls.load(), 0);  // attaching is not a notification

  rec.start(sse_head());
  ASSERT_TRUE(eventually([&] { return reader.calls.load() == 1; }));
  EXPECT_TRUE(rec.started());
  EXPECT_EQ(rec.head().status, 200);
  EXPECT_TRUE(rec.head().sse);
  EXPECT_EQ(rec.head().headers.get("Content-Type"), "text/event-stream");
  t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Live);
  EXPECT_TRUE(t.chunks.empty());

  rec.append(std::string_view("data: 1\n\n"));
  rec.append(std::vector<std::string_view>{"data: ", "2\n", "\n"});
  rec.append(std::string_view());
  rec.append(std::vector<std::string_view>{"", ""});
  ASSERT_TRUE(eventually([&] { return reader.calls.load() >= 2; }));
  t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Live);
  EXPECT_EQ(strings(t), (std::vector<std::string>{"data: 1\n\n", "data: 2\n\n"}));

  pl::Usage usage;
  usage.seen = true;
  usage.input_tokens = 3;
  usage.output_tokens = 5;
  usage.total_tokens = 8;
  EXPECT_EQ(rec.final_usage().output_tokens, 0);
  const int before = reader.calls.load();
  rec.complete(usage, true);
  ASSERT_TRUE(eventually([&] { return reader.calls.load() > before; }));
  t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Complete);
  EXPECT_TRUE(t.chunks.empty());
  EXPECT_EQ(rec.final_usage().output_tokens, 5);
  EXPECT_TRUE(rec.followable());

  // Once complete, nothing changes it any more.
  rec.append(std::string_view("late"));
  rec.fail(usage, {502, "too late"});
  rec.start(sse_head(500));
  const Rec::Info info = rec.info();
  EXPECT_EQ(info.state, Rec::State::Complete);
  EXPECT_EQ(info.status, 200);
  EXPECT_EQ(info.body_bytes, 18);
  EXPECT_TRUE(rec.failure().message.empty());

  loops.run(0, [&] { rec.detach(f); });
  EXPECT_EQ(rec.followers(), 0u);
  rec.detach(nullptr);  // a no-op
  EXPECT_FALSE(reader.off_loop.load());
}

// When the leader hides the usage-only chunk from its client (head.hidden_views), every chunk also
// carries that view: the raw chunk itself when the view is byte-identical (no copy), a chunk of its
// own when the leader held bytes back or dropped the usage chunk; the view's last held-back bytes
// come with complete(). Without hidden_views there are no views.
TEST(Recording, HiddenViewsRideWithTheChunks) {
  Loops loops;
  const int64_t kept_before = Rec::kept_bytes_total();
  {
    Rec rec(1 << 20, pl::Flavour::OpenAI);
    CountingReader reader(loops.loop(0));
    auto f = rec.attach(loops.loop(0), &reader);
    pl::RecordedHead head = sse_head();
    head.hidden_views = true;
    rec.start(head);
    const std::string usage_event = "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n";
    rec.append(std::string_view("data: a\n\n"), std::string_view("data: a\n\n"));  // same view
    rec.append(std::vector<std::string_view>{"data: b\n\n", "data: par"}, std::string_view("data: b\n\n"));  // held back
    rec.append(std::string_view("t\n\n" + usage_event), std::string_view("data: part\n\n"));  // released, usage dropped
    rec.append(std::string_view("data: [DO"));  // no view given: the raw bytes stand for it
    rec.complete({}, true, "NE]\n\n");
    Rec::Take t = take(rec, *f);
    EXPECT_EQ(t.state, Rec::State::Complete);
    ASSERT_EQ(t.chunks.size(), 4u);
    EXPECT_EQ(t.chunks[0].hidden.get(), t.chunks[0].raw.get()) << "an identical view is the raw chunk, not a copy";
    EXPECT_EQ(*t.chunks[1].raw, "data: b\n\ndata: par");
    EXPECT_EQ(*t.chunks[1].hidden, "data: b\n\n");
    EXPECT_EQ(*t.chunks[2].raw, "t\n\n" + usage_event);
    EXPECT_EQ(*t.chunks[2].hidden, "data: part\n\n");
    EXPECT_EQ(t.chunks[3].hidden.get(), t.chunks[3].raw.get());
    EXPECT_EQ(rec.hidden_tail(), "NE]\n\n");
    const int64_t raw_bytes = 9 + 18 + 3 + static_cast<int64_t>(usage_event.size()) + 9;
    EXPECT_EQ(rec.info().body_bytes, raw_bytes) << "body bytes are the upstream's";
    EXPECT_EQ(Rec::kept_bytes_total() - kept_before, raw_bytes + 9 + 12) << "distinct views are kept (and counted) too";
    // A late follower (a cache hit) gets the same pairs.
    CountingReader later(loops.loop(1));
    auto g = rec.attach(loops.loop(1), &later);
    ASSERT_TRUE(g);
    const Rec::Take tg = take(rec, *g);
    ASSERT_EQ(tg.chunks.size(), 4u);
    EXPECT_EQ(tg.chunks[1].hidden.get(), t.chunks[1].hidden.get());
    loops.run(0, [&] { rec.detach(f); });
    loops.run(1, [&] { rec.detach(g); });
  }
  EXPECT_EQ(Rec::kept_bytes_total(), kept_before);
  {
    Rec rec(1 << 20, pl::Flavour::OpenAI);
    CountingReader reader(loops.loop(0));
    auto f = rec.attach(loops.loop(0), &reader);
    rec.start(sse_head());
    rec.append(std::string_view("data: a\n\n"), std::string_view("ignored"));
    rec.complete({}, true, "ignored");
    const Rec::Take t = take(rec, *f);
    ASSERT_EQ(t.chunks.size(), 1u);
    EXPECT_EQ(t.chunks[0].hidden, nullptr) << "no views without head.hidden_views";
    EXPECT_EQ(rec.hidden_tail(), "");
    loops.run(0, [&] { rec.detach(f); });
  }
}

// A follower attaching mid-body finds every chunk kept so far in its inbox, then gets the rest;
// two followers share the same immutable chunks.
TEST(Recording, AttachMidBodyGetsTheKeptChunksFirst) {
  Loops loops;
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  CountingReader early(loops.loop(0)), late(loops.loop(1));
  auto fe = rec.attach(loops.loop(0), &early);
  rec.start(sse_head());
  rec.append(std::string_view("a1"));
  rec.append(std::string_view("b22"));
  rec.append(std::string_view("c333"));
  auto fl = rec.attach(loops.loop(1), &late);
  ASSERT_TRUE(fl);
  EXPECT_EQ(rec.followers(), 2u);
  Rec::Take tl = take(rec, *fl);
  EXPECT_EQ(tl.state, Rec::State::Live);
  EXPECT_EQ(strings(tl), (std::vector<std::string>{"a1", "b22", "c333"}));
  Rec::Take te = take(rec, *fe);
  ASSERT_EQ(te.chunks.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(te.chunks[i].raw.get(), tl.chunks[i].raw.get()) << "chunk " << i << " is shared, not copied";

  rec.append(std::string_view("d4444"));
  ASSERT_TRUE(eventually([&] { return late.calls.load() >= 1; }));
  tl = take(rec, *fl);
  EXPECT_EQ(strings(tl), (std::vector<std::string>{"d4444"}));
  rec.complete({}, true);
  tl = take(rec, *fl);
  EXPECT_EQ(tl.state, Rec::State::Complete);
  EXPECT_TRUE(tl.chunks.empty());
  loops.run(0, [&] { rec.detach(fe); });
  loops.run(1, [&] { rec.detach(fl); });
  EXPECT_FALSE(early.off_loop.load());
  EXPECT_FALSE(late.off_loop.load());
}

// After the end a recording replays: one take hands over the whole body and Complete. A finished
// error response can still be attached to but is not followable.
TEST(Recording, AttachAfterCompleteReplaysTheWholeResponse) {
  Loops loops;
  CountingReader reader(loops.loop(1));
  {
    Rec rec(1 << 20, pl::Flavour::Anthropic);
    rec.start(json_head(200, 11));
    rec.append(std::string_view("{\"a\":"));
    rec.append(std::string_view("12345}"));
    rec.complete({}, true);
    EXPECT_TRUE(rec.followable());
    auto f = rec.attach(loops.loop(1), &reader);
    ASSERT_TRUE(f);
    const Rec::Take t = take(rec, *f);
    EXPECT_EQ(t.state, Rec::State::Complete);
    EXPECT_FALSE(t.cut);
    EXPECT_EQ(strings(t), (std::vector<std::string>{"{\"a\":", "12345}"}));
    EXPECT_EQ(rec.head().content_length, 11);
    EXPECT_FALSE(rec.head().sse);
    const Rec::Take again = take(rec, *f);
    EXPECT_EQ(again.state, Rec::State::Complete);
    EXPECT_TRUE(again.chunks.empty());
    loops.run(1, [&] { rec.detach(f); });
  }
  {
    Rec rec(1 << 20, pl::Flavour::OpenAI);
    rec.start(json_head(503, 2));
    rec.append(std::string_view("{}"));
    rec.complete({}, true);
    EXPECT_FALSE(rec.followable());  // a 5xx is not served to anyone new
    EXPECT_TRUE(rec.info().replayable);
  }
  loops.sync(1);
  EXPECT_EQ(reader.calls.load(), 0);
}

// take() hands over the chunks in append order together with the state they led to: whatever a
// take reports Complete with is the whole rest of the body, and nothing comes after it.
TEST(Recording, TakeHandsOverChunksInOrderWithTheState) {
  Loops loops;
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  CountingReader reader(loops.loop(0));
  auto f = rec.attach(loops.loop(0), &reader);
  rec.start(sse_head());
  std::vector<std::string> expected;
  for (int i = 0; i < 100; ++i) {
    expected.push_back("chunk-" + std::to_string(i) + std::string(static_cast<size_t>(i % 5), '.'));
    rec.append(std::string_view(expected.back()));
  }
  rec.complete({}, false);
  Rec::Take t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Complete);
  EXPECT_EQ(strings(t), expected);
  t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Complete);
  EXPECT_TRUE(t.chunks.empty());
  const Rec::Info info = rec.info();
  EXPECT_FALSE(info.ended_normally);  // complete(…, false): a stream without its terminal event
  loops.run(0, [&] { rec.detach(f); });
}

// One notification is pending per follower at most, however many appends came meanwhile; the
// next one is posted once the follower took its inbox.
TEST(Recording, OneNotificationIsPendingPerFollowerAtMost) {
  Loops loops;
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  CountingReader reader(loops.loop(0));
  auto f = rec.attach(loops.loop(0), &reader);
  auto gate = loops.block(0);
  rec.start(sse_head());
  for (int i = 0; i < 50; ++i) rec.append(std::string_view("x"));
  gate->open();
  loops.sync(0);
  EXPECT_EQ(reader.calls.load(), 1);
  EXPECT_EQ(take(rec, *f).chunks.size(), 50u);
  rec.append(std::string_view("y"));
  rec.append(std::string_view("z"));
  ASSERT_TRUE(eventually([&] { return reader.calls.load() == 2; }));
  loops.sync(0);
  EXPECT_EQ(reader.calls.load(), 2);
  EXPECT_EQ(strings(take(rec, *f)), (std::vector<std::string>{"y", "z"}));
  loops.run(0, [&] { rec.detach(f); });
}

// A follower that detached is never called again, even by a notification already queued.
TEST(Recording, DetachedFollowerIsNeverToldAgain) {
  Loops loops;
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  CountingReader reader(loops.loop(0));
  auto f = rec.attach(loops.loop(0), &reader);
  rec.start(sse_head());
  ASSERT_TRUE(eventually([&] { return reader.calls.load() == 1; }));
  take(rec, *f);
  // The loop is busy; the append queues a notification behind the task that detaches.
  auto gate = loops.block(0, [&] { rec.detach(f); });
  rec.append(std::string_view("queued"));
  gate->open();
  loops.sync(0);
  EXPECT_EQ(reader.calls.load(), 1);
  EXPECT_EQ(rec.followers(), 0u);
  rec.append(std::string_view("more"));
  rec.complete({}, true);
  loops.sync(0);
  EXPECT_EQ(reader.calls.load(), 1);
}

// A follower whose inbox grows past backlog() is cut: its inbox is dropped and it gets nothing
// more; followers that keep taking are not affected.
TEST(Recording, FollowerFallingPastTheBacklogIsCut) {
  Loops loops;
  constexpr size_t kChunk = 64 * 1024;
  Rec rec(kChunk, pl::Flavour::OpenAI);
  EXPECT_EQ(rec.backlog(), 2u * 1024 * 1024);  // the floor
  EXPECT_EQ(Rec(4u << 20, pl::Flavour::OpenAI).backlog(), (4u << 20) + 256u * 1024);
  CountingReader ra(loops.loop(0)), rb(loops.loop(1)), rc(loops.loop(1));
  auto fa = rec.attach(loops.loop(0), &ra);  // takes after every append
  auto fb = rec.attach(loops.loop(1), &rb);  // never takes
  auto fc = rec.attach(loops.loop(1), &rc);  // takes once, just at the limit
  rec.start(sse_head());
  const size_t at_limit = rec.backlog() / kChunk;  // exactly backlog() bytes: not past it yet
  std::string body_a;
  size_t sent = 0;
  auto append_one = [&] {
    rec.append(std::string(kChunk, static_cast<char>('a' + sent % 26)));
    ++sent;
    const Rec::Take t = take(rec, *fa);
    EXPECT_FALSE(t.cut);
    for (const auto& c : t.chunks) body_a += *c.raw;
  };
  for (size_t i = 0; i < at_limit; ++i) append_one();
  Rec::Take tc = take(rec, *fc);
  EXPECT_FALSE(tc.cut);
  EXPECT_EQ(tc.chunks.size(), at_limit);
  append_one();  // fb's inbox goes past backlog()
  Rec::Take tb = take(rec, *fb);
  EXPECT_TRUE(tb.cut);
  EXPECT_TRUE(tb.chunks.empty());
  EXPECT_EQ(tb.state, Rec::State::Live);
  append_one();
  tb = take(rec, *fb);
  EXPECT_TRUE(tb.cut);
  EXPECT_TRUE(tb.chunks.empty());  // nothing reaches a cut follower any more
  tc = take(rec, *fc);
  EXPECT_FALSE(tc.cut);
  EXPECT_EQ(tc.chunks.size(), 2u);
  rec.complete({}, true);
  tb = take(rec, *fb);
  EXPECT_TRUE(tb.cut);
  EXPECT_EQ(tb.state, Rec::State::Complete);
  EXPECT_EQ(body_a.size(), sent * kChunk);
  EXPECT_EQ(rec.info().body_bytes, static_cast<int64_t>(sent * kChunk));
  loops.run(0, [&] { rec.detach(fa); });
  loops.run(1, [&] {
    rec.detach(fb);
    rec.detach(fc);
  });
}

// Past max_bytes the recording keeps nothing: not replayable, nobody can attach any more, those
// attached go on getting every chunk. want() raises the limit only before the body.
TEST(Recording, OverflowPastMaxBytesStopsAttachingNotFollowing) {
  Loops loops;
  const int64_t kept_before = Rec::kept_bytes_total();
  Rec rec(100, pl::Flavour::OpenAI);
  rec.want(50);  // never lowers it
  rec.want(150);
  CountingReader reader(loops.loop(0)), late(loops.loop(1));
  auto f = rec.attach(loops.loop(0), &reader);
  rec.start(sse_head());
  rec.append(std::string(100, 'a'));
  rec.want(1 << 20);  // too late: the body started
  EXPECT_EQ(Rec::kept_bytes_total(), kept_before + 100);
  EXPECT_TRUE(rec.followable());
  auto mid = rec.attach(loops.loop(1), &late);  // still fits: attaches with the 100 bytes
  ASSERT_TRUE(mid);
  EXPECT_EQ(take(rec, *mid).chunks.size(), 1u);
  loops.run(1, [&] { rec.detach(mid); });
  rec.append(std::string(50, 'b'));  // 150: still within want(150)
  EXPECT_TRUE(rec.followable());
  rec.append(std::string(1, 'c'));  // 151: over
  EXPECT_FALSE(rec.followable());
  EXPECT_FALSE(rec.info().replayable);
  EXPECT_EQ(Rec::kept_bytes_total(), kept_before);  // the kept bytes went at once
  EXPECT_EQ(rec.attach(loops.loop(1), &late), nullptr);
  EXPECT_EQ(rec.followers(), 1u);
  rec.append(std::string(10, 'd'));
  Rec::Take t = take(rec, *f);
  EXPECT_FALSE(t.cut);
  EXPECT_EQ(strings(t), (std::vector<std::string>{std::string(100, 'a'), std::string(50, 'b'), "c", std::string(10, 'd')}));
  rec.complete({}, true);
  t = take(rec, *f);
  EXPECT_EQ(t.state, Rec::State::Complete);
  EXPECT_FALSE(rec.followable());
  EXPECT_EQ(rec.info().body_bytes, 161);
  EXPECT_EQ(rec.attach(loops.loop(1), &late), nullptr);
  loops.run(0, [&] { rec.detach(f); });
  loops.sync(1);
  EXPECT_EQ(late.calls.load(), 0);
}

// fail(): not followable, nobody attaches, followers see Failed (with the chunks before it); a
// failure before the head leaves started() false, after it true. The kept bytes go.
TEST(Recording, FailEndsFollowingAndReplay) {
  Loops loops;
  const int64_t kept_before = Rec::kept_bytes_total();
  {
    Rec rec(1 << 20, pl::Flavour::OpenAI);
    CountingReader reader(loops.loop(0));
    auto f = rec.attach(loops.loop(0), &reader);
    rec.fail({}, {504, "upstream timed out", "", "upstream_timeout"});
    ASSERT_TRUE(eventually([&] { return reader.calls.load() == 1; }));
    EXPECT_FALSE(rec.followable());
    EXPECT_FALSE(rec.started());
    EXPECT_EQ(rec.failure().status, 504);
    EXPECT_EQ(rec.failure().message, "upstream timed out");
    EXPECT_EQ(rec.failure().code, "upstream_timeout");
    const Rec::Take t = take(rec, *f);
    EXPECT_EQ(t.state, Rec::State::Failed);
    EXPECT_TRUE(t.chunks.empty());
    CountingReader late(loops.loop(1));
    EXPECT_EQ(rec.attach(loops.loop(1), &late), nullptr);
    const Rec::Info info = rec.info();
    EXPECT_EQ(info.state, Rec::State::Failed);
    EXPECT_EQ(info.status, 0);
    EXPECT_FALSE(info.replayable);
    EXPECT_FALSE(info.ended_normally);
    EXPECT_GT(info.finished_ms, 0);
    rec.start(sse_head());  // too late
    rec.complete({}, true);
    EXPECT_EQ(rec.info().state, Rec::State::Failed);
    EXPECT_FALSE(rec.started());
    loops.run(0, [&] { rec.detach(f); });
  }
  {
    Rec rec(1 << 20, pl::Flavour::OpenAI);
    CountingReader reader(loops.loop(1));
    auto f = rec.attach(loops.loop(1), &reader);
    rec.start(sse_head());
    rec.append(std::string_view("data: 1\n\n"));
    rec.append(std::string_view("data: {\"hal"));
    EXPECT_EQ(Rec::kept_bytes_total(), kept_before + 20);
    pl::Usage usage;
    usage.output_tokens = 2;
    rec.fail(usage, {502, "upstream cut the stream"});
    EXPECT_EQ(Rec::kept_bytes_total(), kept_before);
    EXPECT_TRUE(rec.started());
    EXPECT_FALSE(rec.followable());
    EXPECT_EQ(rec.final_usage().output_tokens, 2);
    const Rec::Take t = take(rec, *f);  // what came before the failure, then the failure
    EXPECT_EQ(t.state, Rec::State::Failed);
    EXPECT_EQ(strings(t), (std::vector<std::string>{"data: 1\n\n", "data: {\"hal"}));
    EXPECT_EQ(rec.info().status, 200);
    EXPECT_EQ(rec.info().body_bytes, 20);
    loops.run(1, [&] { rec.detach(f); });
  }
}

// The leader is told on its loop when the last follower leaves a live recording; not when one of
// several leaves, not after set_leader(null) (even with the notification already queued), not
// while waiting for the head or once ended.
TEST(Recording, LeaderIsToldOnItsLoopWhenTheLastFollowerLeaves) {
  Loops loops;
  CountingLeader leader(loops.loop(0));
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  rec.set_leader(&loops.loop(0), &leader);
  CountingReader r1(loops.loop(1)), r2(loops.loop(1)), r3(loops.loop(1));
  auto f1 = rec.attach(loops.loop(1), &r1);
  auto f2 = rec.attach(loops.loop(1), &r2);
  EXPECT_EQ(rec.followers(), 2u);
  EXPECT_EQ(rec.info().followers, 2);
  rec.start(sse_head());
  loops.run(1, [&] { rec.detach(f1); });
  EXPECT_EQ(rec.followers(), 1u);
  loops.sync(0);
  EXPECT_EQ(leader.calls.load(), 0);
  loops.run(1, [&] { rec.detach(f2); });
  EXPECT_EQ(rec.followers(), 0u);
  ASSERT_TRUE(eventually([&] { return leader.calls.load() == 1; }));
  loops.run(1, [&] { rec.detach(f2); });  // twice: nothing
  loops.sync(0);
  EXPECT_EQ(leader.calls.load(), 1);
  EXPECT_FALSE(leader.off_loop.load());

  // The leader stops listening while the notification waits in its loop's queue.
  auto f3 = rec.attach(loops.loop(1), &r3);
  auto gate = loops.block(0, [&] { rec.set_leader(nullptr, nullptr); });
  loops.run(1, [&] { rec.detach(f3); });
  gate->open();
  loops.sync(0);
  EXPECT_EQ(leader.calls.load(), 1);

  // Not live: waiting for the head, or ended.
  Rec waiting(1 << 20, pl::Flavour::OpenAI);
  waiting.set_leader(&loops.loop(0), &leader);
  auto fw = waiting.attach(loops.loop(1), &r1);
  loops.run(1, [&] { waiting.detach(fw); });
  Rec ended(1 << 20, pl::Flavour::OpenAI);
  ended.set_leader(&loops.loop(0), &leader);
  auto fe = ended.attach(loops.loop(1), &r2);
  ended.start(sse_head());
  ended.complete({}, true);
  loops.run(1, [&] { ended.detach(fe); });
  loops.sync(0);
  EXPECT_EQ(leader.calls.load(), 1);
  waiting.set_leader(nullptr, nullptr);
  ended.set_leader(nullptr, nullptr);
}

// info(): the head's status and kind, the body size, the end and its time.
TEST(Recording, InfoReportsTheResponse) {
  Rec rec(1 << 20, pl::Flavour::OpenAI);
  Rec::Info i = rec.info();
  EXPECT_EQ(i.state, Rec::State::Waiting);
  EXPECT_EQ(i.status, 0);
  EXPECT_FALSE(i.sse);
  EXPECT_FALSE(i.ended_normally);
  EXPECT_TRUE(i.replayable);
  EXPECT_EQ(i.body_bytes, 0);
  EXPECT_GT(i.started_ms, 0);
  EXPECT_EQ(i.finished_ms, 0);
  EXPECT_EQ(i.followers, 0);
  rec.start(sse_head(201));
  rec.append(std::string(1000, 'x'));
  rec.append(std::vector<std::string_view>{"ab", "cd"});
  i = rec.info();
  EXPECT_EQ(i.state, Rec::State::Live);
  EXPECT_EQ(i.status, 201);
  EXPECT_TRUE(i.sse);
  EXPECT_FALSE(i.ended_normally);
  EXPECT_EQ(i.body_bytes, 1004);
  EXPECT_EQ(i.finished_ms, 0);
  pl::Usage usage;
  usage.seen = true;
  usage.input_tokens = 10;
  usage.output_tokens = 20;
  rec.complete(usage, true);
  i = rec.info();
  EXPECT_EQ(i.state, Rec::State::Complete);
  EXPECT_TRUE(i.ended_normally);
  EXPECT_TRUE(i.replayable);
  EXPECT_GE(i.finished_ms, i.started_ms);
  EXPECT_TRUE(i.usage.seen);
  EXPECT_EQ(i.usage.input_tokens, 10);
  EXPECT_EQ(i.usage.output_tokens, 20);

  Rec json(1 << 20, pl::Flavour::Anthropic);
  json.start(json_head(200, 3));
  json.append(std::string_view("{}\n"));
  json.complete({}, true);
  EXPECT_FALSE(json.info().sse);
  EXPECT_TRUE(json.info().ended_normally);
  EXPECT_EQ(json.info().body_bytes, 3);
}

// The process-wide gauges: every recording counts while alive, its kept bytes while kept.
TEST(Recording, GlobalCountersReturnToTheirStartValues) {
  Loops loops;
  const int64_t alive0 = Rec::alive_total(), kept0 = Rec::kept_bytes_total();
  {
    auto a = std::make_shared<Rec>(1 << 20, pl::Flavour::OpenAI);
    auto b = std::make_shared<Rec>(100, pl::Flavour::OpenAI);
    auto c = std::make_shared<Rec>(1 << 20, pl::Flavour::OpenAI);
    EXPECT_EQ(Rec::alive_total(), alive0 + 3);
    a->start(sse_head());
    a->append(std::string(1000, 'a'));
    b->start(sse_head());
    b->append(std::string(60, 'b'));
    c->start(sse_head());
    c->append(std::string(500, 'c'));
    EXPECT_EQ(Rec::kept_bytes_total(), kept0 + 1560);
    b->append(std::string(60, 'b'));  // overflow: b keeps nothing
    EXPECT_EQ(Rec::kept_bytes_total(), kept0 + 1500);
    c->fail({}, {502, "cut"});
    EXPECT_EQ(Rec::kept_bytes_total(), kept0 + 1000);
    // A notification still queued holds the follower's place, not the recording.
    CountingReader reader(loops.loop(0));
    auto f = a->attach(loops.loop(0), &reader);
    auto gate = loops.block(0);
    a->complete({}, true);
    a.reset();
    EXPECT_EQ(Rec::alive_total(), alive0 + 2);
    EXPECT_EQ(Rec::kept_bytes_total(), kept0);
    gate->open();
    loops.sync(0);
    EXPECT_EQ(reader.calls.load(), 1);
    f.reset();
  }
  EXPECT_EQ(Rec::alive_total(), alive0);
  EXPECT_EQ(Rec::kept_bytes_total(), kept0);
}

namespace {

// A follower on its loop that takes everything it is told about, as an exchange does.
class TakingReader final : public Rec::Reader {
public:
  TakingReader(Rec& rec, srv::Loop& loop) : rec_(rec), loop_(loop) {}
  virtual ~TakingReader() = default;
  // Loop thread.
  void attach() {
    f_ = rec_.attach(loop_, this);
    if (!f_) {
      problem = "attach refused";
      done.store(true, std::memory_order_release);
      return;
    }
    recording_ready();  // what is there already
  }
  void recording_ready() override {
    if (!loop_.ev().in_loop_thread()) problem = "called off its loop";
    if (!f_ || done.load(std::memory_order_relaxed)) return;
    rec_.take(*f_, take_);
    ++takes;
    if (take_.cut) problem = "cut";
    for (const auto& c : take_.chunks) {
      body += *c.raw;
      ++chunks;
    }
    if (take_.state == Rec::State::Complete || take_.state == Rec::State::Failed || take_.cut) {
      if (take_.state != Rec::State::Complete) problem = "ended without Complete";
      rec_.detach(f_);
      f_.reset();
      done.store(true, std::memory_order_release);
    }
  }
  // Read by the test thread once done (release/acquire).
  std::string body;
  size_t chunks = 0, takes = 0;
  std::string problem;
  std::atomic<bool> done{false};

private:
  Rec& rec_;
  srv::Loop& loop_;
  std::shared_ptr<Rec::Follower> f_;
  Rec::Take take_;
};

}  // namespace

// A leader thread appends 10k chunks (single and multi-piece) while 4 followers on 2 loops take
// them, two attached before the head and two mid-body: each gets every byte exactly once, in order.
TEST(Recording, ManyChunksFromALeaderThreadReachEveryFollowerInOrder) {
  Loops loops;
  constexpr int kChunks = 10000;
  std::string expected;
  std::vector<std::string> chunks;
  chunks.reserve(kChunks);
  for (int i = 0; i < kChunks; ++i) {
    std::string c = "<";
    c += std::to_string(i);
    c += ':';
    c.append(static_cast<size_t>(1 + (i * 7919) % 97), static_cast<char>('a' + i % 26));
    c += ">";
    chunks.push_back(c);
    expected += c;
  }
  Rec rec(expected.size() + 1, pl::Flavour::OpenAI);  // everything is kept: late followers catch up
  std::vector<std::unique_ptr<TakingReader>> readers;
  for (int i = 0; i < 4; ++i) readers.push_back(std::make_unique<TakingReader>(rec, loops.loop(static_cast<size_t>(i % 2))));
  loops.run(0, [&] { readers[0]->attach(); });
  loops.run(1, [&] { readers[1]->attach(); });
  std::thread leader([&] {
    rec.start(sse_head());
    for (int i = 0; i < kChunks; ++i) {
      const std::string& c = chunks[static_cast<size_t>(i)];
      if (i % 3 == 0 && c.size() > 4) {
        const std::string_view v(c);
        rec.append(std::vector<std::string_view>{v.substr(0, 2), v.substr(2, 2), v.substr(4)});
      } else {
        rec.append(std::string_view(c));
      }
      if (i == kChunks / 3) {
        // Attached from their loops while the appends go on.
        loops.loop(0).ev().post([&] { readers[2]->attach(); });
        loops.loop(1).ev().post([&] { readers[3]->attach(); });
      }
      if (i % 1000 == 0) std::this_thread::yield();
    }
    rec.complete({}, true);
  });
  leader.join();
  ASSERT_TRUE(eventually([&] {
    for (const auto& r : readers)
      if (!r->done.load(std::memory_order_acquire)) return false;
    return true;
  }, 15s));
  for (size_t i = 0; i < readers.size(); ++i) {
    SCOPED_TRACE("follower " + std::to_string(i));
    const TakingReader& r = *readers[i];
    EXPECT_EQ(r.problem, "");
    EXPECT_EQ(r.body.size(), expected.size());
    EXPECT_TRUE(r.body == expected);
    EXPECT_EQ(r.chunks, static_cast<size_t>(kChunks));
    EXPECT_GE(r.takes, 1u);
  }
  EXPECT_EQ(rec.followers(), 0u);
  EXPECT_EQ(rec.info().body_bytes, static_cast<int64_t>(expected.size()));
}

// ---------------------------------------------------------------------------------------------
// Follow mode of the exchange, end to end.

namespace {

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string chunk(std::string_view bytes) {
  char hex[24];
  std::snprintf(hex, sizeof hex, "%zx\r\n", bytes.size());
  return std::string(hex) + std::string(bytes) + "\r\n";
}

// A tiny upstream: each connection's request head is read, then `script(fd, head)` runs on the
// connection's thread; the connection closes when it returns.
class Upstream {
public:
  using Script = std::function<void(int fd, const std::string& head)>;
  explicit Upstream(Script script) : script_(std::move(script)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Upstream() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : conns_) t.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  int requests() const { return requests_.load(); }

private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      conns_.emplace_back([this, c] {
        std::string head;
        char buf[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
          const ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n <= 0) break;
          head.append(buf, static_cast<size_t>(n));
        }
        if (head.find("\r\n\r\n") != std::string::npos) {
          ++requests_;
          script_(c, head);
        }
        ::close(c);
      });
    }
  }

  Script script_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread acceptor_;
  std::vector<std::thread> conns_;
};

bool asked_for(const std::string& head, const std::string& request_id) {
  return head.find("\r\nX-Request-ID: " + request_id + "\r\n") != std::string::npos;
}

// Answers a request whose ctx.follow is set from the recording (as a plugin that called
// request_follow does: the ABI adapter returns Responded then).
class FollowPlugin final : public plg::Plugin {
public:
  const std::string& name() const override { return name_; }
  bool nonblocking() const override { return true; }
  plg::HookResult on_request(pl::RequestContext& ctx) override {
    return ctx.follow ? plg::HookResult::Responded : plg::HookResult::Continue;
  }

private:
  std::string name_ = "follow-test";
};

struct HarnessOptions {
  size_t max_bytes = 8u << 20;  // the leader's recording
  std::chrono::milliseconds send_timeout = 10s;
  int loops = 2;
};

// The proxy side: an engine of two loops, one pool, exchanges as Server makes them. Which loop
// takes a connection is the kernel's choice: leader and followers may share a loop or not.
class Harness final : public pl::ExchangeHost {
public:
  struct Done {
    std::string request_id;
    bool client_gone = false;
    std::string error;
    uint64_t bytes_out = 0;
    int status = 0;
    pl::Origin origin = pl::Origin::Upstream;
  };

  Harness(uint16_t upstream_port, HarnessOptions options = HarnessOptions()) : options_(options) {
    cfg::UpstreamConfig u;
    u.name = "up";
    u.base_url = "http://127.0.0.1:" + std::to_string(upstream_port);
    u.min_connections = 0;
    u.max_connections = 16;
    u.warm = false;
    u.health_interval = 0ms;
    u.read_timeout = 10'000ms;
    config_.upstreams["up"] = u;
    config_.routes.push_back({"/v1", pl::Flavour::OpenAI, "up", ""});
    config_.server.send_timeout = options.send_timeout;
    pools_.emplace("up", std::make_unique<glmp::core::upstream::Pool>(config_.upstreams["up"]));
    proxy_ = std::make_unique<pl::Proxy>(config_, pools_);
    auto chain = std::make_shared<plg::Chain>();
    chain->plugins.push_back(std::make_shared<FollowPlugin>());
    chain_ = chain;
    srv::EngineOptions eo;
    eo.loops = options.loops;
    eo.limits.send_timeout = options.send_timeout;
    eo.max_threads = 2;
    engine_ = std::make_unique<srv::Engine>(Poco::Net::SocketAddress("127.0.0.1", 0), eo,
                                            [this](srv::Loop& loop, std::unique_ptr<srv::ClientConnection> c) { dispatch(loop, std::move(c)); });
    engine_->on_loop_stop = [this](srv::Loop& loop) {
      auto& exchanges = exchanges_[loop.index()];
      std::vector<uint64_t> ids;
      for (const auto& [id, x] : exchanges) ids.push_back(id);
      for (uint64_t id : ids)
        if (auto it = exchanges.find(id); it != exchanges.end()) it->second->abort("server stopping");
      for (auto& [id, x] : exchanges) loop.ev().retire(std::move(x));
      exchanges.clear();
      pool().close_loop(loop.index());
    };
    const size_t n = engine_->loop_count();
    exchanges_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      evs_.push_back(&engine_->loop(i).ev());
      buffers_.push_back(std::make_unique<char[]>(config_.proxy.chunk_size));
    }
    pool().attach(
        n, evs_.data(),
        [this](const glmp::core::upstream::Pool::Waiter& w, std::unique_ptr<glmp::core::upstream::Connection> c) {
          auto* raw = c.release();
          const size_t li = w.loop;
          evs_[li]->post([this, w, li, raw] {
            std::unique_ptr<glmp::core::upstream::Connection> conn(raw);
            if (conn && !pool().register_on(li, *conn)) return pool().discard(std::move(conn), true);
            auto& exchanges = exchanges_[li];
            if (auto it = exchanges.find(w.id); it != exchanges.end()) return it->second->on_delivered(std::move(conn));
            if (conn) pool().keep_idle(std::move(conn));
            else pool().pass_slot();
          });
        },
        [this](size_t loop, std::function<void()> fn) { evs_[loop]->post(std::move(fn)); });
    engine_->start();
  }
  ~Harness() {
    engine_->stop();
    engine_.reset();
  }

  uint16_t port() const { return engine_->port(); }
  std::shared_ptr<pl::Recording> recording() {
    std::lock_guard lock(m_);
    return recording_;
  }
  size_t followers() {
    auto rec = recording();
    return rec ? rec->followers() : 0;
  }
  std::optional<Done> done(const std::string& request_id) {
    std::lock_guard lock(m_);
    for (const auto& d : done_)
      if (d.request_id == request_id) return d;
    return std::nullopt;
  }
  size_t done_count() {
    std::lock_guard lock(m_);
    return done_.size();
  }
  // Whether the leader exchange noticed its client left (asked on its loop; true once it ended).
  bool leader_client_gone() {
    size_t li = 0;
    uint64_t id = 0;
    {
      std::lock_guard lock(m_);
      li = leader_loop_;
      id = leader_id_;
    }
    auto answer = std::make_shared<std::promise<bool>>();
    auto fut = answer->get_future();
    evs_[li]->post([this, answer, li, id] {
      auto it = exchanges_[li].find(id);
      answer->set_value(it == exchanges_[li].end() || it->second->ctx().client_gone);
    });
    return fut.wait_for(5s) == std::future_status::ready && fut.get();
  }

  void exchange_done(pl::Exchange& x) override {
    const auto& c = x.ctx();
    std::lock_guard lock(m_);
    done_.push_back({c.request_id, c.client_gone, c.error, c.bytes_out, c.status, c.origin});
  }
  void exchange_finished(pl::Exchange& x) override {
    auto& exchanges = exchanges_[x.loop().index()];
    auto it = exchanges.find(x.id());
    if (it == exchanges.end()) return;
    x.loop().ev().retire(std::move(it->second));
    exchanges.erase(it);
  }

private:
  glmp::core::upstream::Pool& pool() { return *pools_.begin()->second; }

  void dispatch(srv::Loop& loop, std::unique_ptr<srv::ClientConnection> conn) {
    pl::RequestContext ctx;
    const std::string uri = conn->request().getURI();
    ctx.path = uri;
    ctx.method = conn->request().getMethod();
    ctx.route = &config_.routes[0];
    ctx.flavour = pl::Flavour::OpenAI;
    ctx.request_id = std::string(conn->request().headers().get("X-Request-ID", "none"));
    const uint64_t id = next_id_.fetch_add(1);
    if (uri == "/v1/lead") {
      ctx.recording = std::make_shared<pl::Recording>(options_.max_bytes, pl::Flavour::OpenAI);
      std::lock_guard lock(m_);
      recording_ = ctx.recording;
      leader_loop_ = loop.index();
      leader_id_ = id;
    } else if (uri.rfind("/v1/follow", 0) == 0 || uri == "/v1/replay") {
      auto rec = recording();
      if (!rec) {
        loop.reject(std::move(conn), 409, "nothing to follow");
        return;
      }
      pl::RequestContext::Follow f;
      f.recording = std::move(rec);
      f.origin = uri == "/v1/replay" ? pl::Origin::Cache : pl::Origin::Coalesced;
      f.fallback = uri.find("fallback") != std::string::npos;
      f.headers.emplace_back("X-Followed", "yes");
      ctx.follow = std::move(f);
      if (uri == "/v1/follow-slow") {
        // Small socket buffers: its queue and inbox, not the kernel, take what it does not read.
        const int small = 16 * 1024;
        ::setsockopt(conn->fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
      }
    }
    const size_t li = loop.index();
    auto x = std::make_unique<pl::Exchange>(id, loop, std::move(conn), *proxy_, pool(), chain_, buffers_[li].get(),
                                            config_.proxy.chunk_size, *this, std::move(ctx), false);
    pl::Exchange* raw = x.get();
    exchanges_[li].emplace(id, std::move(x));
    raw->start();
  }

  HarnessOptions options_;
  cfg::Config config_;
  pl::Pools pools_;
  std::unique_ptr<pl::Proxy> proxy_;
  std::shared_ptr<const plg::Chain> chain_;
  std::vector<std::unique_ptr<char[]>> buffers_;  // one read buffer per loop
  std::vector<srv::EventLoop*> evs_;
  // exchanges_[i]: loop i's thread only.
  std::vector<std::map<uint64_t, std::unique_ptr<pl::Exchange>>> exchanges_;
  std::unique_ptr<srv::Engine> engine_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex m_;
  std::shared_ptr<pl::Recording> recording_;
  size_t leader_loop_ = 0;
  uint64_t leader_id_ = 0;
  std::vector<Done> done_;
};

struct Reply {
  std::string head;
  std::string body;  // de-chunked
  bool chunked = false;
  bool complete = false;  // terminating chunk, or Content-Length bytes
  bool eof = false;
  std::string header(const std::string& name) const {
    const std::string key = "\r\n" + name + ": ";
    const size_t at = head.find(key);
    if (at == std::string::npos) return "";
    const size_t from = at + key.size();
    return head.substr(from, head.find("\r\n", from) - from);
  }
  int status() const { return head.size() > 12 ? std::stoi(head.substr(9, 3)) : 0; }
};

// Parses what arrived so far.
Reply parse(const std::string& raw, bool eof) {
  Reply r;
  r.eof = eof;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  r.head = raw.substr(0, end + 2);
  r.chunked = r.header("Transfer-Encoding") == "chunked";
  size_t at = end + 4;
  if (!r.chunked) {
    const std::string cl = r.header("Content-Length");
    const size_t want = cl.empty() ? 0 : std::stoul(cl);
    r.body = raw.substr(at, want);
    r.complete = !cl.empty() && r.body.size() == want;
    return r;
  }
  for (;;) {
    const size_t line = raw.find("\r\n", at);
    if (line == std::string::npos) return r;
    const size_t size = std::stoul(raw.substr(at, line - at), nullptr, 16);
    if (size == 0) {
      r.complete = raw.size() >= line + 4;
      return r;
    }
    if (raw.size() < line + 2 + size + 2) return r;
    r.body.append(raw, line + 2, size);
    at = line + 2 + size + 2;
  }
}

// A client of the proxy on its own socket.
class Client {
public:
  Client(uint16_t port, const std::string& path, const std::string& id, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    send_all(fd_, "GET " + path + " HTTP/1.1\r\nHost: proxy\r\nX-Request-ID: " + id + "\r\n\r\n");
  }
  ~Client() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // The next request on the same (kept-alive) connection; what was read so far is forgotten.
  void again(const std::string& path, const std::string& id) {
    raw_.clear();
    received_.store(0, std::memory_order_relaxed);
    send_all(fd_, "GET " + path + " HTTP/1.1\r\nHost: proxy\r\nX-Request-ID: " + id + "\r\n\r\n");
  }
  // Hangs up with a reset (SO_LINGER 0): the proxy sees the hang-up at once.
  void reset() {
    if (fd_ < 0) return;
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
  }
  // Reads until `until` holds for what arrived, the response is complete, EOF, or the timeout.
  Reply read(const std::function<bool(const Reply&)>& until = nullptr, std::chrono::milliseconds timeout = 15s) {
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      // Parsed when it may be over (parsing every read would make a big body quadratic).
      if (until || eof_ || SteadyClock::now() > deadline || may_be_complete()) {
        Reply r = parse(raw_, eof_);
        if (r.complete || eof_ || (until && until(r)) || SteadyClock::now() > deadline) return r;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) eof_ = true;
      else raw_.append(buf, static_cast<size_t>(n));
      received_.store(raw_.size(), std::memory_order_relaxed);
    }
  }
  // Bytes read so far (head and chunk framing included); readable from other threads.
  size_t received() const { return received_.load(std::memory_order_relaxed); }

private:
  bool may_be_complete() const {
    const size_t end = raw_.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    if (raw_.size() >= 5 && raw_.compare(raw_.size() - 5, 5, "0\r\n\r\n") == 0) return true;
    const size_t cl = raw_.find("\r\nContent-Length: ");
    return cl != std::string::npos && cl < end && raw_.size() >= end + 4 + std::stoul(raw_.substr(cl + 18));
  }

  int fd_ = -1;
  std::string raw_;
  std::atomic<size_t> received_{0};
  bool eof_ = false;
};

const std::string kSseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

std::string sse_event(int i, size_t pad = 40) {
  return "data: {\"id\":" + std::to_string(i) + ",\"text\":\"" +
         std::string(pad + static_cast<size_t>(i % 7), static_cast<char>('a' + i % 26)) + "\"}\n\n";
}

std::string json_reply(int status, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Starts reading on a thread: the proxy's clients are read concurrently.
std::future<Reply> read_async(Client& c) {
  return std::async(std::launch::async, [&c] { return c.read(); });
}

bool has_error_event(const std::string& body) { return body.find("data: {\"error\":") != std::string::npos; }

}  // namespace

// Followers attached mid-stream get the events so far at once, then the rest: every body is
// byte-identical to the upstream's, each with its own request id, one upstream request in all.
TEST(Follow, StreamedBodyIsIdenticalForEveryClient) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; i < 300; ++i) expected += sse_event(i);
  const std::string early = expected.substr(0, sse_event(0).size() + sse_event(1).size());
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    // The rest in pieces that do not follow event boundaries.
    for (size_t at = early.size(); at < expected.size(); at += 777) send_all(fd, chunk(expected.substr(at, 777)));
    send_all(fd, "0\r\n\r\n");
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead-1");
  ASSERT_TRUE(first_sent.wait());
  ASSERT_EQ(lead.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  Client f1(h.port(), "/v1/follow", "follow-1");
  Client f2(h.port(), "/v1/follow", "follow-2");
  Client f3(h.port(), "/v1/follow", "follow-3");
  ASSERT_TRUE(eventually([&] { return h.followers() == 3; }));
  // Attached mid-stream: the bytes so far arrive before the upstream sends another one.
  EXPECT_EQ(f1.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2), d = read_async(f3);
  const Reply replies[] = {a.get(), b.get(), c.get(), d.get()};
  const char* ids[] = {"lead-1", "follow-1", "follow-2", "follow-3"};
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(ids[i]);
    EXPECT_TRUE(replies[i].complete);
    EXPECT_EQ(replies[i].status(), 200);
    EXPECT_TRUE(replies[i].chunked);
    EXPECT_EQ(replies[i].header("Content-Type"), "text/event-stream");
    EXPECT_EQ(replies[i].header("X-Request-ID"), ids[i]);
    EXPECT_EQ(replies[i].header("X-Followed"), i == 0 ? "" : "yes");
    EXPECT_EQ(replies[i].body.size(), expected.size());
    EXPECT_TRUE(replies[i].body == expected);
    EXPECT_FALSE(has_error_event(replies[i].body));
  }
  ASSERT_TRUE(eventually([&] { return h.done_count() == 4; }));
  for (const char* id : ids) {
    const auto dn = h.done(id);
    ASSERT_TRUE(dn) << id;
    EXPECT_FALSE(dn->client_gone) << id;
    EXPECT_EQ(dn->error, "") << id;
    EXPECT_EQ(dn->status, 200) << id;
    EXPECT_EQ(dn->origin, std::string(id) == "lead-1" ? pl::Origin::Upstream : pl::Origin::Coalesced) << id;
  }
  EXPECT_EQ(up.requests(), 1);  // one upstream request for four clients
  const auto info = h.recording()->info();
  EXPECT_EQ(info.state, pl::Recording::State::Complete);
  EXPECT_TRUE(info.ended_normally == false);  // no [DONE] event in this stream
  EXPECT_EQ(info.body_bytes, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(info.followers, 0);
}

// A follower that attaches before the upstream answered waits for the head, then gets it all.
TEST(Follow, FollowerAttachedBeforeTheHeadGetsTheWholeResponse) {
  Gate asked, go;
  std::string expected;
  for (int i = 0; i < 50; ++i) expected += sse_event(i);
  expected += "data: [DONE]\n\n";
  Upstream up([&](int fd, const std::string&) {
    asked.open();
    go.wait();
    send_all(fd, kSseHead + chunk(expected) + "0\r\n\r\n");
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client f(h.port(), "/v1/follow", "early");
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Waiting);
  go.open();
  auto a = read_async(lead), b = read_async(f);
  const Reply ra = a.get(), rb = b.get();
  EXPECT_TRUE(ra.complete);
  EXPECT_TRUE(rb.complete);
  EXPECT_EQ(rb.status(), 200);
  EXPECT_EQ(rb.header("X-Request-ID"), "early");
  EXPECT_TRUE(ra.body == expected);
  EXPECT_TRUE(rb.body == expected);
  ASSERT_TRUE(eventually([&] { return h.done_count() == 2; }));
  EXPECT_TRUE(h.recording()->info().ended_normally);
}

// A Content-Length response: every client gets the same length and the same bytes.
TEST(Follow, ContentLengthBodyIsIdenticalForEveryClient) {
  Gate first_sent, go;
  std::string expected;
  for (size_t i = 0; expected.size() < 600 * 1024; ++i) expected += "{\"n\":" + std::to_string(i) + "},";
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(expected.size()) +
                     "\r\n\r\n" + expected.substr(0, 1000));
    first_sent.open();
    go.wait();
    for (size_t at = 1000; at < expected.size(); at += 5000) send_all(fd, expected.substr(at, 5000));
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  ASSERT_EQ(lead.read([](const Reply& r) { return r.body.size() >= 1000; }).body.size(), 1000u);
  Client f1(h.port(), "/v1/follow", "f1");
  Client f2(h.port(), "/v1/follow", "f2");
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2);
  for (const Reply& r : {a.get(), b.get(), c.get()}) {
    EXPECT_TRUE(r.complete);
    EXPECT_FALSE(r.chunked);
    EXPECT_EQ(r.status(), 200);
    EXPECT_EQ(r.header("Content-Length"), std::to_string(expected.size()));
    EXPECT_TRUE(r.body == expected);
  }
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  for (const char* id : {"f1", "f2"}) {
    EXPECT_EQ(h.done(id)->error, "") << id;
    EXPECT_EQ(h.done(id)->origin, pl::Origin::Coalesced) << id;
  }
}

// After the leader finished, a request answered from its recording gets it replayed whole.
TEST(Follow, FinishedRecordingIsReplayed) {
  std::string expected;
  for (int i = 0; i < 40; ++i) expected += sse_event(i);
  Upstream up([&](int fd, const std::string&) { send_all(fd, kSseHead + chunk(expected) + "0\r\n\r\n"); });
  Harness h(up.port());
  {
    Client lead(h.port(), "/v1/lead", "lead");
    const Reply r = lead.read();
    EXPECT_TRUE(r.complete);
    EXPECT_TRUE(r.body == expected);
  }
  ASSERT_TRUE(eventually([&] { return h.done("lead").has_value(); }));
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Complete);
  Client replay(h.port(), "/v1/replay", "replay");
  const Reply r = replay.read();
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(r.header("X-Request-ID"), "replay");
  EXPECT_EQ(r.header("X-Followed"), "yes");
  EXPECT_TRUE(r.body == expected);
  ASSERT_TRUE(eventually([&] { return h.done("replay").has_value(); }));
  EXPECT_EQ(h.done("replay")->origin, pl::Origin::Cache);
  EXPECT_EQ(h.done("replay")->error, "");
  // The followed answer left the connection reusable: a second request on it is answered too.
  replay.again("/v1/replay", "replay-2");
  const Reply r2 = replay.read();
  EXPECT_TRUE(r2.complete);
  EXPECT_FALSE(r2.eof);
  EXPECT_EQ(r2.header("X-Request-ID"), "replay-2");
  EXPECT_TRUE(r2.body == expected);
  EXPECT_EQ(up.requests(), 1);
}

// The leader's client leaves mid-stream: the upstream is read on and the follower gets everything.
TEST(Follow, LeaderClientLeavesFollowerFinishes) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; i < 400; ++i) expected += sse_event(i);
  const std::string early = sse_event(0);
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    for (size_t at = early.size(); at < expected.size(); at += 1024) {
      if (!send_all(fd, chunk(expected.substr(at, 1024)))) return;
      std::this_thread::sleep_for(1ms);
    }
    send_all(fd, "0\r\n\r\n");
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f(h.port(), "/v1/follow", "follower");
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  ASSERT_EQ(f.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  lead.reset();  // the leader's client hangs up
  ASSERT_TRUE(eventually([&] { return h.leader_client_gone(); }));
  go.open();
  const Reply r = f.read();
  EXPECT_TRUE(r.complete);
  EXPECT_TRUE(r.body == expected);
  EXPECT_FALSE(has_error_event(r.body));
  ASSERT_TRUE(eventually([&] { return h.done_count() == 2; }));
  EXPECT_TRUE(h.done("lead")->client_gone);
  EXPECT_FALSE(h.done("follower")->client_gone);
  EXPECT_EQ(h.done("follower")->error, "");
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Complete);
  EXPECT_EQ(up.requests(), 1);
}

// The leader's client left, then its last follower leaves too: the leader stops at once (told by
// the recording), though the upstream sends nothing more.
TEST(Follow, LastFollowerLeavingEndsAnAbandonedLeader) {
  Gate first_sent, release;
  std::atomic<bool> upstream_cut{false};
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(sse_event(0)));
    first_sent.open();
    release.wait();
    // The proxy closed its side: sending fails (at once or after a few writes).
    for (int i = 0; i < 200 && !upstream_cut; ++i) {
      if (!send_all(fd, chunk(sse_event(i)))) upstream_cut = true;
      std::this_thread::sleep_for(5ms);
    }
  });
  Harness h(up.port());
  AtExit open_gates([&] { release.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f(h.port(), "/v1/follow", "follower");
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  ASSERT_EQ(f.read([&](const Reply& r) { return !r.body.empty(); }).body, sse_event(0));
  lead.reset();
  ASSERT_TRUE(eventually([&] { return h.leader_client_gone(); }));
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(h.done("lead").has_value());  // still reading for its follower
  f.reset();
  ASSERT_TRUE(eventually([&] { return h.done_count() == 2; }, 5s));
  EXPECT_TRUE(h.done("lead")->client_gone);
  EXPECT_TRUE(h.done("follower")->client_gone);
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Failed);
  release.open();
  EXPECT_TRUE(eventually([&] { return upstream_cut.load(); }, 5s));
}

// A follower that reads nothing is cut off past the backlog (its error event queued behind what
// it has not read), while the leader's client and a reading follower get the whole response.
TEST(Follow, SlowFollowerIsCutOffOthersFinish) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; expected.size() < 4 * 1024 * 1024; ++i) expected += sse_event(i, 1000);
  const std::string early = sse_event(0, 1000);
  // The upstream keeps within 256 KiB of what the fast follower has read: a reader descheduled
  // on a loaded machine never falls past the backlog (only the one that never reads does).
  std::atomic<const Client*> pace{nullptr};
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    for (size_t at = early.size(); at < expected.size(); at += 16384) {
      const auto deadline = SteadyClock::now() + 20s;
      const Client* fast = pace.load();
      while (fast && fast->received() + 256 * 1024 < at && SteadyClock::now() < deadline)
        std::this_thread::sleep_for(1ms);
      if (!send_all(fd, chunk(expected.substr(at, 16384)))) return;
    }
    send_all(fd, "0\r\n\r\n");
  });
  HarnessOptions options;
  options.max_bytes = 64 * 1024;  // backlog(): the 2 MiB floor
  options.send_timeout = 30s;
  Harness h(up.port(), options);
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client fast(h.port(), "/v1/follow", "fast");
  pace = &fast;
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  // The slow one's socket buffers are small, so its queue and then its inbox grow.
  Client slow(h.port(), "/v1/follow-slow", "slow", 16 * 1024);
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(fast);
  const Reply ra = a.get(), rb = b.get();
  EXPECT_TRUE(ra.complete);
  EXPECT_TRUE(rb.complete);
  EXPECT_EQ(ra.body.size(), expected.size());
  EXPECT_EQ(rb.body.size(), expected.size());
  EXPECT_TRUE(ra.body == expected);
  EXPECT_TRUE(rb.body == expected);
  // Now the slow one reads: a prefix of the stream, then the error event, then the close.
  const Reply rs = slow.read();
  EXPECT_TRUE(rs.eof);
  EXPECT_FALSE(rs.complete);
  const size_t err = rs.body.find("data: {\"error\":");
  ASSERT_NE(err, std::string::npos);
  ASSERT_GE(err, 2u);
  EXPECT_EQ(rs.body.substr(err - 2, 2), "\n\n");
  EXPECT_TRUE(rs.body.compare(0, err - 2, expected, 0, err - 2) == 0);
  EXPECT_LT(err, expected.size() / 2);
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  EXPECT_NE(h.done("slow")->error.find("behind"), std::string::npos) << h.done("slow")->error;
  EXPECT_EQ(h.done("fast")->error, "");
  EXPECT_EQ(h.done("lead")->error, "");
  EXPECT_EQ(up.requests(), 1);
}

// The upstream cuts the stream mid-event: the leader's client and every follower get the
// flavour's error event, after the bytes so far, and no terminating chunk.
TEST(Follow, UpstreamCutMidBodyGivesFollowersTheErrorEvent) {
  Gate first_sent, go;
  const std::string sent = sse_event(0) + sse_event(1) + "data: {\"half";
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(sse_event(0)));
    first_sent.open();
    go.wait();
    send_all(fd, chunk(sent.substr(sse_event(0).size())));
    ::shutdown(fd, SHUT_RDWR);  // no terminating chunk
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f1(h.port(), "/v1/follow", "f1");
  Client f2(h.port(), "/v1/follow-fallback", "f2");  // past the head: no fallback any more
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  go.open();
  auto a = read_async(lead), b = read_async(f1), c = read_async(f2);
  for (const Reply& r : {a.get(), b.get(), c.get()}) {
    SCOPED_TRACE(r.header("X-Request-ID"));
    EXPECT_EQ(r.status(), 200);
    EXPECT_FALSE(r.complete);
    EXPECT_TRUE(r.eof);
    ASSERT_EQ(r.body.rfind(sent, 0), 0u) << r.body;
    // The half event is ended first, so the error arrives as an event of its own.
    EXPECT_EQ(r.body.substr(sent.size(), 2), "\n\n");
    EXPECT_TRUE(has_error_event(r.body.substr(sent.size())));
  }
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  for (const char* id : {"f1", "f2"}) {
    EXPECT_NE(h.done(id)->error, "") << id;
    EXPECT_EQ(h.done(id)->origin, pl::Origin::Coalesced) << id;
  }
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Failed);
  EXPECT_EQ(up.requests(), 1);
}

// The leader's upstream call fails before any head: a follower with the fallback flag makes its
// own upstream call; one without gets the leader's error answer.
TEST(Follow, LeaderFailingBeforeTheHead) {
  Gate asked, fail_now;
  const std::string own = "{\"own\":true}";
  Upstream up([&](int fd, const std::string& head) {
    if (asked_for(head, "lead")) {
      asked.open();
      fail_now.wait();
      return;  // closes without a byte
    }
    send_all(fd, json_reply(200, own));
  });
  Harness h(up.port());
  AtExit open_gates([&] { fail_now.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client fb(h.port(), "/v1/follow-fallback", "fb");
  Client nofb(h.port(), "/v1/follow", "nofb");
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  fail_now.open();
  auto a = read_async(lead), b = read_async(fb), c = read_async(nofb);
  const Reply ra = a.get(), rb = b.get(), rc = c.get();
  EXPECT_EQ(ra.status(), 502);
  EXPECT_NE(ra.body.find("closed the connection without responding"), std::string::npos) << ra.body;
  // With the fallback: its own upstream call, its own answer.
  EXPECT_EQ(rb.status(), 200);
  EXPECT_TRUE(rb.complete);
  EXPECT_EQ(rb.body, own);
  EXPECT_EQ(rb.header("X-Followed"), "");
  // Without: the leader's answer.
  EXPECT_EQ(rc.status(), 502);
  EXPECT_EQ(rc.header("X-Request-ID"), "nofb");
  EXPECT_NE(rc.body.find("closed the connection without responding"), std::string::npos) << rc.body;
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  EXPECT_EQ(h.done("fb")->origin, pl::Origin::Upstream);
  EXPECT_EQ(h.done("fb")->error, "");
  EXPECT_EQ(h.done("nofb")->status, 502);
  EXPECT_NE(h.done("nofb")->error, "");
  EXPECT_EQ(up.requests(), 2);  // the leader's and the fallback's
  EXPECT_FALSE(h.recording()->started());
}

// The leader's upstream answers 503: the follower with the fallback flag calls the upstream on its
// own; one without gets the recorded 503 as it came.
TEST(Follow, LeaderGettingAServerErrorHead) {
  Gate asked, answer;
  const std::string busy = "{\"error\":{\"message\":\"overloaded\"}}";
  const std::string own = "{\"own\":1}";
  Upstream up([&](int fd, const std::string& head) {
    if (asked_for(head, "lead")) {
      asked.open();
      answer.wait();
      send_all(fd, json_reply(503, busy));
      return;
    }
    send_all(fd, json_reply(200, own));
  });
  Harness h(up.port());
  AtExit open_gates([&] { answer.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client fb(h.port(), "/v1/follow-fallback", "fb");
  Client nofb(h.port(), "/v1/follow", "nofb");
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  answer.open();
  auto a = read_async(lead), b = read_async(fb), c = read_async(nofb);
  const Reply ra = a.get(), rb = b.get(), rc = c.get();
  EXPECT_EQ(ra.status(), 503);
  EXPECT_EQ(ra.body, busy);
  EXPECT_EQ(rb.status(), 200);
  EXPECT_EQ(rb.body, own);
  EXPECT_EQ(rc.status(), 503);
  EXPECT_TRUE(rc.complete);
  EXPECT_EQ(rc.body, busy);
  EXPECT_EQ(rc.header("X-Followed"), "yes");
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  EXPECT_EQ(h.done("fb")->origin, pl::Origin::Upstream);
  EXPECT_EQ(h.done("nofb")->origin, pl::Origin::Coalesced);
  EXPECT_EQ(up.requests(), 2);
  EXPECT_FALSE(h.recording()->followable());
}

// Once the recording outgrew its limit, a request told to follow it anyway (the plugin looked
// before) gets a 502, or with the fallback flag its own upstream answer; those attached before
// get everything.
TEST(Follow, OverflowedRecordingCannotBeFollowedAnyMore) {
  Gate first_sent, go, more_sent;
  std::string expected;
  for (int i = 0; expected.size() < 100 * 1024; ++i) expected += sse_event(i, 200);
  const std::string own = "{\"own\":2}";
  Upstream up([&](int fd, const std::string& head) {
    if (!asked_for(head, "lead")) {
      send_all(fd, json_reply(200, own));
      return;
    }
    send_all(fd, kSseHead + chunk(expected.substr(0, 1000)));
    first_sent.open();
    go.wait();
    send_all(fd, chunk(expected.substr(1000)));
    more_sent.open();
    std::this_thread::sleep_for(300ms);
    send_all(fd, "0\r\n\r\n");
  });
  HarnessOptions options;
  options.max_bytes = 32 * 1024;
  Harness h(up.port(), options);
  AtExit open_gates([&] { go.open(); });  // after the harness: opened before the upstream joins its scripts
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f1(h.port(), "/v1/follow", "f1");
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  go.open();
  ASSERT_TRUE(more_sent.wait());
  ASSERT_GE(lead.read([&](const Reply& r) { return r.body.size() >= expected.size(); }).body.size(), expected.size());
  EXPECT_FALSE(h.recording()->followable());
  Client late(h.port(), "/v1/follow", "late");
  Client late_fb(h.port(), "/v1/follow-fallback", "late-fb");
  const Reply rl = late.read(), rlf = late_fb.read();
  EXPECT_EQ(rl.status(), 502);
  EXPECT_NE(rl.body.find("can no longer be followed"), std::string::npos) << rl.body;
  EXPECT_EQ(rlf.status(), 200);
  EXPECT_EQ(rlf.body, own);
  const Reply r1 = f1.read();
  EXPECT_TRUE(r1.complete);
  EXPECT_TRUE(r1.body == expected);
  EXPECT_EQ(lead.read().body.size(), expected.size());
  ASSERT_TRUE(eventually([&] { return h.done_count() == 4; }));
  EXPECT_EQ(h.done("f1")->error, "");
  EXPECT_EQ(up.requests(), 2);
}

// A follower whose client reads nothing for a while (small socket buffers) but stays within the
// backlog: what it cannot take waits in its inbox, and once its client reads it gets everything.
TEST(Follow, SlowReaderWithinTheBacklogGetsEverything) {
  std::string expected;
  for (int i = 0; expected.size() < 3 * 1024 * 1024; ++i) expected += sse_event(i, 500);
  Gate asked, go;
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead);
    asked.open();
    go.wait();
    for (size_t at = 0; at < expected.size(); at += 16384)
      if (!send_all(fd, chunk(expected.substr(at, 16384)))) return;
    send_all(fd, "0\r\n\r\n");
  });
  Harness h(up.port());  // 8 MiB recording: backlog() is over 8 MiB
  AtExit open_gates([&] { go.open(); });
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client slow(h.port(), "/v1/follow-slow", "slow", 16 * 1024);
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  go.open();  // the body starts once it follows
  const Reply ra = lead.read();
  EXPECT_TRUE(ra.complete);
  EXPECT_TRUE(ra.body == expected);
  // The leader is done; the follower has most of the body still to take.
  ASSERT_TRUE(eventually([&] { return h.done("lead").has_value(); }));
  const Reply rs = slow.read();
  EXPECT_TRUE(rs.complete);
  EXPECT_EQ(rs.body.size(), expected.size());
  EXPECT_TRUE(rs.body == expected);
  EXPECT_FALSE(has_error_event(rs.body));
  ASSERT_TRUE(eventually([&] { return h.done("slow").has_value(); }));
  EXPECT_EQ(h.done("slow")->error, "");
  EXPECT_EQ(h.done("slow")->origin, pl::Origin::Coalesced);
}

// A follower's client leaving mid-stream disturbs nobody: the leader and the other follower finish.
TEST(Follow, FollowerLeavingDisturbsNobody) {
  Gate first_sent, go;
  std::string expected;
  for (int i = 0; i < 200; ++i) expected += sse_event(i);
  const std::string early = sse_event(0);
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(early));
    first_sent.open();
    go.wait();
    send_all(fd, chunk(expected.substr(early.size())) + "0\r\n\r\n");
  });
  Harness h(up.port());
  AtExit open_gates([&] { go.open(); });
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client stays(h.port(), "/v1/follow", "stays");
  Client leaves(h.port(), "/v1/follow", "leaves");
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  ASSERT_EQ(leaves.read([&](const Reply& r) { return r.body.size() >= early.size(); }).body, early);
  leaves.reset();
  ASSERT_TRUE(eventually([&] { return h.followers() == 1; }));
  ASSERT_TRUE(eventually([&] { return h.done("leaves").has_value(); }));
  EXPECT_TRUE(h.done("leaves")->client_gone);
  go.open();
  auto a = read_async(lead), b = read_async(stays);
  for (const Reply& r : {a.get(), b.get()}) {
    EXPECT_TRUE(r.complete);
    EXPECT_TRUE(r.body == expected);
  }
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  EXPECT_EQ(h.done("stays")->error, "");
  EXPECT_FALSE(h.done("lead")->client_gone);
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Complete);
}

// The leader's client leaves before the head: its upstream call is cancelled (no one relays it),
// and its followers fall back to their own call or get the cancellation as a 502.
TEST(Follow, LeaderClientLeavingBeforeTheHead) {
  Gate asked, answer;
  const std::string own = "{\"own\":3}";
  Upstream up([&](int fd, const std::string& head) {
    if (asked_for(head, "lead")) {
      asked.open();
      answer.wait();
      send_all(fd, json_reply(200, "{\"lead\":true}"));
      return;
    }
    send_all(fd, json_reply(200, own));
  });
  Harness h(up.port());
  AtExit open_gates([&] { answer.open(); });
  Client lead(h.port(), "/v1/lead", "lead");
  ASSERT_TRUE(asked.wait());
  Client fb(h.port(), "/v1/follow-fallback", "fb");
  Client nofb(h.port(), "/v1/follow", "nofb");
  ASSERT_TRUE(eventually([&] { return h.followers() == 2; }));
  lead.reset();
  auto b = read_async(fb), c = read_async(nofb);
  const Reply rb = b.get(), rc = c.get();
  EXPECT_EQ(rb.status(), 200);
  EXPECT_EQ(rb.body, own);
  EXPECT_EQ(rc.status(), 502);
  EXPECT_NE(rc.body.find("cancelled"), std::string::npos) << rc.body;
  ASSERT_TRUE(eventually([&] { return h.done_count() == 3; }));
  EXPECT_TRUE(h.done("lead")->client_gone);
  EXPECT_EQ(h.done("fb")->origin, pl::Origin::Upstream);
  EXPECT_EQ(h.recording()->info().state, pl::Recording::State::Failed);
  EXPECT_EQ(up.requests(), 2);
}

// The server stops while a leader relays to a follower (possibly on the other loop): both
// exchanges end (the follower with the stop as its error), nothing hangs or outlives the engine.
TEST(Follow, ServerStoppingMidStreamEndsLeaderAndFollowers) {
  Gate first_sent, release;
  Upstream up([&](int fd, const std::string&) {
    send_all(fd, kSseHead + chunk(sse_event(0)));
    first_sent.open();
    release.wait();
  });
  auto h = std::make_unique<Harness>(up.port());
  AtExit open_gates([&] { release.open(); });
  Client lead(h->port(), "/v1/lead", "lead");
  ASSERT_TRUE(first_sent.wait());
  Client f1(h->port(), "/v1/follow", "f1");
  Client f2(h->port(), "/v1/follow", "f2");
  ASSERT_TRUE(eventually([&] { return h->followers() == 2; }));
  ASSERT_EQ(f1.read([&](const Reply& r) { return !r.body.empty(); }).body, sse_event(0));
  const auto rec = h->recording();
  const auto started = SteadyClock::now();
  h.reset();
  EXPECT_LT(SteadyClock::now() - started, 5s);
  for (Client* c : {&lead, &f1, &f2}) {
    const Reply r = c->read();
    EXPECT_TRUE(r.eof);
    EXPECT_FALSE(r.complete);
    EXPECT_EQ(r.body.rfind(sse_event(0), 0), 0u) << r.body;
    EXPECT_TRUE(has_error_event(r.body)) << r.body;  // a stream cut by the stop says so
  }
  EXPECT_EQ(rec->followers(), 0u);
  EXPECT_EQ(rec->info().state, pl::Recording::State::Failed);
}
