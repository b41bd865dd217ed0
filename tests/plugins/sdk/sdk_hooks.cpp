// sdk_hooks: a tiny SDK plugin for the reload/isolation integration tests (test_reload.cpp).
//
// Settings:
//   throw_in_config = "msg"  the constructor (on_config_new) throws std::runtime_error(msg)
//   max_block_ms = 5000      upper bound for X-Sdk-Block-Ms
// Request headers (on_request):
//   X-Sdk-Block-Ms: N        sleeps min(N, max_block_ms) ms, then continues (a hook that blocks)
//   X-Sdk-Throw: 1           throws std::runtime_error("sdk_hooks on_request exploded")
// Every response gets X-Sdk-Hooks: 1 (on_response_headers).
#include <glmproxy/sdk.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

class SdkHooks final : public glmp::Plugin {
 public:
  SdkHooks(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host), max_block_ms_(settings.get_int("max_block_ms", 5000)) {
    if (settings.has("throw_in_config")) throw std::runtime_error(settings.get_string("throw_in_config"));
  }

  glmp::Status on_request(glmp::Request& r) override {
    if (r.header("X-Sdk-Throw")) throw std::runtime_error("sdk_hooks on_request exploded");
    if (const auto block = r.header("X-Sdk-Block-Ms")) {
      std::int64_t ms = 0;
      try {
        ms = std::stoll(std::string(*block));
      } catch (...) {
        ms = 0;
      }
      ms = std::clamp<std::int64_t>(ms, 0, max_block_ms_);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    return glmp::Status::Continue;
  }

  void on_response_headers(glmp::Request& r) override { r.set_response_header("X-Sdk-Hooks", "1"); }

 private:
  const std::int64_t max_block_ms_;
};

}  // namespace

GLMP_PLUGIN(SdkHooks, "sdk_hooks", "0.1.0");
