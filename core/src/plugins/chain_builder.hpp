#pragma once
// Builds a whole chain from the [[plugins]] of a config, off to the side: every library is
// loaded and every plugin configured before anything is published. Any failure throws and
// leaves nothing half-built; the caller keeps running the old chain.

#include <memory>
#include <string>

#include "config/config.hpp"
#include "plugins/chain.hpp"
#include "plugins/services.hpp"

namespace glmp::core::plugins {

// One plugin of a live chain, for GET /admin/plugins.
struct PluginInfo {
  std::string name, version, path, sha256;
  uint32_t abi_major = 0, abi_minor = 0;
  std::string loaded_at;  // ISO 8601
  size_t position = 0;
  bool enabled = true;
};

// Throws LoadError (naming plugin and path) on any failure.
std::shared_ptr<const Chain> build_chain(const config::Config& cfg, uint64_t generation, const Services& services);

// The directory plugins are looked up in: [loader] dir, else <binary dir>/../plugins (build tree),
// else <binary dir>/../lib/glm-proxy/plugins (installed).
std::string plugin_dir(const config::Config& cfg);
// Where a plugin's .so is: its `path` (relative to the config file), else <plugin_dir>/<name>.so.
std::string plugin_path(const config::Config& cfg, const config::PluginConfig& plugin);

// Where private copies of libraries are loaded from: [loader] runtime_dir, else /tmp/glm-proxy-<pid>.
std::string runtime_dir(const config::Config& cfg);
// Removes /tmp/glm-proxy-<pid> dirs left by proxies that died without cleaning up (kill -9).
void remove_stale_runtime_dirs();

// Name, version, ABI, path, sha256, load time, position, enabled — for every configured plugin.
std::vector<PluginInfo> describe_chain(const Chain& chain, const config::Config& cfg);

}  // namespace glmp::core::plugins
