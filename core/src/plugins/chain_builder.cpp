#include "plugins/chain_builder.hpp"

#include "metrics/plugin_metrics.hpp"
#include "store/store.hpp"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/filesystem.hpp>
#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/Timestamp.h>

#include "plugins/native_plugin.hpp"

namespace glmp::core::plugins {
namespace fs = boost::filesystem;

std::string plugin_dir(const config::Config& cfg) {
  if (!cfg.loader.dir.empty()) {
    fs::path dir(cfg.loader.dir);
    if (dir.is_relative()) dir = fs::absolute(fs::path(cfg.source_path).parent_path()) / dir;
    return dir.lexically_normal().string();
  }
  // Build tree: <build>/bin/glm-proxy → <build>/plugins; installed: <prefix>/bin → <prefix>/lib/glm-proxy/plugins.
  const fs::path prefix = boost::dll::program_location().parent_path().parent_path();
  const fs::path build_dir = prefix / "plugins";
  const fs::path installed = prefix / "lib" / "glm-proxy" / "plugins";
  boost::system::error_code ec;
  return (fs::is_directory(build_dir, ec) || !fs::is_directory(installed, ec) ? build_dir : installed).lexically_normal().string();
}

std::string plugin_path(const config::Config& cfg, const config::PluginConfig& plugin) {
  if (plugin.path.empty()) return plugin_dir(cfg) + "/" + plugin.name + ".so";
  fs::path p(plugin.path);
  if (p.is_relative()) p = fs::absolute(fs::path(cfg.source_path).parent_path()) / p;
  return p.lexically_normal().string();
}

void remove_stale_runtime_dirs() {
  boost::system::error_code ec;
  for (fs::directory_iterator it("/tmp", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("glm-proxy-", 0) != 0) continue;
    char* rest = nullptr;
    const long pid = std::strtol(name.c_str() + 10, &rest, 10);
    if (pid <= 0 || *rest != '\0') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // owner still alive
    boost::system::error_code ignored;
    fs::remove_all(it->path(), ignored);
  }
}

std::string runtime_dir(const config::Config& cfg) {
  if (!cfg.loader.runtime_dir.empty()) return cfg.loader.runtime_dir;
  return "/tmp/glm-proxy-" + std::to_string(::getpid());
}

std::shared_ptr<const Chain> build_chain(const config::Config& cfg, uint64_t generation, const Services& services) {
  auto chain = std::make_shared<Chain>();
  chain->generation = generation;
  size_t position = 0;
  for (const auto& pc : cfg.plugins) {
    if (!pc.enabled) continue;
    const std::string path = plugin_path(cfg, pc);
    auto library = load_library(pc.name, path, runtime_dir(cfg));
    auto plugin = std::make_shared<NativePlugin>(std::move(library), pc, position++, services);
    for (const auto& pr : plugin->routes()) {
      Route route;
      route.method = pr.method;
      route.path = pr.path;
      route.prefix = pr.prefix;
      route.access = pr.access == GLMP_ACCESS_ADMIN          ? Route::Access::Admin
                     : pr.access == GLMP_ACCESS_KEY          ? Route::Access::Key
                     : pr.access == GLMP_ACCESS_KEY_OR_ADMIN ? Route::Access::KeyOrAdmin
                                                             : Route::Access::Public;
      route.plugin = pc.name;
      NativePlugin* owner = plugin.get();
      route.serve = [owner, pr](pipeline::RequestContext& ctx) { owner->serve_route(pr, ctx); };
      for (const auto& other : chain->routes)
        if (other.path == route.path && other.method == route.method)
          throw LoadError("plugin '" + pc.name + "' registers " + route.path + ", already served by plugin '" + other.plugin + "'");
      chain->routes.push_back(std::move(route));
    }
    if (!plugin->nonblocking()) chain->inline_hooks = false;
    if (services.metrics)  // series only for the hooks it implements
      chain->hook_histograms.push_back(services.metrics->hook_histograms(pc.name, implemented_hook_names(*plugin)));
    chain->plugins.push_back(std::move(plugin));
  }
  if (!chain->plugins.empty() && services.store && services.store->may_block()) chain->inline_hooks = false;
  return chain;
}

std::vector<PluginInfo> describe_chain(const Chain& chain, const config::Config& cfg) {
  std::vector<PluginInfo> out;
  for (const auto& pc : cfg.plugins) {
    PluginInfo info;
    info.name = pc.name;
    info.enabled = pc.enabled;
    info.path = plugin_path(cfg, pc);
    for (const auto& p : chain.plugins) {
      const auto* native = dynamic_cast<const NativePlugin*>(p.get());
      if (!native || native->name() != pc.name) continue;
      const Library& lib = native->library();
      info.version = lib.descriptor->version;
      info.abi_major = lib.descriptor->abi_major;
      info.abi_minor = lib.descriptor->abi_minor;
      info.sha256 = lib.sha256;
      info.position = native->position();
      info.loaded_at = Poco::DateTimeFormatter::format(Poco::Timestamp::fromEpochTime(std::chrono::system_clock::to_time_t(lib.loaded_at)),
                                                       Poco::DateTimeFormat::ISO8601_FORMAT);
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace glmp::core::plugins
