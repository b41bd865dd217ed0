// usage_meter through the C ABI: the built .so dlopen'ed and driven by the SDK's fake host, whose
// in-memory store and metrics stand in for the core's.
#include <glmproxy/fake_host.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
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

const glmp::testing::Labels kLabels = {{"plugin", "usage_meter"}};
constexpr std::int64_t kWindow = 18'000'000;  // the default window_ms (5 h)

// One proxied request: on_request, then on_complete with the given usage.
FakeRequest proxy_one(PluginInstance& plugin, const char* key, std::int64_t input, std::int64_t output, bool seen = true,
                      const char* id = "req") {
  FakeRequest r;
  r.id = id;
  if (key != nullptr) r.headers.push_back({"X-Meter-Key", key});
  if (plugin.on_request(r) != GLMP_CONTINUE) throw std::runtime_error("on_request did not continue");
  r.response_status = 200;
  r.usage.seen = seen ? 1 : 0;
  r.usage.input_tokens = input;
  r.usage.output_tokens = output;
  plugin.on_complete(r);
  return r;
}

// GET <path_and_query> through the plugin's routes.
FakeRequest get(PluginInstance& plugin, const std::string& path, const std::string& query = "") {
  FakeRequest r;
  r.method = "GET";
  r.path = path;
  r.query = query;
  if (!plugin.call_route(r)) r.respond_status = 404;
  return r;
}

void descriptor(Checks& c, const PluginLibrary& lib) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  GLMP_EXPECT(c, std::strcmp(d->name, "usage_meter") == 0 && std::strcmp(d->version, "1.0.0") == 0);
  GLMP_EXPECT(c, d->abi_major == GLMP_ABI_MAJOR && d->abi_minor == GLMP_ABI_MINOR);
  GLMP_EXPECT(c, d->on_request != nullptr && d->on_complete != nullptr);
  GLMP_EXPECT(c, d->on_response_headers == nullptr && d->on_response_body == nullptr);
}

void setup(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance plugin(d, host, "{}");
  GLMP_EXPECT(c, host.routes.size() == 2);
  const auto* key_route = host.find_route("GET", "/meter/alice");
  GLMP_EXPECT(c, key_route != nullptr && key_route->path == "/meter/*" && key_route->access == GLMP_ACCESS_PUBLIC);
  const auto* list_route = host.find_route("GET", "/meter");
  GLMP_EXPECT(c, list_route != nullptr && list_route->path == "/meter" && list_route->access == GLMP_ACCESS_PUBLIC);
  GLMP_EXPECT(c, host.find_route("POST", "/meter") == nullptr);
  GLMP_EXPECT(c, host.logged("metering into namespace \"usage_meter\", window 18000000 ms"));

  GLMP_EXPECT(c, host.metrics().size() == 3);
  const auto requests = host.metric("glmp_usage_meter_requests_total", kLabels);
  GLMP_EXPECT(c, requests && requests->kind == GLMP_METRIC_COUNTER && requests->value == 0.0);
  const auto tokens = host.metric("glmp_usage_meter_request_tokens", kLabels);
  GLMP_EXPECT(c, tokens && tokens->kind == GLMP_METRIC_HISTOGRAM &&
                     tokens->buckets == std::vector<double>({10, 100, 1000, 10000, 100000}));
  const auto last = host.metric("glmp_usage_meter_last_tokens", kLabels);
  GLMP_EXPECT(c, last && last->kind == GLMP_METRIC_GAUGE);

  GLMP_EXPECT(c, refusal(d, R"({"window_ms":0})") == R"(setting "window_ms" must be > 0)");
  GLMP_EXPECT(c, refusal(d, R"({"window_ms":"5h"})") == R"(setting "window_ms" must be an integer, not string)");
  GLMP_EXPECT(c, refusal(d, R"({"namespace":""})") == R"(setting "namespace" must not be empty)");
  GLMP_EXPECT(c, refusal(d, R"({"namespace":"team","window_ms":60000})").empty());
}

void metering(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance plugin(d, host, "{}");

  FakeRequest first = proxy_one(plugin, "alice", 10, 20, true, "req-1");
  GLMP_EXPECT(c, first.attribute("usage_meter.key") == "alice");
  GLMP_EXPECT(c, !first.responded);
  GLMP_EXPECT(c, host.counter("usage_meter:total:alice") == 30);
  GLMP_EXPECT(c, host.counter("usage_meter:requests:alice") == 1);
  GLMP_EXPECT(c, host.window_sum("usage_meter:alice", kWindow) == 30);
  GLMP_EXPECT(c, host.record("usage_meter", "alice") == R"({"last_request_id":"req-1","last_tokens":30,"requests":1})");

  proxy_one(plugin, "alice", 5, 5, true, "req-2");
  GLMP_EXPECT(c, host.record("usage_meter", "alice") == R"({"last_request_id":"req-2","last_tokens":10,"requests":2})");

  // Metrics: one count per completed request; histogram and gauge see the tokens.
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_requests_total", kLabels)->value == 2.0);
  const auto tokens = host.metric("glmp_usage_meter_request_tokens", kLabels);
  GLMP_EXPECT(c, tokens->count == 2 && tokens->sum == 40.0);
  GLMP_EXPECT(c, tokens->bucket_counts == std::vector<std::uint64_t>({1, 2, 2, 2, 2, 2}));
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_last_tokens", kLabels)->value == 10.0);

  FakeRequest shown = get(plugin, "/meter/alice");
  GLMP_EXPECT(c, shown.respond_status == 200 && shown.respond_content_type == "application/json");
  GLMP_EXPECT(c, shown.respond_body == R"({"key":"alice","window_tokens":40,"lifetime_tokens":40,)"
                                       R"("record":{"last_request_id":"req-2","last_tokens":10,"requests":2}})");

  // No X-Meter-Key (or an empty one): "anonymous".
  FakeRequest anon = proxy_one(plugin, nullptr, 1, 2, true, "req-3");
  GLMP_EXPECT(c, anon.attribute("usage_meter.key") == "anonymous");
  proxy_one(plugin, "", 1, 0, true, "req-4");
  GLMP_EXPECT(c, host.counter("usage_meter:total:anonymous") == 4);
  GLMP_EXPECT(c, host.counter("usage_meter:requests:anonymous") == 2);

  // No usage (the upstream failed): metrics count it, the store is not touched.
  proxy_one(plugin, "bob", 0, 0, false, "req-5");
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_requests_total", kLabels)->value == 5.0);
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_last_tokens", kLabels)->value == 0.0);
  GLMP_EXPECT(c, !host.record("usage_meter", "bob") && host.counter("usage_meter:requests:bob") == 0);
  // Usage seen but zero tokens: recorded.
  proxy_one(plugin, "bob", 0, 0, true, "req-6");
  GLMP_EXPECT(c, host.record("usage_meter", "bob") == R"({"last_request_id":"req-6","last_tokens":0,"requests":1})");

  // An unknown key: zeros and a null record.
  FakeRequest unknown = get(plugin, "/meter/nobody");
  GLMP_EXPECT(c, unknown.respond_status == 200);
  GLMP_EXPECT(c, unknown.respond_body == R"({"key":"nobody","window_tokens":0,"lifetime_tokens":0,"record":null})");

  // A percent-encoded key.
  proxy_one(plugin, "team a/1", 3, 4, true, "req-7");
  FakeRequest encoded = get(plugin, "/meter/team%20a%2F1");
  GLMP_EXPECT(c, encoded.respond_status == 200 &&
                     encoded.respond_body.find(R"({"key":"team a/1","window_tokens":7,"lifetime_tokens":7,)") == 0);

  // GET /meter/ (no key): 400.
  FakeRequest empty = get(plugin, "/meter/");
  GLMP_EXPECT(c, empty.respond_status == 400 && empty.respond_body.find(R"("status":"invalid")") != std::string::npos);

  // The window ages out; the lifetime counter stays. The usage was added at clock_ms, so its
  // bucket leaves the window at most window_ms later.
  host.clock_ms += kWindow;
  FakeRequest later = get(plugin, "/meter/alice");
  GLMP_EXPECT(c, later.respond_body.find(R"({"key":"alice","window_tokens":0,"lifetime_tokens":40,)") == 0);
}

void listing(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance plugin(d, host, R"({"namespace":"team","window_ms":60000})");
  for (const char* key : {"carol", "alice", "bob"}) proxy_one(plugin, key, 1, 1, true, key);
  GLMP_EXPECT(c, host.counter("team:total:alice") == 2 && host.window_sum("team:alice", 60'000) == 2);
  GLMP_EXPECT(c, host.records.count("usage_meter") == 0 && host.records["team"].size() == 3);

  FakeRequest all = get(plugin, "/meter");
  GLMP_EXPECT(c, all.respond_status == 200 && all.respond_content_type == "application/json");
  GLMP_EXPECT(c, all.respond_body ==
                     R"({"records":[)"
                     R"({"key":"alice","value":{"last_request_id":"alice","last_tokens":2,"requests":1}},)"
                     R"({"key":"bob","value":{"last_request_id":"bob","last_tokens":2,"requests":1}},)"
                     R"({"key":"carol","value":{"last_request_id":"carol","last_tokens":2,"requests":1}}],"more":false})");

  FakeRequest page1 = get(plugin, "/meter", "limit=2");
  GLMP_EXPECT(c, page1.respond_status == 200 && page1.respond_body.find(R"("key":"alice")") != std::string::npos &&
                     page1.respond_body.find(R"("key":"bob")") != std::string::npos &&
                     page1.respond_body.find(R"("key":"carol")") == std::string::npos &&
                     page1.respond_body.find(R"("more":true})") != std::string::npos);
  FakeRequest page2 = get(plugin, "/meter", "limit=2&after=bob");
  GLMP_EXPECT(c, page2.respond_body.find(R"({"records":[{"key":"carol",)") == 0 &&
                     page2.respond_body.find(R"("more":false})") != std::string::npos);
  FakeRequest none = get(plugin, "/meter", "after=zzz");
  GLMP_EXPECT(c, none.respond_status == 200 && none.respond_body == R"({"records":[],"more":false})");

  for (const char* bad : {"limit=0", "limit=1001", "limit=abc", "limit=", "limit=-1"}) {
    FakeRequest r = get(plugin, "/meter", bad);
    GLMP_EXPECT(c, r.respond_status == 400 && r.respond_body.find(R"("status":"invalid")") != std::string::npos);
  }
  GLMP_EXPECT(c, get(plugin, "/meter", "limit=1000").respond_status == 200);
}

void store_down(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance plugin(d, host, "{}");
  proxy_one(plugin, "alice", 10, 20, true, "req-1");

  host.set_store_unavailable();
  // on_complete logs and carries on (metrics still count).
  proxy_one(plugin, "alice", 1, 1, true, "req-2");
  GLMP_EXPECT(c, host.logged("store window_add \"usage_meter:alice\": unavailable"));
  GLMP_EXPECT(c, host.logged("store counter_add \"usage_meter:total:alice\": unavailable"));
  for (const auto& line : host.logs()) {
    if (line.message.find("store ") == 0) GLMP_EXPECT(c, line.level == GLMP_LOG_WARNING);
  }
  GLMP_EXPECT(c, !host.logged("on_complete failed"));
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_requests_total", kLabels)->value == 2.0);
  GLMP_EXPECT(c, host.record("usage_meter", "alice") == R"({"last_request_id":"req-1","last_tokens":30,"requests":1})");

  FakeRequest shown = get(plugin, "/meter/alice");
  GLMP_EXPECT(c, shown.respond_status == 503 && shown.respond_content_type == "application/json");
  GLMP_EXPECT(c, shown.respond_body == R"({"error":"store unavailable","status":"unavailable"})");
  FakeRequest listed = get(plugin, "/meter");
  GLMP_EXPECT(c, listed.respond_status == 503 &&
                     listed.respond_body == R"({"error":"store unavailable","status":"unavailable"})");

  // Degraded (fail_open): still 200, flagged; sums read 0, the record may be stale.
  host.store_mode = FakeHost::StoreMode::Degraded;
  FakeRequest degraded = get(plugin, "/meter/alice");
  GLMP_EXPECT(c, degraded.respond_status == 200);
  GLMP_EXPECT(c, degraded.respond_body == R"({"key":"alice","window_tokens":0,"lifetime_tokens":0,)"
                                          R"("record":{"last_request_id":"req-1","last_tokens":30,"requests":1},)"
                                          R"("degraded":true})");
  FakeRequest degraded_list = get(plugin, "/meter");
  GLMP_EXPECT(c, degraded_list.respond_status == 200 &&
                     degraded_list.respond_body.find(R"("more":false,"degraded":true})") != std::string::npos);
  // A degraded request counter reads 0: the record is left alone rather than overwritten.
  proxy_one(plugin, "alice", 1, 1, true, "req-3");
  GLMP_EXPECT(c, host.logged("store counter_add \"usage_meter:requests:alice\": degraded"));
  GLMP_EXPECT(c, host.record("usage_meter", "alice") == R"({"last_request_id":"req-1","last_tokens":30,"requests":1})");

  host.store_mode = FakeHost::StoreMode::Normal;
  proxy_one(plugin, "alice", 1, 1, true, "req-4");
  GLMP_EXPECT(c, host.record("usage_meter", "alice") == R"({"last_request_id":"req-4","last_tokens":2,"requests":2})");
}

void old_host(Checks& c, const glmp_plugin_descriptor* d) {
  // An ABI 1.0 host table: the plugin loads, meters nothing, and its routes answer 503.
  FakeHost host;
  host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, store_get));
  host.mutable_api().abi_minor = 0;
  PluginInstance plugin(d, host, "{}");
  GLMP_EXPECT(c, host.logged("this host has no state store"));
  proxy_one(plugin, "alice", 1, 1);
  GLMP_EXPECT(c, host.metrics().empty() && host.counters.empty());
  GLMP_EXPECT(c, get(plugin, "/meter/alice").respond_status == 503);
}

void concurrent(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance plugin(d, host, "{}");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&plugin] {
      for (int i = 0; i < 100; ++i) proxy_one(plugin, "shared", 2, 3);
    });
  }
  for (std::thread& t : threads) t.join();
  GLMP_EXPECT(c, host.counter("usage_meter:total:shared") == 2000);
  GLMP_EXPECT(c, host.counter("usage_meter:requests:shared") == 400);
  GLMP_EXPECT(c, host.window_sum("usage_meter:shared", kWindow) == 2000);
  GLMP_EXPECT(c, host.metric("glmp_usage_meter_requests_total", kLabels)->value == 400.0);
}

}  // namespace

int main() {
  Checks c;
  try {
    PluginLibrary lib(USAGE_METER_PLUGIN);
    descriptor(c, lib);
    setup(c, lib.descriptor());
    metering(c, lib.descriptor());
    listing(c, lib.descriptor());
    store_down(c, lib.descriptor());
    old_host(c, lib.descriptor());
    concurrent(c, lib.descriptor());
    lib.close();
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(USAGE_METER_PLUGIN));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    GLMP_EXPECT(c, false);
  }
  return c.finish();
}
