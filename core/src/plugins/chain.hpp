#pragma once
// The plugin chain: an immutable snapshot published atomically (ARCHITECTURE.md, "Plugin chain").
// Each request takes the snapshot when it starts and keeps it until on_complete, so a reload never
// changes the chain under a running request. The C ABI (plugin-api/) binds to this interface.

#include <atomic>
#include <functional>
#include <memory>
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
  // Runs in configured order. Responded: ctx.early_response is set and the upstream is skipped.
  virtual HookResult on_request(pipeline::RequestContext&) { return HookResult::Continue; }
  // Runs in reverse order once the upstream response headers are known.
  virtual void on_response_headers(pipeline::RequestContext&) {}
  // Runs in reverse order for every chunk relayed to the client.
  virtual void on_response_body(pipeline::RequestContext&, std::string_view /*chunk*/, bool /*end_of_stream*/) {}
  // Runs in reverse order exactly once for every plugin whose on_request ran.
  virtual void on_complete(pipeline::RequestContext&) {}
};

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
  void publish(std::shared_ptr<const Chain> chain) { std::atomic_store_explicit(&chain_, std::move(chain), std::memory_order_release); }

private:
  std::shared_ptr<const Chain> chain_;
};

// Runs one request through a chain snapshot and guarantees on_complete for every plugin whose
// on_request ran, in reverse order, including when the request fails or the client leaves.
class ChainRun {
public:
  explicit ChainRun(std::shared_ptr<const Chain> chain) : chain_(std::move(chain)) {}
  ChainRun(const ChainRun&) = delete;
  ChainRun& operator=(const ChainRun&) = delete;
  ~ChainRun() = default;  // complete() must be called by the pipeline; see Proxy

  // Returns the first non-Continue result (the request stops there) or Continue.
  HookResult request(pipeline::RequestContext& ctx);
  void response_headers(pipeline::RequestContext& ctx);
  void response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream);
  void complete(pipeline::RequestContext& ctx);  // idempotent

private:
  std::shared_ptr<const Chain> chain_;
  size_t ran_ = 0;  // plugins whose on_request ran
  bool completed_ = false;
};

}  // namespace glmp::core::plugins
