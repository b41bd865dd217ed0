// The built cache.so through the SDK's fake host, with test fakes of the ABI 1.5 recording
// functions (recording_fakes.hpp): which requests are looked up, the X-Cache-Status / Age headers,
// Cache-Control directives (and that they never go upstream), tenant isolation, what is stored,
// hits without charge, tokens saved, the memory bound, the admin routes, the metrics, and that the
// plugin gives back every recording reference it took. The real core's recordings are exercised
// by the integration tests.
#include <gtest/gtest.h>

#include <glmproxy/fake_host.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "recording_fakes.hpp"

namespace {

using cache_test::FakeRecording;
using cache_test::Recordings;
using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using Json = nlohmann::json;

const std::string kBody = R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi"}],"temperature":0})";

class CachePlugin : public ::testing::Test {
protected:
  PluginLibrary lib{CACHE_SO};
  FakeHost host;
  std::unique_ptr<PluginInstance> cache;

  void SetUp() override {
    Recordings::instance().reset();
    Recordings::install(host);
  }
  void TearDown() override {
    cache.reset();
    EXPECT_EQ(Recordings::instance().outstanding_refs(), 0) << "the plugin kept recording references";
  }

  void start(const std::string& settings = "{}") {
    cache = std::make_unique<PluginInstance>(lib.descriptor(), host, settings);
  }

  static FakeRequest request(const std::string& key_id = "key_alice", const std::string& body = kBody) {
    FakeRequest r;
    r.id = Recordings::instance().next_id();
    r.body = body;
    r.model = "glm-4.7";
    if (!key_id.empty()) r.attributes["auth.key_id"] = key_id;
    return r;
  }

  // A miss that goes upstream and completes with a 200 of `bytes` (stored unless told otherwise).
  FakeRecording* miss(FakeRequest& r, std::int64_t bytes = 500) {
    EXPECT_EQ(cache->on_request(r), GLMP_CONTINUE);
    EXPECT_EQ(r.response_header("X-Cache-Status"), "MISS");
    FakeRecording* rec = Recordings::instance().state(r).recorded;
    if (rec != nullptr) rec->complete(bytes);
    cache->on_complete(r);
    return rec;
  }

  Json stats() {
    FakeRequest r;
    r.method = "GET";
    r.path = "/admin/cache";
    EXPECT_TRUE(cache->call_route(r));
    EXPECT_EQ(r.respond_status, 200) << r.respond_body;
    return Json::parse(r.respond_body, nullptr, false);
  }

  FakeRequest del(const std::string& query = "") {
    FakeRequest r;
    r.method = "DELETE";
    r.path = "/admin/cache";
    r.query = query;
    EXPECT_TRUE(cache->call_route(r));
    return r;
  }

  double metric(const std::string& name, const glmp::testing::Labels& labels = {}) const {
    const auto m = host.metric(name, labels);
    return m ? m->value : -1;
  }
};

TEST_F(CachePlugin, Descriptor) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  EXPECT_EQ(d->abi_minor, GLMP_ABI_MINOR);
  EXPECT_NE(d->on_request, nullptr);
  EXPECT_NE(d->on_complete, nullptr);
  EXPECT_EQ(d->on_response_body, nullptr);
  EXPECT_EQ(d->flags & GLMP_PLUGIN_NONBLOCKING, GLMP_PLUGIN_NONBLOCKING);
}

TEST_F(CachePlugin, RefusesAHostWithoutRecordings) {
  host.mutable_api().request_follow = nullptr;
  EXPECT_THROW(start(), std::runtime_error);
  EXPECT_NE(glmp::testing::refusal(lib.descriptor(), "{}").find("ABI 1.5"), std::string::npos);  // a plain FakeHost
}

TEST_F(CachePlugin, RefusesBadSettings) {
  EXPECT_THROW(start(R"({"ttl":"5 minutes"})"), std::runtime_error);
  EXPECT_THROW(start(R"({"size":1})"), std::runtime_error);
}

TEST_F(CachePlugin, OnlyPostsToCacheablePaths) {
  start();
  FakeRequest get = request();
  get.method = "GET";
  get.headers.push_back({"Cache-Control", "no-cache"});
  get.client_headers.push_back({"Cache-Control", "no-cache"});
  FakeRequest other = request();
  other.path = "/v1/models";
  for (FakeRequest* r : {&get, &other}) {
    EXPECT_EQ(cache->on_request(*r), GLMP_CONTINUE);
    EXPECT_FALSE(r->response_header("X-Cache-Status"));
    EXPECT_FALSE(r->attribute("cache.pending"));
    EXPECT_EQ(Recordings::instance().state(*r).recorded, nullptr);
    cache->on_complete(*r);
  }
  EXPECT_TRUE(get.header("Cache-Control"));  // untouched off cacheable routes
  EXPECT_EQ(stats()["misses"], 0);
}

TEST_F(CachePlugin, MissThenHit) {
  start();
  FakeRequest first = request();
  FakeRecording* rec = miss(first, 700);
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->max_bytes, 1024u * 1024u);  // max_entry_bytes
  EXPECT_TRUE(first.attribute("cache.pending"));

  FakeRequest second = request();
  EXPECT_EQ(cache->on_request(second), GLMP_RESPONDED);
  const auto& s = Recordings::instance().state(second);
  EXPECT_EQ(s.followed, rec);
  EXPECT_EQ(s.origin, GLMP_ORIGIN_CACHE);
  EXPECT_EQ(s.charge, 0);  // charge_hits = false
  EXPECT_EQ(second.response_header("X-Cache-Status"), "HIT");
  EXPECT_EQ(second.response_header("Age"), "0");
  EXPECT_FALSE(second.attribute("cache.pending"));
  second.usage.seen = 1;
  second.usage.input_tokens = 12;
  second.usage.output_tokens = 30;
  cache->on_complete(second);

  FakeRequest third = request();
  EXPECT_EQ(cache->on_request(third), GLMP_RESPONDED);
  third.usage.seen = 1;
  third.usage.input_tokens = 12;
  third.usage.output_tokens = 30;
  third.usage.total_tokens = 45;  // OpenAI's total wins when given
  cache->on_complete(third);

  const Json j = stats();
  EXPECT_EQ(j["entries"], 1);
  EXPECT_EQ(j["bytes"], 700 + 1024);
  EXPECT_EQ(j["hits"], 2);
  EXPECT_EQ(j["misses"], 1);
  EXPECT_EQ(j["stored"], 1);
  EXPECT_EQ(j["tokens_saved"], 42 + 45);
  EXPECT_NEAR(j["hit_ratio"].get<double>(), 2.0 / 3.0, 1e-9);
  EXPECT_EQ(j["scope"], "key");
  EXPECT_EQ(j["ttl_ms"], 300'000);
  EXPECT_EQ(j["max_entries"], 1000);
  EXPECT_EQ(metric("glmp_cache_lookups_total", {{"result", "hit"}}), 2);
  EXPECT_EQ(metric("glmp_cache_lookups_total", {{"result", "miss"}}), 1);
  EXPECT_EQ(metric("glmp_cache_stored_total"), 1);
  EXPECT_EQ(metric("glmp_cache_entries"), 1);
  EXPECT_EQ(metric("glmp_cache_bytes"), 1724);
  EXPECT_EQ(metric("glmp_cache_tokens_saved_total"), 87);
}

TEST_F(CachePlugin, ChargeHits) {
  start(R"({"charge_hits":true})");
  FakeRequest first = request();
  miss(first);
  FakeRequest hit = request();
  EXPECT_EQ(cache->on_request(hit), GLMP_RESPONDED);
  EXPECT_EQ(Recordings::instance().state(hit).charge, 1);
  cache->on_complete(hit);
}

TEST_F(CachePlugin, TenantsNeverShareUnlessGlobal) {
  start();
  FakeRequest alice = request("key_alice");
  miss(alice);
  FakeRequest bob = request("key_bob");
  miss(bob);  // same body, other key: a miss
  EXPECT_EQ(stats()["entries"], 2);

  cache.reset();
  start(R"({"scope":"global"})");
  FakeRequest a = request("key_alice");
  miss(a);
  FakeRequest b = request("key_bob");
  EXPECT_EQ(cache->on_request(b), GLMP_RESPONDED);
  cache->on_complete(b);
  FakeRequest anonymous = request("");
  EXPECT_EQ(cache->on_request(anonymous), GLMP_RESPONDED);
  cache->on_complete(anonymous);
}

TEST_F(CachePlugin, EveryParameterCountsButNotFormatting) {
  start(R"({"exclude_fields":["user"]})");
  FakeRequest base = request();
  miss(base);
  for (const char* body : {R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi"}],"temperature":0.5})",
                           R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true})",
                           R"({"model":"glm-4.7","messages":[{"role":"user","content":"hi"}]})"}) {
    FakeRequest r = request("key_alice", body);
    EXPECT_EQ(cache->on_request(r), GLMP_CONTINUE) << body;
    EXPECT_EQ(r.response_header("X-Cache-Status"), "MISS") << body;
    cache->on_complete(r);
  }
  FakeRequest other_model = request();
  other_model.model = "glm-4.5";  // the model sent upstream (e.g. set by auth)
  EXPECT_EQ(cache->on_request(other_model), GLMP_CONTINUE);
  cache->on_complete(other_model);
  FakeRequest anthropic = request();
  anthropic.path = "/v1/messages";
  anthropic.flavour = GLMP_FLAVOUR_ANTHROPIC;
  EXPECT_EQ(cache->on_request(anthropic), GLMP_CONTINUE);
  cache->on_complete(anthropic);

  // Key order, whitespace and an excluded field do not matter.
  FakeRequest same = request("key_alice", R"({ "temperature": 0, "user": "u1",
      "messages": [ {"content": "hi", "role": "user"} ], "model": "glm-4.7" })");
  EXPECT_EQ(cache->on_request(same), GLMP_RESPONDED);
  cache->on_complete(same);
}

TEST_F(CachePlugin, Bypass) {
  start();
  FakeRequest no_key = request("");
  EXPECT_EQ(cache->on_request(no_key), GLMP_CONTINUE);
  EXPECT_EQ(no_key.response_header("X-Cache-Status"), "BYPASS");
  cache->on_complete(no_key);
  FakeRequest not_json = request("key_alice", "{oops");
  EXPECT_EQ(cache->on_request(not_json), GLMP_CONTINUE);
  EXPECT_EQ(not_json.response_header("X-Cache-Status"), "BYPASS");
  EXPECT_EQ(Recordings::instance().state(not_json).recorded, nullptr);
  cache->on_complete(not_json);
  const Json j = stats();
  EXPECT_EQ(j["bypasses"]["no_key_id"], 1);
  EXPECT_EQ(j["bypasses"]["not_json"], 1);
  EXPECT_EQ(j["misses"], 0);
  EXPECT_EQ(metric("glmp_cache_lookups_total", {{"result", "bypass"}}), 2);
  EXPECT_EQ(metric("glmp_cache_bypass_total", {{"reason", "not_json"}}), 1);
  EXPECT_EQ(metric("glmp_cache_bypass_total", {{"reason", "no_key_id"}}), 1);
}

TEST_F(CachePlugin, CacheControlDirectives) {
  start();
  FakeRequest first = request();
  FakeRecording* original = miss(first);

  // no-cache: no lookup, a new recording that replaces the entry; the header does not go upstream.
  FakeRequest refresh = request();
  refresh.headers.push_back({"Cache-Control", "no-cache"});
  refresh.client_headers.push_back({"Cache-Control", "No-Cache"});
  FakeRecording* fresh = miss(refresh);
  ASSERT_NE(fresh, nullptr);
  EXPECT_NE(fresh, original);
  EXPECT_FALSE(refresh.header("Cache-Control"));
  FakeRequest after = request();
  EXPECT_EQ(cache->on_request(after), GLMP_RESPONDED);
  EXPECT_EQ(Recordings::instance().state(after).followed, fresh);
  cache->on_complete(after);

  // no-store: a miss that records nothing.
  FakeRequest no_store = request("key_alice", R"({"other":1})");
  no_store.headers.push_back({"Cache-Control", "no-store"});
  no_store.client_headers.push_back({"Cache-Control", "no-store"});
  EXPECT_EQ(cache->on_request(no_store), GLMP_CONTINUE);
  EXPECT_EQ(no_store.response_header("X-Cache-Status"), "MISS");
  EXPECT_EQ(Recordings::instance().state(no_store).recorded, nullptr);
  EXPECT_FALSE(no_store.header("Cache-Control"));
  cache->on_complete(no_store);

  // max-age=0: nothing is young enough; it is a miss (and refreshes the entry).
  FakeRequest max_age = request();
  max_age.client_headers.push_back({"cache-control", "max-age=0"});
  miss(max_age);
  // max-age=60 accepts the entry that just finished; a second header value counts too.
  FakeRequest young = request();
  young.client_headers.push_back({"Cache-Control", "private"});
  young.client_headers.push_back({"Cache-Control", "max-age=60"});
  EXPECT_EQ(cache->on_request(young), GLMP_RESPONDED);
  cache->on_complete(young);

  const Json j = stats();
  EXPECT_EQ(j["not_stored"]["no_store"], 1);
  EXPECT_EQ(j["entries"], 1);
  EXPECT_EQ(j["stored"], 3);
}

TEST_F(CachePlugin, OnlyCompleteNormal200sAreStored) {
  start(R"({"max_entry_bytes":"1KiB"})");
  auto finish = [&](const std::string& body, auto&& edit) {
    FakeRequest r = request("key_alice", body);
    EXPECT_EQ(cache->on_request(r), GLMP_CONTINUE);
    FakeRecording* rec = Recordings::instance().state(r).recorded;
    EXPECT_NE(rec, nullptr);
    if (rec != nullptr) {
      rec->complete(100);
      edit(*rec);
    }
    cache->on_complete(r);
  };
  finish(R"({"n":1})", [](FakeRecording& r) { r.info.status = 500; });
  finish(R"({"n":2})", [](FakeRecording& r) { r.info.ended_normally = 0; });
  finish(R"({"n":3})", [](FakeRecording& r) { r.info.state = GLMP_RECORDING_FAILED; });
  finish(R"({"n":4})", [](FakeRecording& r) { r.info.replayable = 0; });
  finish(R"({"n":5})", [](FakeRecording& r) { r.info.body_bytes = 1025; });
  finish(R"({"n":6})", [](FakeRecording& r) { r.info.status = 201; });
  const Json j = stats();
  EXPECT_EQ(j["entries"], 0);
  EXPECT_EQ(j["not_stored"]["status"], 2);
  EXPECT_EQ(j["not_stored"]["incomplete"], 1);
  EXPECT_EQ(j["not_stored"]["failed"], 1);
  EXPECT_EQ(j["not_stored"]["too_large"], 2);
  EXPECT_EQ(metric("glmp_cache_not_stored_total", {{"reason", "status"}}), 2);
  // None of them is replayed.
  FakeRequest again = request("key_alice", R"({"n":1})");
  EXPECT_EQ(cache->on_request(again), GLMP_CONTINUE);
  cache->on_complete(again);
}

TEST_F(CachePlugin, AnEntryThatCannotBeFollowedIsDropped) {
  start();
  FakeRequest first = request();
  FakeRecording* rec = miss(first);
  ASSERT_NE(rec, nullptr);
  rec->info.replayable = 0;  // as if the core could no longer replay it
  FakeRequest second = request();
  EXPECT_EQ(cache->on_request(second), GLMP_CONTINUE);
  EXPECT_EQ(second.response_header("X-Cache-Status"), "MISS");
  EXPECT_NE(Recordings::instance().state(second).recorded, nullptr);
  cache->on_complete(second);  // never completed: state WAITING -> not stored
  const Json j = stats();
  EXPECT_EQ(j["entries"], 0);
  EXPECT_EQ(j["hits"], 0);
  EXPECT_EQ(j["misses"], 2);
}

TEST_F(CachePlugin, AResponseFromElsewhereIsNotStored) {
  start();
  FakeRequest r = request();
  EXPECT_EQ(cache->on_request(r), GLMP_CONTINUE);
  Recordings::instance().state(r).recorded->complete(100);
  Recordings::instance().state(r).origin = GLMP_ORIGIN_COALESCED;  // a later plugin made it follow a leader
  cache->on_complete(r);
  EXPECT_EQ(stats()["not_stored"]["not_upstream"], 1);
  EXPECT_EQ(stats()["entries"], 0);
}

TEST_F(CachePlugin, MemoryStaysWithinMaxBytes) {
  start(R"({"max_bytes":"8KiB","max_entry_bytes":"4KiB","max_entries":100})");
  for (int i = 0; i < 40; ++i) {
    FakeRequest r = request("key_alice", R"({"i":)" + std::to_string(i) + "}");
    miss(r, 1000 + i * 50);
    const Json j = stats();
    ASSERT_LE(j["bytes"].get<std::int64_t>(), 8 * 1024);
  }
  const Json j = stats();
  EXPECT_GT(j["evictions"].get<int>(), 30);
  EXPECT_EQ(metric("glmp_cache_evictions_total", {{"reason", "size"}}), j["evictions"].get<double>());
  EXPECT_EQ(metric("glmp_cache_bytes"), j["bytes"].get<double>());
  // The most recent one is still served.
  FakeRequest last = request("key_alice", R"({"i":39})");
  EXPECT_EQ(cache->on_request(last), GLMP_RESPONDED);
  cache->on_complete(last);
}

TEST_F(CachePlugin, AdminDelete) {
  start();
  auto put = [&](const std::string& key_id, const std::string& model, int n) {
    FakeRequest r = request(key_id, R"({"n":)" + std::to_string(n) + "}");
    r.model = model;
    miss(r);
  };
  put("alice", "glm-4.7", 1);
  put("alice", "glm-4.5", 2);
  put("bob", "glm-4.7", 3);
  put("bob", "glm-4.5", 4);
  put("carol", "glm-4.7", 5);

  FakeRequest bad = del("keyid=alice");
  EXPECT_EQ(bad.respond_status, 400);
  EXPECT_EQ(del("key_id=").respond_status, 400);
  EXPECT_EQ(stats()["entries"], 5);

  FakeRequest both = del("key_id=alice&model=glm-4.7");
  EXPECT_EQ(both.respond_status, 200);
  EXPECT_EQ(Json::parse(both.respond_body)["deleted"], 1);
  EXPECT_EQ(Json::parse(del("key_id=bob").respond_body)["deleted"], 2);
  EXPECT_EQ(Json::parse(del("model=glm%2D4.7").respond_body)["deleted"], 1);  // percent-decoded
  EXPECT_EQ(Json::parse(del().respond_body)["deleted"], 1);
  EXPECT_EQ(stats()["entries"], 0);
  EXPECT_EQ(stats()["deleted"], 5);
  EXPECT_EQ(metric("glmp_cache_evictions_total", {{"reason", "admin"}}), 5);
  EXPECT_EQ(metric("glmp_cache_entries"), 0);
  EXPECT_EQ(metric("glmp_cache_bytes"), 0);
}

TEST_F(CachePlugin, AdminRoutesNeedTheAdminToken) {
  start();
  int found = 0;
  for (const auto& route : host.routes) {
    if (route.path != "/admin/cache") continue;
    ++found;
    EXPECT_EQ(route.access, GLMP_ACCESS_ADMIN) << route.method;
  }
  EXPECT_EQ(found, 2);
}

TEST_F(CachePlugin, ANewInstanceStartsEmptyAndGaugesFollow) {
  start();
  FakeRequest r = request();
  miss(r);
  EXPECT_EQ(metric("glmp_cache_entries"), 1);
  cache.reset();  // a reload retires the old instance (its entries go with it)
  EXPECT_EQ(metric("glmp_cache_entries"), 0);
  EXPECT_EQ(metric("glmp_cache_bytes"), 0);
  start();
  FakeRequest again = request();
  EXPECT_EQ(cache->on_request(again), GLMP_CONTINUE);
  EXPECT_EQ(again.response_header("X-Cache-Status"), "MISS");
  cache->on_complete(again);
}

}  // namespace
