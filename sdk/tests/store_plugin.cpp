// Test plugin for the SDK's ABI 1.1 wrappers: glmp::Store and the metric handles. Driven by
// test_store.cpp through the fake host. on_request runs the store operation named by the request
// header X-Op, with its arguments in headers (X-NS, X-Key, X-Value, X-Name, X-Amount, X-Window,
// X-Now, X-Prefix, X-After, X-Limit), and writes the outcome to the attribute "result" as
// "<status>|<payload>".
#include <glmproxy/sdk.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

std::string arg(const glmp::Request& r, std::string_view name) {
  const auto v = r.header(name);
  return v ? std::string(*v) : std::string();
}

std::int64_t num(const glmp::Request& r, std::string_view name, std::int64_t fallback = 0) {
  const std::string v = arg(r, name);
  return v.empty() ? fallback : std::stoll(v);
}

std::string status(glmp::StoreStatus s) { return std::string(glmp::store_status_name(s)); }

class StoreProbe final : public glmp::Plugin {
 public:
  StoreProbe(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        requests_(host.counter("glmp_store_probe_requests_total", "Requests seen by store_probe",
                               {{"plugin", "store_probe"}})),
        level_(host.gauge("glmp_store_probe_level", "A level", {{"plugin", "store_probe"}, {"kind", "x"}})),
        sizes_(host.histogram("glmp_store_probe_sizes", "Sizes", {{"plugin", "store_probe"}}, {1, 10, 100})),
        defaults_(host.histogram("glmp_store_probe_seconds", "Durations")),
        bad_(host.counter(settings.get_string("bad_name", "glmp_store_probe_ok_total"), "Maybe bad")) {
    // The store works in the constructor too.
    const glmp::StoreResult<std::int64_t> boot = host.store().counter_add("store_probe:boots");
    host.log_info("ctor store: " + status(boot.status) + " " + std::to_string(boot.value) +
                  " available=" + (host.store().available() ? "1" : "0") +
                  " metrics=" + std::to_string(int(requests_.valid())) + std::to_string(int(level_.valid())) +
                  std::to_string(int(sizes_.valid())) + std::to_string(int(defaults_.valid())) +
                  std::to_string(int(bad_.valid())));
  }

  glmp::Status on_request(glmp::Request& r) override {
    const glmp::Store store = host().store();
    const std::string op = arg(r, "X-Op");
    const std::chrono::milliseconds window(num(r, "X-Window", 60'000));
    std::string result;
    if (op == "get") {
      const glmp::StoreResult<std::string> got = store.get(arg(r, "X-NS"), arg(r, "X-Key"));
      result = status(got.status) + "|" + got.value;
    } else if (op == "get-into") {
      std::string value = "garbage";
      const glmp::StoreStatus s = store.get(arg(r, "X-NS"), arg(r, "X-Key"), value);
      result = status(s) + "|" + value;
    } else if (op == "put") {
      result = status(store.put(arg(r, "X-NS"), arg(r, "X-Key"), arg(r, "X-Value"))) + "|";
    } else if (op == "remove") {
      result = status(store.remove(arg(r, "X-NS"), arg(r, "X-Key"))) + "|";
    } else if (op == "list") {
      const glmp::StorePage page = store.list(arg(r, "X-NS"), arg(r, "X-Prefix"), arg(r, "X-After"),
                                              static_cast<std::size_t>(num(r, "X-Limit", 100)));
      result = status(page.status) + "|" + (page.more ? "more" : "end");
      for (const glmp::StoreRecord& rec : page.records) result += "|" + rec.key + "=" + rec.value;
    } else if (op == "window-add") {
      const auto w = store.window_add(arg(r, "X-Name"), num(r, "X-Amount"), window, num(r, "X-Now"));
      result = status(w.status) + "|" + std::to_string(w.value);
    } else if (op == "window-sum") {
      const auto w = store.window_sum(arg(r, "X-Name"), window, num(r, "X-Now"));
      result = status(w.status) + "|" + std::to_string(w.value);
    } else if (op == "window-buckets") {
      const auto w = store.window_buckets(arg(r, "X-Name"), window, num(r, "X-Now"));
      result = status(w.status) + "|";
      for (const glmp::WindowBucket& b : w.value) result += std::to_string(b.start_ms) + ":" + std::to_string(b.amount) + ",";
    } else if (op == "counter-add") {
      const auto c = store.counter_add(arg(r, "X-Name"), num(r, "X-Amount", 1));
      result = status(c.status) + "|" + std::to_string(c.value);
    } else if (op == "counter-get") {
      const auto c = store.counter_get(arg(r, "X-Name"));
      result = status(c.status) + "|" + std::to_string(c.value);
    } else if (op == "bucket") {
      result = std::to_string(store.bucket_ms()) + "|" + (store.available() ? "available" : "absent");
    } else if (op == "metrics") {
      const double amount = static_cast<double>(num(r, "X-Amount", 1));
      requests_.inc();
      requests_.add(amount);
      level_.set(amount);
      level_.inc();
      level_.dec(0.5);
      sizes_.observe(amount);
      defaults_.observe(0.2);
      bad_.inc();  // a null handle when bad_name is invalid: must be a no-op
      result = "ok|";
    } else if (op == "late-metric") {
      const glmp::Counter late = host().counter("glmp_store_probe_late_total", "Too late");
      late.inc();
      result = std::string(late ? "valid" : "null") + "|";
    } else if (op == "null-handles") {
      // Default-constructed handles: every call is a no-op.
      const glmp::Counter c;
      const glmp::Gauge g;
      const glmp::Histogram h;
      c.inc();
      c.add(3);
      g.set(1);
      g.add(1);
      g.inc();
      g.dec();
      h.observe(1);
      result = std::string(!c && !g && !h && c.handle() == nullptr ? "null" : "valid") + "|";
    } else {
      return glmp::Status::Continue;
    }
    r.set_attribute("result", result);
    return glmp::Status::Continue;
  }

 private:
  const glmp::Counter requests_;
  const glmp::Gauge level_;
  const glmp::Histogram sizes_;
  const glmp::Histogram defaults_;
  const glmp::Counter bad_;
};

// Compile-time properties of the handles.
static_assert(std::is_nothrow_default_constructible_v<glmp::Counter>);
static_assert(std::is_trivially_copyable_v<glmp::Counter> && std::is_trivially_copyable_v<glmp::Gauge> &&
              std::is_trivially_copyable_v<glmp::Histogram>);
static_assert(glmp::store_status_name(glmp::StoreStatus::Degraded) == "degraded");
static_assert(static_cast<int>(glmp::StoreStatus::Invalid) == GLMP_STORE_INVALID);
static_assert(glmp::detail::store_status(GLMP_STORE_NOT_FOUND) == glmp::StoreStatus::NotFound);
static_assert(glmp::detail::store_status(42) == glmp::StoreStatus::Unavailable);
static_assert(glmp::detail::store_status(-1) == glmp::StoreStatus::Unavailable);

}  // namespace

GLMP_PLUGIN(StoreProbe, "store_probe", "0.0.1");
