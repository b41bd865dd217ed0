// What the dashboard reads from the registry (metrics_view.hpp), from hand-made samples as
// metrics_collect hands them out: the pools grouped by upstream, the process and stream gauges,
// the tokens per (model, flavour) sorted by tokens, auth's key cache, the response cache, the
// redis store's record cache, coalescing only when batching's own families exist, and sections
// left out when their families are absent.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "metrics_view.hpp"

namespace {

using glmp::MetricKind;
using glmp::MetricSample;
using namespace glmp::plugins::dashboard;

MetricSample sample(const std::string& family, std::vector<std::pair<std::string, std::string>> labels, double value,
                    MetricKind kind = MetricKind::Gauge) {
  MetricSample s;
  s.family = family;
  s.name = family;
  s.kind = kind;
  s.labels = std::move(labels);
  s.value = value;
  return s;
}

MetricSample counter(const std::string& family, std::vector<std::pair<std::string, std::string>> labels, double value) {
  return sample(family, std::move(labels), value, MetricKind::Counter);
}

MetricSample pool(const std::string& upstream, const std::string& figure, double value) {
  return sample("glmp_upstream_pool", {{"upstream", upstream}, {"figure", figure}}, value);
}

MetricSample tokens(const std::string& direction, const std::string& flavour, const std::string& model, double value) {
  return counter("glmp_tokens_total", {{"direction", direction}, {"flavour", flavour}, {"model", model}}, value);
}

const CacheView* find_cache(const MetricsView& v, const std::string& name) {
  for (const auto& c : v.caches)
    if (c.name == name) return &c;
  return nullptr;
}

double extra(const CacheView& c, const std::string& key) {
  const auto it = c.extra.find(key);
  return it == c.extra.end() ? -1 : it->second;
}

TEST(MetricsView, NothingFromNoSamples) {
  const MetricsView v = read_metrics({});
  EXPECT_TRUE(v.pools.empty());
  EXPECT_TRUE(v.caches.empty());
  EXPECT_TRUE(v.models.empty());
  EXPECT_FALSE(v.coalescing.has_value());
  EXPECT_EQ(v.in_flight, -1);
  EXPECT_EQ(v.streams, -1);
  EXPECT_EQ(v.rss_bytes, -1);
  EXPECT_EQ(v.threads, -1);
  EXPECT_EQ(v.open_fds, -1);
}

TEST(MetricsView, PoolsGroupedByUpstreamWithTheirFigures) {
  const MetricsView v = read_metrics({
      pool("openai", "size", 4), pool("anthropic", "size", 1), pool("openai", "idle", 3), pool("openai", "in_use", 1),
      pool("anthropic", "in_use", 1), pool("openai", "max", 32), pool("openai", "healthy", 1),
      pool("anthropic", "healthy", 0), pool("openai", "created", 7), pool("openai", "timeouts", 2),
      sample("glmp_requests_in_flight", {}, 5),  // interleaved with other families
      pool("openai", "waiting", 0), pool("anthropic", "waiting", 2),
  });
  ASSERT_EQ(v.pools.size(), 2u);
  EXPECT_EQ(v.pools[0].name, "anthropic");
  EXPECT_EQ(v.pools[1].name, "openai");
  const PoolView& o = v.pools[1];
  EXPECT_EQ(o.figure("size"), 4);
  EXPECT_EQ(o.figure("idle"), 3);
  EXPECT_EQ(o.figure("in_use"), 1);
  EXPECT_EQ(o.figure("max"), 32);
  EXPECT_EQ(o.figure("healthy"), 1);
  EXPECT_EQ(o.figure("created"), 7);
  EXPECT_EQ(o.figure("timeouts"), 2);
  EXPECT_EQ(o.figure("waiting"), 0);
  EXPECT_EQ(o.figure("reused"), 0) << "absent figures read 0";
  const PoolView& a = v.pools[0];
  EXPECT_EQ(a.figure("size"), 1);
  EXPECT_EQ(a.figure("healthy"), 0);
  EXPECT_EQ(a.figure("waiting"), 2);
  EXPECT_EQ(a.figures.size(), 4u);
  EXPECT_EQ(v.in_flight, 5);
}

TEST(MetricsView, ProcessAndStreamGauges) {
  const MetricsView v = read_metrics({
      sample("glmp_requests_in_flight", {}, 3), sample("glmp_active_streams", {}, 2),
      sample("glmp_process_resident_memory_bytes", {}, 50e6), sample("glmp_process_threads", {}, 17),
      sample("glmp_process_open_fds", {}, 42), sample("glmp_recordings", {}, 9),
  });
  EXPECT_EQ(v.in_flight, 3);
  EXPECT_EQ(v.streams, 2);
  EXPECT_EQ(v.rss_bytes, 50e6);
  EXPECT_EQ(v.threads, 17);
  EXPECT_EQ(v.open_fds, 42);
  EXPECT_TRUE(v.caches.empty());
  EXPECT_TRUE(v.pools.empty());
}

TEST(MetricsView, ModelsSummedPerModelAndFlavourSortedByTokens) {
  const MetricsView v = read_metrics({
      tokens("in", "openai", "glm-4.7", 10), tokens("out", "openai", "glm-4.7", 20),
      tokens("in", "anthropic", "glm-4.7", 100), tokens("out", "anthropic", "glm-4.7", 5),
      tokens("in", "openai", "glm-4.5-air", 1), tokens("out", "openai", "glm-4.5-air", 1),
      tokens("out", "none", "", 0),
  });
  ASSERT_EQ(v.models.size(), 4u);
  EXPECT_EQ(v.models[0].model, "glm-4.7");
  EXPECT_EQ(v.models[0].flavour, "anthropic");
  EXPECT_EQ(v.models[0].tokens_in, 100);
  EXPECT_EQ(v.models[0].tokens_out, 5);
  EXPECT_EQ(v.models[1].model, "glm-4.7");
  EXPECT_EQ(v.models[1].flavour, "openai");
  EXPECT_EQ(v.models[1].tokens_in, 10);
  EXPECT_EQ(v.models[1].tokens_out, 20);
  EXPECT_EQ(v.models[2].model, "glm-4.5-air");
  EXPECT_EQ(v.models[2].tokens_in, 1);
  EXPECT_EQ(v.models[2].tokens_out, 1);
  EXPECT_EQ(v.models[3].tokens_in + v.models[3].tokens_out, 0);
  for (std::size_t i = 1; i < v.models.size(); ++i)
    EXPECT_GE(v.models[i - 1].tokens_in + v.models[i - 1].tokens_out, v.models[i].tokens_in + v.models[i].tokens_out);
}

TEST(MetricsView, AuthKeyCacheFromItsLookups) {
  const MetricsView v = read_metrics({
      counter("glmp_auth_lookups_total", {{"result", "cache_hit"}}, 7),
      counter("glmp_auth_lookups_total", {{"result", "store"}}, 3),
  });
  ASSERT_EQ(v.caches.size(), 1u);
  const CacheView& c = v.caches[0];
  EXPECT_EQ(c.name, "api_keys");
  EXPECT_EQ(c.plugin, "auth");
  EXPECT_EQ(c.hits, 7);
  EXPECT_EQ(c.misses, 3);
  EXPECT_TRUE(c.extra.empty());
}

TEST(MetricsView, ResponseCacheFromItsFamilies) {
  const MetricsView v = read_metrics({
      counter("glmp_cache_lookups_total", {{"result", "hit"}}, 4),
      counter("glmp_cache_lookups_total", {{"result", "miss"}}, 6),
      counter("glmp_cache_lookups_total", {{"result", "bypass"}}, 2),
      sample("glmp_cache_entries", {}, 3),
      sample("glmp_cache_bytes", {}, 1000),
      counter("glmp_cache_evictions_total", {{"reason", "size"}}, 1),
      counter("glmp_cache_evictions_total", {{"reason", "ttl"}}, 2),
      counter("glmp_cache_evictions_total", {{"reason", "admin"}}, 4),
      counter("glmp_cache_stored_total", {}, 5),
      counter("glmp_cache_tokens_saved_total", {}, 87),
  });
  const CacheView* c = find_cache(v, "responses");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->plugin, "cache");
  EXPECT_EQ(c->hits, 4);
  EXPECT_EQ(c->misses, 6);
  EXPECT_EQ(extra(*c, "entries"), 3);
  EXPECT_EQ(extra(*c, "bytes"), 1000);
  EXPECT_EQ(extra(*c, "evictions"), 7) << "summed over the reasons";
  EXPECT_EQ(extra(*c, "stored"), 5);
  EXPECT_EQ(extra(*c, "tokensSaved"), 87);
  EXPECT_EQ(find_cache(v, "api_keys"), nullptr);
  EXPECT_EQ(find_cache(v, "store_records"), nullptr);
}

TEST(MetricsView, StoreRecordCacheOnlyForRedis) {
  const MetricsView sqlite = read_metrics({
      counter("glmp_store_cache_total", {{"backend", "sqlite"}, {"result", "hit"}}, 9),
      counter("glmp_store_cache_total", {{"backend", "sqlite"}, {"result", "miss"}}, 1),
  });
  EXPECT_EQ(find_cache(sqlite, "store_records"), nullptr) << "only the redis backend caches records";
  const MetricsView redis = read_metrics({
      counter("glmp_store_cache_total", {{"backend", "redis"}, {"result", "hit"}}, 9),
      counter("glmp_store_cache_total", {{"backend", "redis"}, {"result", "miss"}}, 1),
  });
  const CacheView* c = find_cache(redis, "store_records");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->plugin, "core");
  EXPECT_EQ(c->hits, 9);
  EXPECT_EQ(c->misses, 1);
}

TEST(MetricsView, CachesInAFixedOrderOnlyWhenPresent) {
  const MetricsView v = read_metrics({
      counter("glmp_store_cache_total", {{"backend", "redis"}, {"result", "hit"}}, 1),
      counter("glmp_cache_lookups_total", {{"result", "hit"}}, 1),
      counter("glmp_auth_lookups_total", {{"result", "store"}}, 1),
  });
  ASSERT_EQ(v.caches.size(), 3u);
  EXPECT_EQ(v.caches[0].name, "api_keys");
  EXPECT_EQ(v.caches[1].name, "responses");
  EXPECT_EQ(v.caches[2].name, "store_records");
}

TEST(MetricsView, CoalescingOnlyWhenBatchingFamiliesExist) {
  // The core's counter alone (always registered) does not mean batching is loaded.
  const MetricsView core_only = read_metrics({
      counter("glmp_recorded_responses_total", {{"origin", "coalesced"}}, 5),
      counter("glmp_recorded_responses_total", {{"origin", "cache"}}, 2),
  });
  EXPECT_FALSE(core_only.coalescing.has_value());

  const MetricsView v = read_metrics({
      counter("glmp_recorded_responses_total", {{"origin", "cache"}}, 2),
      counter("glmp_recorded_responses_total", {{"origin", "coalesced"}}, 5),
      counter("glmp_batching_flights_total", {}, 2),
      counter("glmp_batching_followers_total", {}, 5),
      counter("glmp_batching_fallbacks_total", {{"reason", "full"}}, 1),
      counter("glmp_batching_fallbacks_total", {{"reason", "late"}}, 2),
      counter("glmp_batching_bytes_shared_total", {}, 100),
      sample("glmp_batching_flights_active", {}, 1),
      sample("glmp_batching_followers_active", {}, 3),
  });
  ASSERT_TRUE(v.coalescing.has_value());
  EXPECT_EQ(v.coalescing->coalesced_requests, 5);
  EXPECT_EQ(v.coalescing->flights, 2);
  EXPECT_EQ(v.coalescing->followers, 5);
  EXPECT_EQ(v.coalescing->fallbacks, 3);
  EXPECT_EQ(v.coalescing->bytes_shared, 100);
  EXPECT_EQ(v.coalescing->active_flights, 1);

  // Batching's families before the core's counter: still read.
  const MetricsView reordered = read_metrics({
      counter("glmp_batching_flights_total", {}, 1),
      counter("glmp_recorded_responses_total", {{"origin", "coalesced"}}, 4),
  });
  ASSERT_TRUE(reordered.coalescing.has_value());
  EXPECT_EQ(reordered.coalescing->coalesced_requests, 4);
  EXPECT_EQ(reordered.coalescing->flights, 1);
}

TEST(MetricsView, HistogramSamplesAndUnknownFamiliesAreIgnored) {
  MetricSample bucket = sample("glmp_request_duration_seconds", {{"flavour", "openai"}, {"le", "0.5"}}, 3,
                               MetricKind::Histogram);
  bucket.name = "glmp_request_duration_seconds_bucket";
  MetricSample count = sample("glmp_request_duration_seconds", {{"flavour", "openai"}}, 3, MetricKind::Histogram);
  count.name = "glmp_request_duration_seconds_count";
  const MetricsView v = read_metrics({bucket, count, counter("glmp_demo_total", {}, 1), counter("other_total", {}, 1)});
  EXPECT_TRUE(v.pools.empty());
  EXPECT_TRUE(v.caches.empty());
  EXPECT_TRUE(v.models.empty());
  EXPECT_FALSE(v.coalescing.has_value());
  EXPECT_EQ(v.in_flight, -1);
}

}  // namespace
