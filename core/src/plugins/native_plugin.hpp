#pragma once
// A plugin loaded from a shared library, seen by the chain as a plugins::Plugin. It owns the
// plugin's configuration state (on_config_new … on_config_destroy) and keeps its library loaded
// for as long as any chain that contains it is alive.

#include <memory>
#include <string>
#include <vector>

#include <Poco/Logger.h>

#include "config/config.hpp"
#include "glmproxy/plugin_api.h"
#include "plugins/chain.hpp"
#include "plugins/loader.hpp"
#include "plugins/services.hpp"

namespace glmp::core::plugins {

class NativePlugin;

struct PluginRoute {
  std::string method;  // "" = any
  std::string path;    // exact, or a prefix when `prefix`
  bool prefix = false;
  glmp_route_access access = GLMP_ACCESS_PUBLIC;
  glmp_route_handler handler = nullptr;
  void* user_data = nullptr;
  NativePlugin* plugin = nullptr;
};

class NativePlugin final : public Plugin {
public:
  // Calls on_config_new with the settings. Throws LoadError when the plugin refuses them.
  NativePlugin(std::shared_ptr<Library> library, const config::PluginConfig& cfg, size_t position,
               const Services& services);
  ~NativePlugin() override;  // on_config_destroy

  const std::string& name() const override { return name_; }
  HookResult on_request_headers(pipeline::RequestContext& ctx) override;
  bool has_request_headers_hook() const override { return headers_hook_ != nullptr; }
  bool has_hook(Hook hook) const override;
  bool nonblocking() const override { return nonblocking_; }
  HookResult on_request(pipeline::RequestContext& ctx) override;
  void on_response_headers(pipeline::RequestContext& ctx) override;
  void on_response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream) override;
  void on_complete(pipeline::RequestContext& ctx) override;

  // Runs a route handler registered by this plugin.
  void serve_route(const PluginRoute& route, pipeline::RequestContext& ctx);

  const Library& library() const { return *library_; }
  size_t position() const { return position_; }
  const std::vector<PluginRoute>& routes() const { return routes_; }
  Poco::Logger& logger() const { return logger_; }

  // Used by the host API (register_route during on_config_new).
  bool configuring() const { return configuring_; }
  const Services& services() const { return services_; }
  void add_route(PluginRoute route) { routes_.push_back(std::move(route)); }

private:
  std::shared_ptr<Library> library_;
  std::string name_;
  size_t position_;
  Poco::Logger& logger_;
  Services services_;
  glmp_config_plugin_ptr* state_ = nullptr;
  bool nonblocking_ = false;  // descriptor flags (ABI 1.3): GLMP_PLUGIN_NONBLOCKING
  // The descriptor's on_request_headers (ABI 1.2) when its struct_size covers it, else NULL.
  glmp_status (*headers_hook_)(glmp_config_plugin_ptr*, glmp_request_host_ptr*) = nullptr;
  std::vector<PluginRoute> routes_;
  bool configuring_ = false;
};

// The host function table handed to every plugin.
const glmp_host_api& host_api();

}  // namespace glmp::core::plugins
