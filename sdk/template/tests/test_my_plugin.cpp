// Loads my_plugin.so as the proxy would and drives it through the C ABI with a fake host.
#include <glmproxy/fake_host.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

using glmp::testing::Checks;
using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;

int main() {
  Checks c;
  try {
    PluginLibrary lib(MY_PLUGIN_PATH);

    // The descriptor: name, version, ABI, and refusal of an incompatible host.
    const glmp_plugin_descriptor* d = lib.descriptor();
    GLMP_EXPECT(c, d->struct_size == sizeof(glmp_plugin_descriptor));
    GLMP_EXPECT(c, d->abi_major == GLMP_ABI_MAJOR && d->abi_minor == GLMP_ABI_MINOR);
    GLMP_EXPECT(c, std::strcmp(d->name, "my_plugin") == 0);
    GLMP_EXPECT(c, std::strcmp(d->version, "0.1.0") == 0);
    GLMP_EXPECT(c, lib.init(GLMP_ABI_MAJOR + 1, 0) == nullptr);

    {
      // Default settings: the request goes on, the response gets the greeting.
      FakeHost host;
      PluginInstance plugin(d, host, "{}");
      FakeRequest req;
      req.model = "glm-4.5";
      GLMP_EXPECT(c, plugin.on_request(req) == GLMP_CONTINUE);
      GLMP_EXPECT(c, req.response_header("X-My-Plugin") == "hello");
      GLMP_EXPECT(c, host.logged("my_plugin ready"));
    }
    {
      // A blocked model is answered with a 403 error.
      FakeHost host;
      PluginInstance plugin(d, host, R"({"greeting": "hi", "blocked_models": ["glm-4.6"]})");
      FakeRequest req;
      req.model = "glm-4.6";
      GLMP_EXPECT(c, plugin.on_request(req) == GLMP_RESPONDED);
      GLMP_EXPECT(c, req.respond_was_error && req.respond_status == 403);
      GLMP_EXPECT(c, req.error_type == "permission_error");
    }
    {
      // A mistyped setting refuses the configuration with a message naming the key.
      FakeHost host;
      std::string error;
      try {
        PluginInstance plugin(d, host, R"({"greeting": 3})");
      } catch (const std::runtime_error& e) {
        error = e.what();
      }
      GLMP_EXPECT(c, error.find("\"greeting\" must be a string") != std::string::npos);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    GLMP_EXPECT(c, false);
  }
  return c.finish();
}
