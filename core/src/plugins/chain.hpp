#pragma once
// The plugin chain: an immutable snapshot published atomically (docs/design.md, "Plugin chain").
// Each request takes the snapshot when it starts and keeps it until on_complete, so a reload never
// changes the chain under a running request. The C ABI (plugin-api/) binds to this interface.

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/request_context.hpp"

namespace prometheus {
class Histogram;
}

namespace glmp::core::plugins {

enum class HookResult { Continue, Responded, Error };

// The plugin hooks the core times (glmp_plugin_hook_duration_seconds{plugin,hook}).
enum class Hook : uint8_t { RequestHeaders, Request, ResponseHeaders, ResponseBody, Complete };
inline constexpr size_t kHooks = 5;
const char* hook_name(Hook hook);  // "on_request_headers", "on_request", …

class Plugin {
public:
  virtual ~Plugin() = default;
  virtual const std::string& name() const = 0;
  // Runs in configured order once the request headers are complete, BEFORE the body is read
  // (ctx.body is empty then; method, path, query, headers are known). Every plugin's
  // on_request_headers runs before the first on_request. Responded: ctx.early_response is set,
  // the body is never read and no on_request runs. Only called when has_request_headers_hook().
  virtual HookResult on_request_headers(pipeline::RequestContext&) { return HookResult::Continue; }
  // Whether on_request_headers does anything. A plugin without it (an ABI 1.0/1.1 plugin, or an
  // SDK plugin that does not override it) is not "run" by the headers phase, so the phase alone
  // never earns it an on_complete: its on_complete still pairs with its on_request.
  virtual bool has_request_headers_hook() const { return false; }
  // GLMP_PLUGIN_NONBLOCKING: its request and completion hooks may run on an event loop.
  virtual bool nonblocking() const { return false; }
  // Runs in configured order. Responded: ctx.early_response is set and the upstream is skipped.
  virtual HookResult on_request(pipeline::RequestContext&) { return HookResult::Continue; }
  // Runs in reverse order once the upstream response headers are known.
  virtual void on_response_headers(pipeline::RequestContext&) {}
  // Runs in reverse order for every chunk relayed to the client.
  virtual void on_response_body(pipeline::RequestContext&, std::string_view /*chunk*/, bool /*end_of_stream*/) {}
  // Runs in reverse order exactly once for every plugin whose on_request or on_request_headers ran.
  virtual void on_complete(pipeline::RequestContext&) {}
  // Whether the plugin implements `hook`: a hook it leaves out (a no-op call) is not timed.
  virtual bool has_hook(Hook) const { return true; }
};

// hook_name of each Hook the plugin implements, null for the others (the series
// glmp_plugin_hook_duration_seconds has for it: metrics::PluginMetrics::hook_histograms).
std::array<const char*, kHooks> implemented_hook_names(const Plugin& plugin);

// True when a plugin route on `path` (exact, or every path starting with it when `prefix`) would
// match or shadow a core route: /health, /metrics, /api/metrics/prometheus, /admin/reload,
// /admin/plugins, /v1 and anything under /v1/. register_route refuses such routes.
bool shadows_core_route(std::string_view path, bool prefix);

// An HTTP route a plugin registered ("/plugins/x/stats", "/admin/keys/" as a prefix, …).
struct Route {
  std::string method;  // "" = any
  std::string path;
  bool prefix = false;
  // KeyOrAdmin: the admin token is served at once (ctx.is_admin), anything else as Key.
  enum class Access { Public, Admin, Key, KeyOrAdmin } access = Access::Public;
  std::string plugin;  // owner's name
  std::function<void(pipeline::RequestContext&)> serve;
};

struct Chain {
  std::vector<std::shared_ptr<Plugin>> plugins;
  // glmp_plugin_hook_duration_seconds{plugin,hook} of plugins[i] (metrics::PluginMetrics; null
  // for a hook it lacks); empty when the chain was built without metrics (tests): hooks are still
  // timed, not observed.
  std::vector<std::array<prometheus::Histogram*, kHooks>> hook_histograms;
  std::vector<Route> routes;
  uint64_t generation = 0;
  // Request and completion hooks run on the loop (every plugin non-blocking, the store never
  // blocks); otherwise each of those phases runs on a worker thread. See plugin_api.h, flags.
  bool inline_hooks = true;
  const Route* find_route(std::string_view method, std::string_view path) const {
    for (const auto& r : routes) {
      if (!r.method.empty() && r.method != method) continue;
      if (r.prefix ? path.substr(0, r.path.size()) == r.path : path == r.path) return &r;
    }
    return nullptr;
  }
};

class ChainHolder {
public:
  ChainHolder() : chain_(std::make_shared<const Chain>()) {}
  std::shared_ptr<const Chain> snapshot() const { return std::atomic_load_explicit(&chain_, std::memory_order_acquire); }
  void publish(std::shared_ptr<const Chain> chain) {
    std::atomic_store_explicit(&chain_, std::move(chain), std::memory_order_release);
    version_.fetch_add(1, std::memory_order_release);
  }
  // Changes with every publish: an event loop keeps its own snapshot and takes a new one only
  // when this moved (one relaxed load per request instead of the shared_ptr's atomic load,
  // which takes a lock in libstdc++).
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

private:
  std::shared_ptr<const Chain> chain_;
  std::atomic<uint64_t> version_{0};
};

// Runs one request through a chain snapshot and guarantees on_complete for every plugin whose
// on_request_headers or on_request ran, in reverse order, including when the request fails or the
// client leaves. The pipeline calls request_headers() before reading the body, then request(),
// then (if it went upstream) response_headers/response_body, and complete() however it ends.
class ChainRun {
public:
  explicit ChainRun(std::shared_ptr<const Chain> chain);
  ChainRun(const ChainRun&) = delete;
  ChainRun& operator=(const ChainRun&) = delete;
  ~ChainRun() = default;  // complete() must be called by the pipeline; see Proxy

  // The headers phase: on_request_headers of every plugin that has one, in configured order.
  // Returns the first non-Continue result (the request stops there: don't read the body, answer
  // with ctx.early_response / the plugin's stream / a 500, then complete()) or Continue.
  // Runs once: a second call returns the first call's result without running any hook.
  HookResult request_headers(pipeline::RequestContext& ctx);
  // The body phase: on_request in configured order. Returns the first non-Continue result (the
  // request stops there) or Continue. Runs request_headers() first if nobody did (so a caller
  // that forgets the headers phase, e.g. a Key-access plugin route, still gets auth's checks);
  // when that phase refused, returns its result and runs no on_request.
  HookResult request(pipeline::RequestContext& ctx);
  void response_headers(pipeline::RequestContext& ctx);
  void response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream);
  void complete(pipeline::RequestContext& ctx);  // idempotent

  // How long one plugin's hooks took in this request: each hook's first call (from ctx.start) and
  // the sum of its calls (on_response_body runs once per relayed chunk). Kept for the first
  // kTimedPlugins plugins of the chain; complete() observes them in hook_histograms.
  struct HookTimes {
    std::array<int64_t, kHooks> start_ns;
    std::array<int64_t, kHooks> dur_ns;
    uint8_t ran = 0;  // bit per Hook
  };
  static constexpr size_t kTimedPlugins = 16;
  // Plugin i's times, null past kTimedPlugins or the chain's end.
  const HookTimes* hook_times(size_t i) const { return i < timed_ ? &times_[i] : nullptr; }
  const Chain& chain() const { return *chain_; }

private:
  // Calls `call` for plugin i, timing it when the plugin implements the hook; `last` carries the
  // phase's previous clock read.
  template <class Call>
  auto timed(size_t i, Hook hook, const pipeline::RequestContext& ctx, pipeline::Clock::time_point& last, Call&& call);

  std::shared_ptr<const Chain> chain_;
  std::array<HookTimes, kTimedPlugins> times_;  // [0, timed_) initialised by the constructor
  size_t timed_ = 0;
  size_t headers_ran_ = 0;  // plugins [0, headers_ran_) had their turn in the headers phase
  size_t ran_ = 0;          // plugins [0, ran_) had their on_request run
  std::optional<HookResult> headers_result_;  // set once the headers phase ran
  bool completed_ = false;
};

}  // namespace glmp::core::plugins
