#pragma once
// The server: the engine (event loops and a worker pool; see engine.hpp), the request dispatch
// (proxied routes run as exchanges on their loop; /health, /metrics, admin and plugin routes and
// the 404s on a worker), hot reload, and graceful drain on SIGTERM.

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>
#include <memory>
#include <string>


#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "pipeline/access_log.hpp"
#include "pipeline/proxy.hpp"
#include "pipeline/router.hpp"
#include "plugins/chain.hpp"
#include "plugins/services.hpp"
#include "pipeline/exchange.hpp"
#include "server/engine.hpp"
#include "store/store.hpp"

namespace glmp::core::server {

class Server final : public pipeline::ExchangeHost {
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
  // is returned. With TLS on, also re-reads [server] tls_cert and tls_key (the paths the proxy
  // started with): new connections get the new certificate, open ones keep theirs; on failure the
  // current certificate stays. The two are independent: either may fail without stopping the
  // other, and `ok` is true only when both succeeded. Serialised: one reload at a time.
  struct ReloadResult {
    bool ok = false;
    std::string message;
    uint64_t generation = 0;
    bool plugins_ok = false;
    bool tls = false;      // TLS is on: tls_ok and tls_message tell how the certificate reload went
    bool tls_ok = true;
    std::string tls_message;
  };
  ReloadResult reload();
  const config::Config& config() const { return cfg_; }
  store::Store& store() { return *store_; }
  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  bool draining() const { return draining_.load(std::memory_order_relaxed); }

  // Runs one request that is not proxied (on a worker thread).
  void handle(Request& req, Response& resp);

  void exchange_done(pipeline::Exchange& x) override;
  void exchange_finished(pipeline::Exchange& x) override;

private:
  void handle_admin(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  bool admin_allowed(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  void serve_plugin_route(const plugins::Route& route, std::shared_ptr<const plugins::Chain> chain,
                          Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  void watch_loop();
  plugins::Services services() { return {store_.get(), &metrics_.plugin_metrics(), &metrics_}; }
  void handle_health(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx);
  bool admin_token_matches(const Poco::Net::HTTPServerRequest& req) const;
  // On the loop: a complete request's headers arrived.
  void dispatch(Loop& loop, std::unique_ptr<ClientConnection> conn);
  // On a worker: serves one request; true when the connection may carry another.
  bool serve_one(ClientConnection& conn);
  void attach_pools();
  // Every request, proxied or not: counted in flight and in the metrics, given its X-Request-ID;
  // at its end, one access-log line and the metrics.
  void request_started(const Request& req, pipeline::RequestContext& ctx);
  void request_finished(const pipeline::RequestContext& ctx);
  void stop_loop(Loop& loop);
  // Re-reads the certificate and key (reload()).
  void reload_tls(ReloadResult& result);

  config::Config cfg_;
  // The certificate and key of the TLS listener, read before anything else starts (a proxy whose
  // certificate cannot be used never starts); null for plain HTTP. Replaced by reload()
  // (guarded by reload_mutex_); the engine keeps the copy its loops use.
  std::shared_ptr<const TlsContext> tls_;
  // Declared before the chain, so plugins (whose on_config_destroy may still use them) go first.
  metrics::Metrics metrics_;
  std::unique_ptr<store::Store> store_;
  pipeline::Pools pools_;
  pipeline::Router router_;
  plugins::ChainHolder chain_;
  pipeline::AccessLog access_log_;
  pipeline::Proxy proxy_;
  std::unique_ptr<Engine> engine_;
  // Per loop, touched only by that loop's thread: its exchanges and its read buffer.
  struct LoopState {
    std::unordered_map<uint64_t, std::unique_ptr<pipeline::Exchange>> exchanges;
    uint64_t next_id = 1;
    std::unique_ptr<char[]> read_buffer;
    std::shared_ptr<const plugins::Chain> chain;  // this loop's snapshot (see ChainHolder::version)
    uint64_t chain_version = ~uint64_t{0};
  };
  std::vector<LoopState> loop_states_;
  std::vector<EventLoop*> event_loops_;
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
