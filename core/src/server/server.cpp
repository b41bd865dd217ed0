#include "server/server.hpp"

#include <thread>

#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Timestamp.h>

#include "pipeline/headers.hpp"
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
      router_(cfg_.routes),
      buffers_(cfg_.proxy.chunk_size, static_cast<size_t>(cfg_.server.max_threads)),
      access_log_(cfg_.log.access_log),
      proxy_(cfg_, pools_, chain_, buffers_) {
  for (const auto& [name, ucfg] : cfg_.upstreams) pools_.emplace(name, std::make_unique<upstream::Pool>(ucfg));
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
  if (http_) http_->stopAll(true);  // aborts idle keep-alive connections and whatever is left
  if (threads_) threads_->joinAll();
  for (auto& [name, pool] : pools_) pool->stop();
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
    p.set("size", s.size);
    p.set("idle", s.idle);
    p.set("in_use", s.in_use);
    p.set("waiting", s.waiting);
    p.set("max", s.max);
    p.set("created", s.created);
    p.set("reused", s.reused);
    p.set("failed", s.failed);
    p.set("expired", s.expired);
    p.set("timeouts", s.timeouts);
    u.set("pool", p);
    ups.set(name, u);
  }
  body.set("upstreams", ups);
  std::ostringstream os;
  body.stringify(os);
  pipeline::send_json(resp, ctx, 200, os.str());
}

void Server::handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) {
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  pipeline::RequestContext ctx;
  const std::string client_id = req.get("X-Request-ID", std::string());  // by value: get() may return its default
  ctx.request_id = pipeline::is_sane_request_id(client_id) ? client_id : pipeline::generate_request_id();
  ctx.method = req.getMethod();
  split_target(req.getURI(), ctx.path, ctx.query);
  resp.set("X-Request-ID", ctx.request_id);
  if (draining()) resp.setKeepAlive(false);

  try {
    if (is_unsafe_path(ctx.path)) {
      ctx.flavour = pipeline::Router::guess_flavour(ctx.path);
      pipeline::send_error(resp, ctx, {400, "invalid request path"});
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
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace glmp::core::server
