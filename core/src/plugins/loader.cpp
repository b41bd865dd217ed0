#include "plugins/loader.hpp"

#include <unistd.h>

#include <atomic>
#include <fstream>

#include <boost/filesystem.hpp>
#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>

namespace glmp::core::plugins {

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError("cannot read \"" + path + "\"");
  Poco::SHA2Engine engine(Poco::SHA2Engine::SHA_256);
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) engine.update(buf, static_cast<unsigned>(in.gcount()));
  return Poco::DigestEngine::digestToHex(engine.digest());
}

std::shared_ptr<Library> load_library(const std::string& name, const std::string& path, const std::string& runtime_dir) {
  const std::string who = "plugin '" + name + "' (" + path + ")";
  namespace fs = boost::filesystem;
  boost::system::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw LoadError(who + ": file not found");

  auto library = std::make_shared<Library>();
  library->name = name;
  library->path = path;
  library->sha256 = file_sha256(path);
  library->loaded_at = std::chrono::system_clock::now();

  static std::atomic<uint64_t> counter{0};
  fs::create_directories(runtime_dir, ec);
  const std::string copy = runtime_dir + "/" + name + "-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter.fetch_add(1)) + "-" + library->sha256.substr(0, 12) + ".so";
  fs::copy_file(path, copy, fs::copy_options::overwrite_existing, ec);
  if (ec) throw LoadError(who + ": cannot copy to runtime dir \"" + runtime_dir + "\": " + ec.message());
  try {
    library->lib.load(copy, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    fs::remove(copy, ec);
    throw LoadError(who + ": cannot load: " + e.what());
  }
  fs::remove(copy, ec);  // mapped already; nothing stays on disk

  if (!library->lib.has(GLMP_PLUGIN_INIT_SYMBOL))
    throw LoadError(who + ": missing symbol " GLMP_PLUGIN_INIT_SYMBOL " (not a GLM Proxy plugin?)");
  auto init = library->lib.get<const glmp_plugin_descriptor*(uint32_t, uint32_t)>(GLMP_PLUGIN_INIT_SYMBOL);
  const glmp_plugin_descriptor* d = init(GLMP_ABI_MAJOR, GLMP_ABI_MINOR);
  if (!d) throw LoadError(who + ": glmp_plugin_init refused host ABI " + std::to_string(GLMP_ABI_MAJOR) + "." + std::to_string(GLMP_ABI_MINOR));
  if (d->struct_size < offsetof(glmp_plugin_descriptor, on_complete) + sizeof(d->on_complete))
    throw LoadError(who + ": descriptor too small (" + std::to_string(d->struct_size) + " bytes)");
  if (d->abi_major != GLMP_ABI_MAJOR)
    throw LoadError(who + ": ABI major " + std::to_string(d->abi_major) + " does not match the host's " + std::to_string(GLMP_ABI_MAJOR));
  if (d->abi_minor > GLMP_ABI_MINOR)
    throw LoadError(who + ": built for ABI " + std::to_string(d->abi_major) + "." + std::to_string(d->abi_minor) +
                    ", newer than the host's " + std::to_string(GLMP_ABI_MAJOR) + "." + std::to_string(GLMP_ABI_MINOR));
  if (!d->name || !d->version) throw LoadError(who + ": descriptor has no name or version");
  library->descriptor = d;
  return library;
}

}  // namespace glmp::core::plugins
