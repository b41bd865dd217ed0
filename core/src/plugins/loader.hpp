#pragma once
// Loads one plugin library (Boost.DLL) and validates its descriptor against the host ABI.
//
// The .so is first copied to a unique path under the runtime dir, loaded from there, and the copy
// is unlinked at once: the dynamic loader caches libraries by path, so a rebuilt plugin at the same
// path would otherwise never be reloaded, and nothing is left behind on disk (the mapping shows as
// "(deleted)" in /proc/<pid>/maps until the last chain using the library is gone).

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

#include <boost/dll/shared_library.hpp>

#include "glmproxy/plugin_api.h"

namespace glmp::core::plugins {

class LoadError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A loaded library; unloaded when the last shared_ptr to it goes away.
struct Library {
  boost::dll::shared_library lib;
  const glmp_plugin_descriptor* descriptor = nullptr;
  std::string name;       // as configured
  std::string path;       // the file it was loaded from (not the runtime copy)
  std::string sha256;     // of that file
  std::chrono::system_clock::time_point loaded_at;
};

// Throws LoadError naming the plugin and the path: missing file, not a shared library, missing
// glmp_plugin_init, NULL descriptor (refused), struct too small, ABI major mismatch, plugin built
// for a newer minor than the host's.
std::shared_ptr<Library> load_library(const std::string& name, const std::string& path, const std::string& runtime_dir);

// sha256 of a file, hex.
std::string file_sha256(const std::string& path);

}  // namespace glmp::core::plugins
