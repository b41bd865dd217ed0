#pragma once
// One JSON line per request (to stdout, stderr, a file, or off).
//
// Lines are handed to a writer thread, which writes them in batches: a request appends its line
// to one shared buffer under a mutex (no system call; the line is whole, so lines never
// interleave and keep their completion order), and the writer writes the buffer with one write(2)
// at most `flush_every` after the first line of a batch arrived — or as soon as kHighWater bytes
// are waiting. Only the line that finds the writer idle wakes it; every other line costs no system
// call at all. A sink that does not keep up (a full disk, a pipe nobody reads) never blocks a
// request: past kMaxBuffered waiting bytes lines are dropped and counted, and the writer logs how
// many. The destructor (clean shutdown) and flush() write everything buffered.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "pipeline/request_context.hpp"

namespace glmp::core::pipeline {

class AccessLog {
public:
  static constexpr std::chrono::milliseconds kFlushEvery{100};  // how long a line may wait in memory
  static constexpr size_t kHighWater = 64 * 1024;                // this much waiting: written at once
  static constexpr size_t kMaxBuffered = 16 * 1024 * 1024;       // beyond this, lines are dropped

  // target: "stdout", "stderr", "off" or a file path (opened for append; throws on failure).
  // flush_every and max_buffered: kFlushEvery and kMaxBuffered, other values for tests.
  explicit AccessLog(const std::string& target, std::chrono::milliseconds flush_every = kFlushEvery,
                     size_t max_buffered = kMaxBuffered);
  ~AccessLog();  // writes what is buffered
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool enabled() const { return fd_ >= 0; }
  // Queues the request's line; written within flush_every.
  void write(const RequestContext& ctx) const;
  // Writes everything queued so far before returning.
  void flush() const;
  // Lines dropped because the sink did not keep up (since start).
  size_t dropped() const;
  // The line write() would emit (without the trailing newline); exposed for tests.
  static std::string format(const RequestContext& ctx);

private:
  struct Writer;
  int fd_ = -1;
  bool owned_ = false;
  std::unique_ptr<Writer> writer_;
};

}  // namespace glmp::core::pipeline
