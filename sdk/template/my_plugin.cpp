// my_plugin: a copy-me GLM Proxy plugin.
//
// What it does (replace with yours):
//   - blocks requests for the models listed in "blocked_models" with a 403 in the caller's API
//     flavour (OpenAI or Anthropic error shape);
//   - stamps every response with "X-My-Plugin: <greeting>".
//
// Settings, from the [plugins.settings] table of its [[plugins]] entry in the proxy's TOML:
//   [[plugins]]
//   name = "my_plugin"
//   [plugins.settings]
//   greeting = "hello"             # optional, default "hello"
//   blocked_models = ["glm-4.6"]   # optional, default none
#include <glmproxy/sdk.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace {

class MyPlugin final : public glmp::Plugin {
 public:
  // Runs once per configuration (at start and at every reload, on the reload thread), before any
  // request can reach this instance. Read and validate the settings here: anything thrown (e.g.
  // glmp::SettingsError from a getter on a mistyped key) refuses the configuration with its
  // message, and a reload then keeps the old chain. Routes can only be registered here.
  MyPlugin(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        greeting_(settings.get_string("greeting", "hello")),
        blocked_(settings.get_string_list("blocked_models")) {
    host.log_info("my_plugin ready, greeting \"" + greeting_ + "\"");
  }

  // Called for every request, concurrently from many threads: only read the members set in the
  // constructor, or guard state with std::atomic / a mutex. Return Continue to pass the request
  // on, or answer it and return Responded.
  glmp::Status on_request(glmp::Request& request) override {
    // Views (std::string_view) into the request are valid during this call only.
    const std::string_view model = request.model();
    if (std::find(blocked_.begin(), blocked_.end(), model) != blocked_.end()) {
      request.respond_error(403, "model " + std::string(model) + " is not allowed here", "permission_error");
      return glmp::Status::Responded;
    }
    // Set in on_request, a response header applies to whatever response this request gets.
    request.set_response_header("X-My-Plugin", greeting_);
    return glmp::Status::Continue;
  }

  // Other hooks, all optional (the ones you don't override are never called):
  //   void on_response_headers(glmp::Request&) override;   edit the upstream's response headers
  //   void on_response_body(glmp::Request&, std::string_view chunk, bool end_of_stream) override;
  //   void on_complete(glmp::Request&) override;           usage is final here: request.usage()

 private:
  const std::string greeting_;
  const std::vector<std::string> blocked_;
};

}  // namespace

// The plugin's name (what [[plugins]] name refers to) and version. Exactly once per plugin.
GLMP_PLUGIN(MyPlugin, "my_plugin", "0.1.0");
