#include "common.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace glmp::load {

std::uint64_t parse_uint(const std::string& flag, const std::string& v, std::uint64_t min, std::uint64_t max) {
  std::uint64_t out = 0;
  const auto* end = v.data() + v.size();
  const auto [p, ec] = std::from_chars(v.data(), end, out);
  if (v.empty() || ec != std::errc() || p != end || out < min || out > max)
    throw UsageError{flag + ": expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                     "], got '" + v + "'"};
  return out;
}

double parse_double(const std::string& flag, const std::string& v, double min, double max) {
  char* end = nullptr;
  const double out = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(out) || out < min || out > max)
    throw UsageError{flag + ": expected a number in [" + fixed(min, 2) + ", " + fixed(max, 2) + "], got '" + v + "'"};
  return out;
}

Address parse_address(const std::string& flag, std::string v) {
  if (v.rfind("http://", 0) == 0) v.erase(0, 7);
  while (!v.empty() && v.back() == '/') v.pop_back();
  const auto colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0) throw UsageError{flag + ": expected HOST:PORT, got '" + v + "'"};
  Address a;
  a.host = v.substr(0, colon);
  a.port = static_cast<std::uint16_t>(parse_uint(flag, v.substr(colon + 1), 1, 65535));
  a.addr.sin_family = AF_INET;
  a.addr.sin_port = htons(a.port);
  if (::inet_pton(AF_INET, a.host.c_str(), &a.addr.sin_addr) != 1) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(a.host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr)
      throw UsageError{flag + ": cannot resolve '" + a.host + "' (IPv4)"};
    a.addr.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
    ::freeaddrinfo(res);
  }
  return a;
}

Header parse_header(const std::string& flag, const std::string& v) {
  const auto colon = v.find(':');
  if (colon == std::string::npos || colon == 0) throw UsageError{flag + ": expected \"Name: value\", got '" + v + "'"};
  Header h{v.substr(0, colon), v.substr(colon + 1)};
  const auto first = h.value.find_first_not_of(" \t");
  h.value = first == std::string::npos ? std::string() : h.value.substr(first);
  for (const char c : h.name)
    if (c <= ' ' || c == 127 || c == ':') throw UsageError{flag + ": bad header name in '" + v + "'"};
  for (const char c : h.value)
    if (c == '\r' || c == '\n') throw UsageError{flag + ": no line breaks in a header value"};
  return h;
}

// --- Histogram --------------------------------------------------------------------------------

std::size_t Histogram::index(std::uint64_t v) {
  constexpr std::uint64_t kDirect = 1ULL << (kSubBits + 1);
  if (v < kDirect) return static_cast<std::size_t>(v);
  const int msb = 63 - __builtin_clzll(v);
  const int shift = msb - kSubBits;
  return static_cast<std::size_t>(shift) * (1ULL << kSubBits) + static_cast<std::size_t>(v >> shift);
}

std::uint64_t Histogram::value(std::size_t idx) {
  constexpr std::size_t kDirect = 1ULL << (kSubBits + 1);
  if (idx < kDirect) return idx;
  const std::size_t shift = idx / (1ULL << kSubBits) - 1;
  const std::uint64_t m = idx - shift * (1ULL << kSubBits);
  return (m << shift) + ((1ULL << shift) >> 1);
}

void Histogram::add(std::uint64_t v) {
  const std::size_t i = index(v);
  if (i >= buckets_.size()) buckets_.resize(i + 1, 0);
  ++buckets_[i];
  ++n_;
  sum_ += v;
  min_ = std::min(min_, v);
  max_ = std::max(max_, v);
}

void Histogram::merge(const Histogram& o) {
  if (o.buckets_.size() > buckets_.size()) buckets_.resize(o.buckets_.size(), 0);
  for (std::size_t i = 0; i < o.buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
  n_ += o.n_;
  sum_ += o.sum_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

std::uint64_t Histogram::percentile(double p) const {
  if (n_ == 0) return 0;
  auto rank = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(n_)));
  rank = std::clamp<std::uint64_t>(rank, 1, n_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen >= rank) return std::clamp(value(i), min(), max_);
  }
  return max_;
}

// --- /proc ------------------------------------------------------------------------------------

namespace {

bool read_small(const std::string& path, std::string& out) {
  out.clear();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return !out.empty();
}

long field(std::string_view text, std::string_view key) {
  const auto pos = text.find(key);
  if (pos == std::string_view::npos) return -1;
  return std::strtol(text.data() + pos + key.size(), nullptr, 10);
}

}  // namespace

ProcSample read_proc(long pid) {
  ProcSample s;
  std::string text;
  const std::string base = "/proc/" + std::to_string(pid);
  if (!read_small(base + "/stat", text)) return s;
  const auto close = text.rfind(')');
  if (close == std::string::npos) return s;
  // After ") ": field 3 (state), then fields 4.. as numbers; utime is field 14, stime field 15.
  const char* p = text.c_str() + close + 2;
  while (*p && *p != ' ') ++p;  // state
  char* end = nullptr;
  long long f[13] = {};
  for (auto& x : f) {
    x = std::strtoll(p, &end, 10);
    p = end;
  }
  static const long tick = ::sysconf(_SC_CLK_TCK);
  s.cpu_us = (f[10] + f[11]) * 1000000LL / tick;
  if (!read_small(base + "/status", text)) return s;
  s.rss_kib = field(text, "\nVmRSS:");
  s.hwm_kib = field(text, "\nVmHWM:");
  s.threads = field(text, "\nThreads:");
  s.ok = s.rss_kib >= 0;
  return s;
}

MachineCpu read_machine_cpu() {
  MachineCpu t;
  std::string text;
  if (!read_small("/proc/stat", text) || text.rfind("cpu ", 0) != 0) return t;
  const char* p = text.c_str() + 4;
  char* end = nullptr;
  long long v[8] = {};
  for (auto& x : v) {
    x = std::strtoll(p, &end, 10);
    p = end;
  }
  for (const auto x : v) t.total += x;
  t.busy = t.total - v[3] - v[4];  // minus idle and iowait
  return t;
}

double busy_pct(const MachineCpu& a, const MachineCpu& b) {
  if (b.total <= a.total) return -1;
  return 100.0 * static_cast<double>(b.busy - a.busy) / static_cast<double>(b.total - a.total);
}

std::int64_t self_cpu_us() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

long self_threads() {
  std::string text;
  if (!read_small("/proc/self/status", text)) return -1;
  return field(text, "\nThreads:");
}

bool raise_fd_limit(std::uint64_t needed, const char* who) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return true;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed) {
    std::fprintf(stderr,
                 "%s: RLIMIT_NOFILE is %llu (hard %llu), this run needs %llu file descriptors: raise the hard "
                 "limit (ulimit -Hn) or ask for fewer connections\n",
                 who, static_cast<unsigned long long>(rl.rlim_cur), static_cast<unsigned long long>(rl.rlim_max),
                 static_cast<unsigned long long>(needed));
    return false;
  }
  return true;
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

}  // namespace glmp::load
