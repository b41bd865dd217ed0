#pragma once
// One JSON line per request (to stdout, stderr, a file, or off). Each line is written with a
// single write(2), so lines from concurrent requests never interleave and no lock is taken.

#include <string>

#include "pipeline/request_context.hpp"

namespace glmp::core::pipeline {

class AccessLog {
public:
  // target: "stdout", "stderr", "off" or a file path (opened for append; throws on failure).
  explicit AccessLog(const std::string& target);
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool enabled() const { return fd_ >= 0; }
  void write(const RequestContext& ctx) const;
  // The line write() would emit (without the trailing newline); exposed for tests.
  static std::string format(const RequestContext& ctx);

private:
  int fd_ = -1;
  bool owned_ = false;
};

}  // namespace glmp::core::pipeline
