// Plugin metrics (host API metric_new/add/set/observe): validation, one handle per name+labels
// (so values survive reloads), kind clashes, and the exposition.
#include <sstream>

#include <gtest/gtest.h>

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "metrics/plugin_metrics.hpp"
#include "plugins/native_plugin.hpp"  // host_api()

namespace glmp::core::metrics {
namespace {

class PluginMetricsTest : public ::testing::Test {
protected:
  std::string text() {
    std::ostringstream os;
    prometheus::TextSerializer().Serialize(os, registry_.Collect());
    return os.str();
  }
  prometheus::Registry registry_;
  PluginMetrics pm_{registry_};
  std::string error_;
};

TEST_F(PluginMetricsTest, CountersGaugesHistogramsThroughTheHostApi) {
  const glmp_host_api& api = plugins::host_api();
  auto* c = pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_requests_total", "Requests", {{"plugin", "demo"}}, {}, error_);
  auto* g = pm_.create(GLMP_METRIC_GAUGE, "glmp_demo_level", "Level", {}, {}, error_);
  auto* h = pm_.create(GLMP_METRIC_HISTOGRAM, "glmp_demo_tokens", "Tokens", {{"plugin", "demo"}}, {10, 100}, error_);
  ASSERT_TRUE(c && g && h) << error_;
  api.metric_add(reinterpret_cast<glmp_metric_host_ptr*>(c), 2);
  api.metric_add(reinterpret_cast<glmp_metric_host_ptr*>(c), -5);  // ignored: counters only go up
  api.metric_set(reinterpret_cast<glmp_metric_host_ptr*>(c), 100);  // ignored: not a gauge
  api.metric_set(reinterpret_cast<glmp_metric_host_ptr*>(g), 7);
  api.metric_add(reinterpret_cast<glmp_metric_host_ptr*>(g), -2);
  api.metric_observe(reinterpret_cast<glmp_metric_host_ptr*>(h), 50);
  api.metric_observe(reinterpret_cast<glmp_metric_host_ptr*>(h), 500);
  api.metric_add(nullptr, 1);  // a refused metric's NULL handle is harmless
  const std::string t = text();
  EXPECT_NE(t.find("glmp_demo_requests_total{plugin=\"demo\"} 2"), std::string::npos) << t;
  EXPECT_NE(t.find("glmp_demo_level 5"), std::string::npos) << t;
  EXPECT_NE(t.find("glmp_demo_tokens_bucket{plugin=\"demo\",le=\"10\"} 0"), std::string::npos) << t;
  EXPECT_NE(t.find("glmp_demo_tokens_bucket{plugin=\"demo\",le=\"100\"} 1"), std::string::npos) << t;
  EXPECT_NE(t.find("glmp_demo_tokens_count{plugin=\"demo\"} 2"), std::string::npos) << t;
}

TEST_F(PluginMetricsTest, SameNameAndLabelsIsTheSameHandle) {
  auto* a = pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_total", "x", {{"k", "v"}}, {}, error_);
  auto* b = pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_total", "x", {{"k", "v"}}, {}, error_);
  auto* other = pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_total", "x", {{"k", "w"}}, {}, error_);
  EXPECT_EQ(a, b) << "a reloaded plugin must keep counting where it left off";
  EXPECT_NE(a, other);
}

TEST_F(PluginMetricsTest, RefusesWhatPrometheusWouldNotAccept) {
  EXPECT_EQ(pm_.create(GLMP_METRIC_COUNTER, "9bad", "x", {}, {}, error_), nullptr);
  EXPECT_NE(error_.find("not a valid Prometheus metric name"), std::string::npos) << error_;
  EXPECT_EQ(pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_x", "x", {{"bad-label", "v"}}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(GLMP_METRIC_HISTOGRAM, "glmp_demo_h", "x", {{"le", "1"}}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_x", "x", {{"a", "1"}, {"a", "2"}}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(GLMP_METRIC_HISTOGRAM, "glmp_demo_h", "x", {}, {5, 1}, error_), nullptr);
  EXPECT_NE(error_.find("increasing"), std::string::npos) << error_;
  EXPECT_EQ(pm_.create(GLMP_METRIC_COUNTER, "glmp_requests_total", "x", {}, {}, error_), nullptr);
  EXPECT_NE(error_.find("reserved"), std::string::npos) << error_;
  EXPECT_EQ(pm_.create(GLMP_METRIC_COUNTER, "glmp_store_operations_total", "x", {}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(static_cast<glmp_metric_kind>(7), "glmp_demo_k", "x", {}, {}, error_), nullptr);
}

TEST_F(PluginMetricsTest, KindClashIsRefused) {
  ASSERT_NE(pm_.create(GLMP_METRIC_COUNTER, "glmp_demo_thing", "x", {}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(GLMP_METRIC_GAUGE, "glmp_demo_thing", "x", {}, {}, error_), nullptr);
  EXPECT_EQ(pm_.create(GLMP_METRIC_GAUGE, "glmp_demo_thing", "x", {{"other", "labels"}}, {}, error_), nullptr);
  EXPECT_NE(error_.find("another kind"), std::string::npos) << error_;
}

}  // namespace
}  // namespace glmp::core::metrics
