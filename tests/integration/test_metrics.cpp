// GET /metrics: Prometheus text exposition of the core's metrics, moved by real requests.
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>

#include "harness.hpp"

using namespace glmp::test;

namespace {

class Metrics : public ProxyTest {
protected:
  // The value of the first sample whose line starts with `series` (name plus labels).
  static double sample(const std::string& text, const std::string& series) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
    return -1;
  }
};

TEST_F(Metrics, ProxiedRequestsMoveTheRightSeries) {
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  ASSERT_EQ(http_stream(proxy->port(), "POST", "/v1/messages", anthropic_body(true), {{"x-mock-chunks", "5"}}).status, 200);
  ASSERT_EQ(http(proxy->port(), "GET", "/nope").status, 404);
  Response m = settled_metrics(proxy->port());
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.header("content-type").rfind("text/plain; version=0.0.4", 0), 0u);
  const std::string& t = m.body;
  EXPECT_EQ(sample(t, R"(glmp_requests_total{flavour="openai",route="/v1/",status="200"})"), 2) << t;
  EXPECT_EQ(sample(t, R"(glmp_requests_total{flavour="anthropic",route="/v1/messages",status="200"})"), 1);
  EXPECT_EQ(sample(t, R"(glmp_requests_total{flavour="none",route="",status="404"})"), 1);
  EXPECT_EQ(sample(t, R"(glmp_tokens_total{direction="out",flavour="anthropic",model="glm-4.7"})"), 5);
  EXPECT_EQ(sample(t, R"(glmp_tokens_total{direction="out",flavour="openai",model="glm-4.7"})"), 6);
  // The overhead histogram is filled: one observation per proxied request, in µs-scale buckets.
  EXPECT_EQ(sample(t, R"(glmp_proxy_overhead_seconds_count{flavour="openai"})"), 2);
  EXPECT_GE(sample(t, R"(glmp_proxy_overhead_seconds_bucket{flavour="openai",le="0.01"})"), 0);
  EXPECT_GT(sample(t, R"(glmp_upstream_pool{figure="created",upstream="openai"})"), 0);
  EXPECT_GT(sample(t, "glmp_process_resident_memory_bytes"), 1e6);
  // The old proxy's path serves the same exposition.
  EXPECT_EQ(http(proxy->port(), "GET", "/api/metrics/prometheus").status, 200);
}

TEST_F(Metrics, ExpositionIsWellFormed) {
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false)).status, 200);
  const std::string t = settled_metrics(proxy->port()).body;
  // Every family has exactly one HELP and one TYPE line (the old proxy repeated them), and every
  // sample line is "name{labels} value".
  std::map<std::string, int> help, type;
  const std::regex sample_line(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eE]+(Inf|NaN)?$)");
  std::istringstream in(t);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) ++help[line.substr(7, line.find(' ', 7) - 7)];
    else if (line.rfind("# TYPE ", 0) == 0) ++type[line.substr(7, line.find(' ', 7) - 7)];
    else if (!line.empty()) {
      EXPECT_TRUE(std::regex_match(line, sample_line)) << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 20);
  for (const auto& [name, n] : help) EXPECT_EQ(n, 1) << name;
  for (const auto& [name, n] : type) EXPECT_EQ(n, 1) << name;
  EXPECT_EQ(help.size(), type.size());
}

TEST_F(Metrics, PromtoolAcceptsTheExposition) {
  // promtool comes with Debian's prometheus package, which scripts/test installs.
  ASSERT_EQ(std::system("command -v promtool >/dev/null 2>&1"), 0) << "promtool missing: apt-get install prometheus";
  ASSERT_EQ(http(proxy->port(), "POST", "/v1/messages", anthropic_body(false)).status, 200);
  const std::string file = dir.file("metrics.txt");
  write_file(file, settled_metrics(proxy->port()).body);
  const std::string out = dir.file("promtool.out");
  const int rc = std::system(("promtool check metrics < " + file + " > " + out + " 2>&1").c_str());
  EXPECT_EQ(rc, 0) << read_file(out);
}

}  // namespace
