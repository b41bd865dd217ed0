// glmp-load: helpers shared by the load client and the bench upstream (clock, command-line
// values, addresses, a log-linear histogram, /proc readers, file-descriptor limit).
#pragma once

#include <netinet/in.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace glmp::load {

using Clock = std::chrono::steady_clock;

inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

struct UsageError {
  std::string message;
};

std::uint64_t parse_uint(const std::string& flag, const std::string& v, std::uint64_t min, std::uint64_t max);
double parse_double(const std::string& flag, const std::string& v, double min, double max);

// "HOST:PORT" (an "http://" prefix and a trailing "/" are accepted). IPv4 literals and names.
struct Address {
  std::string host;
  std::uint16_t port = 0;
  sockaddr_in addr{};
  std::string host_header() const { return host + ":" + std::to_string(port); }
};
Address parse_address(const std::string& flag, std::string v);

struct Header {
  std::string name;
  std::string value;
};
Header parse_header(const std::string& flag, const std::string& v);

// Log-linear histogram of non-negative integers (nanoseconds here): exact below 256, then 128
// buckets per power of two (a bucket's width is under 0.8 % of its values). Mergeable, constant
// memory: a 30-minute soak keeps every sample without growing.
class Histogram {
 public:
  void add(std::uint64_t v);
  void merge(const Histogram& o);
  std::uint64_t count() const { return n_; }
  std::uint64_t min() const { return n_ ? min_ : 0; }
  std::uint64_t max() const { return max_; }
  double mean() const { return n_ ? static_cast<double>(sum_) / static_cast<double>(n_) : 0.0; }
  // Nearest rank: the smallest recorded value with at least p % of the samples at or below it
  // (the bucket's midpoint, clamped to [min, max]).
  std::uint64_t percentile(double p) const;

 private:
  static constexpr int kSubBits = 7;
  static std::size_t index(std::uint64_t v);
  static std::uint64_t value(std::size_t idx);
  std::vector<std::uint64_t> buckets_;
  std::uint64_t n_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
};

// /proc/PID figures. cpu_us = utime + stime (fields 14 and 15 of /proc/PID/stat, every thread of
// the process), converted from clock ticks; rss_kib = VmRSS; threads = Threads.
struct ProcSample {
  bool ok = false;
  std::int64_t cpu_us = 0;
  long rss_kib = -1;
  long hwm_kib = -1;
  long threads = -1;
};
ProcSample read_proc(long pid);

// Machine-wide jiffies from /proc/stat: how busy the cores were over a window.
struct MachineCpu {
  long long busy = 0;
  long long total = 0;
};
MachineCpu read_machine_cpu();
double busy_pct(const MachineCpu& a, const MachineCpu& b);

// This process's own CPU (every thread): getrusage(RUSAGE_SELF), in µs.
std::int64_t self_cpu_us();
long self_threads();

// Raises the soft RLIMIT_NOFILE to the hard limit; false (and a message) when below `needed`.
bool raise_fd_limit(std::uint64_t needed, const char* who);

// v with `decimals` decimals.
std::string fixed(double v, int decimals);

}  // namespace glmp::load
