#include "pipeline/access_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "pipeline/json_body.hpp"  // json_quote

namespace glmp::core::pipeline {
namespace {

void add_ms(std::string& out, const char* key, Clock::duration d) {
  char buf[64];
  std::snprintf(buf, sizeof buf, ",\"%s\":%.3f", key, std::chrono::duration<double, std::milli>(d).count());
  out += buf;
}

void add_int(std::string& out, const char* key, int64_t v) {
  out += ",\"";
  out += key;
  out += "\":";
  out += std::to_string(v);
}

void add_str(std::string& out, const char* key, std::string_view v) {
  out += ",\"";
  out += key;
  out += "\":";
  out += json_quote(v);
}

std::string utc_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1'000'000);
  return buf;
}

}  // namespace

AccessLog::AccessLog(const std::string& target) {
  if (target == "off" || target.empty()) return;
  if (target == "stdout") { fd_ = STDOUT_FILENO; return; }
  if (target == "stderr") { fd_ = STDERR_FILENO; return; }
  fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd_ < 0) throw std::runtime_error("cannot open access log \"" + target + "\": " + std::strerror(errno));
  owned_ = true;
}

AccessLog::~AccessLog() {
  if (owned_) ::close(fd_);
}

std::string AccessLog::format(const RequestContext& ctx) {
  std::string out;
  out.reserve(512);
  out += "{\"ts\":\"" + utc_now() + "\"";
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
  if (ctx.client_gone) out += ",\"client_gone\":true";
  if (!ctx.error.empty()) add_str(out, "error", ctx.error);
  out += '}';
  return out;
}

void AccessLog::write(const RequestContext& ctx) const {
  if (fd_ < 0) return;
  std::string line = format(ctx);
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // a broken log sink must never fail a request
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace glmp::core::pipeline
