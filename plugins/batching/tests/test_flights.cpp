// Unit tests of the coalescing logic (flights.hpp): settings, sizes, which requests may coalesce,
// temperature zero in every JSON spelling, and the flight table over fake recordings (a host table
// holding only recording_retain / recording_release / recording_info, so glmp::Recording's real
// reference counting is exercised). The plugin through the real proxy is for integration tests.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "flights.hpp"

namespace {

using namespace glmp::plugins::batching;
using Kind = FlightTable::Decision::Kind;
using State = glmp::RecordingInfo::State;

// --- fake recordings ---------------------------------------------------------------------------

struct FakeRecording {
  std::atomic<int> refs{1};
  std::atomic<int> state{GLMP_RECORDING_WAITING};
  std::atomic<bool> replayable{true};
  std::atomic<std::int64_t> body_bytes{0};
};

FakeRecording* fake(glmp_recording_host_ptr* h) { return reinterpret_cast<FakeRecording*>(h); }

const glmp_host_api& fake_api() {
  static const glmp_host_api api = [] {
    glmp_host_api a{};
    a.struct_size = sizeof(glmp_host_api);
    a.abi_major = GLMP_ABI_MAJOR;
    a.abi_minor = GLMP_ABI_MINOR;
    a.recording_retain = [](glmp_recording_host_ptr* h) { fake(h)->refs.fetch_add(1); };
    a.recording_release = [](glmp_recording_host_ptr* h) { fake(h)->refs.fetch_sub(1); };
    a.recording_info = [](glmp_recording_host_ptr* h, glmp_recording_info* out) {
      out->state = fake(h)->state.load();
      out->replayable = fake(h)->replayable.load() ? 1 : 0;
      out->body_bytes = fake(h)->body_bytes.load();
      out->status = out->state == GLMP_RECORDING_WAITING ? 0 : 200;
    };
    return a;
  }();
  return api;
}

// One reference to `f` (the table's own copies retain and release more).
glmp::Recording handle(FakeRecording& f) {
  f.refs.fetch_add(1);
  return glmp::Recording(&fake_api(), reinterpret_cast<glmp_recording_host_ptr*>(&f));
}

// record() for admit: hands out `f` and counts the calls.
struct Recorder {
  FakeRecording* f = nullptr;  // nullptr: the request cannot be recorded
  int calls = 0;
  std::function<glmp::Recording()> fn() {
    return [this] {
      ++calls;
      return f != nullptr ? handle(*f) : glmp::Recording();
    };
  }
};

glmp::Settings settings(std::string_view json) { return glmp::Settings(json); }

// --- settings ----------------------------------------------------------------------------------

TEST(Settings, Defaults) {
  const Config c = parse_config(settings("{}"));
  EXPECT_EQ(c.mode, Mode::Deterministic);
  EXPECT_EQ(c.wait.count(), 0);
  EXPECT_EQ(c.max_followers, 10);
  EXPECT_EQ(c.max_waiting, 1000);
  EXPECT_FALSE(c.charge_followers);
  EXPECT_FALSE(c.global_scope);
  EXPECT_TRUE(c.exclude_fields.empty());
  EXPECT_EQ(c.paths, (std::vector<std::string>{"/v1/chat/completions", "/v1/completions", "/v1/messages"}));
  EXPECT_EQ(c.max_bytes, 1024u * 1024u);
}

TEST(Settings, Everything) {
  const Config c = parse_config(settings(R"({"mode":"all","wait":"50ms","max_followers":3,"max_waiting":7,
      "charge_followers":true,"scope":"global","exclude_fields":["user","metadata"],"paths":["/v1/messages"],
      "max_bytes":"256KiB"})"));
  EXPECT_EQ(c.mode, Mode::All);
  EXPECT_EQ(c.wait.count(), 50);
  EXPECT_EQ(c.max_followers, 3);
  EXPECT_EQ(c.max_waiting, 7);
  EXPECT_TRUE(c.charge_followers);
  EXPECT_TRUE(c.global_scope);
  EXPECT_EQ(c.exclude_fields, (std::vector<std::string>{"user", "metadata"}));
  EXPECT_EQ(c.paths, (std::vector<std::string>{"/v1/messages"}));
  EXPECT_EQ(c.max_bytes, 256u * 1024u);
}

TEST(Settings, WaitAsMillisecondsLikeBatchWindowMs) {
  EXPECT_EQ(parse_config(settings(R"({"wait":50})")).wait.count(), 50);
  EXPECT_EQ(parse_config(settings(R"({"wait":"10s"})")).wait.count(), 10'000);
  EXPECT_EQ(parse_config(settings(R"({"max_bytes":4096})")).max_bytes, 4096u);
  EXPECT_EQ(parse_config(settings(R"({"scope":"key"})")).global_scope, false);
}

TEST(Settings, Refused) {
  for (const char* bad : {
           R"({"window":"50ms"})",             // unknown key (a typo of wait)
           R"({"BATCH_MAX_SIZE":10})",         // old variable names are not settings
           R"({"mode":"sometimes"})",
           R"({"mode":0})",
           R"({"wait":"11s"})",                // the core defers at most 10 s
           R"({"wait":"fast"})",
           R"({"wait":-1})",
           R"({"max_followers":0})",
           R"({"max_followers":1.5})",
           R"({"max_waiting":0})",
           R"({"charge_followers":"yes"})",
           R"({"scope":"tenant"})",
           R"({"exclude_fields":"user"})",
           R"({"exclude_fields":[""]})",
           R"({"exclude_fields":[1]})",
           R"({"paths":[]})",
           R"({"paths":["v1/messages"]})",
           R"({"max_bytes":"1XB"})",
           R"({"max_bytes":0})",
           R"({"max_bytes":"2GiB"})",
           R"({"max_bytes":-5})",
           R"({"max_bytes":true})",
       }) {
    EXPECT_THROW(parse_config(settings(bad)), glmp::SettingsError) << bad;
  }
}

TEST(Settings, UnknownKeyMessageNamesTheAllowedOnes) {
  try {
    parse_config(settings(R"({"max_size":3})"));
    FAIL();
  } catch (const glmp::SettingsError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("max_size"), std::string::npos) << what;
    EXPECT_NE(what.find("max_followers"), std::string::npos) << what;
  }
}

// --- which requests coalesce ---------------------------------------------------------------------

TEST(Temperature, ZeroInEveryJsonSpelling) {
  for (const char* zero : {"0", "-0", "0.0", "0.000", "-0.0", "0e5", "0E5", "0e+5", "0e-5", "0.0e10", "-0E-0", " 0 "})
    EXPECT_TRUE(is_json_zero(zero)) << zero;
}

TEST(Temperature, AnythingElseIsNotZero) {
  for (const char* other : {"", "1", "0.1", "0.0001", "1e-9", "-0.5", "\"0\"", "null", "false", "[0]", "{}", "00",
                            "0.", ".0", "0e", "0e+", "+0", "0x0", "0 0", "-", "01", "0.0a", "1e0"})
    EXPECT_FALSE(is_json_zero(other)) << other;
}

TEST(Eligible, DeterministicNeedsTemperatureZero) {
  const Config c;
  EXPECT_TRUE(eligible(c, "POST", "/v1/chat/completions", "0"));
  EXPECT_TRUE(eligible(c, "POST", "/v1/messages", "0.0"));
  EXPECT_TRUE(eligible(c, "POST", "/v1/completions", "-0"));
  EXPECT_FALSE(eligible(c, "POST", "/v1/chat/completions", std::nullopt));  // absent does not count
  EXPECT_FALSE(eligible(c, "POST", "/v1/chat/completions", "0.7"));
  EXPECT_FALSE(eligible(c, "POST", "/v1/chat/completions", "\"0\""));
}

TEST(Eligible, OnlyPostOnListedPaths) {
  const Config c;
  EXPECT_FALSE(eligible(c, "GET", "/v1/chat/completions", "0"));
  EXPECT_FALSE(eligible(c, "PUT", "/v1/messages", "0"));
  EXPECT_FALSE(eligible(c, "POST", "/v1/messages/count_tokens", "0"));
  EXPECT_FALSE(eligible(c, "POST", "/v1/chat/completions/", "0"));  // exact paths
  EXPECT_FALSE(eligible(c, "POST", "/v1/models", "0"));
  Config custom;
  custom.paths = {"/custom"};
  EXPECT_TRUE(eligible(custom, "POST", "/custom", "0"));
  EXPECT_FALSE(eligible(custom, "POST", "/v1/messages", "0"));
}

TEST(Eligible, AllModeIgnoresTemperature) {
  Config c;
  c.mode = Mode::All;
  EXPECT_TRUE(eligible(c, "POST", "/v1/chat/completions", std::nullopt));
  EXPECT_TRUE(eligible(c, "POST", "/v1/chat/completions", "1.2"));
  EXPECT_FALSE(eligible(c, "GET", "/v1/chat/completions", std::nullopt));
}

TEST(Followable, WaitingOrLiveAndReplayable) {
  glmp::RecordingInfo i;
  i.replayable = true;
  i.state = State::Waiting;
  EXPECT_TRUE(followable(i));
  i.state = State::Live;
  EXPECT_TRUE(followable(i));
  i.state = State::Complete;
  EXPECT_FALSE(followable(i));  // a finished response is the cache's business
  i.state = State::Failed;
  EXPECT_FALSE(followable(i));
  i.state = State::Live;
  i.replayable = false;  // past max_bytes: late joiners cannot catch up
  EXPECT_FALSE(followable(i));
}

// --- the flight table --------------------------------------------------------------------------

TEST(FlightTable, FirstLeadsThenOthersFollow) {
  FlightTable t({10, 1000});
  FakeRecording rec;
  Recorder r{&rec};
  const auto lead = t.admit("k", r.fn());
  ASSERT_EQ(lead.kind, Kind::Lead);
  EXPECT_EQ(r.calls, 1);
  EXPECT_NE(lead.token, 0u);
  EXPECT_EQ(t.current("k"), lead.token);

  Recorder r2{&rec};
  const auto f = t.admit("k", r2.fn());
  ASSERT_EQ(f.kind, Kind::Follow);
  EXPECT_EQ(r2.calls, 0);  // a follower is never recorded
  EXPECT_EQ(f.token, lead.token);
  EXPECT_TRUE(f.recording);
  EXPECT_EQ(fake(f.recording.handle()), &rec);

  const Stats s = t.stats();
  EXPECT_EQ(s.flights, 1);
  EXPECT_EQ(s.flights_active, 1);
  EXPECT_EQ(s.followers, 1);
  EXPECT_EQ(s.followers_active, 1);
}

TEST(FlightTable, DifferentKeysNeverShare) {
  FlightTable t({10, 1000});
  FakeRecording a, b;
  Recorder ra{&a}, rb{&b};
  const auto la = t.admit("tenant-a", ra.fn());
  const auto lb = t.admit("tenant-b", rb.fn());
  EXPECT_EQ(la.kind, Kind::Lead);
  EXPECT_EQ(lb.kind, Kind::Lead);
  EXPECT_NE(la.token, lb.token);
  EXPECT_EQ(t.stats().flights_active, 2);
}

TEST(FlightTable, UnrecordableRequestGoesAloneWithoutFallback) {
  FlightTable t({10, 1000});
  Recorder none{nullptr};
  const auto d = t.admit("k", none.fn());
  EXPECT_EQ(d.kind, Kind::Alone);
  EXPECT_FALSE(d.fallback);
  EXPECT_EQ(t.current("k"), 0u);
  EXPECT_EQ(t.stats().flights, 0);
}

TEST(FlightTable, MaxFollowersPerFlight) {
  FlightTable t({2, 1000});
  FakeRecording rec;
  Recorder r{&rec};
  ASSERT_EQ(t.admit("k", r.fn()).kind, Kind::Lead);
  EXPECT_EQ(t.admit("k", r.fn()).kind, Kind::Follow);
  EXPECT_EQ(t.admit("k", r.fn()).kind, Kind::Follow);
  const auto over = t.admit("k", r.fn());
  EXPECT_EQ(over.kind, Kind::Alone);
  ASSERT_TRUE(over.fallback);
  EXPECT_EQ(*over.fallback, Fallback::MaxFollowers);
  EXPECT_EQ(r.calls, 1);  // the one over the limit is not recorded either: it simply goes upstream
  // The count is per flight's life: a follower finishing does not reopen it.
  t.finish_follower();
  EXPECT_EQ(t.admit("k", r.fn()).kind, Kind::Alone);
  const Stats s = t.stats();
  EXPECT_EQ(s.fallbacks[static_cast<std::size_t>(Fallback::MaxFollowers)], 2);
  EXPECT_EQ(s.followers, 2);
  EXPECT_EQ(s.followers_active, 1);
}

TEST(FlightTable, MaxWaitingAcrossFlights) {
  FlightTable t({10, 3});
  FakeRecording a, b;
  Recorder ra{&a}, rb{&b};
  ASSERT_EQ(t.admit("a", ra.fn()).kind, Kind::Lead);
  ASSERT_EQ(t.admit("b", rb.fn()).kind, Kind::Lead);
  EXPECT_EQ(t.admit("a", ra.fn()).kind, Kind::Follow);
  EXPECT_EQ(t.admit("a", ra.fn()).kind, Kind::Follow);
  EXPECT_EQ(t.admit("b", rb.fn()).kind, Kind::Follow);
  const auto over = t.admit("b", rb.fn());
  EXPECT_EQ(over.kind, Kind::Alone);
  ASSERT_TRUE(over.fallback);
  EXPECT_EQ(*over.fallback, Fallback::MaxWaiting);
  // A follower that completes frees a place.
  t.finish_follower();
  EXPECT_EQ(t.admit("b", rb.fn()).kind, Kind::Follow);
  EXPECT_EQ(t.stats().fallbacks[static_cast<std::size_t>(Fallback::MaxWaiting)], 1);
}

TEST(FlightTable, LeadersDoNotCountAsWaiting) {
  FlightTable t({10, 1});
  FakeRecording a, b, c;
  Recorder ra{&a}, rb{&b}, rc{&c};
  EXPECT_EQ(t.admit("a", ra.fn()).kind, Kind::Lead);
  EXPECT_EQ(t.admit("b", rb.fn()).kind, Kind::Lead);
  EXPECT_EQ(t.admit("c", rc.fn()).kind, Kind::Lead);
  EXPECT_EQ(t.admit("a", ra.fn()).kind, Kind::Follow);
  EXPECT_EQ(t.admit("b", rb.fn()).kind, Kind::Alone);
}

TEST(FlightTable, UnfollowableFlightIsReplacedByANewLeader) {
  FlightTable t({10, 1000});
  FakeRecording old_rec, new_rec;
  Recorder r_old{&old_rec}, r_new{&new_rec};
  const auto first = t.admit("k", r_old.fn());
  ASSERT_EQ(first.kind, Kind::Lead);
  for (int state : {GLMP_RECORDING_COMPLETE, GLMP_RECORDING_FAILED}) {
    FlightTable t2({10, 1000});
    FakeRecording x;
    Recorder rx{&x};
    ASSERT_EQ(t2.admit("k", rx.fn()).kind, Kind::Lead);
    x.state = state;
    EXPECT_EQ(t2.admit("k", rx.fn()).kind, Kind::Lead) << state;
  }
  old_rec.state = GLMP_RECORDING_LIVE;
  old_rec.replayable = false;  // past max_bytes
  const auto second = t.admit("k", r_new.fn());
  ASSERT_EQ(second.kind, Kind::Lead);
  EXPECT_NE(second.token, first.token);
  EXPECT_EQ(t.current("k"), second.token);
  EXPECT_EQ(t.stats().flights_active, 2);  // the old one stays until its leader completes

  // The old leader completing must not remove the newer flight under the same key.
  auto done = t.finish_leader(first.token);
  EXPECT_TRUE(done.found);
  EXPECT_EQ(t.current("k"), second.token);
  EXPECT_EQ(t.admit("k", r_new.fn()).kind, Kind::Follow);
}

TEST(FlightTable, LeaderCompletionRemovesTheFlightAndReportsFollowers) {
  FlightTable t({10, 1000});
  FakeRecording rec;
  Recorder r{&rec};
  const auto lead = t.admit("k", r.fn());
  t.admit("k", r.fn());
  t.admit("k", r.fn());
  rec.body_bytes = 1234;
  auto done = t.finish_leader(lead.token);
  EXPECT_TRUE(done.found);
  EXPECT_EQ(done.followers, 2);
  ASSERT_TRUE(done.recording);
  EXPECT_EQ(done.recording.info().body_bytes, 1234);
  EXPECT_EQ(t.current("k"), 0u);
  EXPECT_EQ(t.stats().flights_active, 0);
  EXPECT_EQ(t.stats().followers_active, 2);  // followers complete on their own
  EXPECT_FALSE(t.finish_leader(lead.token).found);  // once only
  EXPECT_FALSE(t.finish_leader(9999).found);
  // The next identical request leads a new flight.
  EXPECT_EQ(t.admit("k", r.fn()).kind, Kind::Lead);
}

TEST(FlightTable, FailedFollowIsUndoneAndTheRequestLeads) {
  FlightTable t({1, 1000});
  FakeRecording old_rec, new_rec;
  Recorder r_old{&old_rec}, r_new{&new_rec};
  const auto lead = t.admit("k", r_old.fn());
  const auto f = t.admit("k", r_new.fn());
  ASSERT_EQ(f.kind, Kind::Follow);
  EXPECT_EQ(t.stats().followers_active, 1);
  // follow() said no (the recording failed in between): retry, abandoning that flight.
  const auto retry = t.admit("k", r_new.fn(), f.token);
  ASSERT_EQ(retry.kind, Kind::Lead);
  EXPECT_EQ(r_new.calls, 1);
  EXPECT_NE(retry.token, lead.token);
  const Stats s = t.stats();
  EXPECT_EQ(s.followers, 0);
  EXPECT_EQ(s.followers_active, 0);
  EXPECT_EQ(s.flights, 2);
  auto done = t.finish_leader(lead.token);
  EXPECT_EQ(done.followers, 0);
  EXPECT_EQ(t.current("k"), retry.token);
}

TEST(FlightTable, AbandonDetachesTheFlight) {
  FlightTable t({10, 1000});
  FakeRecording rec;
  Recorder r{&rec};
  const auto lead = t.admit("k", r.fn());
  const auto f = t.admit("k", r.fn());
  t.abandon(f.token);
  EXPECT_EQ(t.current("k"), 0u);
  EXPECT_EQ(t.stats().followers_active, 0);
  EXPECT_EQ(t.stats().flights_active, 1);
  EXPECT_TRUE(t.finish_leader(lead.token).found);
}

TEST(FlightTable, RecordingsAreReleased) {
  FakeRecording rec;
  {
    FlightTable t({10, 1000});
    Recorder r{&rec};
    const auto lead = t.admit("k", r.fn());
    EXPECT_EQ(rec.refs.load(), 2);  // ours + the table's
    {
      const auto f = t.admit("k", r.fn());
      EXPECT_EQ(rec.refs.load(), 3);  // + the decision's copy
    }
    EXPECT_EQ(rec.refs.load(), 2);
    { auto done = t.finish_leader(lead.token); }
    EXPECT_EQ(rec.refs.load(), 1);
    t.admit("k", r.fn());  // a new flight, left in the table
    EXPECT_EQ(rec.refs.load(), 2);
  }
  EXPECT_EQ(rec.refs.load(), 1);  // the table's destruction releases what it held
}

TEST(FlightTable, FallbackCounter) {
  FlightTable t({10, 1000});
  t.count_fallback(Fallback::LeaderFailed);
  t.count_fallback(Fallback::LeaderFailed);
  EXPECT_EQ(t.stats().fallbacks[static_cast<std::size_t>(Fallback::LeaderFailed)], 2);
}

TEST(FlightTable, ConcurrentIdenticalRequestsMakeOneLeader) {
  constexpr int kThreads = 16;
  constexpr int kPerThread = 50;
  FlightTable t({kThreads * kPerThread, kThreads * kPerThread});
  FakeRecording rec;
  std::atomic<int> leads{0}, follows{0}, records{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < kPerThread; ++j) {
        const auto d = t.admit("same", [&] {
          records.fetch_add(1);
          return handle(rec);
        });
        if (d.kind == Kind::Lead) leads.fetch_add(1);
        if (d.kind == Kind::Follow) follows.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(leads.load(), 1);
  EXPECT_EQ(records.load(), 1);
  EXPECT_EQ(follows.load(), kThreads * kPerThread - 1);
  EXPECT_EQ(t.stats().followers_active, kThreads * kPerThread - 1);
}

TEST(FlightTable, ConcurrentLimitsHold) {
  FlightTable t({5, 1000});
  FakeRecording rec;
  Recorder r{&rec};
  ASSERT_EQ(t.admit("k", r.fn()).kind, Kind::Lead);
  std::atomic<int> follows{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      for (int j = 0; j < 10; ++j)
        if (t.admit("k", [] { return glmp::Recording(); }).kind == Kind::Follow) follows.fetch_add(1);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(follows.load(), 5);
  EXPECT_EQ(t.stats().fallbacks[static_cast<std::size_t>(Fallback::MaxFollowers)], 75);
}

// --- admin JSON ----------------------------------------------------------------------------------

TEST(AdminStats, Shape) {
  Config c;
  c.wait = std::chrono::milliseconds(50);
  Stats s;
  s.flights_active = 1;
  s.followers_active = 2;
  s.flights = 3;
  s.followers = 4;
  s.fallbacks = {5, 6, 7};
  EXPECT_EQ(stats_json(c, s).dump(),
            R"({"mode":"deterministic","wait_ms":50,"max_followers":10,"max_waiting":1000,"flights_active":1,)"
            R"("followers_active":2,"flights":3,"followers":4,)"
            R"("fallbacks":{"max_followers":5,"max_waiting":6,"leader_failed":7}})");
}

}  // namespace
