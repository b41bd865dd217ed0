#include "server/server.hpp"

#include <thread>

#include <sys/stat.h>

#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/Logger.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Timestamp.h>

#include "pipeline/headers.hpp"
#include "plugins/chain_builder.hpp"
#include "server/listen_socket.hpp"

namespace glmp::core::server {
namespace {

Poco::Timespan to_timespan(std::chrono::milliseconds ms) { return Poco::Timespan(ms.count() * 1000); }

class Handler final : public Poco::Net::HTTPRequestHandler {
public:
  explicit Handler(Server& server) : server_(server) {}
  void handleRequest(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) override {
    server_.handle(req, resp);
  }

private:
  Server& server_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
public:
  explicit Factory(Server& server) : server_(server) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler(server_);
  }

private:
  Server& server_;
};

// Splits a request-target into path and query; accepts absolute-form ("http://host/p?q").
void split_target(const std::string& target, std::string& path, std::string& query) {
  std::string_view t = target;
  if (t.rfind("http://", 0) == 0 || t.rfind("https://", 0) == 0) {
    size_t slash = t.find('/', t.find("//") + 2);
    t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
  }
  size_t q = t.find('?');
  path = std::string(t.substr(0, q));
  query = q == std::string_view::npos ? std::string() : std::string(t.substr(q + 1));
  size_t hash = query.find('#');
  if (hash != std::string::npos) query.resize(hash);
}

// A path the proxy refuses to forward: not origin-form, or with "." / ".." segments (raw or
// percent-encoded) that an upstream could resolve outside the configured base path.
bool is_unsafe_path(const std::string& path) {
  if (path.empty() || path.front() != '/') return true;
  size_t pos = 1;
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string::npos) end = path.size();
    // The segment with "%2e"/"%2E" read as '.'.
    std::string seg;
    for (size_t i = pos; i < end; ++i) {
      if (path[i] == '%' && i + 2 < end && path[i + 1] == '2' && (path[i + 2] == 'e' || path[i + 2] == 'E')) {
        seg.push_back('.');
        i += 2;
      } else {
        seg.push_back(path[i]);
      }
    }
    if (seg == "." || seg == "..") return true;
    pos = end + 1;
  }
  return false;
}

}  // namespace

Server::Server(config::Config cfg)
    : cfg_(std::move(cfg)),
      metrics_([this] {
        std::vector<std::string> prefixes;
        for (const auto& r : cfg_.routes) prefixes.push_back(r.prefix);
        return prefixes;
      }()),
      store_(store::make_store(cfg_.store, &metrics_.registry())),  // throws: a proxy without its state never starts
      router_(cfg_.routes),
      buffers_(cfg_.proxy.chunk_size, static_cast<size_t>(cfg_.server.max_threads)),
      access_log_(cfg_.log.access_log),
      proxy_(cfg_, pools_, chain_, buffers_),
      plugin_cfg_(cfg_) {
  for (const auto& [name, ucfg] : cfg_.upstreams) pools_.emplace(name, std::make_unique<upstream::Pool>(ucfg));
  chain_.publish(plugins::build_chain(cfg_, ++generation_, services()));  // throws: a broken chain never starts
}

Server::ReloadResult Server::reload() {
  std::lock_guard lock(reload_mutex_);
  ReloadResult result;
  try {
    config::Config fresh = config::load_config(cfg_.source_path);
    auto chain = plugins::build_chain(fresh, generation_ + 1, services());
    chain_.publish(std::move(chain));  // requests in flight keep the snapshot they started with
    metrics_.reload(true);
    plugin_cfg_ = std::move(fresh);
    result.ok = true;
    result.generation = ++generation_;
    result.message = "reloaded: generation " + std::to_string(generation_) + ", " + std::to_string(chain_.snapshot()->plugins.size()) + " plugin(s)";
    Poco::Logger::get("glm-proxy").information("%s", result.message);
  } catch (const std::exception& e) {
    metrics_.reload(false);
    result.generation = generation_;
    result.message = std::string("reload failed, keeping generation ") + std::to_string(generation_) + ": " + e.what();
    Poco::Logger::get("glm-proxy").error("%s", result.message);
  }
  return result;
}

// Polls the config file and the plugin libraries; any change (mtime or size) triggers a reload.
void Server::watch_loop() {
  auto fingerprint = [this] {
    std::string fp;
    std::vector<std::string> files{cfg_.source_path};
    {
      std::lock_guard lock(reload_mutex_);
      for (const auto& p : plugin_cfg_.plugins) files.push_back(plugins::plugin_path(plugin_cfg_, p));
    }
    for (const auto& f : files) {
      struct stat st {};
      if (::stat(f.c_str(), &st) != 0) {
        fp += f + ":missing;";
        continue;
      }
      // inode (a rename replaces it), nanosecond mtime and size.
      fp += f + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
            std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_size) + ";";
    }
    return fp;
  };
  std::string last = fingerprint();
  std::unique_lock lock(watch_mutex_);
  while (!watch_stop_) {
    watch_cv_.wait_for(lock, cfg_.loader.watch_interval, [&] { return watch_stop_; });
    if (watch_stop_) break;
    lock.unlock();
    std::string now = fingerprint();
    if (now != last) {
      // Let a writer finish (a compiler writes the .so in several steps), then reload.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      now = fingerprint();
      reload();
      last = now;
    }
    lock.lock();
  }
}

Server::~Server() { stop(); }

void Server::start() {
  Poco::Net::SocketAddress address(cfg_.server.host, cfg_.server.port);
  ListenSocket socket(address, 1024);

  auto params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(cfg_.server.max_threads);
  params->setMaxQueued(cfg_.server.max_queued);
  params->setTimeout(to_timespan(cfg_.server.header_timeout));
  params->setKeepAlive(true);
  params->setKeepAliveTimeout(to_timespan(cfg_.server.keepalive_timeout));
  params->setMaxKeepAliveRequests(0);  // unlimited
  params->setThreadIdleTime(Poco::Timespan(10, 0));

  // Our own pool: Poco's default has 16 threads. The TCP dispatcher takes one more thread.
  threads_ = std::make_unique<Poco::ThreadPool>(2, cfg_.server.max_threads + 1, 60,
                                                static_cast<int>(cfg_.server.thread_stack_size));
  http_ = std::make_unique<Poco::Net::HTTPServer>(new Factory(*this), *threads_, socket, params);
  for (auto& [name, pool] : pools_) pool->start();
  http_->start();
  if (cfg_.loader.watch) watcher_ = std::thread([this] { watch_loop(); });
}

uint16_t Server::port() const { return http_ ? http_->port() : 0; }

bool Server::drain(std::chrono::milliseconds timeout) {
  draining_ = true;
  if (http_) http_->stop();  // closes the listening socket; running connections continue
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (in_flight() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return in_flight() == 0;
}

void Server::stop() {
  if (stopped_) return;
  stopped_ = true;
  draining_ = true;
  {
    std::lock_guard lock(watch_mutex_);
    watch_stop_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  if (http_) http_->stopAll(true);  // aborts idle keep-alive connections and whatever is left
  if (threads_) threads_->joinAll();
  for (auto& [name, pool] : pools_) pool->stop();
  store_->flush();  // every update made by the requests above is on disk before exit
}

bool Server::admin_allowed(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                           pipeline::RequestContext& ctx) {
  const std::string& token = cfg_.admin.token;
  if (token.empty()) {
    pipeline::send_error(resp, ctx, {403, "admin API disabled (set [admin] token)", "", "admin_disabled"});
    return false;
  }
  std::string given = req.get("X-Admin-Token", std::string());
  const std::string auth = req.get("Authorization", std::string());
  if (given.empty() && auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
  // Constant time in the token's length: every byte is compared whatever the first mismatch.
  unsigned char diff = given.size() == token.size() ? 0 : 1;
  for (size_t i = 0; i < token.size(); ++i)
    diff |= static_cast<unsigned char>(token[i] ^ (i < given.size() ? given[i] : 0));
  if (diff != 0) {
    pipeline::send_error(resp, ctx, {401, "admin token required: Authorization: Bearer <token> or X-Admin-Token", "", "admin_unauthorized"});
    return false;
  }
  return true;
}

void Server::handle_admin(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                          pipeline::RequestContext& ctx) {
  if (!admin_allowed(req, resp, ctx)) return;
  if (ctx.path == "/admin/reload") {
    if (ctx.method != "POST") return pipeline::send_error(resp, ctx, {405, "use POST /admin/reload"});
    const ReloadResult r = reload();
    Poco::JSON::Object body;
    body.set("status", r.ok ? "reloaded" : "failed");
    body.set("generation", r.generation);
    body.set("message", r.message);
    std::ostringstream os;
    body.stringify(os);
    if (!r.ok) ctx.error = r.message;
    return pipeline::send_json(resp, ctx, r.ok ? 200 : 500, os.str());
  }
  if (ctx.method != "GET") return pipeline::send_error(resp, ctx, {405, "use GET /admin/plugins"});
  auto chain = chain_.snapshot();
  std::vector<plugins::PluginInfo> infos;
  {
    std::lock_guard lock(reload_mutex_);
    infos = plugins::describe_chain(*chain, plugin_cfg_);
  }
  Poco::JSON::Array list;
  for (const auto& i : infos) {
    Poco::JSON::Object o;
    o.set("name", i.name);
    o.set("enabled", i.enabled);
    o.set("path", i.path);
    if (!i.version.empty()) {
      o.set("version", i.version);
      o.set("abi", std::to_string(i.abi_major) + "." + std::to_string(i.abi_minor));
      o.set("sha256", i.sha256);
      o.set("loaded_at", i.loaded_at);
      o.set("position", i.position);
    }
    list.add(o);
  }
  Poco::JSON::Object body;
  body.set("generation", chain->generation);
  body.set("plugins", list);
  std::ostringstream os;
  body.stringify(os);
  pipeline::send_json(resp, ctx, 200, os.str());
}

void Server::serve_plugin_route(const plugins::Route& route, std::shared_ptr<const plugins::Chain> chain,
                                Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                                pipeline::RequestContext& ctx) {
  if (route.access == plugins::Route::Access::Admin && !admin_allowed(req, resp, ctx)) return;
  if (!proxy_.read_body(req, resp, ctx)) return;  // the handler sees it through request_body
  plugins::ChainRun run(chain);
  if (route.access == plugins::Route::Access::Key) {
    // The chain's on_request hooks (auth, …) run first; a refusal answers instead of the route.
    if (run.request(ctx) != plugins::HookResult::Continue) {
      if (!ctx.plugin_stream && ctx.early_response) pipeline::send_early(resp, ctx);
      run.complete(ctx);
      return;
    }
  }
  route.serve(ctx);
  if (!ctx.plugin_stream) {
    if (ctx.early_response) pipeline::send_early(resp, ctx);
    else pipeline::send_error(resp, ctx, {500, "plugin '" + route.plugin + "' did not answer " + ctx.path, "", "plugin_error"});
  }
  run.complete(ctx);
}

void Server::handle_health(Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx) {
  Poco::JSON::Object body;
  body.set("status", draining() ? "draining" : "ok");
  body.set("timestamp", Poco::DateTimeFormatter::format(Poco::Timestamp(), Poco::DateTimeFormat::ISO8601_FRAC_FORMAT));
  body.set("version", GLMP_VERSION);
  body.set("uptime_s", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_).count());
  body.set("in_flight", in_flight());
  Poco::JSON::Object ups;
  for (const auto& [name, pool] : pools_) {
    const upstream::PoolStats s = pool->stats();
    Poco::JSON::Object u;
    u.set("base_url", pool->config().base_url);
    u.set("configured", pool->config().auth_error.empty());
    if (!pool->config().auth_error.empty()) u.set("config_error", pool->config().auth_error);
    u.set("healthy", s.healthy);
    if (!s.last_error.empty()) u.set("last_error", s.last_error);
    Poco::JSON::Object p;
    for (const auto& [figure, value] : s.figures()) p.set(figure, value);
    u.set("pool", p);
    ups.set(name, u);
  }
  body.set("upstreams", ups);
  Poco::JSON::Object st;
  st.set("backend", store_->describe());  // never contains a password
  st.set("healthy", store_->healthy());
  body.set("store", st);
  std::ostringstream os;
  body.stringify(os);
  pipeline::send_json(resp, ctx, 200, os.str());
}

void Server::handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) {
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  metrics_.request_started();
  pipeline::RequestContext ctx;
  const std::string client_id = req.get("X-Request-ID", std::string());  // by value: get() may return its default
  ctx.request_id = pipeline::is_sane_request_id(client_id) ? client_id : pipeline::generate_request_id();
  ctx.method = req.getMethod();
  ctx.request = &req;
  ctx.response = &resp;
  split_target(req.getURI(), ctx.path, ctx.query);
  resp.set("X-Request-ID", ctx.request_id);
  if (draining()) resp.setKeepAlive(false);

  try {
    if (is_unsafe_path(ctx.path)) {
      ctx.flavour = pipeline::Router::guess_flavour(ctx.path);
      pipeline::send_error(resp, ctx, {400, "invalid request path"});
    } else if (ctx.path == "/admin/reload" || ctx.path == "/admin/plugins") {
      handle_admin(req, resp, ctx);
    } else if (auto chain = chain_.snapshot(); const plugins::Route* route = chain->find_route(ctx.method, ctx.path)) {
      serve_plugin_route(*route, chain, req, resp, ctx);
    } else if (ctx.path == "/metrics" || ctx.path == "/api/metrics/prometheus") {
      if (ctx.method == "GET" || ctx.method == "HEAD") pipeline::send_body(resp, ctx, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_.scrape(pools_, proxy_.active_streams()));
      else pipeline::send_error(resp, ctx, {405, "method " + ctx.method + " not allowed on " + ctx.path});
    } else if (ctx.path == "/health") {
      if (ctx.method == "GET" || ctx.method == "HEAD") handle_health(resp, ctx);
      else pipeline::send_error(resp, ctx, {405, "method " + ctx.method + " not allowed on /health"});
    } else if ((ctx.route = router_.match(ctx.path))) {
      proxy_.handle(req, resp, ctx);
    } else {
      ctx.flavour = pipeline::Router::guess_flavour(ctx.path);
      pipeline::send_error(resp, ctx, {404, "no route for " + ctx.method + " " + ctx.path, "", "unknown_route"});
    }
  } catch (const std::exception& e) {
    if (!resp.sent()) pipeline::send_error(resp, ctx, {500, std::string("internal error: ") + e.what()});
    if (ctx.error.empty()) ctx.error = e.what();
  }
  access_log_.write(ctx);
  metrics_.request_finished(ctx);
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace glmp::core::server
