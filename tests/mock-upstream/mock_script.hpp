#pragma once
// A response as a script of timed steps. The handler writes it as a C++20 coroutine that yields
// steps (write these bytes, wait N ms, reset the connection or the HTTP/2 stream, HTTP/2 GOAWAY);
// the connection's event loop pulls the steps one at a time and plays them with non-blocking
// writes and timers, so no thread ever sleeps or blocks on a slow peer.

#include <coroutine>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>

namespace glmp::mock {

struct Step {
  enum class Kind : std::uint8_t {
    Write,   // queue `bytes` for the peer
    Wait,    // once every queued byte is in the kernel, wait `ms` milliseconds
    Reset,   // HTTP/1.1: once the peer has acknowledged every byte (at most 2 s), abort with a
             // TCP RST. HTTP/2: once the stream's bytes are framed, RST_STREAM(INTERNAL_ERROR).
    Goaway,  // HTTP/2 only: once the stream's bytes are framed, GOAWAY(NO_ERROR) with this
             // stream as the last one; the stream goes on. HTTP/1.1 ignores it.
    Refuse,  // HTTP/2 only, as the first step: GOAWAY(NO_ERROR) with last_stream_id = this
             // stream - 2, then RST_STREAM(REFUSED_STREAM); nothing else of the script runs.
  };
  Kind kind = Kind::Write;
  std::uint64_t ms = 0;
  std::string bytes;

  static Step write(std::string b) { return Step{Kind::Write, 0, std::move(b)}; }
  static Step wait(std::uint64_t ms) { return Step{Kind::Wait, ms, {}}; }
  static Step reset() { return Step{Kind::Reset, 0, {}}; }
  static Step goaway() { return Step{Kind::Goaway, 0, {}}; }
  static Step refuse() { return Step{Kind::Refuse, 0, {}}; }
};

// A lazily evaluated sequence of steps (a minimal generator coroutine). Nothing runs until the
// first next(); destroying the Script destroys the coroutine frame with its locals.
class Script {
 public:
  struct promise_type {
    Step step;
    std::exception_ptr error;

    Script get_return_object() {
      return Script(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    std::suspend_always yield_value(Step s) noexcept {
      step = std::move(s);
      return {};
    }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
  };

  Script() = default;
  explicit Script(std::coroutine_handle<promise_type> h) : h_(h) {}
  Script(Script&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Script& operator=(Script&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Script(const Script&) = delete;
  Script& operator=(const Script&) = delete;
  ~Script() { reset(); }

  // Runs the script up to its next step. False when it has finished. Rethrows what the script
  // threw.
  bool next() {
    if (!h_ || h_.done()) return false;
    h_.resume();
    if (h_.promise().error) std::rethrow_exception(std::exchange(h_.promise().error, {}));
    return !h_.done();
  }
  Step& step() { return h_.promise().step; }
  explicit operator bool() const { return static_cast<bool>(h_); }

  void reset() {
    if (h_) h_.destroy();
    h_ = {};
  }

 private:
  std::coroutine_handle<promise_type> h_;
};

}  // namespace glmp::mock
