// The SDK's ABI 1.1 wrappers through the fake host: glmp::Store (records, windows, counters, status
// mapping, Unavailable / Degraded), the metric handles (values recorded, null handles safe), and
// hosts whose table lacks the 1.1 members (struct_size / abi_minor fallback).
#include <glmproxy/fake_host.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using glmp::testing::Checks;
using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using StoreMode = FakeHost::StoreMode;

// Runs one operation of the store plugin and returns its "result" attribute.
std::string run(PluginInstance& p, std::string_view op, std::initializer_list<std::pair<const char*, std::string>> args = {}) {
  FakeRequest r;
  r.headers.push_back({"X-Op", std::string(op)});
  for (const auto& [name, value] : args) r.headers.push_back({name, value});
  if (p.on_request(r) != GLMP_CONTINUE) return "<on_request failed>";
  return r.attribute("result").value_or("<no result>");
}

void records(Checks& c, FakeHost& host, PluginInstance& p) {
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "ns"}, {"X-Key", "a"}, {"X-Value", R"({"n":1})"}}) == "ok|");
  GLMP_EXPECT(c, host.record("ns", "a") == R"({"n":1})");
  GLMP_EXPECT(c, run(p, "get", {{"X-NS", "ns"}, {"X-Key", "a"}}) == R"(ok|{"n":1})");
  GLMP_EXPECT(c, run(p, "get-into", {{"X-NS", "ns"}, {"X-Key", "a"}}) == R"(ok|{"n":1})");
  // Absent: NotFound, and the out-parameter is cleared.
  GLMP_EXPECT(c, run(p, "get", {{"X-NS", "ns"}, {"X-Key", "zz"}}) == "not_found|");
  GLMP_EXPECT(c, run(p, "get-into", {{"X-NS", "ns"}, {"X-Key", "zz"}}) == "not_found|");
  // Invalid arguments.
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "ns"}, {"X-Key", "b"}, {"X-Value", "{not json"}}) == "invalid|");
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "ns"}, {"X-Key", ""}, {"X-Value", "1"}}) == "invalid|");
  GLMP_EXPECT(c, run(p, "get", {{"X-NS", ""}, {"X-Key", "a"}}) == "invalid|");
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "ns"}, {"X-Key", std::string(513, 'k')}, {"X-Value", "1"}}) == "invalid|");
  GLMP_EXPECT(c, !host.record("ns", "b"));
  // Any JSON document is a value.
  for (const char* v : {"1", "\"s\"", "[1,2]", "null", "true", " {\"x\":[{}]} ", "-1.5e3"}) {
    GLMP_EXPECT(c, run(p, "put", {{"X-NS", "json"}, {"X-Key", "k"}, {"X-Value", v}}) == "ok|");
  }
  for (const char* v : {"", "01", "[1,]", "{\"a\"}", "nul", "\"\\x\"", "1 2"}) {
    GLMP_EXPECT(c, run(p, "put", {{"X-NS", "json"}, {"X-Key", "k"}, {"X-Value", v}}) == "invalid|");
  }

  GLMP_EXPECT(c, run(p, "remove", {{"X-NS", "ns"}, {"X-Key", "a"}}) == "ok|");
  GLMP_EXPECT(c, run(p, "remove", {{"X-NS", "ns"}, {"X-Key", "a"}}) == "not_found|");

  // list: prefix, after, limit, more.
  for (const char* k : {"u:1", "u:2", "u:3", "v:1"}) {
    GLMP_EXPECT(c, run(p, "put", {{"X-NS", "l"}, {"X-Key", k}, {"X-Value", "0"}}) == "ok|");
  }
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "l"}}) == "ok|end|u:1=0|u:2=0|u:3=0|v:1=0");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "l"}, {"X-Prefix", "u:"}, {"X-Limit", "2"}}) == "ok|more|u:1=0|u:2=0");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "l"}, {"X-Prefix", "u:"}, {"X-After", "u:2"}, {"X-Limit", "2"}}) ==
                     "ok|end|u:3=0");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "empty"}}) == "ok|end");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "l"}, {"X-Limit", "0"}}) == "invalid|end");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "l"}, {"X-Limit", "1001"}}) == "invalid|end");
}

void windows(Checks& c, FakeHost& host, PluginInstance& p) {
  GLMP_EXPECT(c, run(p, "bucket") == "60000|available");
  // bucket 60 s, window 5 min. 10 at t=1'000'000 (bucket 960'000), 5 at t=1'100'000 (bucket 1'080'000).
  const std::string w = "300000";
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "w"}, {"X-Amount", "10"}, {"X-Window", w}, {"X-Now", "1000000"}}) ==
                     "ok|10");
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "w"}, {"X-Amount", "5"}, {"X-Window", w}, {"X-Now", "1100000"}}) ==
                     "ok|15");
  GLMP_EXPECT(c, host.windows["w"].size() == 2 && host.windows["w"][960'000] == 10 && host.windows["w"][1'080'000] == 5);
  GLMP_EXPECT(c, run(p, "window-buckets", {{"X-Name", "w"}, {"X-Window", w}, {"X-Now", "1100000"}}) ==
                     "ok|960000:10,1080000:5,");
  // A bucket counts while start > now - window: 960'000 leaves the window at 1'260'000.
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}, {"X-Window", w}, {"X-Now", "1259999"}}) == "ok|15");
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}, {"X-Window", w}, {"X-Now", "1260000"}}) == "ok|5");
  GLMP_EXPECT(c, run(p, "window-buckets", {{"X-Name", "w"}, {"X-Window", w}, {"X-Now", "1260000"}}) ==
                     "ok|1080000:5,");
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}, {"X-Window", w}, {"X-Now", "1380000"}}) == "ok|0");
  // A negative amount; a window never added to.
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "w"}, {"X-Amount", "-3"}, {"X-Window", w}, {"X-Now", "1100001"}}) ==
                     "ok|12");
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "none"}, {"X-Window", w}}) == "ok|0");
  // now_ms = 0 uses the host's clock.
  host.clock_ms = 1'100'000;
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}, {"X-Window", w}}) == "ok|12");
  GLMP_EXPECT(c, host.window_sum("w", 300'000) == 12);
  // Invalid windows and names.
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}, {"X-Window", "0"}}) == "invalid|0");
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "w"}, {"X-Amount", "1"}, {"X-Window", "86400001"}}) == "invalid|0");
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", ""}, {"X-Amount", "1"}}) == "invalid|0");
  GLMP_EXPECT(c, run(p, "window-buckets", {{"X-Name", "w"}, {"X-Window", "-5"}}) == "invalid|");
}

void counters(Checks& c, FakeHost& host, PluginInstance& p) {
  GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}, {"X-Amount", "3"}}) == "ok|3");
  GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}, {"X-Amount", "-1"}}) == "ok|2");
  GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}}) == "ok|3");
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "c"}}) == "ok|3");
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "never"}}) == "ok|0");
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", ""}}) == "invalid|0");
  GLMP_EXPECT(c, host.counter("c") == 3);
  GLMP_EXPECT(c, host.counter("store_probe:boots") == 1);  // the constructor's counter_add
}

void failures(Checks& c, FakeHost& host, PluginInstance& p) {
  host.records["f"]["k"] = "7";
  host.counters["fc"] = 9;

  host.set_store_unavailable();
  GLMP_EXPECT(c, run(p, "get", {{"X-NS", "f"}, {"X-Key", "k"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "get-into", {{"X-NS", "f"}, {"X-Key", "k"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "f"}, {"X-Key", "k"}, {"X-Value", "8"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "remove", {{"X-NS", "f"}, {"X-Key", "k"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "f"}}) == "unavailable|end");
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "fw"}, {"X-Amount", "4"}}) == "unavailable|0");
  GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "fw"}}) == "unavailable|0");
  GLMP_EXPECT(c, run(p, "window-buckets", {{"X-Name", "fw"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "fc"}}) == "unavailable|0");
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "fc"}}) == "unavailable|0");
  // Invalid arguments are still Invalid while the backend is down.
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", ""}}) == "invalid|0");
  GLMP_EXPECT(c, host.record("f", "k") == "7" && host.counter("fc") == 9 && host.windows.count("fw") == 0);

  host.store_mode = StoreMode::Degraded;
  GLMP_EXPECT(c, run(p, "get", {{"X-NS", "f"}, {"X-Key", "k"}}) == "degraded|7");  // possibly stale, still handed out
  GLMP_EXPECT(c, run(p, "put", {{"X-NS", "f"}, {"X-Key", "k"}, {"X-Value", "8"}}) == "unavailable|");
  GLMP_EXPECT(c, run(p, "list", {{"X-NS", "f"}}) == "degraded|end|k=7");
  GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "fw"}, {"X-Amount", "4"}}) == "degraded|0");
  GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "fc"}}) == "degraded|0");
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "fc"}}) == "degraded|0");
  GLMP_EXPECT(c, host.counter("fc") == 9);

  host.store_mode = StoreMode::Normal;
  GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "fc"}}) == "ok|9");
}

// Host functions that answer a chosen raw status (and scribble on the out-values), to check the
// mapping from the C int to glmp::StoreStatus.
int g_code = 0;

void status_mapping(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance p(d, host, "{}");
  glmp_host_api& api = host.mutable_api();
  api.store_get = [](glmp_instance_host_ptr*, const char*, std::size_t, const char*, std::size_t, glmp_bytes_fn out,
                     void* user) {
    out(user, "{}", 2);
    return g_code;
  };
  api.counter_get = [](glmp_instance_host_ptr*, const char*, std::size_t, std::int64_t* value) {
    *value = 99;
    return g_code;
  };
  api.store_list = [](glmp_instance_host_ptr*, const char*, std::size_t, const char*, std::size_t, const char*,
                      std::size_t, std::size_t, glmp_record_fn out, void* user, int* more) {
    out(user, "k", 1, "1", 1);
    *more = 1;
    return g_code;
  };
  const std::pair<int, const char*> expected[] = {
      {GLMP_STORE_OK, "ok"},         {GLMP_STORE_NOT_FOUND, "not_found"}, {GLMP_STORE_UNAVAILABLE, "unavailable"},
      {GLMP_STORE_DEGRADED, "degraded"}, {GLMP_STORE_INVALID, "invalid"}, {5, "unavailable"},
      {-1, "unavailable"},           {1000, "unavailable"}};
  for (const auto& [code, name] : expected) {
    g_code = code;
    const std::string s(name);
    // Only Ok and Degraded carry the value the host handed out.
    const bool carries = s == "ok" || s == "degraded";
    GLMP_EXPECT(c, run(p, "get", {{"X-NS", "n"}, {"X-Key", "k"}}) == s + "|" + (carries ? "{}" : ""));
    GLMP_EXPECT(c, run(p, "get-into", {{"X-NS", "n"}, {"X-Key", "k"}}) == s + "|" + (carries ? "{}" : ""));
    GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "n"}}) == s + "|" + (carries ? "99" : "0"));
    GLMP_EXPECT(c, run(p, "list", {{"X-NS", "n"}}) == s + (carries ? "|more|k=1" : "|end"));
  }
}

void metrics(Checks& c, const glmp_plugin_descriptor* d) {
  const glmp::testing::Labels probe = {{"plugin", "store_probe"}};
  {
    FakeHost host;
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("ctor store: ok 1 available=1 metrics=11111"));
    GLMP_EXPECT(c, run(p, "metrics", {{"X-Amount", "5"}}) == "ok|");
    GLMP_EXPECT(c, run(p, "metrics", {{"X-Amount", "50"}}) == "ok|");

    const auto requests = host.metric("glmp_store_probe_requests_total", probe);
    GLMP_EXPECT(c, requests && requests->kind == GLMP_METRIC_COUNTER && requests->value == 57.0);
    GLMP_EXPECT(c, requests && requests->help == "Requests seen by store_probe");
    // Labels match in any order; a different label set is another child.
    const auto level = host.metric("glmp_store_probe_level", {{"kind", "x"}, {"plugin", "store_probe"}});
    GLMP_EXPECT(c, level && level->kind == GLMP_METRIC_GAUGE && level->value == 50.5);
    GLMP_EXPECT(c, !host.metric("glmp_store_probe_level", probe));
    const auto sizes = host.metric("glmp_store_probe_sizes", probe);
    GLMP_EXPECT(c, sizes && sizes->kind == GLMP_METRIC_HISTOGRAM && sizes->count == 2 && sizes->sum == 55.0);
    GLMP_EXPECT(c, sizes && sizes->buckets == std::vector<double>({1, 10, 100}));
    GLMP_EXPECT(c, sizes && sizes->bucket_counts == std::vector<std::uint64_t>({0, 1, 2, 2}));
    const auto defaults = host.metric("glmp_store_probe_seconds");
    GLMP_EXPECT(c, defaults && defaults->buckets == FakeHost::default_buckets() && defaults->count == 2);
    GLMP_EXPECT(c, host.metrics().size() == 5);
    for (const auto& m : host.metrics()) GLMP_EXPECT(c, m.misuse == 0);

    // After construction: a warning and a null handle (no crash, no metric).
    GLMP_EXPECT(c, run(p, "late-metric") == "null|");
    GLMP_EXPECT(c, host.logged("glmp_store_probe_late_total created outside the plugin's constructor"));
    GLMP_EXPECT(c, !host.metric("glmp_store_probe_late_total"));
    GLMP_EXPECT(c, run(p, "null-handles") == "null|");

    // A second instance (a reload) gets the same metrics: values carry on.
    PluginInstance again(d, host, "{}");
    GLMP_EXPECT(c, run(again, "metrics", {{"X-Amount", "1"}}) == "ok|");
    GLMP_EXPECT(c, host.metric("glmp_store_probe_requests_total", probe)->value == 59.0);
    GLMP_EXPECT(c, host.metrics().size() == 5);
  }
  {
    // The host refuses one metric (invalid name): that handle is null, the rest work.
    FakeHost host;
    PluginInstance p(d, host, R"({"bad_name":"9-bad"})");
    GLMP_EXPECT(c, host.logged("metrics=11110"));
    GLMP_EXPECT(c, host.logged("metric 9-bad refused"));
    GLMP_EXPECT(c, run(p, "metrics", {{"X-Amount", "2"}}) == "ok|");
    GLMP_EXPECT(c, host.metric("glmp_store_probe_requests_total", probe)->value == 3.0);
    GLMP_EXPECT(c, host.metrics().size() == 4);
  }
  {
    // A name taken by another kind is refused.
    FakeHost host;
    PluginInstance p(d, host, R"({"bad_name":"glmp_store_probe_level"})");
    GLMP_EXPECT(c, host.logged("metrics=11110"));
  }
  {
    // The host refuses every metric: all null, updates are no-ops.
    FakeHost host;
    host.reject_metrics = true;
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("metrics=00000"));
    GLMP_EXPECT(c, run(p, "metrics") == "ok|");
    GLMP_EXPECT(c, host.metrics().empty());
  }
}

// Hosts whose table lacks (some of) the ABI 1.1 members.
void older_hosts(Checks& c, const glmp_plugin_descriptor* d) {
  {
    // An ABI 1.0 table: the plugin still loads; store calls answer Unavailable, metrics are null.
    FakeHost host;
    host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, store_get));
    host.mutable_api().abi_minor = 0;
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("ctor store: unavailable 0 available=0 metrics=00000"));
    GLMP_EXPECT(c, host.logged("the host (ABI 1.0) has no plugin metrics: glmp_store_probe_requests_total is not exported"));
    GLMP_EXPECT(c, run(p, "bucket") == "0|absent");
    GLMP_EXPECT(c, run(p, "get", {{"X-NS", "n"}, {"X-Key", "k"}}) == "unavailable|");
    GLMP_EXPECT(c, run(p, "put", {{"X-NS", "n"}, {"X-Key", "k"}, {"X-Value", "1"}}) == "unavailable|");
    GLMP_EXPECT(c, run(p, "remove", {{"X-NS", "n"}, {"X-Key", "k"}}) == "unavailable|");
    GLMP_EXPECT(c, run(p, "list", {{"X-NS", "n"}}) == "unavailable|end");
    GLMP_EXPECT(c, run(p, "window-add", {{"X-Name", "w"}, {"X-Amount", "1"}}) == "unavailable|0");
    GLMP_EXPECT(c, run(p, "window-sum", {{"X-Name", "w"}}) == "unavailable|0");
    GLMP_EXPECT(c, run(p, "window-buckets", {{"X-Name", "w"}}) == "unavailable|");
    GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}}) == "unavailable|0");
    GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "c"}}) == "unavailable|0");
    GLMP_EXPECT(c, run(p, "metrics") == "ok|");
    GLMP_EXPECT(c, host.records.empty() && host.counters.empty() && host.windows.empty() && host.metrics().empty());
  }
  {
    // A full-size table that claims minor 0: the members are not trusted.
    FakeHost host;
    host.mutable_api().abi_minor = 0;
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("ctor store: unavailable 0 available=0 metrics=00000"));
    GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}}) == "unavailable|0");
  }
  {
    // The store but no metrics.
    FakeHost host;
    host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, metric_new));
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("ctor store: ok 1 available=1 metrics=00000"));
    GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "store_probe:boots"}}) == "ok|1");
  }
  {
    // metric_new but not metric_observe: no metric is handed out (each needs all its updates).
    FakeHost host;
    host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, metric_observe));
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("metrics=00000"));
  }
  {
    // The table ends inside the store group: what it holds works, the rest is Unavailable.
    FakeHost host;
    host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, counter_get));
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, host.logged("ctor store: ok 1 available=0"));
    GLMP_EXPECT(c, run(p, "counter-add", {{"X-Name", "c"}}) == "ok|1");
    GLMP_EXPECT(c, run(p, "counter-get", {{"X-Name", "c"}}) == "unavailable|0");
    GLMP_EXPECT(c, run(p, "bucket") == "0|absent");
  }
  {
    // A NULL member is treated as absent.
    FakeHost host;
    host.mutable_api().store_list = nullptr;
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, run(p, "list", {{"X-NS", "n"}}) == "unavailable|end");
    GLMP_EXPECT(c, run(p, "bucket") == "60000|absent");
  }
  {
    // Smaller than the 1.0 table: refused, as before.
    FakeHost host;
    host.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, register_route));
    char error[256] = {0};
    GLMP_EXPECT(c, d->on_config_new(host.api(), host.instance(), "{}", 2, error, sizeof error) == nullptr);
    GLMP_EXPECT(c, std::string(error).find("host API table") != std::string::npos);
  }
}

void concurrency(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  PluginInstance p(d, host, "{}");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&p] {
      for (int i = 0; i < 200; ++i) {
        run(p, "counter-add", {{"X-Name", "shared"}});
        run(p, "window-add", {{"X-Name", "shared"}, {"X-Amount", "2"}});
        run(p, "metrics", {{"X-Amount", "0"}});
      }
    });
  }
  for (std::thread& t : threads) t.join();
  GLMP_EXPECT(c, host.counter("shared") == 800);
  GLMP_EXPECT(c, host.window_sum("shared", 60'000) == 1600);
  GLMP_EXPECT(c, host.metric("glmp_store_probe_requests_total", {{"plugin", "store_probe"}})->value == 800.0);
  GLMP_EXPECT(c, host.metric("glmp_store_probe_sizes", {{"plugin", "store_probe"}})->count == 800);
}

}  // namespace

int main() {
  Checks c;
  try {
    PluginLibrary lib(GLMP_STORE_PLUGIN);
    const glmp_plugin_descriptor* d = lib.descriptor();
    {
      FakeHost host;
      PluginInstance p(d, host, "{}");
      records(c, host, p);
      windows(c, host, p);
      counters(c, host, p);
      failures(c, host, p);
    }
    status_mapping(c, d);
    metrics(c, d);
    older_hosts(c, d);
    concurrency(c, d);
    lib.close();
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(GLMP_STORE_PLUGIN));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    GLMP_EXPECT(c, false);
  }
  return c.finish();
}
