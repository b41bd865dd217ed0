#include "pipeline/access_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include <Poco/Logger.h>

#include "pipeline/json_body.hpp"  // json_quote

namespace glmp::core::pipeline {
namespace {

void add_ms(std::string& out, std::string_view key, Clock::duration d) {
  out += ",\"";
  out += key;
  out += "\":";
  // std::to_chars with a precision prints exactly what printf("%.3f") would, without its locale
  // and format-string work. 320 bytes hold any double in fixed notation.
  char buf[320];
  const auto r = std::to_chars(buf, buf + sizeof buf, std::chrono::duration<double, std::milli>(d).count(),
                               std::chars_format::fixed, 3);
  out.append(buf, r.ec == std::errc() ? r.ptr : buf);
}

void add_int(std::string& out, std::string_view key, int64_t v) {
  out += ",\"";
  out += key;
  out += "\":";
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

void add_str(std::string& out, std::string_view key, std::string_view v) {
  out += ",\"";
  out += key;
  out += "\":";
  out += json_quote(v);
}

// "2026-11-28T17:51:25.399Z". The date and time of day are formatted once per second per thread.
void add_utc_now(std::string& out) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  thread_local time_t cached_second = -1;
  thread_local char cached[64];  // "2026-11-28T17:51:25" (room for any int the compiler imagines)
  if (ts.tv_sec != cached_second) {
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    std::snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                  t.tm_hour, t.tm_min, t.tm_sec);
    cached_second = ts.tv_sec;
  }
  const long ms = ts.tv_nsec / 1'000'000;
  out += cached;
  out += '.';
  out += static_cast<char>('0' + ms / 100);
  out += static_cast<char>('0' + ms / 10 % 10);
  out += static_cast<char>('0' + ms % 10);
  out += 'Z';
}

void format_to(std::string& out, const RequestContext& ctx) {
  out += "{\"ts\":\"";
  add_utc_now(out);
  out += '"';
  add_str(out, "id", ctx.request_id);
  add_str(out, "method", ctx.method);
  add_str(out, "path", ctx.path);
  add_str(out, "route", ctx.route ? ctx.route->prefix : "");
  add_str(out, "flavour", ctx.route ? (ctx.flavour == Flavour::Anthropic ? "anthropic" : "openai") : "");
  add_str(out, "model", ctx.model.value_or(ctx.client_model));
  out += ctx.streaming ? ",\"stream\":true" : ",\"stream\":false";
  add_int(out, "status", ctx.status);
  add_int(out, "upstream_status", ctx.upstream_status);
  add_int(out, "tokens_in", ctx.usage.input_tokens);
  add_int(out, "tokens_out", ctx.usage.output_tokens);
  add_int(out, "cache_read_tokens", ctx.usage.cache_read_input_tokens);
  add_int(out, "cache_creation_tokens", ctx.usage.cache_creation_input_tokens);
  add_int(out, "bytes_in", static_cast<int64_t>(ctx.bytes_in));
  add_int(out, "bytes_out", static_cast<int64_t>(ctx.bytes_out));
  add_ms(out, "total_ms", Clock::now() - ctx.start);
  add_ms(out, "upstream_ms", ctx.upstream_time);
  if (ctx.ttfb) add_ms(out, "ttfb_ms", *ctx.ttfb);
  if (ctx.origin != Origin::Upstream) add_str(out, "origin", origin_name(ctx.origin));  // cache / coalesced
  if (ctx.client_gone) out += ",\"client_gone\":true";
  if (!ctx.error.empty()) add_str(out, "error", ctx.error);
  out += '}';
}

// A broken log sink must never fail a request: errors other than EINTR drop the rest.
void write_all(int fd, std::string_view data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace

// The buffer the requests append to and the thread that writes it (see access_log.hpp).
struct AccessLog::Writer {
  Writer(int sink, std::chrono::milliseconds flush_every, size_t limit)
      : fd(sink), every(flush_every), max_buffered(limit), thread([this] { run(); }) {}

  ~Writer() {
    {
      std::lock_guard lock(mutex);
      stop = true;
    }
    wake.notify_one();
    thread.join();
    drain();
  }

  void append(std::string_view line) {
    bool notify = false;
    {
      std::lock_guard lock(mutex);
      if (buffer.size() + line.size() > max_buffered) {
        ++dropped_since;
        ++dropped_total;
        return;
      }
      const size_t before = buffer.size();
      buffer += line;
      // Wake the writer only when it sleeps with nothing to write, or when a batch just became
      // large; while it waits for a batch to fill, lines join it without a system call.
      if (idle || (before < kHighWater && buffer.size() >= kHighWater)) {
        idle = false;
        notify = true;
      }
    }
    if (notify) wake.notify_one();
  }

  // Writes everything appended so far, in order (one batch at a time).
  void drain() {
    std::lock_guard write_lock(write_mutex);
    size_t dropped = 0;
    {
      std::lock_guard lock(mutex);
      spare.swap(buffer);  // the buffer keeps the spare's capacity
      dropped = std::exchange(dropped_since, 0);
    }
    write_all(fd, spare);
    spare.clear();
    if (dropped > 0)
      Poco::Logger::get("glm-proxy").warning("access log: %z line(s) dropped: the sink did not keep up", dropped);
  }

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      if (buffer.empty()) {
        if (stop) return;
        idle = true;
        wake.wait(lock, [this] { return stop || !buffer.empty(); });
        idle = false;
        continue;
      }
      // A batch has started: give it `every` to fill, unless it is large already.
      wake.wait_for(lock, every, [this] { return stop || buffer.size() >= kHighWater; });
      lock.unlock();
      drain();
      lock.lock();
    }
  }

  const int fd;
  const std::chrono::milliseconds every;
  const size_t max_buffered;
  std::mutex write_mutex;  // one drain at a time, so batches reach the sink in order
  std::string spare;       // guarded by write_mutex
  std::mutex mutex;
  std::condition_variable wake;
  std::string buffer;       // whole lines, in completion order
  bool idle = false;        // the writer waits for a first line
  bool stop = false;
  size_t dropped_since = 0;  // since the last drain
  size_t dropped_total = 0;
  std::thread thread;  // last: starts once everything above is constructed
};

AccessLog::AccessLog(const std::string& target, std::chrono::milliseconds flush_every, size_t max_buffered) {
  if (target == "off" || target.empty()) return;
  if (target == "stdout") {
    fd_ = STDOUT_FILENO;
  } else if (target == "stderr") {
    fd_ = STDERR_FILENO;
  } else {
    fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd_ < 0) throw std::runtime_error("cannot open access log \"" + target + "\": " + std::strerror(errno));
    owned_ = true;
  }
  writer_ = std::make_unique<Writer>(fd_, flush_every, max_buffered);
}

AccessLog::~AccessLog() {
  writer_.reset();  // writes what is buffered
  if (owned_) ::close(fd_);
}

std::string AccessLog::format(const RequestContext& ctx) {
  std::string out;
  out.reserve(512);
  format_to(out, ctx);
  return out;
}

void AccessLog::write(const RequestContext& ctx) const {
  if (!writer_) return;
  thread_local std::string line;  // reused: no allocation per request once it has grown
  line.clear();
  format_to(line, ctx);
  line += '\n';
  writer_->append(line);
}

void AccessLog::flush() const {
  if (writer_) writer_->drain();
}

size_t AccessLog::dropped() const {
  if (!writer_) return 0;
  std::lock_guard lock(writer_->mutex);
  return writer_->dropped_total;
}

}  // namespace glmp::core::pipeline
