// header_stamp: an example GLM Proxy plugin.
//
//   - on_request counts the requests of this instance (std::atomic: hooks run concurrently);
//   - on_response_headers stamps the response with the configured header and value, plus
//     X-Header-Stamp-Count: <requests counted so far>;
//   - GET /plugins/header_stamp/stats (public) answers {"requests":N}.
//
// Settings: {"header": "X-Plugin-Version", "value": "v1"} (both optional, these are the defaults).
// The stamped value is "<value>-<HEADER_STAMP_BUILD>": the compile-time build tag ("a" unless the
// build sets it), so tests can tell two builds of the same plugin apart across a hot reload
// (header_stamp.so is build "a", header_stamp_b.so build "b"). The descriptor's version carries
// the tag too ("1.0.0+a").
#include <glmproxy/sdk.hpp>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#ifndef HEADER_STAMP_BUILD
#define HEADER_STAMP_BUILD "a"
#endif

namespace glmp::plugins::header_stamp {

namespace {

// RFC 9110 token: what a header name may contain.
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum && std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) return false;
  }
  return true;
}

}  // namespace

class HeaderStamp final : public glmp::Plugin {
 public:
  // Runs in on_config_new (reload thread). Throwing refuses the configuration with the message.
  HeaderStamp(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        header_(settings.get_string("header", "X-Plugin-Version")),
        value_(stamped(settings.get_string("value", "v1"))) {
    if (!is_token(header_)) throw glmp::SettingsError("setting \"header\" is not a valid header name: \"" + header_ + "\"");
    if (value_.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      throw glmp::SettingsError("setting \"value\" must not contain CR, LF or NUL");
    }
    // Routes can only be registered here. The handler captures `this`: the SDK keeps it until
    // this object is destroyed, and the core stops routing to it before that.
    host.register_route("GET", "/plugins/header_stamp/stats", glmp::Access::Public, [this](glmp::Request& request) {
      request.respond(200, "application/json", "{\"requests\":" + std::to_string(count()) + "}");
    });
    host.log_info("build " HEADER_STAMP_BUILD ": stamping " + header_ + ": " + value_);
  }

  glmp::Status on_request(glmp::Request& /*request*/) override {
    requests_.fetch_add(1, std::memory_order_relaxed);
    return glmp::Status::Continue;
  }

  void on_response_headers(glmp::Request& request) override {
    request.set_response_header(header_, value_);
    request.set_response_header("X-Header-Stamp-Count", std::to_string(count()));
  }

 private:
  static std::string stamped(std::string value) {
    constexpr std::string_view build = HEADER_STAMP_BUILD;
    if (!build.empty()) {
      value += '-';
      value += build;
    }
    return value;
  }

  std::uint64_t count() const noexcept { return requests_.load(std::memory_order_relaxed); }

  const std::string header_;
  const std::string value_;
  std::atomic<std::uint64_t> requests_{0};  // per instance: a reload starts again at 0
};

}  // namespace glmp::plugins::header_stamp

GLMP_PLUGIN(glmp::plugins::header_stamp::HeaderStamp, "header_stamp", "1.0.0+" HEADER_STAMP_BUILD);
