// glm-proxy: command line, logging, signals. Everything else lives in glmp_core.
//
//   glm-proxy --config PATH          run the server
//   glm-proxy --check-config PATH    validate the config and exit (0, or 1 with the error)
//   glm-proxy --version
//   glm-proxy keys …                 manage API keys through the admin API (cli/keys_cli.hpp)

#include <csignal>
#include <cstring>
#include <iostream>
#include <pthread.h>

#include <Poco/AutoPtr.h>
#include <Poco/ConsoleChannel.h>
#include <Poco/FormattingChannel.h>
#include <Poco/Logger.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/PatternFormatter.h>

#include <unistd.h>

#include "cli/keys_cli.hpp"
#include "config/config.hpp"
#include "metrics/plugin_metrics.hpp"
#include "plugins/chain_builder.hpp"
#include "server/server.hpp"
#include "server/tls.hpp"
#include "store/store.hpp"

namespace {

constexpr const char* kUsage =
    "usage: glm-proxy --config PATH | --check-config PATH | --check-plugins PATH | --version | --help\n"
    "       glm-proxy keys create|list|show|update|revoke|rotate|import|help [FLAGS]\n"
    "  --check-config PATH   validate the config file\n"
    "  --check-plugins PATH  validate it and build its plugin chain (load, configure, unload every plugin)\n"
    "  keys …                manage API keys through the auth plugin's admin API (glm-proxy keys help)\n";

void setup_logging(const std::string& level) {
  Poco::AutoPtr<Poco::PatternFormatter> fmt(new Poco::PatternFormatter("%Y-%m-%dT%H:%M:%S.%iZ %p %s: %t"));
  Poco::AutoPtr<Poco::ConsoleChannel> console(new Poco::ConsoleChannel(std::cerr));
  Poco::AutoPtr<Poco::FormattingChannel> channel(new Poco::FormattingChannel(fmt, console));
  Poco::Logger::root().setChannel(channel);
  Poco::Logger::root().setLevel(level);
}

int run(const std::string& path) {
  glmp::core::config::Config cfg;
  try {
    cfg = glmp::core::config::load_config(path);
  } catch (const glmp::core::config::ConfigError& e) {
    std::cerr << "glm-proxy: config error: " << e.what() << "\n";
    return 1;
  }
  setup_logging(cfg.log.level);
  auto& log = Poco::Logger::get("glm-proxy");

  // Signals are taken synchronously by this thread; every other thread inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that left must surface as a write error, not kill us

  Poco::Net::initializeSSL();
  const bool cfg_runtime_dir_is_default = cfg.loader.runtime_dir.empty();
  const std::string runtime_dir = glmp::core::plugins::runtime_dir(cfg);
  if (cfg_runtime_dir_is_default) glmp::core::plugins::remove_stale_runtime_dirs();
  int rc = 0;
  try {
    glmp::core::server::Server server(std::move(cfg));
    server.start();
    log.information("glm-proxy %s listening on %s:%hu", std::string(GLMP_VERSION), server.config().server.host,
                    server.port());
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig == SIGHUP) {
        log.information(server.config().server.tls_cert.empty() ? "SIGHUP received: reloading the plugin chain"
                                                                : "SIGHUP received: reloading the plugin chain and the TLS certificate");
        server.reload();  // logs the outcome; a failure keeps the running chain
        continue;
      }
      log.information("%s received: draining (up to %ld ms)", std::string(strsignal(sig)),
                      static_cast<long>(server.config().server.drain_timeout.count()));
      if (!server.drain(server.config().server.drain_timeout))
        log.warning("drain timeout: %d request(s) still in flight are being aborted", server.in_flight());
      server.stop();
      break;
    }
  } catch (const glmp::core::server::TlsError& e) {
    // A certificate or key that cannot be used: a config error like any other.
    std::cerr << "glm-proxy: config error: " << e.what() << "\n";
    rc = 1;
  } catch (const Poco::Exception& e) {
    log.fatal("cannot start: %s", e.displayText());
    rc = 1;
  } catch (const std::exception& e) {
    log.fatal("cannot start: %s", std::string(e.what()));
    rc = 1;
  }
  Poco::Net::uninitializeSSL();
  // The default runtime dir is ours alone (copies are unlinked once loaded): leave nothing behind.
  if (cfg_runtime_dir_is_default) ::rmdir(runtime_dir.c_str());
  log.information("stopped");
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "keys") == 0) return glmp::core::cli::run_keys(argc - 1, argv + 1, std::cout, std::cerr);
  if (argc == 2 && (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "-V") == 0)) {
    std::cout << "glm-proxy " << GLMP_VERSION << "\n";
    return 0;
  }
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::cout << kUsage;
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check-config") == 0) {
    try {
      auto cfg = glmp::core::config::load_config(argv[2]);
      if (!cfg.server.tls_cert.empty()) glmp::core::server::TlsContext::load(cfg.server.tls_cert, cfg.server.tls_key);
      std::cout << argv[2] << ": OK (" << cfg.routes.size() << " routes, " << cfg.upstreams.size() << " upstreams"
                << (cfg.server.tls_cert.empty() ? "" : ", TLS") << ")\n";
      for (const auto& [name, u] : cfg.upstreams)
        if (!u.auth_error.empty()) std::cout << "warning: " << u.auth_error << "\n";
      return 0;
    } catch (const glmp::core::config::ConfigError& e) {
      std::cerr << "glm-proxy: config error: " << e.what() << "\n";
      return 1;
    } catch (const glmp::core::server::TlsError& e) {
      std::cerr << "glm-proxy: config error: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc == 3 && std::strcmp(argv[1], "--check-plugins") == 0) {
    try {
      auto cfg = glmp::core::config::load_config(argv[2]);
      cfg.loader.runtime_dir = cfg.loader.runtime_dir.empty() ? "/tmp/glm-proxy-check-" + std::to_string(::getpid()) : cfg.loader.runtime_dir;
      // Plugins may use the store and metrics while configuring: give them throwaway ones.
      cfg.store.backend = glmp::core::config::StoreBackend::Memory;
      prometheus::Registry registry;
      auto store = glmp::core::store::make_store(cfg.store, &registry);
      glmp::core::metrics::PluginMetrics plugin_metrics(registry);
      auto chain = glmp::core::plugins::build_chain(cfg, 1, {store.get(), &plugin_metrics});
      for (const auto& info : glmp::core::plugins::describe_chain(*chain, cfg))
        std::cout << info.name << (info.enabled ? "" : " (disabled)") << " " << info.version << " abi " << info.abi_major
                  << "." << info.abi_minor << " " << info.path << "\n";
      std::cout << argv[2] << ": plugin chain OK (" << chain->plugins.size() << " loaded)\n";
      chain.reset();
      ::rmdir(cfg.loader.runtime_dir.c_str());
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "glm-proxy: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc == 3 && std::strcmp(argv[1], "--config") == 0) return run(argv[2]);
  std::cerr << kUsage;
  return 2;
}
