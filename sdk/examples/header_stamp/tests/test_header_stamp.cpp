// header_stamp through the C ABI: both builds dlopen'ed, driven by the SDK's fake host.
#include <glmproxy/fake_host.hpp>

#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using glmp::testing::Checks;
using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using glmp::testing::refusal;

// Runs one request through the hooks the core would call for a proxied request.
void proxy_one(PluginInstance& plugin, FakeRequest& req) {
  if (plugin.on_request(req) != GLMP_CONTINUE) throw std::runtime_error("on_request did not continue");
  req.response_status = 200;
  plugin.on_response_headers(req);
  plugin.on_response_body(req, "{}", true);
  plugin.on_complete(req);
}

void descriptor(Checks& c, const PluginLibrary& lib, const char* version) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  GLMP_EXPECT(c, d->struct_size == sizeof(glmp_plugin_descriptor));
  GLMP_EXPECT(c, d->abi_major == GLMP_ABI_MAJOR);
  GLMP_EXPECT(c, d->abi_minor == GLMP_ABI_MINOR);
  GLMP_EXPECT(c, std::strcmp(d->name, "header_stamp") == 0);
  GLMP_EXPECT(c, std::strcmp(d->version, version) == 0);
  GLMP_EXPECT(c, d->on_config_new != nullptr && d->on_config_destroy != nullptr);
  GLMP_EXPECT(c, d->on_request != nullptr && d->on_response_headers != nullptr);
  // Not overridden by the plugin: left NULL so the core skips them.
  GLMP_EXPECT(c, d->on_response_body == nullptr && d->on_complete == nullptr);
  // Version negotiation.
  GLMP_EXPECT(c, lib.init(GLMP_ABI_MAJOR + 1, 0) == nullptr);
  GLMP_EXPECT(c, lib.init(GLMP_ABI_MAJOR - 1, 99) == nullptr);
  GLMP_EXPECT(c, lib.init(GLMP_ABI_MAJOR, GLMP_ABI_MINOR + 1) == d);
}

void defaults(Checks& c, const PluginLibrary& lib, const char* suffix) {
  FakeHost host;
  PluginInstance plugin(lib.descriptor(), host, "{}");
  GLMP_EXPECT(c, host.routes.size() == 1);
  GLMP_EXPECT(c, host.find_route("GET", "/plugins/header_stamp/stats") != nullptr);
  GLMP_EXPECT(c, host.routes.at(0).access == GLMP_ACCESS_PUBLIC);
  GLMP_EXPECT(c, host.logged(std::string("stamping X-Plugin-Version: v1-") + suffix));

  for (int i = 1; i <= 3; ++i) {
    FakeRequest req;
    proxy_one(plugin, req);
    GLMP_EXPECT(c, req.response_header("x-plugin-version") == std::string("v1-") + suffix);
    GLMP_EXPECT(c, req.response_header("X-Header-Stamp-Count") == std::to_string(i));
    GLMP_EXPECT(c, !req.responded);
  }

  FakeRequest stats;
  stats.method = "GET";
  stats.path = "/plugins/header_stamp/stats";
  GLMP_EXPECT(c, plugin.call_route(stats));
  GLMP_EXPECT(c, stats.responded && stats.respond_status == 200);
  GLMP_EXPECT(c, stats.respond_content_type == "application/json");
  GLMP_EXPECT(c, stats.respond_body == R"({"requests":3})");

  FakeRequest post;
  post.path = "/plugins/header_stamp/stats";  // POST: no route
  GLMP_EXPECT(c, !plugin.call_route(post));
}

void configured(Checks& c, const PluginLibrary& lib) {
  FakeHost host;
  PluginInstance plugin(lib.descriptor(), host, R"({"header": "X-Custom", "value": "v2"})");
  FakeRequest req;
  proxy_one(plugin, req);
  GLMP_EXPECT(c, req.response_header("X-Custom") == "v2-a");
  GLMP_EXPECT(c, !req.response_header("X-Plugin-Version").has_value());
  GLMP_EXPECT(c, req.response_header("X-Header-Stamp-Count") == "1");

  // The core may pass an empty text for an absent [plugins.settings] table: defaults apply.
  FakeHost host2;
  PluginInstance empty(lib.descriptor(), host2, "");
  FakeRequest req2;
  proxy_one(empty, req2);
  GLMP_EXPECT(c, req2.response_header("X-Plugin-Version") == "v1-a");
}

void instances_count_separately(Checks& c, const PluginLibrary& lib) {
  FakeHost h1;
  FakeHost h2;
  PluginInstance p1(lib.descriptor(), h1);
  PluginInstance p2(lib.descriptor(), h2);
  FakeRequest r;
  proxy_one(p1, r);
  FakeRequest r2;
  proxy_one(p1, r2);
  FakeRequest r3;
  proxy_one(p2, r3);
  GLMP_EXPECT(c, r2.response_header("X-Header-Stamp-Count") == "2");
  GLMP_EXPECT(c, r3.response_header("X-Header-Stamp-Count") == "1");
}

void bad_settings(Checks& c, const PluginLibrary& lib) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  GLMP_EXPECT(c, refusal(d, R"({"header": 5})").find("\"header\" must be a string") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, R"({"value": true})").find("\"value\" must be a string") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, R"({"header": "bad name"})").find("not a valid header name") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, R"({"header": ""})").find("not a valid header name") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, R"({"value": "a\r\nX-Evil: 1"})").find("CR, LF") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, "{").find("not valid JSON") != std::string::npos);
  GLMP_EXPECT(c, refusal(d, "[1]").find("must be a JSON object") != std::string::npos);

  FakeHost host;
  host.reject_routes = true;  // the host refuses the stats route (e.g. a clash with a core route)
  std::string error;
  try {
    PluginInstance plugin(d, host);
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  GLMP_EXPECT(c, error.find("GET /plugins/header_stamp/stats") != std::string::npos);
  GLMP_EXPECT(c, error.find("refused") != std::string::npos);
}

void concurrent(Checks& c, const PluginLibrary& lib) {
  FakeHost host;
  PluginInstance plugin(lib.descriptor(), host);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&plugin] {
      for (int i = 0; i < kPerThread; ++i) {
        FakeRequest req;
        plugin.on_request(req);
        plugin.on_response_headers(req);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  FakeRequest stats;
  stats.method = "GET";
  stats.path = "/plugins/header_stamp/stats";
  plugin.call_route(stats);
  GLMP_EXPECT(c, stats.respond_body == "{\"requests\":" + std::to_string(kThreads * kPerThread) + "}");
}

}  // namespace

int main() {
  Checks c;
  try {
    PluginLibrary a(HEADER_STAMP_A);
    PluginLibrary b(HEADER_STAMP_B);
    descriptor(c, a, "1.0.0+a");
    descriptor(c, b, "1.0.0+b");
    defaults(c, a, "a");
    defaults(c, b, "b");
    configured(c, a);
    instances_count_separately(c, a);
    bad_settings(c, a);
    concurrent(c, a);
    // Both builds are unloadable (no STB_GNU_UNIQUE, no thread_local): what hot reload relies on.
    a.close();
    b.close();
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(HEADER_STAMP_A));
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(HEADER_STAMP_B));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    GLMP_EXPECT(c, false);
  }
  return c.finish();
}
