// The access log: the line's format, and how lines reach the sink — batched by a writer thread
// (no write per request), whole and in order, within the flush interval, all of them at shutdown,
// and dropped rather than blocking a request when the sink does not keep up.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pipeline/access_log.hpp"

namespace glmp::core::pipeline {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

class AccessLogTest : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/glmp-access-log-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/access.log";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> lines() const {
    std::ifstream in(path_);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }
  size_t bytes() const { return fs::exists(path_) ? fs::file_size(path_) : 0; }

  // Waits up to `timeout` for the file to hold `n` lines.
  bool wait_lines(size_t n, std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (lines().size() < n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(5ms);
    }
    return true;
  }

  // "<prefix><n>" (built by appending: GCC 12 warns falsely on "x" + std::to_string(n)).
  static std::string id(std::string prefix, long n) {
    prefix += std::to_string(n);
    return prefix;
  }

  static RequestContext request(const std::string& request_id) {
    RequestContext ctx;
    ctx.request_id = request_id;
    ctx.method = "POST";
    ctx.path = "/v1/chat/completions";
    ctx.status = 200;
    return ctx;
  }

  std::string dir_, path_;
};

TEST_F(AccessLogTest, LineFormat) {
  RequestContext ctx = request("req-1");
  ctx.path = "/v1/say \"hi\"";
  ctx.client_model = "glm-4.7";
  ctx.streaming = true;
  ctx.upstream_status = 201;
  ctx.usage.input_tokens = 14;
  ctx.usage.output_tokens = 3;
  ctx.bytes_in = 57;
  ctx.bytes_out = 259;
  ctx.upstream_time = std::chrono::microseconds(770);
  ctx.ttfb = std::chrono::microseconds(941'499);
  ctx.client_gone = true;
  ctx.error = "upstream stalled";
  const std::string line = AccessLog::format(ctx);
  const std::regex shape(
      R"re(\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","id":"req-1","method":"POST","path":"/v1/say \\"hi\\"",)re"
      R"re("route":"","flavour":"","model":"glm-4\.7","stream":true,"status":200,"upstream_status":201,"tokens_in":14,)re"
      R"re("tokens_out":3,"cache_read_tokens":0,"cache_creation_tokens":0,"bytes_in":57,"bytes_out":259,)re"
      R"re("total_ms":\d+\.\d{3},"upstream_ms":0\.770,"ttfb_ms":941\.499,"client_gone":true,"error":"upstream stalled"\})re");
  EXPECT_TRUE(std::regex_match(line, shape)) << line;
  // Optional fields are left out; a [proxy] model (or a plugin's) is the one logged.
  RequestContext plain = request("req-2");
  plain.client_model = "asked";
  plain.model = "sent";
  const std::string short_line = AccessLog::format(plain);
  EXPECT_EQ(short_line.find("ttfb_ms"), std::string::npos) << short_line;
  EXPECT_EQ(short_line.find("client_gone"), std::string::npos) << short_line;
  EXPECT_EQ(short_line.find("\"error\""), std::string::npos) << short_line;
  EXPECT_NE(short_line.find(R"("model":"sent")"), std::string::npos) << short_line;
}

TEST_F(AccessLogTest, TimestampIsNowInUtc) {
  // The clock the log reads (CLOCK_REALTIME): std::time() reads a coarser one that can still say
  // the previous second when the log's clock has moved on.
  const auto now = [] { return std::chrono::system_clock::to_time_t(std::chrono::system_clock::now()); };
  const std::time_t before = now();
  const std::string line = AccessLog::format(request("t"));
  const std::time_t after = now();
  std::tm t{};
  std::istringstream in(line.substr(7, 19));
  in >> std::get_time(&t, "%Y-%m-%dT%H:%M:%S");
  ASSERT_FALSE(in.fail()) << line;
  const std::time_t logged = timegm(&t);
  EXPECT_GE(logged, before) << line;
  EXPECT_LE(logged, after) << line;
}

// Lines wait in memory and leave in batches: a request never writes to the sink itself.
TEST_F(AccessLogTest, LinesAreBatchedNotWrittenPerRequest) {
  AccessLog log(path_, 10s);
  for (int i = 0; i < 100; ++i) log.write(request(id("batched-", i)));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(bytes(), 0u) << "a line was written before its batch was due";
  log.flush();
  const auto got = lines();
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) {
    std::string needle = "\"id\":\"";
    needle += id("batched-", i);
    needle += '"';
    EXPECT_NE(got[static_cast<size_t>(i)].find(needle), std::string::npos) << needle;
  }
}

TEST_F(AccessLogTest, WrittenWithinTheFlushInterval) {
  AccessLog log(path_, 50ms);
  const auto t0 = std::chrono::steady_clock::now();
  log.write(request("soon"));
  ASSERT_TRUE(wait_lines(1, 5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // And again after the writer went idle.
  std::this_thread::sleep_for(150ms);
  log.write(request("again"));
  ASSERT_TRUE(wait_lines(2, 5s));
  EXPECT_NE(lines()[1].find("\"again\""), std::string::npos);
}

TEST_F(AccessLogTest, ALargeBatchIsWrittenWithoutWaiting) {
  AccessLog log(path_, 1h);
  const size_t line_size = AccessLog::format(request("x")).size() + 1;
  const size_t n = AccessLog::kHighWater / line_size + 1;
  for (size_t i = 0; i < n; ++i) log.write(request("x"));
  EXPECT_TRUE(wait_lines(n, 5s)) << "the high-water mark did not wake the writer";
}

TEST_F(AccessLogTest, EverythingIsWrittenAtShutdown) {
  {
    AccessLog log(path_, 1h);
    for (int i = 0; i < 10; ++i) log.write(request(id("last-", i)));
  }
  EXPECT_EQ(lines().size(), 10u);
}

// Many threads at once: every line whole (valid JSON shape, one per line), none lost.
TEST_F(AccessLogTest, ConcurrentLinesNeverInterleave) {
  constexpr int kThreads = 8, kEach = 2'000;
  {
    AccessLog log(path_, 5ms);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&log, t] {
        for (int i = 0; i < kEach; ++i) log.write(request(id(id("t", t).append("-"), i)));
      });
    for (auto& th : threads) th.join();
  }
  const auto got = lines();
  ASSERT_EQ(got.size(), static_cast<size_t>(kThreads * kEach));
  std::vector<int> next(kThreads, 0);
  for (const auto& l : got) {
    ASSERT_EQ(l.front(), '{') << l;
    ASSERT_EQ(l.back(), '}') << l;
    const size_t at = l.find("\"id\":\"t");
    ASSERT_NE(at, std::string::npos) << l;
    const int t = std::stoi(l.substr(at + 7));
    const int i = std::stoi(l.substr(l.find('-', at) + 1));
    EXPECT_EQ(i, next[static_cast<size_t>(t)]++) << "thread " << t << "'s lines out of order";
  }
}

// A sink that takes nothing (a pipe nobody reads) never blocks a request: beyond the buffer limit
// lines are dropped and counted; what was kept is written once the sink drains.
TEST_F(AccessLogTest, ASinkThatDoesNotKeepUpDropsLinesInsteadOfBlocking) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  const std::string target = id("/proc/self/fd/", fds[1]);
  constexpr int kLines = 5'000;  // ~1.5 MB: far more than the pipe and the 64 KiB buffer hold
  std::string received;
  std::thread reader;
  size_t dropped = 0;
  {
    AccessLog log(target, 1ms, 64 * 1024);
    ::close(fds[1]);  // the log holds its own descriptor
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kLines; ++i) log.write(request(id("p", i)));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "a request waited for the sink";
    dropped = log.dropped();
    EXPECT_GT(dropped, 0u);
    reader = std::thread([&] {
      char buf[65536];
      for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) received.append(buf, static_cast<size_t>(n));
    });
  }  // writes what it kept, then closes the pipe: the reader sees EOF
  reader.join();
  ::close(fds[0]);
  size_t n = 0;
  for (size_t at = received.find('\n'); at != std::string::npos; at = received.find('\n', at + 1)) ++n;
  EXPECT_EQ(n + dropped, static_cast<size_t>(kLines));
  EXPECT_EQ(received.back(), '\n');
}

TEST_F(AccessLogTest, OffWritesNothing) {
  AccessLog off("off");
  EXPECT_FALSE(off.enabled());
  off.write(request("x"));
  off.flush();
  EXPECT_EQ(off.dropped(), 0u);
}

}  // namespace
}  // namespace glmp::core::pipeline
