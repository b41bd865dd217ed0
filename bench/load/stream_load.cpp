// glmp-stream-load: load client for the streaming benchmarks.
//
//   glmp-stream-load streams --target HOST:PORT [...]   N concurrent SSE streams: TTFT, gaps, errors
//   glmp-stream-load large   --target HOST:PORT [...]   one large streamed response: MB/s, RSS growth
//   glmp-stream-load rss     --pid PID                  current VmRSS of a process, in MiB
//
// It starts no process: scripts/bench starts the mock upstream and the proxy and passes their
// ports and pids. All figures and flags are described in README.md next to this file.
//
// Model: one blocking Poco HTTPClientSession per stream on its own small-stack thread. Response
// bytes are read with peek() (blocks until at least one byte is there) + readsome() (takes what
// is buffered), so every SSE line is timestamped when its bytes arrive. Clock: steady_clock.

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSONString.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Runnable.h>
#include <Poco/Thread.h>
#include <Poco/Timespan.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using JsonObj = Poco::JSON::Object::Ptr;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr std::uint64_t kMockLargePiece = 16384;  // x-mock-large-bytes: content pieces of 16 KiB

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void sleep_until_ns(std::int64_t t) {
  std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(t)));
}

double ns_to_ms(double ns) { return ns / 1e6; }
double kib_to_mib(long kib) { return static_cast<double>(kib) / 1024.0; }
// Figures are reported with microsecond (ms) or 1/1000 (MiB, MB/s) resolution.
double round3(double v) { return std::round(v * 1000.0) / 1000.0; }

JsonObj new_object() { return new Poco::JSON::Object(Poco::JSON_PRESERVE_KEY_ORDER); }

// ---------------------------------------------------------------------------------------------
// Command line

struct UsageError {
  std::string message;
};

constexpr const char* kUsage = R"(usage:
  glmp-stream-load streams --target HOST:PORT [--path /v1/chat/completions]
                   [--direct HOST:PORT] [--direct-path /api/coding/paas/v4/chat/completions]
                   [--header "Name: value"]... [--direct-header ...]... [--proxy-header ...]...
                   [--streams 1000] [--events 100] [--gap-ms 20] [--ramp-ms events*gap/2, max 2000]
                   [--timeout-s 60] [--settle-ms 1000] [--pid PROXY_PID] [--sample-ms 50]
                   [--json FILE] [--smoke] [--no-warmup] [--stack-kib 256] [--model glm-4.7]
  glmp-stream-load large --target HOST:PORT [--path ...] [--direct HOST:PORT --direct-path ...]
                   [--header ...]... [--bytes 100000000] [--pid PROXY_PID] [--sample-ms 20]
                   [--timeout-s 60] [--json FILE] [--smoke]
  glmp-stream-load rss --pid PID [--json FILE]
--smoke: small defaults (20 streams x 5 events, 5 ms apart; 5 MB) for flags not given.
Exit: 0 the run completed (errors are a figure), 1 the run could not be done, 2 usage error.
)";

struct Header {
  std::string name;
  std::string value;
};

struct Options {
  std::string mode;
  std::string target;
  std::string path = "/v1/chat/completions";
  std::string direct;
  std::string direct_path = "/api/coding/paas/v4/chat/completions";
  std::vector<Header> headers;         // both runs
  std::vector<Header> direct_headers;  // direct run only
  std::vector<Header> proxy_headers;   // target run only
  std::optional<std::uint64_t> streams, events, gap_ms, ramp_ms, bytes, sample_ms;
  std::uint64_t timeout_s = 60;
  std::uint64_t settle_ms = 1000;
  std::uint64_t stack_kib = 256;
  long pid = 0;
  std::string json_path;
  std::string model = "glm-4.7";
  bool smoke = false;
  bool warmup = true;
};

std::uint64_t parse_uint(const std::string& flag, const std::string& v, std::uint64_t min, std::uint64_t max) {
  std::uint64_t out = 0;
  const auto* end = v.data() + v.size();
  const auto [p, ec] = std::from_chars(v.data(), end, out);
  if (v.empty() || ec != std::errc() || p != end || out < min || out > max)
    throw UsageError{flag + ": expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                     "], got '" + v + "'"};
  return out;
}

Header parse_header(const std::string& flag, const std::string& v) {
  const auto colon = v.find(':');
  if (colon == std::string::npos || colon == 0) throw UsageError{flag + ": expected \"Name: value\", got '" + v + "'"};
  Header h{v.substr(0, colon), v.substr(colon + 1)};
  const auto first = h.value.find_first_not_of(" \t");
  h.value = first == std::string::npos ? std::string() : h.value.substr(first);
  for (const char c : h.name)
    if (c <= ' ' || c == 127) throw UsageError{flag + ": bad header name in '" + v + "'"};
  return h;
}

struct Address {
  std::string host;
  std::uint16_t port = 0;
};

Address parse_address(const std::string& flag, std::string v) {
  if (v.rfind("http://", 0) == 0) v.erase(0, 7);
  while (!v.empty() && v.back() == '/') v.pop_back();
  const auto colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0) throw UsageError{flag + ": expected HOST:PORT, got '" + v + "'"};
  Address a;
  a.host = v.substr(0, colon);
  if (a.host.size() >= 2 && a.host.front() == '[' && a.host.back() == ']') a.host = a.host.substr(1, a.host.size() - 2);
  a.port = static_cast<std::uint16_t>(parse_uint(flag, v.substr(colon + 1), 1, 65535));
  return a;
}

Options parse_args(int argc, char** argv) {
  Options o;
  if (argc < 2) throw UsageError{"missing mode (streams, large or rss)"};
  o.mode = argv[1];
  if (o.mode == "-h" || o.mode == "--help") {
    std::cout << kUsage;
    std::exit(kExitOk);
  }
  if (o.mode != "streams" && o.mode != "large" && o.mode != "rss")
    throw UsageError{"unknown mode '" + o.mode + "' (streams, large or rss)"};
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    std::optional<std::string> inline_value;
    if (const auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = flag.substr(eq + 1);
      flag.resize(eq);
    }
    if (flag == "-h" || flag == "--help") {
      std::cout << kUsage;
      std::exit(kExitOk);
    }
    if (flag == "--smoke") {
      o.smoke = true;
      continue;
    }
    if (flag == "--no-warmup") {
      o.warmup = false;
      continue;
    }
    std::string v;
    if (inline_value) {
      v = *inline_value;
    } else {
      if (i + 1 >= argc) throw UsageError{flag + ": missing value"};
      v = argv[++i];
    }
    constexpr std::uint64_t kBig = 1ULL << 50;
    if (flag == "--target") o.target = v;
    else if (flag == "--path") o.path = v;
    else if (flag == "--direct") o.direct = v;
    else if (flag == "--direct-path") o.direct_path = v;
    else if (flag == "--header") o.headers.push_back(parse_header(flag, v));
    else if (flag == "--direct-header") o.direct_headers.push_back(parse_header(flag, v));
    else if (flag == "--proxy-header") o.proxy_headers.push_back(parse_header(flag, v));
    else if (flag == "--streams") o.streams = parse_uint(flag, v, 1, 100000);
    else if (flag == "--events") o.events = parse_uint(flag, v, 0, 10000000);
    else if (flag == "--gap-ms") o.gap_ms = parse_uint(flag, v, 0, 3600000);
    else if (flag == "--ramp-ms") o.ramp_ms = parse_uint(flag, v, 0, 3600000);
    else if (flag == "--timeout-s") o.timeout_s = parse_uint(flag, v, 1, 86400);
    else if (flag == "--settle-ms") o.settle_ms = parse_uint(flag, v, 0, 600000);
    else if (flag == "--pid") o.pid = static_cast<long>(parse_uint(flag, v, 1, 1ULL << 31));
    else if (flag == "--sample-ms") o.sample_ms = parse_uint(flag, v, 1, 60000);
    else if (flag == "--bytes") o.bytes = parse_uint(flag, v, 0, kBig);
    else if (flag == "--json") o.json_path = v;
    else if (flag == "--stack-kib") o.stack_kib = parse_uint(flag, v, 64, 65536);
    else if (flag == "--model") o.model = v;
    else throw UsageError{"unknown flag '" + flag + "'"};
  }
  if (o.mode == "rss") {
    if (o.pid == 0) throw UsageError{"rss: --pid is required"};
    return o;
  }
  if (o.target.empty()) throw UsageError{o.mode + ": --target HOST:PORT is required"};
  if (o.path.empty() || o.path[0] != '/') throw UsageError{"--path must start with '/'"};
  if (o.direct_path.empty() || o.direct_path[0] != '/') throw UsageError{"--direct-path must start with '/'"};
  if (o.model.find_first_of("\"\\") != std::string::npos) throw UsageError{"--model: no quotes or backslashes"};
  // --smoke: small defaults for whatever was not given explicitly.
  if (!o.streams) o.streams = o.smoke ? 20 : 1000;
  if (!o.events) o.events = o.smoke ? 5 : 100;
  if (!o.gap_ms) o.gap_ms = o.smoke ? 5 : 20;
  if (!o.bytes) o.bytes = o.smoke ? 5000000 : 100000000;
  if (!o.sample_ms) o.sample_ms = o.mode == "large" ? 20 : 50;
  // Default ramp: half a stream's nominal life (capped at 2 s), so that every stream is open at
  // the same time for the second half of the ramp's length.
  if (!o.ramp_ms) o.ramp_ms = std::min<std::uint64_t>(2000, *o.events * *o.gap_ms / 2);
  return o;
}

// ---------------------------------------------------------------------------------------------
// /proc readers

struct ProcStatus {
  long rss_kib = -1;
  long hwm_kib = -1;
  long threads = -1;
};

bool read_file_small(const std::string& path, std::string& out) {
  out.clear();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return !out.empty();
}

long field_kib(std::string_view text, std::string_view key) {
  const auto pos = text.find(key);
  if (pos == std::string_view::npos) return -1;
  return std::strtol(text.data() + pos + key.size(), nullptr, 10);
}

bool read_proc_status(long pid, ProcStatus& st) {
  std::string text;
  if (!read_file_small("/proc/" + std::to_string(pid) + "/status", text)) return false;
  st.rss_kib = field_kib(text, "\nVmRSS:");
  st.hwm_kib = field_kib(text, "\nVmHWM:");
  st.threads = field_kib(text, "\nThreads:");
  return st.rss_kib >= 0;
}

// utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15).
double read_proc_cpu_s(long pid) {
  std::string text;
  if (!read_file_small("/proc/" + std::to_string(pid) + "/stat", text)) return -1;
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  const char* p = text.c_str() + close + 1;
  // After ")": field 3 (state) ... field 14 (utime), field 15 (stime).
  char* end = nullptr;
  while (*p == ' ') ++p;
  ++p;  // state
  long long fields[13] = {};
  for (auto& f : fields) {
    f = std::strtoll(p, &end, 10);
    p = end;
  }
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return static_cast<double>(fields[10] + fields[11]) / tick;  // fields 14 and 15
}

// Machine-wide busy and total jiffies from /proc/stat (for "how busy were the 2 cores").
struct CpuTimes {
  long long busy = 0;
  long long total = 0;
};

CpuTimes read_machine_cpu() {
  CpuTimes t;
  std::string text;
  if (!read_file_small("/proc/stat", text) || text.rfind("cpu ", 0) != 0) return t;
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

// 1-minute load average before a run: a busy machine makes every figure noisier.
double loadavg_1m() {
  std::string text;
  if (!read_file_small("/proc/loadavg", text)) return -1;
  return std::strtod(text.c_str(), nullptr);
}

// Machine-wide CPU busy % over the next ms milliseconds (other work on the machine skews runs).
double machine_busy_pct_over(std::uint64_t ms) {
  const CpuTimes a = read_machine_cpu();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  const CpuTimes b = read_machine_cpu();
  if (b.total <= a.total) return -1;
  return 100.0 * static_cast<double>(b.busy - a.busy) / static_cast<double>(b.total - a.total);
}

// Measures how busy the machine is before a run, and says so when it is not idle.
double check_machine_idle() {
  const double busy = machine_busy_pct_over(500);
  if (busy > 20)
    std::printf("  warning: the machine was %.0f%% busy before the run: other work skews these figures\n", busy);
  return busy;
}

double client_cpu_s() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

long proc_open_files_limit(long pid) {
  std::string text;
  if (!read_file_small("/proc/" + std::to_string(pid) + "/limits", text)) return -1;
  const auto pos = text.find("Max open files");
  if (pos == std::string::npos) return -1;
  const char* p = text.c_str() + pos + std::strlen("Max open files");
  return std::strtol(p, nullptr, 10);  // the soft limit comes first
}

// Samples VmRSS and Threads of a process every interval on its own thread.
class ProcSampler {
 public:
  ProcSampler(long pid, std::uint64_t interval_ms) : pid_(pid), interval_ms_(interval_ms) {}
  ~ProcSampler() { stop(); }

  void start() {
    ProcStatus st;
    if (read_proc_status(pid_, st)) {
      before_ = st;
      peak_rss_kib_ = st.rss_kib;
      peak_threads_ = st.threads;
      samples_ = 1;
    }
    cpu_before_ = read_proc_cpu_s(pid_);
    running_ = true;
    thread_ = std::thread([this] { loop(); });
  }

  void stop() {
    if (!running_) return;
    stop_.store(true);
    thread_.join();
    running_ = false;
    ProcStatus st;
    if (read_proc_status(pid_, st)) {
      after_ = st;
      note(st);
    }
    const double cpu_after = read_proc_cpu_s(pid_);
    cpu_s_ = cpu_before_ >= 0 && cpu_after >= 0 ? cpu_after - cpu_before_ : -1;
  }

  JsonObj to_json() const {
    JsonObj o = new_object();
    o->set("pid", pid_);
    o->set("sample_ms", interval_ms_);
    o->set("samples", samples_);
    o->set("rss_before_mib", round3(kib_to_mib(before_.rss_kib)));
    o->set("rss_peak_mib", round3(kib_to_mib(peak_rss_kib_)));
    o->set("rss_growth_mib", round3(kib_to_mib(peak_rss_kib_ - before_.rss_kib)));
    o->set("rss_after_mib", round3(kib_to_mib(after_.rss_kib)));
    o->set("vm_hwm_mib", round3(kib_to_mib(after_.hwm_kib)));
    o->set("rss_before_kib", before_.rss_kib);
    o->set("rss_peak_kib", peak_rss_kib_);
    o->set("threads_before", before_.threads);
    o->set("threads_peak", peak_threads_);
    o->set("cpu_s", round3(cpu_s_));
    return o;
  }

  long before_kib() const { return before_.rss_kib; }
  long peak_kib() const { return peak_rss_kib_; }
  long after_kib() const { return after_.rss_kib; }
  long hwm_kib() const { return after_.hwm_kib; }
  long threads_before() const { return before_.threads; }
  long threads_peak() const { return peak_threads_; }
  double cpu_s() const { return cpu_s_; }
  long samples() const { return samples_; }

 private:
  void note(const ProcStatus& st) {
    peak_rss_kib_ = std::max(peak_rss_kib_, st.rss_kib);
    peak_threads_ = std::max(peak_threads_, st.threads);
    ++samples_;
  }

  void loop() {
    const auto interval = static_cast<std::int64_t>(interval_ms_) * 1000000;
    std::int64_t next = now_ns() + interval;
    while (!stop_.load()) {
      sleep_until_ns(next);
      next += interval;
      ProcStatus st;
      if (read_proc_status(pid_, st)) note(st);
    }
  }

  long pid_;
  std::uint64_t interval_ms_;
  ProcStatus before_, after_;
  long peak_rss_kib_ = -1;
  long peak_threads_ = -1;
  long samples_ = 0;
  double cpu_before_ = -1;
  double cpu_s_ = -1;
  std::atomic<bool> stop_{false};
  bool running_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// SSE scanning in constant memory: only the first bytes of each line are kept.

class SseScanner {
 public:
  // times: where the arrival time of each data event goes (nullptr: not recorded).
  explicit SseScanner(std::vector<std::int64_t>* times) : times_(times) {}

  void feed(const char* p, size_t n, std::int64_t t) {
    bytes_ += n;
    while (n > 0) {
      const auto* nl = static_cast<const char*>(std::memchr(p, '\n', n));
      const size_t take = nl ? static_cast<size_t>(nl - p) : n;
      if (plen_ < sizeof prefix_) {
        const size_t copy = std::min(take, sizeof prefix_ - plen_);
        std::memcpy(prefix_ + plen_, p, copy);
        plen_ += copy;
      }
      line_len_ += take;
      if (!nl) break;
      end_line(t);
      p = nl + 1;
      n -= take + 1;
    }
  }

  std::uint64_t data_events() const { return data_events_; }
  bool done() const { return done_; }
  bool error_event() const { return error_event_; }
  std::uint64_t bytes() const { return bytes_; }

 private:
  void end_line(std::int64_t t) {
    size_t len = line_len_;
    if (len <= sizeof prefix_ && len > 0 && prefix_[len - 1] == '\r') --len;
    const std::string_view line(prefix_, std::min(len, sizeof prefix_));
    plen_ = 0;
    line_len_ = 0;
    if (line.rfind("data:", 0) != 0 || done_) return;
    size_t start = 5;
    if (line.size() > 5 && line[5] == ' ') start = 6;
    const std::string_view value = line.substr(start);
    if (len - start == 6 && value == "[DONE]") {
      done_ = true;
      return;
    }
    ++data_events_;
    if (value.rfind("{\"error\"", 0) == 0) error_event_ = true;
    if (times_ && times_->size() < times_->capacity()) times_->push_back(t);
  }

  std::vector<std::int64_t>* times_;
  char prefix_[32] = {};
  size_t plen_ = 0;
  size_t line_len_ = 0;
  std::uint64_t data_events_ = 0;
  std::uint64_t bytes_ = 0;
  bool done_ = false;
  bool error_event_ = false;
};

// ---------------------------------------------------------------------------------------------
// One stream

struct Endpoint {
  std::string label;  // "direct" or "proxy"
  Address address;
  std::string path;
  std::vector<Header> headers;
};

struct RequestSpec {
  std::string body;
  std::vector<Header> mock_headers;  // x-mock-*
  std::uint64_t expected_events = 0;  // data events before [DONE] (role + pieces + finish)
  size_t record_times = 0;            // 0: do not keep arrival times
  std::uint64_t timeout_s = 60;
  std::uint64_t buffer_bytes = 16384;
};

enum class ErrKind { none, connect, status, transport, timeout, error_event, no_done, missing_events };

const char* err_name(ErrKind k) {
  switch (k) {
    case ErrKind::none: return "none";
    case ErrKind::connect: return "connect";
    case ErrKind::status: return "status";
    case ErrKind::transport: return "transport";
    case ErrKind::timeout: return "timeout";
    case ErrKind::error_event: return "error_event";
    case ErrKind::no_done: return "no_done";
    case ErrKind::missing_events: return "missing_events";
  }
  return "?";
}

// HTTPClientSession connects lazily inside sendRequest(); connecting first separates the TCP
// connect time from the request's time to first event.
class Session : public Poco::Net::HTTPClientSession {
 public:
  using HTTPClientSession::HTTPClientSession;
  void open() { reconnect(); }
};

struct Shared {
  std::atomic<int> open{0};       // streams between 200 headers and their end
  std::atomic<int> peak_open{0};
  std::atomic<int> finished{0};
};

struct StreamSlot {
  std::int64_t start_at_ns = 0;
  // results
  int status = 0;
  ErrKind err = ErrKind::none;
  std::string detail;
  std::int64_t connect_ns = -1;
  std::int64_t total_ns = -1;  // request sent .. last byte
  std::uint64_t events = 0;
  std::uint64_t bytes = 0;
  bool done = false;
  std::vector<std::int64_t> times;  // arrival of each data event, ns after the request was sent
  // watchdog
  std::mutex mu;
  Session* session = nullptr;
  std::atomic<std::int64_t> deadline_ns{INT64_MAX};
  std::atomic<bool> timed_out{false};
  std::atomic<bool> finished{false};
};

void run_stream(const Endpoint& ep, const RequestSpec& spec, StreamSlot& slot, Shared& shared) {
  using namespace Poco::Net;
  if (spec.record_times) slot.times.reserve(spec.record_times);
  auto session = std::make_unique<Session>(ep.address.host, ep.address.port);
  session->setKeepAlive(true);  // otherwise sendRequest() would drop our pre-connected socket
  const Poco::Timespan timeout(static_cast<long>(spec.timeout_s) + 5, 0);  // the watchdog acts first
  session->setTimeout(timeout, timeout, timeout);
  {
    std::lock_guard lock(slot.mu);
    slot.session = session.get();
  }
  slot.deadline_ns.store(now_ns() + static_cast<std::int64_t>(spec.timeout_s) * 1000000000);

  SseScanner scanner(spec.record_times ? &slot.times : nullptr);
  std::int64_t t0 = 0;
  bool counted_open = false;
  try {
    const std::int64_t c0 = now_ns();
    session->open();
    slot.connect_ns = now_ns() - c0;

    HTTPRequest req(HTTPRequest::HTTP_POST, ep.path, HTTPMessage::HTTP_1_1);
    req.setContentType("application/json");
    req.setContentLength64(static_cast<Poco::Int64>(spec.body.size()));
    req.set("Accept", "text/event-stream");
    for (const auto& h : spec.mock_headers) req.set(h.name, h.value);
    for (const auto& h : ep.headers) req.set(h.name, h.value);

    t0 = now_ns();
    std::ostream& os = session->sendRequest(req);
    os.write(spec.body.data(), static_cast<std::streamsize>(spec.body.size()));
    HTTPResponse resp;
    std::istream& in = session->receiveResponse(resp);
    slot.status = static_cast<int>(resp.getStatus());
    if (slot.status != 200) {
      slot.err = ErrKind::status;
      slot.detail = "HTTP " + std::to_string(slot.status) + " " + resp.getReason();
    } else {
      counted_open = true;
      const int open = shared.open.fetch_add(1) + 1;
      int peak = shared.peak_open.load();
      while (open > peak && !shared.peak_open.compare_exchange_weak(peak, open)) {
      }
      in.exceptions(std::ios::badbit);  // rethrow the transport's exception from peek()
      std::vector<char> buf(spec.buffer_bytes);
      for (;;) {
        if (in.peek() == std::char_traits<char>::eof()) break;
        const std::int64_t t = now_ns() - t0;
        const std::streamsize n = in.readsome(buf.data(), static_cast<std::streamsize>(buf.size()));
        if (n > 0) scanner.feed(buf.data(), static_cast<size_t>(n), t);
      }
    }
  } catch (const Poco::TimeoutException& e) {
    slot.err = ErrKind::timeout;
    slot.detail = e.displayText();
  } catch (const Poco::Exception& e) {
    slot.err = slot.connect_ns < 0 ? ErrKind::connect : ErrKind::transport;
    slot.detail = e.displayText();
  } catch (const std::exception& e) {
    slot.err = slot.connect_ns < 0 ? ErrKind::connect : ErrKind::transport;
    slot.detail = e.what();
  }
  if (t0 > 0) slot.total_ns = now_ns() - t0;
  if (counted_open) shared.open.fetch_sub(1);
  slot.events = scanner.data_events();
  slot.bytes = scanner.bytes();
  slot.done = scanner.done();
  if (slot.timed_out.load()) {
    slot.err = ErrKind::timeout;
    slot.detail = "no end within --timeout-s " + std::to_string(spec.timeout_s);
  } else if (slot.err == ErrKind::none) {
    if (scanner.error_event()) {
      slot.err = ErrKind::error_event;
      slot.detail = "the stream carried an error event";
    } else if (!slot.done) {
      slot.err = ErrKind::no_done;
      slot.detail = "ended without data: [DONE] after " + std::to_string(slot.events) + " events";
    } else if (slot.events < spec.expected_events) {
      slot.err = ErrKind::missing_events;
      slot.detail = std::to_string(slot.events) + " of " + std::to_string(spec.expected_events) + " events";
    }
  }
  {
    std::lock_guard lock(slot.mu);
    slot.session = nullptr;
  }
  session.reset();
  slot.finished.store(true);
  shared.finished.fetch_add(1);
}

// Ends streams past their deadline: shuts their socket down so the blocked read returns.
void expire(StreamSlot& slot, std::int64_t now) {
  if (slot.finished.load() || slot.timed_out.load() || now < slot.deadline_ns.load()) return;
  std::lock_guard lock(slot.mu);
  if (!slot.session) return;
  slot.timed_out.store(true);
  try {
    slot.session->socket().shutdown();
  } catch (...) {
  }
}

class StreamJob : public Poco::Runnable {
 public:
  StreamJob(const Endpoint& ep, const RequestSpec& spec, StreamSlot& slot, Shared& shared, std::latch& gate,
            const std::atomic<std::int64_t>& t_start)
      : ep_(ep), spec_(spec), slot_(slot), shared_(shared), gate_(gate), t_start_(t_start) {}

  void run() override {
    gate_.wait();
    sleep_until_ns(t_start_.load() + slot_.start_at_ns);
    run_stream(ep_, spec_, slot_, shared_);
  }

 private:
  const Endpoint& ep_;
  const RequestSpec& spec_;
  StreamSlot& slot_;
  Shared& shared_;
  std::latch& gate_;
  const std::atomic<std::int64_t>& t_start_;
};

// ---------------------------------------------------------------------------------------------
// Statistics

struct Dist {
  size_t n = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, min = 0;  // ms
};

double percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]);
}

Dist distribution(std::vector<std::int64_t> v) {
  Dist d;
  d.n = v.size();
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  long double sum = 0;
  for (const auto x : v) sum += static_cast<long double>(x);
  d.mean = ns_to_ms(static_cast<double>(sum / static_cast<long double>(v.size())));
  d.p50 = ns_to_ms(percentile(v, 50));
  d.p90 = ns_to_ms(percentile(v, 90));
  d.p99 = ns_to_ms(percentile(v, 99));
  d.p999 = ns_to_ms(percentile(v, 99.9));
  d.max = ns_to_ms(static_cast<double>(v.back()));
  d.min = ns_to_ms(static_cast<double>(v.front()));
  return d;
}

JsonObj dist_json(const Dist& d) {
  JsonObj o = new_object();
  o->set("n", static_cast<Poco::UInt64>(d.n));
  o->set("mean", round3(d.mean));
  o->set("min", round3(d.min));
  o->set("p50", round3(d.p50));
  o->set("p90", round3(d.p90));
  o->set("p99", round3(d.p99));
  o->set("p999", round3(d.p999));
  o->set("max", round3(d.max));
  return o;
}

// A figure of a distribution, or null when it has no sample.
void set_stat(JsonObj obj, const std::string& key, const Dist& d, double Dist::*stat) {
  if (d.n) obj->set(key, round3(d.*stat));
  else obj->set(key, Poco::Dynamic::Var());
}

struct RunResult {
  std::string label;
  int streams = 0;
  int ok = 0;
  int errors = 0;
  std::map<std::string, int> errors_by_kind;
  std::vector<std::pair<std::string, int>> error_samples;  // distinct messages (first 8), with counts
  int peak_open = 0;
  std::uint64_t events = 0;
  std::uint64_t bytes = 0;
  Dist ttft, gap_excess, gap, connect, duration;
  double wall_s = 0;
  double client_cpu_s = 0;
  double machine_busy_pct = -1;
};

// Runs n streams against ep, their starts spread evenly over ramp_ms.
RunResult run_set(const Endpoint& ep, const RequestSpec& spec, int n, std::uint64_t ramp_ms, std::uint64_t gap_ms,
                  std::uint64_t stack_kib) {
  std::vector<std::unique_ptr<StreamSlot>> slots;
  slots.reserve(static_cast<size_t>(n));
  const auto ramp_ns = static_cast<long double>(ramp_ms) * 1e6L;
  for (int i = 0; i < n; ++i) {
    auto s = std::make_unique<StreamSlot>();
    s->start_at_ns = n > 1 ? static_cast<std::int64_t>(ramp_ns * i / n) : 0;
    slots.push_back(std::move(s));
  }
  Shared shared;
  std::latch gate(1);
  std::atomic<std::int64_t> t_start{0};
  std::vector<std::unique_ptr<StreamJob>> jobs;
  std::vector<std::unique_ptr<Poco::Thread>> threads;
  jobs.reserve(slots.size());
  threads.reserve(slots.size());
  try {
    for (auto& s : slots) {
      jobs.push_back(std::make_unique<StreamJob>(ep, spec, *s, shared, gate, t_start));
      auto t = std::make_unique<Poco::Thread>();
      t->setStackSize(static_cast<int>(stack_kib * 1024));
      t->start(*jobs.back());
      threads.push_back(std::move(t));
    }
  } catch (const Poco::Exception& e) {
    std::cerr << "glmp-stream-load: cannot start thread " << threads.size() + 1 << " of " << n << ": "
              << e.displayText() << "\n";
    for (auto& s : slots) s->start_at_ns = 0;
    t_start.store(now_ns());
    gate.count_down();
    for (auto& t : threads) t->join();
    std::exit(kExitFailure);
  }

  const CpuTimes m0 = read_machine_cpu();
  const double c0 = client_cpu_s();
  const std::int64_t w0 = now_ns() + 20000000;  // 20 ms for the threads to reach the gate
  t_start.store(w0);
  gate.count_down();
  // Watchdog: every 20 ms, shut down the sockets of streams past their deadline.
  while (shared.finished.load() < n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const std::int64_t now = now_ns();
    for (auto& s : slots) expire(*s, now);
  }
  for (auto& t : threads) t->join();
  const std::int64_t w1 = now_ns();
  const CpuTimes m1 = read_machine_cpu();

  RunResult r;
  r.label = ep.label;
  r.streams = n;
  r.peak_open = shared.peak_open.load();
  r.wall_s = static_cast<double>(w1 - w0) / 1e9;
  r.client_cpu_s = client_cpu_s() - c0;
  if (m1.total > m0.total)
    r.machine_busy_pct = 100.0 * static_cast<double>(m1.busy - m0.busy) / static_cast<double>(m1.total - m0.total);
  std::vector<std::int64_t> ttft, gaps, gap_excess, connect, duration;
  ttft.reserve(slots.size());
  const auto gap_ns = static_cast<std::int64_t>(gap_ms) * 1000000;
  for (const auto& s : slots) {
    r.events += s->events;
    r.bytes += s->bytes;
    if (s->connect_ns >= 0) connect.push_back(s->connect_ns);
    if (s->err != ErrKind::none) {
      ++r.errors;
      ++r.errors_by_kind[err_name(s->err)];
      const std::string sample = std::string(err_name(s->err)) + ": " + s->detail;
      auto it = std::find_if(r.error_samples.begin(), r.error_samples.end(),
                             [&](const auto& e) { return e.first == sample; });
      if (it != r.error_samples.end()) ++it->second;
      else if (r.error_samples.size() < 8) r.error_samples.emplace_back(sample, 1);
      continue;
    }
    ++r.ok;
    duration.push_back(s->total_ns);
    if (!s->times.empty()) ttft.push_back(s->times.front());
    // Gaps before content events 1..N (the mock sleeps gap_ms before each); the finish chunk
    // and [DONE] follow the last piece without a delay and are not counted.
    const size_t pieces = spec.expected_events >= 2 ? static_cast<size_t>(spec.expected_events - 2) : 0;
    for (size_t k = 1; k <= pieces && k < s->times.size(); ++k) {
      const std::int64_t g = s->times[k] - s->times[k - 1];
      gaps.push_back(g);
      gap_excess.push_back(g - gap_ns);
    }
  }
  r.ttft = distribution(std::move(ttft));
  r.gap = distribution(std::move(gaps));
  r.gap_excess = distribution(std::move(gap_excess));
  r.connect = distribution(std::move(connect));
  r.duration = distribution(std::move(duration));
  return r;
}

// proxy minus direct at the same statistic, when both have samples.
std::optional<double> added_stat(const RunResult& direct, const RunResult& proxy, Dist RunResult::*which,
                                 double Dist::*stat) {
  if (!(direct.*which).n || !(proxy.*which).n) return std::nullopt;
  return (proxy.*which).*stat - (direct.*which).*stat;
}

JsonObj run_json(const RunResult& r, bool with_gaps) {
  JsonObj o = new_object();
  o->set("streams", r.streams);
  o->set("ok", r.ok);
  o->set("errors", r.errors);
  JsonObj kinds = new_object();
  for (const auto& [k, v] : r.errors_by_kind) kinds->set(k, v);
  o->set("errors_by_kind", kinds);
  Poco::JSON::Array::Ptr samples = new Poco::JSON::Array;
  for (const auto& [msg, count] : r.error_samples) samples->add(msg + " (x" + std::to_string(count) + ")");
  o->set("error_samples", samples);
  o->set("peak_open_streams", r.peak_open);
  o->set("events", static_cast<Poco::UInt64>(r.events));
  o->set("bytes", static_cast<Poco::UInt64>(r.bytes));
  o->set("ttft_ms", dist_json(r.ttft));
  if (with_gaps) {
    o->set("gap_excess_ms", dist_json(r.gap_excess));
    o->set("gap_ms", dist_json(r.gap));
  }
  o->set("connect_ms", dist_json(r.connect));
  o->set("stream_ms", dist_json(r.duration));
  o->set("wall_s", round3(r.wall_s));
  o->set("client_cpu_s", round3(r.client_cpu_s));
  o->set("machine_cpu_busy_pct", round3(r.machine_busy_pct));
  return o;
}

// ---------------------------------------------------------------------------------------------
// Modes

std::string request_body(const Options& o) {
  return "{\"model\":\"" + o.model + "\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"bench\"}]}";
}

Endpoint make_endpoint(const std::string& label, const std::string& flag, const std::string& addr,
                       const std::string& path, const std::vector<Header>& common,
                       const std::vector<Header>& own) {
  Endpoint ep;
  ep.label = label;
  ep.address = parse_address(flag, addr);
  ep.path = path;
  ep.headers = common;
  ep.headers.insert(ep.headers.end(), own.begin(), own.end());
  return ep;
}

void write_json(const std::string& path, const JsonObj& obj) {
  if (path.empty()) return;
  std::ofstream f(path);
  obj->stringify(f, 1);
  f << "\n";
  if (!f) std::cerr << "glmp-stream-load: cannot write " << path << "\n";
}

std::string fmt(double v, int decimals = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

void print_row(const char* name, const std::string& a, const std::string& b, const std::string& c) {
  std::printf("  %-26s %11s %11s %11s\n", name, a.c_str(), b.c_str(), c.c_str());
}

void check_proxy_fd_limit(long pid, std::uint64_t needed) {
  if (pid == 0) return;
  const long lim = proc_open_files_limit(pid);
  if (lim > 0 && static_cast<std::uint64_t>(lim) < needed)
    std::cerr << "glmp-stream-load: warning: process " << pid << " may open only " << lim
              << " files; this run needs about " << needed << " there\n";
}

int mode_streams(const Options& o) {
  const int n = static_cast<int>(*o.streams);
  const std::uint64_t events = *o.events;
  const std::uint64_t gap = *o.gap_ms;
  RequestSpec spec;
  spec.body = request_body(o);
  spec.mock_headers = {{"x-mock-chunks", std::to_string(events)}, {"x-mock-delay-ms", std::to_string(gap)}};
  spec.expected_events = events + 2;  // role chunk, N pieces, finish chunk (then [DONE])
  spec.record_times = static_cast<size_t>(events) + 8;
  spec.timeout_s = o.timeout_s;

  const Endpoint target = make_endpoint("proxy", "--target", o.target, o.path, o.headers, o.proxy_headers);
  std::optional<Endpoint> direct;
  if (!o.direct.empty())
    direct = make_endpoint("direct", "--direct", o.direct, o.direct_path, o.headers, o.direct_headers);
  check_proxy_fd_limit(o.pid, 2 * static_cast<std::uint64_t>(n) + 64);
  std::unique_ptr<ProcSampler> sampler;
  if (o.pid) {
    ProcStatus st;
    if (!read_proc_status(o.pid, st)) throw UsageError{"--pid " + std::to_string(o.pid) + ": no such process"};
    sampler = std::make_unique<ProcSampler>(o.pid, *o.sample_ms);
  }

  const double nominal_s = static_cast<double>(events * gap) / 1000.0;
  std::printf("glmp-stream-load streams: %d streams x %llu events, %llu ms apart; starts ramped over %llu ms%s\n", n,
              static_cast<unsigned long long>(events), static_cast<unsigned long long>(gap),
              static_cast<unsigned long long>(*o.ramp_ms), direct ? " (direct, then proxy)" : "");
  if (static_cast<double>(*o.ramp_ms) / 1000.0 >= nominal_s && n > 1)
    std::printf("  note: the ramp (%llu ms) is not shorter than a stream's nominal life (%.3f s): not all %d streams "
                "will be open at once (see peak open)\n",
                static_cast<unsigned long long>(*o.ramp_ms), nominal_s, n);
  std::fflush(stdout);

  const double load_before = loadavg_1m();
  const double busy_before = check_machine_idle();
  std::fflush(stdout);
  // Warm-up (unless --no-warmup): the same number of streams, ramped the same way, each with one
  // content event held back until every stream is open. The server then has a thread per
  // connection and the proxy a pooled upstream connection per stream, so the measured run shows
  // the steady state rather than thread and connection creation.
  const std::uint64_t warm_gap = *o.ramp_ms + 200;
  RequestSpec warm_spec = spec;
  warm_spec.mock_headers = {{"x-mock-chunks", "1"}, {"x-mock-delay-ms", std::to_string(warm_gap)}};
  warm_spec.expected_events = 3;
  warm_spec.record_times = 4;
  auto warm_up = [&](const Endpoint& ep) -> int {
    if (!o.warmup) return 0;
    const RunResult w = run_set(ep, warm_spec, n, *o.ramp_ms, warm_gap, o.stack_kib);
    std::printf("  warm-up %s: %d streams, %d errors, %.1f s\n", ep.label.c_str(), w.streams, w.errors, w.wall_s);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return w.errors;
  };
  int warm_errors_direct = 0;
  std::optional<RunResult> rd;
  if (direct) {
    warm_errors_direct = warm_up(*direct);
    rd = run_set(*direct, spec, n, *o.ramp_ms, gap, o.stack_kib);
    std::this_thread::sleep_for(std::chrono::milliseconds(o.settle_ms));
  }
  if (sampler) sampler->start();  // before the proxy's warm-up: the peak covers all of its load
  const int warm_errors_proxy = warm_up(target);
  const RunResult rp = run_set(target, spec, n, *o.ramp_ms, gap, o.stack_kib);
  if (sampler) sampler->stop();

  // Table ("-": no figure, e.g. no stream ended cleanly)
  auto cell = [&](const RunResult* r, auto get) { return r ? get(*r) : std::string("-"); };
  auto count_row = [&](const char* name, int RunResult::*field) {
    auto get = [&](const RunResult& r) { return std::to_string(r.*field); };
    print_row(name, cell(rd ? &*rd : nullptr, get), get(rp), "");
  };
  auto dist_row = [&](const char* name, Dist RunResult::*which, double Dist::*stat, bool with_added) {
    auto get = [&](const RunResult& r) { return (r.*which).n ? fmt((r.*which).*stat) : std::string("-"); };
    const std::optional<double> add = rd ? added_stat(*rd, rp, which, stat) : std::nullopt;
    print_row(name, cell(rd ? &*rd : nullptr, get), get(rp), with_added ? (add ? fmt(*add) : "-") : "");
  };
  auto value_row = [&](const char* name, double RunResult::*field, int decimals) {
    auto get = [&](const RunResult& r) { return fmt(r.*field, decimals); };
    print_row(name, cell(rd ? &*rd : nullptr, get), get(rp), "");
  };
  std::printf("\n");
  print_row("", "direct", "proxy", "added");
  count_row("streams", &RunResult::streams);
  count_row("streams ok", &RunResult::ok);
  count_row("errors", &RunResult::errors);
  count_row("peak open streams", &RunResult::peak_open);
  dist_row("TTFT p50 (ms)", &RunResult::ttft, &Dist::p50, true);
  dist_row("TTFT p99 (ms)", &RunResult::ttft, &Dist::p99, true);
  dist_row("TTFT max (ms)", &RunResult::ttft, &Dist::max, false);
  dist_row("gap - configured p50 (ms)", &RunResult::gap_excess, &Dist::p50, true);
  dist_row("gap - configured p99 (ms)", &RunResult::gap_excess, &Dist::p99, true);
  dist_row("gap - configured max (ms)", &RunResult::gap_excess, &Dist::max, false);
  dist_row("connect p99 (ms)", &RunResult::connect, &Dist::p99, false);
  value_row("wall (s)", &RunResult::wall_s, 3);
  value_row("machine CPU busy (%)", &RunResult::machine_busy_pct, 1);
  value_row("client CPU (s)", &RunResult::client_cpu_s, 2);
  if (sampler) {
    std::printf("  proxy (pid %ld): RSS before %.1f MiB, peak %.1f MiB, after %.1f MiB (VmHWM %.1f MiB); "
                "threads %ld -> peak %ld; CPU %.2f s\n",
                o.pid, kib_to_mib(sampler->before_kib()), kib_to_mib(sampler->peak_kib()),
                kib_to_mib(sampler->after_kib()), kib_to_mib(sampler->hwm_kib()), sampler->threads_before(),
                sampler->threads_peak(), sampler->cpu_s());
  }
  for (const RunResult* r : std::initializer_list<const RunResult*>{rd ? &*rd : nullptr, &rp}) {
    if (!r) continue;
    for (const auto& [msg, count] : r->error_samples)
      std::printf("  %s error (x%d): %s\n", r->label.c_str(), count, msg.c_str());
  }
  std::fflush(stdout);

  // JSON
  JsonObj root = new_object();
  root->set("mode", "streams");
  JsonObj params = new_object();
  params->set("streams", n);
  params->set("events", static_cast<Poco::UInt64>(events));
  params->set("gap_ms", static_cast<Poco::UInt64>(gap));
  params->set("ramp_ms", static_cast<Poco::UInt64>(*o.ramp_ms));
  params->set("timeout_s", static_cast<Poco::UInt64>(o.timeout_s));
  params->set("target", o.target + o.path);
  params->set("direct", direct ? o.direct + o.direct_path : std::string());
  params->set("order", direct ? "direct, then proxy" : "proxy only");
  params->set("warmup", o.warmup);
  if (o.warmup) {
    params->set("warmup_errors_direct", warm_errors_direct);
    params->set("warmup_errors_proxy", warm_errors_proxy);
  }
  params->set("loadavg_1m_before", round3(load_before));
  params->set("machine_cpu_busy_pct_before", round3(busy_before));
  params->set("cpus", static_cast<Poco::UInt64>(std::thread::hardware_concurrency()));
  root->set("params", params);
  JsonObj summary = new_object();
  summary->set("streams", n);
  summary->set("events", static_cast<Poco::UInt64>(events));
  summary->set("gap_ms", static_cast<Poco::UInt64>(gap));
  summary->set("errors", rp.errors);
  summary->set("peak_open_streams", rp.peak_open);
  set_stat(summary, "ttft_p50_ms", rp.ttft, &Dist::p50);
  set_stat(summary, "ttft_p99_ms", rp.ttft, &Dist::p99);
  set_stat(summary, "gap_excess_p50_ms", rp.gap_excess, &Dist::p50);
  set_stat(summary, "gap_excess_p99_ms", rp.gap_excess, &Dist::p99);
  JsonObj add = new_object();
  if (rd) {
    summary->set("direct_errors", rd->errors);
    set_stat(summary, "direct_ttft_p50_ms", rd->ttft, &Dist::p50);
    set_stat(summary, "direct_ttft_p99_ms", rd->ttft, &Dist::p99);
    set_stat(summary, "direct_gap_excess_p50_ms", rd->gap_excess, &Dist::p50);
    set_stat(summary, "direct_gap_excess_p99_ms", rd->gap_excess, &Dist::p99);
    const std::pair<const char*, std::optional<double>> added_figures[] = {
        {"ttft_p50_ms", added_stat(*rd, rp, &RunResult::ttft, &Dist::p50)},
        {"ttft_p99_ms", added_stat(*rd, rp, &RunResult::ttft, &Dist::p99)},
        {"gap_p50_ms", added_stat(*rd, rp, &RunResult::gap_excess, &Dist::p50)},
        {"gap_p99_ms", added_stat(*rd, rp, &RunResult::gap_excess, &Dist::p99)},
    };
    for (const auto& [key, value] : added_figures) {
      const Poco::Dynamic::Var v = value ? Poco::Dynamic::Var(round3(*value)) : Poco::Dynamic::Var();
      summary->set(std::string("added_") + key, v);
      add->set(key, v);
    }
  }
  if (sampler) {
    summary->set("rss_before_mib", round3(kib_to_mib(sampler->before_kib())));
    summary->set("rss_peak_mib", round3(kib_to_mib(sampler->peak_kib())));
  }
  root->set("summary", summary);
  if (rd) root->set("direct", run_json(*rd, true));
  root->set("proxy", run_json(rp, true));
  if (rd) root->set("added", add);
  if (sampler) root->set("proxy_process", sampler->to_json());
  write_json(o.json_path, root);
  return kExitOk;
}

int mode_large(const Options& o) {
  const std::uint64_t bytes = *o.bytes;
  RequestSpec spec;
  spec.body = request_body(o);
  spec.mock_headers = {{"x-mock-large-bytes", std::to_string(bytes)}};
  spec.expected_events = (bytes + kMockLargePiece - 1) / kMockLargePiece + 2;
  spec.record_times = 1;  // only the first event's arrival: read everything, keep nothing
  spec.timeout_s = o.timeout_s;
  spec.buffer_bytes = 65536;

  const Endpoint target = make_endpoint("proxy", "--target", o.target, o.path, o.headers, o.proxy_headers);
  std::optional<Endpoint> direct;
  if (!o.direct.empty())
    direct = make_endpoint("direct", "--direct", o.direct, o.direct_path, o.headers, o.direct_headers);
  std::unique_ptr<ProcSampler> sampler;
  if (o.pid) {
    ProcStatus st;
    if (!read_proc_status(o.pid, st)) throw UsageError{"--pid " + std::to_string(o.pid) + ": no such process"};
    sampler = std::make_unique<ProcSampler>(o.pid, *o.sample_ms);
  }
  std::printf("glmp-stream-load large: one streamed response of %llu content bytes%s\n",
              static_cast<unsigned long long>(bytes), direct ? " (direct, then proxy)" : "");
  std::fflush(stdout);

  const double load_before = loadavg_1m();
  const double busy_before = check_machine_idle();
  std::fflush(stdout);
  std::optional<RunResult> rd;
  if (direct) {
    rd = run_set(*direct, spec, 1, 0, 0, o.stack_kib);
    std::this_thread::sleep_for(std::chrono::milliseconds(o.settle_ms));
  }
  if (sampler) sampler->start();
  const RunResult rp = run_set(target, spec, 1, 0, 0, o.stack_kib);
  if (sampler) sampler->stop();

  auto seconds = [](const RunResult& r) { return r.duration.n ? r.duration.max / 1000.0 : 0.0; };
  auto mbps = [&](const RunResult& r) {
    const double s = seconds(r);
    return s > 0 ? static_cast<double>(r.bytes) / s / 1e6 : 0.0;
  };
  auto dcol = [&](auto f) { return rd ? f(*rd) : std::string("-"); };
  std::printf("\n");
  print_row("", "direct", "proxy", "");
  print_row("errors", dcol([](const RunResult& r) { return std::to_string(r.errors); }), std::to_string(rp.errors), "");
  print_row("body bytes received", dcol([](const RunResult& r) { return std::to_string(r.bytes); }),
            std::to_string(rp.bytes), "");
  print_row("seconds", dcol([&](const RunResult& r) { return fmt(seconds(r)); }), fmt(seconds(rp)), "");
  print_row("MB/s (10^6 B/s)", dcol([&](const RunResult& r) { return fmt(mbps(r), 1); }), fmt(mbps(rp), 1), "");
  if (sampler) {
    std::printf("  proxy (pid %ld): RSS before %.1f MiB, peak %.1f MiB, growth %.1f MiB, after %.1f MiB "
                "(%ld samples, every %llu ms); CPU %.2f s\n",
                o.pid, kib_to_mib(sampler->before_kib()), kib_to_mib(sampler->peak_kib()),
                kib_to_mib(sampler->peak_kib() - sampler->before_kib()), kib_to_mib(sampler->after_kib()),
                sampler->samples(), static_cast<unsigned long long>(*o.sample_ms),
                sampler->cpu_s());
  }
  for (const RunResult* r : std::initializer_list<const RunResult*>{rd ? &*rd : nullptr, &rp}) {
    if (!r) continue;
    for (const auto& [msg, count] : r->error_samples)
      std::printf("  %s error (x%d): %s\n", r->label.c_str(), count, msg.c_str());
  }
  std::fflush(stdout);

  auto side = [&](const RunResult& r) {
    JsonObj j = new_object();
    j->set("errors", r.errors);
    j->set("error", r.error_samples.empty() ? std::string() : r.error_samples.front().first);
    j->set("bytes", static_cast<Poco::UInt64>(r.bytes));
    j->set("events", static_cast<Poco::UInt64>(r.events));
    j->set("seconds", round3(seconds(r)));
    j->set("mb_per_s", round3(mbps(r)));
    j->set("ttfb_ms", round3(r.ttft.p50));
    j->set("client_cpu_s", round3(r.client_cpu_s));
    return j;
  };
  JsonObj root = new_object();
  root->set("mode", "large");
  JsonObj params = new_object();
  params->set("bytes", static_cast<Poco::UInt64>(bytes));
  params->set("target", o.target + o.path);
  params->set("direct", direct ? o.direct + o.direct_path : std::string());
  params->set("sample_ms", static_cast<Poco::UInt64>(*o.sample_ms));
  params->set("loadavg_1m_before", round3(load_before));
  params->set("machine_cpu_busy_pct_before", round3(busy_before));
  params->set("cpus", static_cast<Poco::UInt64>(std::thread::hardware_concurrency()));
  root->set("params", params);
  JsonObj summary = new_object();
  summary->set("bytes", static_cast<Poco::UInt64>(bytes));
  summary->set("errors", rp.errors);
  summary->set("mb_per_s", round3(mbps(rp)));
  if (rd) summary->set("direct_mb_per_s", round3(mbps(*rd)));
  if (sampler) {
    summary->set("rss_before_mib", round3(kib_to_mib(sampler->before_kib())));
    summary->set("rss_peak_mib", round3(kib_to_mib(sampler->peak_kib())));
    summary->set("rss_growth_mib", round3(kib_to_mib(sampler->peak_kib() - sampler->before_kib())));
  }
  root->set("summary", summary);
  if (rd) root->set("direct", side(*rd));
  root->set("proxy", side(rp));
  if (sampler) root->set("proxy_process", sampler->to_json());
  write_json(o.json_path, root);
  return kExitOk;
}

int mode_rss(const Options& o) {
  ProcStatus st;
  if (!read_proc_status(o.pid, st)) throw UsageError{"--pid " + std::to_string(o.pid) + ": no such process"};
  std::printf("%.2f\n", kib_to_mib(st.rss_kib));
  JsonObj root = new_object();
  root->set("mode", "rss");
  root->set("pid", o.pid);
  root->set("rss_mib", round3(kib_to_mib(st.rss_kib)));
  root->set("rss_kib", st.rss_kib);
  root->set("vm_hwm_mib", round3(kib_to_mib(st.hwm_kib)));
  root->set("threads", st.threads);
  write_json(o.json_path, root);
  return kExitOk;
}

// Each stream holds one socket: raise the soft RLIMIT_NOFILE to the hard limit.
bool raise_fd_limit(std::uint64_t needed) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return true;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed) {
    std::cerr << "glmp-stream-load: RLIMIT_NOFILE is " << rl.rlim_cur << " (hard " << rl.rlim_max << "), this run needs "
              << needed << " file descriptors: raise the hard limit (ulimit -Hn) or use fewer --streams\n";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a peer that closes early must be an error figure, not a crash
  try {
    const Options o = parse_args(argc, argv);
    if (o.mode == "rss") return mode_rss(o);
    if (!raise_fd_limit((o.mode == "streams" ? *o.streams : 1) + 64)) return kExitFailure;
    return o.mode == "streams" ? mode_streams(o) : mode_large(o);
  } catch (const UsageError& e) {
    std::cerr << "glmp-stream-load: " << e.message << "\n" << kUsage;
    return kExitUsage;
  } catch (const Poco::Exception& e) {
    std::cerr << "glmp-stream-load: " << e.displayText() << "\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "glmp-stream-load: " << e.what() << "\n";
    return kExitFailure;
  }
}
