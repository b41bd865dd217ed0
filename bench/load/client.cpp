// glmp-load run: the event-driven load client (scenarios constant, ramp, spike, soak, idle,
// large). See README.md next to this file for every flag and figure.
//
// Model: --threads epoll loops (default 1). A scenario is a schedule of phases, each with a
// target concurrency; every virtual user ("slot") is one keep-alive connection that sends a
// request, reads the response with llhttp (SSE events are timestamped as their bytes arrive) and
// sends the next, while its index is below the schedule's concurrency. A controller thread
// (main) opens and closes the measured window and samples the processes given with --pid.

#include <arpa/inet.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common.hpp"
#include "loop.hpp"

namespace glmp::load {
namespace {

using Json = nlohmann::ordered_json;
constexpr std::int64_t kSec = 1000000000;
constexpr std::int64_t kMs = 1000000;

constexpr const char* kRunUsage = R"(usage: glmp-load run --target HOST:PORT [--scenario constant|ramp|spike|soak|idle|large]
  what:    [--path /v1/chat/completions] [--header "Name: value"]... [--model glm-4.7]
           [--body-tag TEXT] [--vary-body N (N consecutive requests share a message; 1: all differ)]
           [--stream] [--events 50] [--gap-ms 20] [--mix 0.2 (soak: share of streamed requests)]
  load:    [--concurrency 10] [--duration 10] [--warmup 1] [--requests N] [--rate RPS]
           [--ramp-up-ms 0] [--new-connection] [--threads 1] [--timeout-s T]
  ramp:    [--from 1]                      concurrency grows from --from to --concurrency
  spike:   [--base C/10] [--spike-at D/3] [--spike-for D/3]
  idle:    [--connections 1000] [--probes 20] [--probe-get PATH] [--hold-s 1]
  large:   [--bytes 100000000] [--rate-kbps 100] [--max-seconds 0] [--rcvbuf 65536]
  report:  [--pid NAME=PID]... [--sample-ms 1000] [--json FILE] [--label TEXT] [--quiet]
Exit: 0 the run completed (errors are a figure), 1 it could not be done, 2 usage error.
)";

// --- Options ------------------------------------------------------------------------------------

struct PidArg {
  std::string name;
  long pid = 0;
};

struct Options {
  std::string scenario = "constant";
  Address target;
  std::string path = "/v1/chat/completions";
  std::vector<Header> headers;
  std::string model = "glm-4.7";
  std::string body_tag;        // appended to the message: requests identical to each other, not to another run's
  std::uint64_t vary_body = 0;  // N: request i's message ends in " #(i / N)"; 1: no two bodies alike
  bool stream = false;
  std::uint64_t events = 50;
  std::uint64_t gap_ms = 20;
  std::optional<double> mix;
  int concurrency = 10;
  std::optional<double> duration_s;  // none with --requests: run until that many are answered
  std::optional<double> warmup_s;
  std::uint64_t requests = 0;
  double rate = 0;
  std::uint64_t ramp_up_ms = 0;
  bool new_connection = false;
  int threads = 1;
  std::optional<double> timeout_s;
  int from = 1;
  std::optional<int> base;
  std::optional<double> spike_at_s, spike_for_s;
  int connections = 1000;
  int probes = 20;
  std::string probe_get;
  double hold_s = 1;
  std::uint64_t bytes = 100000000;
  double rate_kbps = 100;
  double max_seconds = 0;
  int rcvbuf = 65536;
  std::vector<PidArg> pids;
  std::uint64_t sample_ms = 1000;
  std::string json_path;
  std::string label;
  bool quiet = false;
};

Options parse_run_args(int argc, char** argv) {
  Options o;
  bool have_target = false;
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kRunUsage, stdout);
      std::exit(0);
    }
    if (flag == "--stream") {
      o.stream = true;
      continue;
    }
    if (flag == "--new-connection") {
      o.new_connection = true;
      continue;
    }
    if (flag == "--quiet") {
      o.quiet = true;
      continue;
    }
    std::string v;
    if (const auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      v = flag.substr(eq + 1);
      flag.resize(eq);
    } else {
      if (i + 1 >= argc) throw UsageError{flag + ": missing value"};
      v = argv[++i];
    }
    auto u = [&](std::uint64_t lo, std::uint64_t hi) { return parse_uint(flag, v, lo, hi); };
    auto d = [&](double lo, double hi) { return parse_double(flag, v, lo, hi); };
    if (flag == "--scenario") {
      if (v != "constant" && v != "ramp" && v != "spike" && v != "soak" && v != "idle" && v != "large")
        throw UsageError{"--scenario: one of constant, ramp, spike, soak, idle, large (got '" + v + "')"};
      o.scenario = v;
    } else if (flag == "--target") {
      o.target = parse_address(flag, v);
      have_target = true;
    } else if (flag == "--path") o.path = v;
    else if (flag == "--header") o.headers.push_back(parse_header(flag, v));
    else if (flag == "--model") o.model = v;
    else if (flag == "--body-tag") o.body_tag = v;
    else if (flag == "--vary-body") o.vary_body = u(0, 1ULL << 40);
    else if (flag == "--events") o.events = u(0, 10000000);
    else if (flag == "--gap-ms") o.gap_ms = u(0, 3600000);
    else if (flag == "--mix") o.mix = d(0, 1);
    else if (flag == "--concurrency" || flag == "-c") o.concurrency = static_cast<int>(u(1, 200000));
    else if (flag == "--duration") o.duration_s = d(0.1, 7 * 86400);
    else if (flag == "--warmup") o.warmup_s = d(0, 86400);
    else if (flag == "--requests") o.requests = u(1, 1ULL << 40);
    else if (flag == "--rate") o.rate = d(0, 1e7);
    else if (flag == "--ramp-up-ms") o.ramp_up_ms = u(0, 3600000);
    else if (flag == "--threads") o.threads = static_cast<int>(u(1, 64));
    else if (flag == "--timeout-s") o.timeout_s = d(0.1, 86400);
    else if (flag == "--from") o.from = static_cast<int>(u(1, 200000));
    else if (flag == "--base") o.base = static_cast<int>(u(1, 200000));
    else if (flag == "--spike-at") o.spike_at_s = d(0, 86400);
    else if (flag == "--spike-for") o.spike_for_s = d(0.1, 86400);
    else if (flag == "--connections") o.connections = static_cast<int>(u(1, 200000));
    else if (flag == "--probes") o.probes = static_cast<int>(u(1, 100000));
    else if (flag == "--probe-get") o.probe_get = v;
    else if (flag == "--hold-s") o.hold_s = d(0, 3600);
    else if (flag == "--bytes") o.bytes = u(0, 1ULL << 40);
    else if (flag == "--rate-kbps") o.rate_kbps = d(0, 1e9);
    else if (flag == "--max-seconds") o.max_seconds = d(0, 86400);
    else if (flag == "--rcvbuf") o.rcvbuf = static_cast<int>(u(0, 64 << 20));
    else if (flag == "--pid") {
      const auto eq = v.find('=');
      PidArg p;
      p.name = eq == std::string::npos ? "proc" + std::to_string(o.pids.size()) : v.substr(0, eq);
      p.pid = static_cast<long>(parse_uint(flag, eq == std::string::npos ? v : v.substr(eq + 1), 1, 1ULL << 31));
      if (!read_proc(p.pid).ok) throw UsageError{"--pid " + v + ": no such process"};
      o.pids.push_back(p);
    } else if (flag == "--sample-ms") o.sample_ms = u(10, 600000);
    else if (flag == "--json") o.json_path = v;
    else if (flag == "--label") o.label = v;
    else throw UsageError{"run: unknown flag '" + flag + "'"};
  }
  if (!have_target) throw UsageError{"run: --target HOST:PORT is required"};
  if (o.path.empty() || o.path[0] != '/') throw UsageError{"--path must start with '/'"};
  if (!o.probe_get.empty() && o.probe_get[0] != '/') throw UsageError{"--probe-get must start with '/'"};
  if (o.model.find_first_of("\"\\") != std::string::npos) throw UsageError{"--model: no quotes or backslashes"};
  if (o.body_tag.find_first_of("\"\\") != std::string::npos || o.body_tag.find_first_of("\r\n\t") != std::string::npos)
    throw UsageError{"--body-tag: no quotes, backslashes or control characters"};
  if (!o.duration_s && !(o.requests && o.scenario == "constant")) o.duration_s = 10;
  if (o.scenario == "soak") {
    if (!o.mix) o.mix = 0.2;
    if (!o.warmup_s) o.warmup_s = std::min(60.0, *o.duration_s / 5);
  }
  if (!o.mix) o.mix = o.stream ? 1.0 : 0.0;
  if (!o.warmup_s) o.warmup_s = o.duration_s ? 1.0 : 0.0;
  if (!o.timeout_s) o.timeout_s = 30.0 + (*o.mix > 0 ? static_cast<double>(o.events * o.gap_ms) / 1000.0 : 0.0);
  if (o.scenario == "ramp" && o.from > o.concurrency) throw UsageError{"--from must not exceed --concurrency"};
  return o;
}

// --- Requests -------------------------------------------------------------------------------------

// `suffix` (--vary-body: " #k") goes after the --body-tag in the message.
std::string build_request(const Options& o, bool stream, const std::string& path, const std::vector<Header>& extra,
                          bool get = false, const std::string& suffix = {}) {
  std::string body;
  if (!get) {
    body = "{\"model\":\"" + o.model + "\"";
    if (stream) body += ",\"stream\":true";
    body += ",\"messages\":[{\"role\":\"user\",\"content\":\"Hello, benchmark";
    if (!o.body_tag.empty()) body += " " + o.body_tag;
    body += suffix + "\"}],\"max_tokens\":64}";
  }
  std::string r = std::string(get ? "GET " : "POST ") + path + " HTTP/1.1\r\nHost: " + o.target.host_header() + "\r\n";
  if (!get) r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  if (stream) r += "Accept: text/event-stream\r\n";
  for (const auto& h : o.headers) r += h.name + ": " + h.value + "\r\n";
  for (const auto& h : extra) r += h.name + ": " + h.value + "\r\n";
  r += "\r\n";
  r += body;
  return r;
}

// --- Schedule ------------------------------------------------------------------------------------

struct Phase {
  std::string name;
  std::int64_t start = 0;  // ns from the run's start
  std::int64_t end = 0;
  int c_from = 0;
  int c_to = 0;
  bool warmup = false;
};

struct Schedule {
  std::vector<Phase> phases;
  bool count_based = false;
  int max_concurrency = 0;

  int phase_at(std::int64_t t) const {
    for (std::size_t i = 0; i < phases.size(); ++i)
      if (t >= phases[i].start && t < phases[i].end) return static_cast<int>(i);
    return -1;
  }
  int concurrency_at(std::int64_t t) const {
    const int i = phase_at(t);
    if (i < 0) return 0;
    const Phase& p = phases[static_cast<std::size_t>(i)];
    if (p.c_from == p.c_to || p.end == INT64_MAX) return p.c_from;
    const double f = static_cast<double>(t - p.start) / static_cast<double>(p.end - p.start);
    return static_cast<int>(std::lround(p.c_from + f * (p.c_to - p.c_from)));
  }
  std::int64_t window_start() const {
    for (const auto& p : phases)
      if (!p.warmup) return p.start;
    return 0;
  }
  std::int64_t window_end() const { return phases.empty() ? 0 : phases.back().end; }
};

Schedule make_schedule(const Options& o) {
  Schedule s;
  const auto ns = [](double seconds) { return static_cast<std::int64_t>(seconds * 1e9); };
  const std::int64_t w = ns(*o.warmup_s);
  const std::int64_t d = ns(o.duration_s.value_or(0));
  const int c = o.concurrency;
  auto add = [&](std::string name, std::int64_t start, std::int64_t len, int from, int to, bool warm = false) {
    if (len > 0) s.phases.push_back(Phase{std::move(name), start, start + len, from, to, warm});
  };
  if (o.scenario == "idle") {
    s.count_based = true;
    s.phases.push_back(Phase{"open", 0, INT64_MAX, o.connections, o.connections, false});
    s.max_concurrency = o.connections;
    return s;
  }
  if (!o.duration_s) {
    // --requests without --duration: run until that many have been answered.
    s.count_based = true;
    s.phases.push_back(Phase{"run", 0, INT64_MAX, c, c, false});
    s.max_concurrency = c;
    return s;
  }
  if (o.scenario == "constant" || o.scenario == "soak") {
    add("warmup", 0, w, c, c, true);
    add(o.scenario == "soak" ? "soak" : "steady", w, d, c, c);
  } else if (o.scenario == "ramp") {
    add("warmup", 0, w, o.from, o.from, true);
    for (int q = 0; q < 4; ++q) {
      const int a = o.from + (c - o.from) * q / 4;
      const int b = o.from + (c - o.from) * (q + 1) / 4;
      add("ramp " + std::to_string(q + 1) + "/4", w + d * q / 4, d / 4, a, b);
    }
  } else if (o.scenario == "spike") {
    const int base = o.base.value_or(std::max(1, c / 10));
    const std::int64_t at = o.spike_at_s ? ns(*o.spike_at_s) : d / 3;
    const std::int64_t len = o.spike_for_s ? ns(*o.spike_for_s) : d / 3;
    add("warmup", 0, w, base, base, true);
    add("before", w, std::min(at, d), base, base);
    add("spike", w + at, std::min(len, d - at), c, c);
    add("after", w + at + len, d - at - len, base, base);
  }
  s.max_concurrency = 0;
  for (const auto& p : s.phases) s.max_concurrency = std::max({s.max_concurrency, p.c_from, p.c_to});
  return s;
}

// --- Statistics ---------------------------------------------------------------------------------

// Two ways to attribute a request to a phase (or to the measured window): `completed` and
// `body_bytes` by the time it ended (throughput: RPS, CPU per request); everything else by
// overlap: every request that was in flight at any time during the phase counts (the run waits
// for the requests in flight when the window closes). A request that stalls across the whole
// window therefore shows in the latency and error figures instead of dropping out of them.
// Warm-up phases count requests by start time only.
struct PhaseStats {
  std::uint64_t completed = 0, body_bytes = 0;                   // by end time
  std::uint64_t measured = 0, ok = 0, errors = 0, streams = 0;  // by overlap
  std::uint64_t events = 0;                                      // by arrival time
  Histogram latency, ttft, gap_excess, connect;                 // by overlap (gaps: arrival)
  void merge(const PhaseStats& o) {
    completed += o.completed;
    measured += o.measured;
    ok += o.ok;
    errors += o.errors;
    events += o.events;
    body_bytes += o.body_bytes;
    streams += o.streams;
    latency.merge(o.latency);
    ttft.merge(o.ttft);
    gap_excess.merge(o.gap_excess);
    connect.merge(o.connect);
  }
};

struct Second {
  std::uint64_t completed = 0, errors = 0, events = 0;
  std::uint64_t lat_sum_ns = 0, lat_max_ns = 0;
};

struct ErrorLog {
  std::map<std::string, std::uint64_t> kinds;
  std::map<std::string, std::uint64_t> samples;  // at most 20 distinct messages
  void add(const std::string& kind, const std::string& msg) {
    ++kinds[kind];
    if (samples.size() < 20 || samples.count(msg)) ++samples[msg];
  }
  void merge(const ErrorLog& o) {
    for (const auto& [k, n] : o.kinds) kinds[k] += n;
    for (const auto& [m, n] : o.samples)
      if (samples.size() < 20 || samples.count(m)) samples[m] += n;
  }
};

Json hist_json(const Histogram& h) {
  if (h.count() == 0) return nullptr;
  auto us = [](std::uint64_t ns) { return std::round(static_cast<double>(ns) / 100.0) / 10.0; };
  return Json{{"n", h.count()},         {"mean", us(static_cast<std::uint64_t>(h.mean()))},
              {"min", us(h.min())},     {"p50", us(h.percentile(50))},
              {"p95", us(h.percentile(95))}, {"p99", us(h.percentile(99))},
              {"p999", us(h.percentile(99.9))}, {"max", us(h.max())}};
}

// --- The load engine ------------------------------------------------------------------------------

struct Shared {
  const Options& o;
  const Schedule& sched;
  std::string request_plain, request_stream;
  std::int64_t t_start = 0;
  std::atomic<bool> stop_issuing{false};
  std::atomic<std::int64_t> quota{INT64_MAX};
  std::atomic<std::uint64_t> events_in_window{0};
  std::atomic<std::uint64_t> next_body{0};  // --vary-body: the next request's number, in start order
  bool hold_after_first = false;  // idle: one request per slot, then hold the connection open
};

class Worker;

class Conn final : public Loop::Handler {
 public:
  enum class State { Parked, Waiting, Connecting, Sending, Receiving, Holding, Finished };

  Conn(Worker& w, int g);
  ~Conn() override { close_fd(); }
  void on_io(std::uint32_t events) override;
  void begin();          // start a request now (slot allowed, quota claimed)
  void try_start();      // claim quota / pace / park
  void check_timeout(std::int64_t now);
  void close_fd();

  State state = State::Parked;
  int g;
  std::uint64_t done_in_window = 0;
  bool started_once = false;
  std::int64_t first_start_at = 0;  // ramp-up: not before this (ns from run start)

  // llhttp callbacks
  int on_headers_complete();
  int on_body(const char* at, std::size_t n);
  int on_message_complete() {
    complete_ = true;
    return HPE_PAUSED;
  }

 private:
  void connect_now();
  void send_some();
  void read_some();
  void finish(const char* kind, const std::string& msg);
  void scan(const char* p, std::size_t n);
  void classify_line(bool ended);
  void set_interest(std::uint32_t ev);

  Worker& w_;
  int fd_ = -1;
  std::uint32_t interest_ = 0;
  llhttp_t parser_{};
  const std::string* req_ = nullptr;
  std::string own_req_;  // --vary-body: this request's own bytes
  std::size_t sent_ = 0;
  bool stream_ = false;
  bool complete_ = false;
  bool fresh_conn_ = false;
  std::int64_t t_start_ = 0, t_connected_ = 0, t_first_event_ = 0, t_last_event_ = 0, deadline_ = 0, t_read_ = 0;
  std::uint64_t data_events_ = 0, body_bytes_ = 0, resp_bytes_ = 0;
  int status_ = 0;
  bool done_ = false, error_event_ = false;
  std::string error_body_;
  // SSE line scanner: the first 16 bytes of the current line
  char head_[16] = {};
  std::size_t head_len_ = 0;
  bool skipping_ = false;
};

class Worker {
 public:
  Worker(Shared& s, int index, int nthreads) : shared(s) {
    for (int g = index; g < s.sched.max_concurrency; g += nthreads) conns.push_back(std::make_unique<Conn>(*this, g));
    phases.resize(s.sched.phases.size());
    rng_ = 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(index + 1);
    const double ramp = static_cast<double>(s.o.ramp_up_ms) * 1e6;
    for (auto& c : conns)
      c->first_start_at = s.sched.max_concurrency > 0
                              ? static_cast<std::int64_t>(ramp * c->g / s.sched.max_concurrency)
                              : 0;
  }

  void run() {
    loop.run([this] { tick(); }, 5);
    for (auto& c : conns) c->close_fd();
  }

  void tick() {
    const std::int64_t now = now_ns();
    const std::int64_t t = now - shared.t_start;
    const bool stopping = shared.stop_issuing.load(std::memory_order_relaxed);
    const int target = shared.sched.concurrency_at(t);
    const bool check_timeouts = now - last_timeout_check_ >= 100 * kMs;
    if (check_timeouts) last_timeout_check_ = now;
    for (auto& c : conns) {
      if (c->state == Conn::State::Parked && !stopping && c->g < target && t >= c->first_start_at) c->try_start();
      if (check_timeouts) c->check_timeout(now);
    }
  }

  bool pick_stream() {
    const double mix = *shared.o.mix;
    if (mix >= 1.0) return true;
    if (mix <= 0.0) return false;
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return static_cast<double>(rng_ >> 11) / 9007199254740992.0 < mix;
  }

  // Pacing (--rate): the time this loop may start its next request.
  std::int64_t next_send(std::int64_t now) {
    if (shared.o.rate <= 0) return now;
    const auto interval = static_cast<std::int64_t>(1e9 * shared.o.threads / shared.o.rate);
    const std::int64_t t = std::max(now, next_send_);
    next_send_ = t + interval;
    return t;
  }

  void record(std::int64_t t_begin, std::int64_t t_end, std::int64_t ttft, std::int64_t connect,
              std::uint64_t body_bytes, bool stream, const char* kind, const std::string& msg) {
    const std::int64_t latency = t_end - t_begin;
    const std::int64_t t = t_end - shared.t_start;
    const auto sec = static_cast<std::size_t>(std::max<std::int64_t>(0, t) / kSec);
    if (sec >= seconds.size()) seconds.resize(sec + 1);
    Second& s = seconds[sec];
    ++s.completed;
    if (kind) ++s.errors;
    s.lat_sum_ns += static_cast<std::uint64_t>(latency);
    s.lat_max_ns = std::max(s.lat_max_ns, static_cast<std::uint64_t>(latency));
    if (t > 0) last_completion = std::max(last_completion, t_end);
    if (kind) errors.add(kind, msg);
    const std::int64_t b = t_begin - shared.t_start;
    auto add = [&](PhaseStats& p, std::int64_t start, std::int64_t end, bool by_start_only) {
      if (t >= start && t < end) {
        ++p.completed;
        p.body_bytes += body_bytes;
      }
      if (by_start_only ? !(b >= start && b < end) : !(b < end && t >= start)) return;
      ++p.measured;
      if (stream) ++p.streams;
      if (kind) {
        ++p.errors;
        return;
      }
      ++p.ok;
      p.latency.add(static_cast<std::uint64_t>(latency));
      if (stream && ttft >= 0) p.ttft.add(static_cast<std::uint64_t>(ttft));
      if (connect >= 0) p.connect.add(static_cast<std::uint64_t>(connect));
    };
    for (std::size_t i = 0; i < phases.size(); ++i) {
      const Phase& ph = shared.sched.phases[i];
      add(phases[i], ph.start, ph.end, ph.warmup);
    }
    add(window, shared.sched.window_start(), shared.sched.window_end(), false);
  }

  bool in_window(std::int64_t t_abs) const {
    const std::int64_t t = t_abs - shared.t_start;
    return t >= shared.sched.window_start() && t < shared.sched.window_end();
  }

  void record_event(std::int64_t t_event, std::int64_t gap_excess) {
    const std::int64_t t = t_event - shared.t_start;
    const auto sec = static_cast<std::size_t>(std::max<std::int64_t>(0, t) / kSec);
    if (sec >= seconds.size()) seconds.resize(sec + 1);
    ++seconds[sec].events;
    auto add = [&](PhaseStats& p) {
      ++p.events;
      if (gap_excess != INT64_MIN) p.gap_excess.add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, gap_excess)));
    };
    if (const int pi = shared.sched.phase_at(t); pi >= 0) add(phases[static_cast<std::size_t>(pi)]);
    if (in_window(t_event)) add(window);
  }

  Shared& shared;
  Loop loop;
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<PhaseStats> phases;
  PhaseStats window;  // the measured window (every non-warm-up phase)
  std::vector<Second> seconds;
  ErrorLog errors;
  std::atomic<int> active{0};  // slots between their first step and parked / held / finished
  std::int64_t last_completion = 0;
  std::uint64_t held = 0, held_closed = 0;  // idle scenario

 private:
  std::uint64_t rng_;
  std::int64_t next_send_ = 0;
  std::int64_t last_timeout_check_ = 0;
};

llhttp_settings_t make_client_settings() {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_headers_complete = [](llhttp_t* p) { return static_cast<Conn*>(p->data)->on_headers_complete(); };
  s.on_body = [](llhttp_t* p, const char* at, std::size_t n) { return static_cast<Conn*>(p->data)->on_body(at, n); };
  s.on_message_complete = [](llhttp_t* p) { return static_cast<Conn*>(p->data)->on_message_complete(); };
  return s;
}

const llhttp_settings_t& client_settings() {
  static const llhttp_settings_t s = make_client_settings();
  return s;
}

Conn::Conn(Worker& w, int index) : g(index), w_(w) {}

void Conn::close_fd() {
  if (fd_ < 0) return;
  w_.loop.remove(fd_);
  ::close(fd_);
  fd_ = -1;
  interest_ = 0;
}

void Conn::set_interest(std::uint32_t ev) {
  if (ev == interest_) return;
  if (interest_ == 0) w_.loop.add(fd_, ev, this);
  else w_.loop.modify(fd_, ev, this);
  interest_ = ev;
}

void Conn::try_start() {
  Shared& s = w_.shared;
  if (state == State::Parked) {
    state = State::Waiting;
    w_.active.fetch_add(1);
  }
  const std::int64_t now = now_ns();
  const std::int64_t t = now - s.t_start;
  if (s.stop_issuing.load(std::memory_order_relaxed) || g >= s.sched.concurrency_at(t)) {
    state = State::Parked;
    w_.active.fetch_sub(1);
    return;
  }
  if (s.quota.fetch_sub(1, std::memory_order_relaxed) <= 0) {
    state = State::Finished;
    w_.active.fetch_sub(1);
    return;
  }
  const std::int64_t at = w_.next_send(now);
  if (at > now + 100000) {
    state = State::Waiting;
    w_.loop.at(at, [this] {
      if (state == State::Waiting) begin();
    });
    return;
  }
  begin();
}

void Conn::begin() {
  Shared& s = w_.shared;
  started_once = true;
  stream_ = w_.pick_stream();
  req_ = stream_ ? &s.request_stream : &s.request_plain;
  if (s.o.vary_body > 0 && !s.hold_after_first) {
    const std::string suffix =
        " #" + std::to_string(s.next_body.fetch_add(1, std::memory_order_relaxed) / s.o.vary_body);
    own_req_ = stream_ ? build_request(s.o, true, s.o.path,
                                       {{"x-mock-chunks", std::to_string(s.o.events)},
                                        {"x-mock-delay-ms", std::to_string(s.o.gap_ms)}},
                                       false, suffix)
                       : build_request(s.o, false, s.o.path, {}, false, suffix);
    req_ = &own_req_;
  }
  sent_ = 0;
  complete_ = false;
  status_ = 0;
  data_events_ = body_bytes_ = resp_bytes_ = 0;
  done_ = error_event_ = false;
  error_body_.clear();
  head_len_ = 0;
  skipping_ = false;
  t_first_event_ = t_last_event_ = 0;
  t_start_ = now_ns();
  deadline_ = t_start_ + static_cast<std::int64_t>(*s.o.timeout_s * 1e9);
  llhttp_init(&parser_, HTTP_RESPONSE, &client_settings());
  parser_.data = this;
  if (fd_ < 0) {
    connect_now();
    return;
  }
  fresh_conn_ = false;
  t_connected_ = t_start_;
  state = State::Sending;
  send_some();
}

void Conn::connect_now() {
  fresh_conn_ = true;
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    finish("connect", std::string("socket: ") + std::strerror(errno));
    return;
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const sockaddr_in& a = w_.shared.o.target.addr;
  const int r = ::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  if (r == 0) {
    t_connected_ = now_ns();
    state = State::Sending;
    send_some();
    return;
  }
  if (errno != EINPROGRESS) {
    finish("connect", std::string("connect: ") + std::strerror(errno));
    return;
  }
  state = State::Connecting;
  set_interest(EPOLLOUT);
}

void Conn::send_some() {
  while (sent_ < req_->size()) {
    const ssize_t n = ::send(fd_, req_->data() + sent_, req_->size() - sent_, MSG_NOSIGNAL);
    if (n > 0) {
      sent_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_interest(EPOLLOUT | EPOLLRDHUP);
      return;
    }
    finish(fresh_conn_ ? "transport" : "closed", std::string("send: ") + std::strerror(errno));
    return;
  }
  state = State::Receiving;
  set_interest(EPOLLIN | EPOLLRDHUP);
}

void Conn::on_io(std::uint32_t events) {
  if (fd_ < 0) return;
  switch (state) {
    case State::Connecting: {
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
        finish("connect", std::string("connect: ") + std::strerror(err ? err : ECONNREFUSED));
        return;
      }
      t_connected_ = now_ns();
      state = State::Sending;
      send_some();
      return;
    }
    case State::Sending:
      if (events & (EPOLLERR | EPOLLHUP)) {
        finish(fresh_conn_ ? "transport" : "closed", "connection closed while sending");
        return;
      }
      send_some();
      return;
    case State::Receiving:
      read_some();
      return;
    case State::Holding: {
      // An idle connection: anything readable is the server closing it (or an unexpected byte).
      char buf[512];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      ++w_.held_closed;
      close_fd();
      return;
    }
    default:
      // Parked/Waiting/Finished with an open keep-alive connection: the server closed it.
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) close_fd();
      return;
  }
}

void Conn::read_some() {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      t_read_ = now_ns();
      resp_bytes_ += static_cast<std::size_t>(n);
      const llhttp_errno_t err = llhttp_execute(&parser_, buf, static_cast<std::size_t>(n));
      if (complete_) {
        finish(nullptr, "");
        return;
      }
      if (err != HPE_OK) {
        finish("transport", std::string("malformed response: ") + llhttp_errno_name(err) + " " +
                                (llhttp_get_error_reason(&parser_) ? llhttp_get_error_reason(&parser_) : ""));
        return;
      }
      if (static_cast<std::size_t>(n) < sizeof buf) return;
      continue;
    }
    if (n == 0) {
      t_read_ = now_ns();
      llhttp_finish(&parser_);  // completes a response delimited by the close
      if (complete_) {
        finish(nullptr, "");
        return;
      }
      if (resp_bytes_ == 0)
        finish(fresh_conn_ ? "transport" : "closed", "connection closed before any response byte");
      else
        finish("transport", "connection closed mid-response (" + std::to_string(resp_bytes_) + " bytes read)");
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    finish(resp_bytes_ == 0 && !fresh_conn_ ? "closed" : "transport", std::string("recv: ") + std::strerror(errno));
    return;
  }
}

int Conn::on_headers_complete() {
  status_ = parser_.status_code;
  return 0;
}

int Conn::on_body(const char* at, std::size_t n) {
  body_bytes_ += n;
  if (status_ < 200 || status_ > 299) {
    if (error_body_.size() < 160) error_body_.append(at, std::min(n, 160 - error_body_.size()));
    return 0;
  }
  if (stream_) scan(at, n);
  return 0;
}

// SSE: classify each line by its first bytes ("data:", "data: [DONE]", "data: {\"error\"");
// the rest of a line is skipped with memchr, so event size does not matter.
void Conn::scan(const char* p, std::size_t n) {
  while (n > 0) {
    if (skipping_) {
      const void* nl = std::memchr(p, '\n', n);
      if (!nl) return;
      const auto used = static_cast<std::size_t>(static_cast<const char*>(nl) - p) + 1;
      p += used;
      n -= used;
      skipping_ = false;
      head_len_ = 0;
      continue;
    }
    const char c = *p++;
    --n;
    if (c == '\n') {
      classify_line(true);
      head_len_ = 0;
      continue;
    }
    head_[head_len_++] = c;
    if (head_len_ == sizeof head_) {
      classify_line(false);
      skipping_ = true;
    }
  }
}

void Conn::classify_line(bool /*ended*/) {
  std::string_view line(head_, head_len_);
  if (line.rfind("data:", 0) != 0) return;
  line.remove_prefix(5);
  if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  ++data_events_;
  const std::int64_t t = t_read_;
  if (data_events_ == 1) t_first_event_ = t;
  std::int64_t excess = INT64_MIN;
  const Options& o = w_.shared.o;
  // Content events 1..N are the data events 2..N+1; each follows a gap-ms pause at the upstream.
  if (data_events_ >= 2 && data_events_ <= o.events + 1 && t_last_event_ > 0)
    excess = (t - t_last_event_) - static_cast<std::int64_t>(o.gap_ms) * kMs;
  t_last_event_ = t;
  w_.record_event(t, excess);
  if (line.rfind("[DONE]", 0) == 0) done_ = true;
  else if (line.rfind("{\"error\"", 0) == 0) error_event_ = true;
}

void Conn::finish(const char* kind, const std::string& msg) {
  const std::int64_t now = now_ns();
  std::string message = msg;
  const Options& o = w_.shared.o;
  if (!kind && (status_ < 200 || status_ > 299)) {
    kind = "status";
    message = "status " + std::to_string(status_) + ": " + error_body_;
  } else if (!kind && stream_) {
    if (error_event_) {
      kind = "error_event";
      message = "a data: {\"error\"...} event in the stream";
    } else if (!done_) {
      kind = "no_done";
      message = "stream ended without data: [DONE]";
    } else if (data_events_ < o.events + 3) {
      kind = "missing_events";
      message = "fewer than events + 3 data events";
    }
  }
  const std::int64_t ttft = t_first_event_ > 0 ? t_first_event_ - t_start_ : -1;
  const std::int64_t connect = fresh_conn_ && t_connected_ > 0 ? t_connected_ - t_start_ : -1;
  w_.record(t_start_, now, ttft, connect, body_bytes_, stream_, kind, message);
  if (w_.in_window(now)) ++done_in_window;
  const bool keep = !kind && !o.new_connection && llhttp_should_keep_alive(&parser_);
  if (!keep) close_fd();
  if (w_.shared.hold_after_first) {
    if (fd_ >= 0) {
      state = State::Holding;
      ++w_.held;
      set_interest(EPOLLIN | EPOLLRDHUP);
    } else {
      state = State::Finished;
    }
    w_.active.fetch_sub(1);
    return;
  }
  state = State::Waiting;
  if (kind) {  // back off a little: a dead target must not turn into a busy loop
    w_.loop.at(now + 10 * kMs, [this] {
      if (state == State::Waiting) try_start();
    });
    return;
  }
  if (fd_ >= 0) set_interest(EPOLLIN | EPOLLRDHUP);  // notice a server close while waiting
  try_start();
}

void Conn::check_timeout(std::int64_t now) {
  if ((state == State::Connecting || state == State::Sending || state == State::Receiving) && now > deadline_) {
    const char* what = state == State::Connecting ? "connect" : state == State::Sending ? "send" : "response";
    finish("timeout", std::string("no complete ") + what + " within --timeout-s");
  }
}

// --- Process sampling -------------------------------------------------------------------------------

struct Sample {
  double t_s;
  long rss_kib;
  long threads;
  std::int64_t cpu_us;
};

struct ProcTrack {
  PidArg arg;
  ProcSample at_start, at_end;
  std::vector<Sample> samples;
};

class Sampler {
 public:
  Sampler(std::vector<PidArg> pids, std::uint64_t interval_ms, std::int64_t t_start)
      : interval_ms_(interval_ms), t_start_(t_start) {
    for (auto& p : pids) tracks_.push_back(ProcTrack{p, {}, {}, {}});
  }
  ~Sampler() { stop(); }
  void start() {
    take();
    thread_ = std::thread([this] {
      while (!stop_flag_.load()) {
        for (std::uint64_t waited = 0; waited < interval_ms_ && !stop_flag_.load(); waited += 10)
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (!stop_flag_.load()) take();
      }
    });
  }
  void stop() {
    if (!thread_.joinable()) return;
    stop_flag_.store(true);
    thread_.join();
  }
  void take() {
    std::lock_guard lock(mu_);
    take_locked();
  }
  void mark_start() {
    std::lock_guard lock(mu_);
    for (auto& t : tracks_) t.at_start = read_proc(t.arg.pid);
    take_locked();
  }
  void mark_end() {
    std::lock_guard lock(mu_);
    for (auto& t : tracks_) t.at_end = read_proc(t.arg.pid);
    take_locked();
  }
  std::vector<ProcTrack> tracks() {
    std::lock_guard lock(mu_);
    return tracks_;
  }

 private:
  void take_locked() {
    const double t = static_cast<double>(now_ns() - t_start_) / 1e9;
    for (auto& tr : tracks_) {
      const ProcSample s = read_proc(tr.arg.pid);
      if (s.ok) tr.samples.push_back(Sample{t, s.rss_kib, s.threads, s.cpu_us});
    }
  }
  std::uint64_t interval_ms_;
  std::int64_t t_start_;
  std::vector<ProcTrack> tracks_;
  std::mutex mu_;
  std::atomic<bool> stop_flag_{false};
  std::thread thread_;
};

// a / b rounded to 1/scale, or null without a denominator.
Json ratio(std::int64_t a, std::uint64_t b, double scale) {
  if (b == 0) return nullptr;
  return std::round(scale * static_cast<double>(a) / static_cast<double>(b)) / scale;
}

double median_of(std::vector<long> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? static_cast<double>(v[n / 2]) : (static_cast<double>(v[n / 2 - 1]) + static_cast<double>(v[n / 2])) / 2;
}

// One process's figures over the window [w0, w1] (seconds from the run's start).
Json process_json(const ProcTrack& t, double w0, double w1, std::uint64_t requests, std::uint64_t events) {
  Json j;
  j["pid"] = t.arg.pid;
  if (!t.at_start.ok || !t.at_end.ok) {
    j["error"] = "process not readable at the window's start or end (exited?)";
    return j;
  }
  const std::int64_t cpu = t.at_end.cpu_us - t.at_start.cpu_us;
  const double window_us = (w1 - w0) * 1e6;
  j["cpu_us"] = cpu;
  j["cpu_pct"] = window_us > 0 ? std::round(1000.0 * static_cast<double>(cpu) / window_us) / 10.0 : 0.0;
  j["cpu_us_per_request"] = ratio(cpu, requests, 10);
  j["cpu_us_per_event"] = ratio(cpu, events, 100);
  long peak = std::max(t.at_start.rss_kib, t.at_end.rss_kib);
  long tpeak = std::max(t.at_start.threads, t.at_end.threads);
  std::vector<long> in_window;
  for (const auto& s : t.samples)
    if (s.t_s >= w0 - 1e-3 && s.t_s <= w1 + 1e-3) {
      peak = std::max(peak, s.rss_kib);
      tpeak = std::max(tpeak, s.threads);
      in_window.push_back(s.rss_kib);
    }
  j["rss_kib_start"] = t.at_start.rss_kib;
  j["rss_kib_end"] = t.at_end.rss_kib;
  j["rss_kib_peak"] = peak;
  j["rss_growth_kib"] = t.at_end.rss_kib - t.at_start.rss_kib;
  j["rss_peak_growth_kib"] = peak - t.at_start.rss_kib;
  // Trend: median of the window's last tenth of samples minus median of its first tenth (robust
  // to one sample taken while a burst of requests was allocating).
  if (in_window.size() >= 4) {
    const std::size_t k = std::max<std::size_t>(1, in_window.size() / 10);
    const std::vector<long> first(in_window.begin(), in_window.begin() + static_cast<std::ptrdiff_t>(k));
    const std::vector<long> last(in_window.end() - static_cast<std::ptrdiff_t>(k), in_window.end());
    j["rss_trend_kib"] = median_of(last) - median_of(first);
  } else {
    j["rss_trend_kib"] = t.at_end.rss_kib - t.at_start.rss_kib;
  }
  j["vm_hwm_kib"] = t.at_end.hwm_kib;
  j["threads_start"] = t.at_start.threads;
  j["threads_end"] = t.at_end.threads;
  j["threads_peak"] = tpeak;
  Json samples = Json::array();
  std::int64_t cpu0 = t.samples.empty() ? 0 : t.samples.front().cpu_us;
  for (const auto& s : t.samples)
    samples.push_back(Json::array({std::round(s.t_s * 1000) / 1000, s.rss_kib, s.threads, s.cpu_us - cpu0}));
  j["samples_fields"] = Json::array({"t_s", "rss_kib", "threads", "cpu_us"});
  j["samples"] = std::move(samples);
  return j;
}

void write_json(const std::string& path, const Json& j) {
  if (path.empty()) return;
  std::ofstream f(path);
  f << j.dump(1) << "\n";
  if (!f) throw std::runtime_error("cannot write " + path);
}

// --- Blocking single requests (idle probes, the large read) -------------------------------------------

struct Probe {
  bool ok = false;
  std::string error;
  std::int64_t latency_ns = 0;
  int status = 0;
};

struct ProbeParser {
  llhttp_t p{};
  bool complete = false;
  int status = 0;
  std::uint64_t body = 0;
};

Probe probe_once(const Options& o, const std::string& request, double timeout_s) {
  Probe r;
  const std::int64_t t0 = now_ns();
  const std::int64_t deadline = t0 + static_cast<std::int64_t>(timeout_s * 1e9);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r.error = std::string("socket: ") + std::strerror(errno);
    return r;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto wait = [&](short ev) {
    for (;;) {
      const std::int64_t left = deadline - now_ns();
      if (left <= 0) return false;
      pollfd p{fd, ev, 0};
      const int n = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left / kMs + 1, 1000)));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  };
  auto fail = [&](std::string e) {
    r.error = std::move(e);
    ::close(fd);
    return r;
  };
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&o.target.addr), sizeof o.target.addr) != 0) {
    if (errno != EINPROGRESS) return fail(std::string("connect: ") + std::strerror(errno));
    if (!wait(POLLOUT)) return fail("connect timeout");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return fail(std::string("connect: ") + std::strerror(err));
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) sent += static_cast<std::size_t>(n);
    else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait(POLLOUT)) return fail("send timeout");
    } else return fail(std::string("send: ") + std::strerror(errno));
  }
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_headers_complete = [](llhttp_t* p) {
    static_cast<ProbeParser*>(p->data)->status = p->status_code;
    return 0;
  };
  s.on_message_complete = [](llhttp_t* p) {
    static_cast<ProbeParser*>(p->data)->complete = true;
    return static_cast<int>(HPE_PAUSED);
  };
  ProbeParser pp;
  llhttp_init(&pp.p, HTTP_RESPONSE, &s);
  pp.p.data = &pp;
  char buf[16384];
  while (!pp.complete) {
    if (!wait(POLLIN)) return fail("response timeout");
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      const llhttp_errno_t e = llhttp_execute(&pp.p, buf, static_cast<std::size_t>(n));
      if (!pp.complete && e != HPE_OK) return fail(std::string("malformed response: ") + llhttp_errno_name(e));
    } else if (n == 0) {
      llhttp_finish(&pp.p);
      if (!pp.complete) return fail("closed mid-response");
    } else if (errno != EAGAIN && errno != EINTR) {
      return fail(std::string("recv: ") + std::strerror(errno));
    }
  }
  r.latency_ns = now_ns() - t0;
  r.status = pp.status;
  ::close(fd);
  r.ok = pp.status >= 200 && pp.status <= 299;
  if (!r.ok) r.error = "status " + std::to_string(pp.status);
  return r;
}

Json probes_json(const std::vector<Probe>& probes) {
  Histogram h;
  Json all = Json::array();
  std::uint64_t errors = 0;
  std::map<std::string, std::uint64_t> errs;
  for (const auto& p : probes) {
    if (p.ok) {
      h.add(static_cast<std::uint64_t>(p.latency_ns));
      all.push_back(std::round(static_cast<double>(p.latency_ns) / 100.0) / 10.0);
    } else {
      ++errors;
      ++errs[p.error];
    }
  }
  Json j = hist_json(h);
  if (j.is_null()) j = Json::object();
  j["errors"] = errors;
  j["error_samples"] = errs;
  j["latencies_us"] = std::move(all);
  return j;
}

// --- Result assembly ------------------------------------------------------------------------------

struct RunTotals {
  PhaseStats total;
  std::vector<PhaseStats> phases;
  std::vector<Second> seconds;
  ErrorLog errors;
  std::uint64_t held = 0, held_closed = 0;
  std::uint64_t slots = 0, slots_served = 0;  // connections, and those answered in the window
};

RunTotals merge_workers(const std::vector<std::unique_ptr<Worker>>& workers, const Schedule& sched) {
  RunTotals r;
  r.phases.resize(sched.phases.size());
  for (const auto& w : workers) {
    for (std::size_t i = 0; i < w->phases.size(); ++i) r.phases[i].merge(w->phases[i]);
    if (w->seconds.size() > r.seconds.size()) r.seconds.resize(w->seconds.size());
    for (std::size_t i = 0; i < w->seconds.size(); ++i) {
      Second& s = r.seconds[i];
      const Second& o = w->seconds[i];
      s.completed += o.completed;
      s.errors += o.errors;
      s.events += o.events;
      s.lat_sum_ns += o.lat_sum_ns;
      s.lat_max_ns = std::max(s.lat_max_ns, o.lat_max_ns);
    }
    r.errors.merge(w->errors);
    r.held += w->held;
    r.held_closed += w->held_closed;
    r.total.merge(w->window);
    for (const auto& c : w->conns) {
      ++r.slots;
      if (c->done_in_window) ++r.slots_served;
    }
  }
  return r;
}

Json traffic_json(const PhaseStats& p, double seconds) {
  Json j;
  j["completed"] = p.completed;
  j["measured"] = p.measured;
  j["ok"] = p.ok;
  j["errors"] = p.errors;
  j["streams"] = p.streams;
  j["events"] = p.events;
  j["rps"] = seconds > 0 ? std::round(10.0 * static_cast<double>(p.completed) / seconds) / 10.0 : 0.0;
  j["events_per_s"] = seconds > 0 ? std::round(10.0 * static_cast<double>(p.events) / seconds) / 10.0 : 0.0;
  j["body_bytes"] = p.body_bytes;
  j["latency_us"] = hist_json(p.latency);
  j["ttft_us"] = hist_json(p.ttft);
  j["gap_excess_us"] = hist_json(p.gap_excess);
  j["connect_us"] = hist_json(p.connect);
  return j;
}

void print_summary(const Json& j) {
  const auto num = [](const Json& v, int decimals) {
    return v.is_number() ? fixed(v.get<double>(), decimals) : std::string("-");
  };
  std::printf("glmp-load %s%s%s: ", j["scenario"].get<std::string>().c_str(),
              j["label"].get<std::string>().empty() ? "" : " ", j["label"].get<std::string>().c_str());
  if (j.contains("traffic")) {
    const Json& t = j["traffic"];
    std::printf("%s s, %llu done, %llu errors, %s rps", num(j["window_s"], 2).c_str(),
                static_cast<unsigned long long>(t["completed"].get<std::uint64_t>()),
                static_cast<unsigned long long>(t["errors"].get<std::uint64_t>()), num(t["rps"], 1).c_str());
    if (!t["latency_us"].is_null())
      std::printf(", latency p50/p95/p99 %s/%s/%s us", num(t["latency_us"]["p50"], 1).c_str(),
                  num(t["latency_us"]["p95"], 1).c_str(), num(t["latency_us"]["p99"], 1).c_str());
    if (!t["ttft_us"].is_null())
      std::printf(", TTFT p50/p99 %s/%s us, %llu events", num(t["ttft_us"]["p50"], 1).c_str(),
                  num(t["ttft_us"]["p99"], 1).c_str(), static_cast<unsigned long long>(t["events"].get<std::uint64_t>()));
  }
  std::printf("\n");
  if (j.contains("idle")) {
    const Json& i = j["idle"];
    std::printf("  idle: %llu of %d connections held, %llu closed by the server; probe p50 %s us (before: %s us)\n",
                static_cast<unsigned long long>(i["held"].get<std::uint64_t>()), i["connections"].get<int>(),
                static_cast<unsigned long long>(i["closed_by_server"].get<std::uint64_t>()),
                num(i["probe_with_idle_us"].value("p50", Json()), 1).c_str(),
                num(i["probe_before_us"].value("p50", Json()), 1).c_str());
  }
  if (j.contains("large")) {
    const Json& l = j["large"];
    std::printf("  large: %llu body bytes in %s s (%s kB/s), complete %s, errors %llu\n",
                static_cast<unsigned long long>(l["body_bytes"].get<std::uint64_t>()), num(l["seconds"], 1).c_str(),
                num(l["kb_per_s"], 1).c_str(), l["complete"].get<bool>() ? "yes" : "no",
                static_cast<unsigned long long>(l["errors"].get<std::uint64_t>()));
  }
  for (const auto& [name, p] : j["processes"].items()) {
    if (p.contains("error")) {
      std::printf("  %s: %s\n", name.c_str(), p["error"].get<std::string>().c_str());
      continue;
    }
    std::printf("  %s (pid %ld): CPU %s us/request, %s us/event, %s%% of a core; RSS %.1f -> %.1f MiB (peak %.1f); "
                "threads %ld -> %ld (peak %ld)\n",
                name.c_str(), p["pid"].get<long>(), num(p["cpu_us_per_request"], 1).c_str(),
                num(p["cpu_us_per_event"], 2).c_str(), num(p["cpu_pct"], 1).c_str(),
                p["rss_kib_start"].get<double>() / 1024, p["rss_kib_end"].get<double>() / 1024,
                p["rss_kib_peak"].get<double>() / 1024, p["threads_start"].get<long>(), p["threads_end"].get<long>(),
                p["threads_peak"].get<long>());
  }
  const Json& c = j["client"];
  std::printf("  client: CPU %s us/request, %s%% of a core; machine busy %s%%\n", num(c["cpu_us_per_request"], 1).c_str(),
              num(c["cpu_pct"], 1).c_str(), num(j["machine"]["busy_pct"], 1).c_str());
  for (const auto& [msg, n] : j["error_samples"].items())
    std::printf("  error x%llu: %s\n", static_cast<unsigned long long>(n.get<std::uint64_t>()), msg.c_str());
  std::fflush(stdout);
}

Json base_json(const Options& o) {
  Json j;
  j["tool"] = "glmp-load";
  j["format"] = 1;
  j["scenario"] = o.scenario;
  j["label"] = o.label;
  Json p;
  p["target"] = o.target.host_header();
  p["path"] = o.path;
  p["stream"] = o.stream;
  p["body_tag"] = o.body_tag;
  p["vary_body"] = o.vary_body;
  p["mix"] = *o.mix;
  p["events"] = o.events;
  p["gap_ms"] = o.gap_ms;
  p["concurrency"] = o.concurrency;
  p["duration_s"] = o.duration_s ? Json(*o.duration_s) : Json(nullptr);
  p["warmup_s"] = *o.warmup_s;
  p["requests"] = o.requests;
  p["rate"] = o.rate;
  p["ramp_up_ms"] = o.ramp_up_ms;
  p["new_connection"] = o.new_connection;
  p["threads"] = o.threads;
  p["timeout_s"] = *o.timeout_s;
  p["sample_ms"] = o.sample_ms;
  p["cpus"] = std::thread::hardware_concurrency();
  if (o.scenario == "idle") {
    p["connections"] = o.connections;
    p["probes"] = o.probes;
    p["probe"] = o.probe_get.empty() ? "POST " + o.path : "GET " + o.probe_get;
    p["hold_s"] = o.hold_s;
  }
  if (o.scenario == "large") {
    p["bytes"] = o.bytes;
    p["rate_kbps"] = o.rate_kbps;
    p["max_seconds"] = o.max_seconds;
    p["rcvbuf"] = o.rcvbuf;
  }
  j["params"] = p;
  return j;
}

void finish_json(Json& j, const Options& o, Sampler& sampler, double w0, double w1, std::uint64_t requests,
                 std::uint64_t events, std::int64_t client_cpu, const MachineCpu& m0, const MachineCpu& m1) {
  j["window_s"] = std::round((w1 - w0) * 1000) / 1000;
  Json procs = Json::object();
  for (const auto& t : sampler.tracks()) procs[t.arg.name] = process_json(t, w0, w1, requests, events);
  j["processes"] = procs;
  const double window_us = (w1 - w0) * 1e6;
  j["client"] = Json{{"cpu_us", client_cpu},
                     {"cpu_pct", window_us > 0 ? std::round(1000.0 * static_cast<double>(client_cpu) / window_us) / 10.0 : 0.0},
                     {"cpu_us_per_request", ratio(client_cpu, requests, 10)},
                     {"cpu_us_per_event", ratio(client_cpu, events, 100)},
                     {"threads", o.threads}};
  j["machine"] = Json{{"cpus", std::thread::hardware_concurrency()}, {"busy_pct", std::round(10 * busy_pct(m0, m1)) / 10}};
}

// --- Scenarios ----------------------------------------------------------------------------------------

int run_load(const Options& o) {
  const Schedule sched = make_schedule(o);
  Shared shared{o, sched, {}, {}};
  shared.request_plain = build_request(o, false, o.path, {});
  shared.request_stream =
      build_request(o, true, o.path,
                    {{"x-mock-chunks", std::to_string(o.events)}, {"x-mock-delay-ms", std::to_string(o.gap_ms)}});
  if (o.requests) shared.quota.store(static_cast<std::int64_t>(o.requests));
  if (o.scenario == "idle") {
    shared.hold_after_first = true;
    shared.quota.store(o.connections);
    shared.request_stream = shared.request_plain;
  }
  const int nthreads = std::min(o.threads, std::max(1, sched.max_concurrency));
  Json j = base_json(o);
  Json phases_def = Json::array();
  for (const auto& p : sched.phases)
    phases_def.push_back(Json{{"name", p.name},
                              {"start_s", static_cast<double>(p.start) / 1e9},
                              {"end_s", p.end == INT64_MAX ? Json(nullptr) : Json(static_cast<double>(p.end) / 1e9)},
                              {"concurrency_from", p.c_from},
                              {"concurrency_to", p.c_to},
                              {"warmup", p.warmup}});

  // Idle: probe latency before any idle connection exists.
  std::vector<Probe> before;
  const std::string probe_req = o.probe_get.empty() ? shared.request_plain : build_request(o, false, o.probe_get, {}, true);
  if (o.scenario == "idle")
    for (int i = 0; i < o.probes; ++i) before.push_back(probe_once(o, probe_req, *o.timeout_s));

  const std::int64_t t_start = now_ns();
  shared.t_start = t_start;
  Sampler sampler(o.pids, o.sample_ms, t_start);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < nthreads; ++i) workers.push_back(std::make_unique<Worker>(shared, i, nthreads));
  sampler.start();

  std::int64_t w0 = 0, w1 = 0;
  MachineCpu m0{}, m1{};
  std::int64_t c0 = 0, c1 = 0;
  auto open_window = [&] {
    w0 = now_ns();
    sampler.mark_start();
    m0 = read_machine_cpu();
    c0 = self_cpu_us();
  };
  auto close_window = [&] {
    w1 = now_ns();
    sampler.mark_end();
    m1 = read_machine_cpu();
    c1 = self_cpu_us();
  };
  if (sched.count_based) open_window();
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->run(); });

  auto all_idle = [&] {
    for (auto& w : workers)
      if (w->active.load() != 0) return false;
    return true;
  };
  std::vector<Probe> with_idle;
  Json idle;
  if (sched.count_based) {
    // Wait until every request was answered (or the loops gave up): quota spent, nobody busy.
    const std::int64_t hard = t_start + static_cast<std::int64_t>(
                                            (*o.timeout_s + static_cast<double>(o.ramp_up_ms) / 1000.0 + 60) * 1e9);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    while (now_ns() < hard && !(shared.quota.load() <= 0 && all_idle()))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (o.scenario == "idle") {
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(o.hold_s * 1000)));
      sampler.take();
      for (int i = 0; i < o.probes; ++i) with_idle.push_back(probe_once(o, probe_req, *o.timeout_s));
      close_window();
    } else {
      close_window();
      // The window ends with the last answer, not with our polling.
      std::int64_t last = 0;
      for (auto& w : workers) last = std::max(last, w->last_completion);
      if (last > w0) w1 = std::min(w1, last);
    }
    shared.stop_issuing.store(true);
  } else {
    const std::int64_t ws = t_start + sched.window_start();
    const std::int64_t we = t_start + sched.window_end();
    std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(ws)));
    open_window();
    std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(we)));
    close_window();
    shared.stop_issuing.store(true);
    // Drain what is in flight (not counted: it ends after the window).
    const std::int64_t hard = now_ns() + static_cast<std::int64_t>(*o.timeout_s * 1e9) + kSec;
    while (now_ns() < hard && !all_idle()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& w : workers) w->loop.stop();
  for (auto& t : threads) t.join();
  sampler.stop();

  const RunTotals r = merge_workers(workers, sched);
  const double a = static_cast<double>(w0 - t_start) / 1e9;
  const double b = static_cast<double>(w1 - t_start) / 1e9;
  const double seconds = b - a;
  j["phases_def"] = phases_def;
  j["traffic"] = traffic_json(r.total, seconds);
  j["traffic"]["connections"] = r.slots;
  j["traffic"]["connections_answered"] = r.slots_served;
  Json phases = Json::array();
  for (std::size_t i = 0; i < sched.phases.size(); ++i) {
    const Phase& p = sched.phases[i];
    const double len = p.end == INT64_MAX ? seconds : static_cast<double>(p.end - p.start) / 1e9;
    Json pj = traffic_json(r.phases[i], len);
    pj["name"] = p.name;
    pj["warmup"] = p.warmup;
    pj["concurrency_from"] = p.c_from;
    pj["concurrency_to"] = p.c_to;
    phases.push_back(pj);
  }
  j["phases"] = phases;
  Json timeline = Json::array();
  for (std::size_t i = 0; i < r.seconds.size(); ++i) {
    const Second& s = r.seconds[i];
    timeline.push_back(Json::array({i, sched.concurrency_at(static_cast<std::int64_t>(i) * kSec), s.completed, s.errors,
                                    s.events,
                                    s.completed ? std::round(static_cast<double>(s.lat_sum_ns) / static_cast<double>(s.completed) / 100) / 10 : 0.0,
                                    std::round(static_cast<double>(s.lat_max_ns) / 100) / 10}));
  }
  j["timeline_fields"] = Json::array({"second", "concurrency", "completed", "errors", "events", "latency_mean_us", "latency_max_us"});
  j["timeline"] = timeline;
  j["errors"] = r.errors.kinds;
  j["error_samples"] = r.errors.samples;
  if (o.scenario == "idle") {
    idle["connections"] = o.connections;
    idle["opened_ok"] = r.total.ok;
    idle["held"] = r.held;
    idle["closed_by_server"] = r.held_closed;
    idle["probe_before_us"] = probes_json(before);
    idle["probe_with_idle_us"] = probes_json(with_idle);
    j["idle"] = idle;
  }
  finish_json(j, o, sampler, a, b, r.total.completed, r.total.events, c1 - c0, m0, m1);
  if (!o.quiet) print_summary(j);
  write_json(o.json_path, j);
  return 0;
}

// One streamed response of --bytes content bytes, read at --rate-kbps (0: as fast as possible)
// through a small receive buffer, so the proxy holds whatever the client does not take yet.
int run_large(const Options& o) {
  Json j = base_json(o);
  const std::string request = build_request(o, true, o.path, {{"x-mock-large-bytes", std::to_string(o.bytes)}});
  const std::int64_t t_start = now_ns();
  Sampler sampler(o.pids, o.sample_ms, t_start);
  sampler.start();
  sampler.mark_start();
  const MachineCpu m0 = read_machine_cpu();
  const std::int64_t c0 = self_cpu_us();

  std::string error;
  bool complete = false;
  std::uint64_t body = 0, events = 0;
  bool done = false;
  int status = 0;
  std::int64_t t_first = 0;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (o.rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &o.rcvbuf, sizeof o.rcvbuf);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&o.target.addr), sizeof o.target.addr) != 0) {
    error = std::string("connect: ") + std::strerror(errno);
  } else if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    error = std::string("send: ") + std::strerror(errno);
  } else {
    struct State {
      std::uint64_t* body;
      std::uint64_t* events;
      bool* done;
      bool* complete;
      int* status;
      bool at_line_start = true;
      std::string head;
    } st{&body, &events, &done, &complete, &status};
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_headers_complete = [](llhttp_t* p) {
      *static_cast<State*>(p->data)->status = p->status_code;
      return 0;
    };
    s.on_body = [](llhttp_t* p, const char* at, std::size_t n) {
      auto* x = static_cast<State*>(p->data);
      *x->body += n;
      for (std::size_t i = 0; i < n; ++i) {  // count "data:" lines; remember [DONE]
        const char c = at[i];
        if (x->at_line_start) {
          if (x->head.size() < 12 && c != '\n') {
            x->head += c;
            continue;
          }
          if (x->head.rfind("data:", 0) == 0) {
            ++*x->events;
            if (x->head.find("[DONE]") != std::string::npos) *x->done = true;
          }
          x->at_line_start = false;
          x->head.clear();
        }
        if (c == '\n') x->at_line_start = true;
      }
      return 0;
    };
    s.on_message_complete = [](llhttp_t* p) {
      *static_cast<State*>(p->data)->complete = true;
      return static_cast<int>(HPE_PAUSED);
    };
    llhttp_t parser;
    llhttp_init(&parser, HTTP_RESPONSE, &s);
    parser.data = &st;
    const double rate = o.rate_kbps * 1000.0;  // bytes per second (kB = 1000 B)
    const std::int64_t deadline = o.max_seconds > 0 ? t_start + static_cast<std::int64_t>(o.max_seconds * 1e9) : INT64_MAX;
    std::uint64_t read_total = 0;
    std::int64_t last_progress = now_ns();
    char buf[65536];
    while (!complete) {
      const std::int64_t now = now_ns();
      if (now >= deadline) break;
      std::size_t want = rate > 0 ? 4096 : sizeof buf;
      if (rate > 0 && t_first > 0) {
        // Reads of at least 10 ms worth of bytes (1 KB at 100 kB/s), none before they are due.
        const double step = std::max(1024.0, rate / 100);
        const double allowed = rate * static_cast<double>(now - t_first) / 1e9 + 4096;  // a 4 KiB head start
        if (allowed - static_cast<double>(read_total) < step) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        want = std::min<std::size_t>(sizeof buf, static_cast<std::size_t>(allowed - static_cast<double>(read_total)));
      }
      pollfd p{fd, POLLIN, 0};
      const int pr = ::poll(&p, 1, 1000);
      if (pr == 0) {
        if (now_ns() - last_progress > static_cast<std::int64_t>(*o.timeout_s * 1e9)) {
          error = "timeout";
          break;
        }
        continue;
      }
      const ssize_t n = ::recv(fd, buf, want, 0);
      if (n > 0) {
        last_progress = now_ns();
        if (t_first == 0) t_first = last_progress;
        read_total += static_cast<std::uint64_t>(n);
        const llhttp_errno_t e = llhttp_execute(&parser, buf, static_cast<std::size_t>(n));
        if (!complete && e != HPE_OK) {
          error = std::string("malformed response: ") + llhttp_errno_name(e);
          break;
        }
      } else if (n == 0) {
        llhttp_finish(&parser);
        if (!complete) error = "closed mid-response";
        break;
      } else if (errno != EINTR) {
        error = std::string("recv: ") + std::strerror(errno);
        break;
      }
    }
    if (complete && (status < 200 || status > 299)) error = "status " + std::to_string(status);
    else if (complete && !done) error = "stream ended without data: [DONE]";
  }
  ::close(fd);
  const std::int64_t t_end = now_ns();
  sampler.mark_end();
  const MachineCpu m1 = read_machine_cpu();
  const std::int64_t c1 = self_cpu_us();
  sampler.stop();
  const double seconds = static_cast<double>(t_end - t_start) / 1e9;
  Json l;
  l["bytes_requested"] = o.bytes;
  l["body_bytes"] = body;
  l["events"] = events;
  l["seconds"] = std::round(seconds * 1000) / 1000;
  l["kb_per_s"] = seconds > 0 ? std::round(static_cast<double>(body) / seconds / 100) / 10 : 0.0;
  l["complete"] = complete && error.empty();
  l["cut_at_max_seconds"] = !complete && error.empty();
  l["errors"] = error.empty() ? 0 : 1;
  l["error"] = error;
  l["ttfb_ms"] = t_first ? std::round(static_cast<double>(t_first - t_start) / 1000) / 1000 : 0.0;
  j["large"] = l;
  j["errors"] = error.empty() ? Json::object() : Json{{"large", 1}};
  j["error_samples"] = error.empty() ? Json::object() : Json{{error, 1}};
  finish_json(j, o, sampler, 0, seconds, 1, events, c1 - c0, m0, m1);
  if (!o.quiet) print_summary(j);
  write_json(o.json_path, j);
  return 0;
}

}  // namespace

int run_main(int argc, char** argv) {
  const Options o = parse_run_args(argc, argv);
  const std::uint64_t fds = static_cast<std::uint64_t>(o.scenario == "idle" ? o.connections : o.concurrency) + 64;
  if (!raise_fd_limit(fds, "glmp-load")) return 1;
  return o.scenario == "large" ? run_large(o) : run_load(o);
}

}  // namespace glmp::load
