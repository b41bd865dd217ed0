#pragma once
// The server: the listener (an epoll thread for connections waiting for their headers, worker
// threads for complete requests; see listener.hpp), the request dispatch (/health, /metrics,
// admin, plugin routes, proxied routes, 404), hot reload, and graceful drain on SIGTERM.

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <memory>
#include <string>


#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "pipeline/access_log.hpp"
#include "pipeline/proxy.hpp"
#include "pipeline/router.hpp"
#include "plugins/chain.hpp"
#include "plugins/services.hpp"
#include "server/listener.hpp"
#include "pool/buffer_pool.hpp"
#include "store/store.hpp"

namespace glmp::core::server {

class Server {
public:
  explicit Server(config::Config cfg);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket and starts serving. Throws Poco::Exception when it cannot bind.
  void start();
  // Stops accepting connections; requests in flight continue, kept-alive connections close after
  // their current request. Returns true when all in-flight requests finished within `timeout`.
  bool drain(std::chrono::milliseconds timeout);
  // Stops everything now (after drain): aborts what is left, stops pools.
  void stop();

  uint16_t port() const;

  // Re-reads the config file and swaps in a new plugin chain built off to the side ([[plugins]] and
  // [loader]; other sections need a restart). On failure the old chain keeps running and the error
  // is returned. Serialised: one reload at a time.
  struct ReloadResult {
    bool ok = false;
    std::string message;
    uint64_t generation = 0;
  };
  ReloadResult reload();
  const config::Config& config() const { return cfg_; }
  store::Store& store() { return *store_; }
  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  bool draining() const { return draining_.load(std::memory_order_relaxed); }

  // Runs one request (on a worker thread).
  void handle(Request& req, Response& resp);

private:
  void handle_admin(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  bool admin_allowed(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  void serve_plugin_route(const plugins::Route& route, std::shared_ptr<const plugins::Chain> chain,
                          Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  void watch_loop();
  plugins::Services services() { return {store_.get(), &metrics_.plugin_metrics()}; }
  void handle_health(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  bool admin_token_matches(const Poco::Net::HTTPServerRequest& req) const;
  // Serves requests on one connection until it must go back to the listener or close.
  Listener::After serve_connection(ClientConnection& conn);

  config::Config cfg_;
  // Declared before the chain, so plugins (whose on_config_destroy may still use them) go first.
  metrics::Metrics metrics_;
  std::unique_ptr<store::Store> store_;
  pipeline::Pools pools_;
  pipeline::Router router_;
  plugins::ChainHolder chain_;
  pool::BufferPool buffers_;
  pipeline::AccessLog access_log_;
  pipeline::Proxy proxy_;
  std::unique_ptr<Listener> listener_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  bool stopped_ = false;

  std::mutex reload_mutex_;
  config::Config plugin_cfg_;  // the config the live chain was built from (guarded by reload_mutex_)
  uint64_t generation_ = 0;
  std::thread watcher_;
  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;
};

}  // namespace glmp::core::server
