#pragma once
// The plugin chain: an immutable snapshot published atomically (docs/design.md, "Plugin chain").
// Each request takes the snapshot when it starts and keeps it until on_complete, so a reload never
// changes the chain under a running request. The C ABI (plugin-api/) binds to this interface.

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/request_context.hpp"

namespace glmp::core::plugins {

enum class HookResult { Continue, Responded, Error };

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
};

// True when a plugin route on `path` (exact, or every path starting with it when `prefix`) would
// match or shadow a core route: /health, /metrics, /api/metrics/prometheus, /admin/reload,
// /admin/plugins, /v1 and anything under /v1/. register_route refuses such routes.
bool shadows_core_route(std::string_view path, bool prefix);

// An HTTP route a plugin registered ("/plugins/x/stats", "/admin/keys/" as a prefix, …).
struct Route {
  std::string method;  // "" = any
  std::string path;
  bool prefix = false;
  enum class Access { Public, Admin, Key } access = Access::Public;
  std::string plugin;  // owner's name
  std::function<void(pipeline::RequestContext&)> serve;
};

struct Chain {
  std::vector<std::shared_ptr<Plugin>> plugins;
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
  explicit ChainRun(std::shared_ptr<const Chain> chain) : chain_(std::move(chain)) {}
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

private:
  std::shared_ptr<const Chain> chain_;
  size_t headers_ran_ = 0;  // plugins [0, headers_ran_) had their turn in the headers phase
  size_t ran_ = 0;          // plugins [0, ran_) had their on_request run
  std::optional<HookResult> headers_result_;  // set once the headers phase ran
  bool completed_ = false;
};

}  // namespace glmp::core::plugins
