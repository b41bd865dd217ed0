#include "server/server.hpp"

#include <cctype>
#include <ctime>
#include <thread>

#include <sys/stat.h>

#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/Logger.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Timestamp.h>

#include "pipeline/headers.hpp"
#include "plugins/chain_builder.hpp"

namespace glmp::core::server {
namespace {

// Splits a request-target into path and query; accepts absolute-form ("http://host/p?q").
void split_target(const std::string& target, std::string& path, std::string& query) {
  std::string_view t = target;
  if (t.rfind("http://", 0) == 0 || t.rfind("https://", 0) == 0) {
    size_t slash = t.find('/', t.find("//") + 2);
    t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
  }
  size_t q = t.find('?');
  path.assign(t.substr(0, q));  // assigned: the context's strings keep their (spare) capacity
  if (q == std::string_view::npos) query.clear();
  else query.assign(t.substr(q + 1));
  size_t hash = query.find('#');
  if (hash != std::string::npos) query.resize(hash);
}

// A path the proxy refuses to forward: not origin-form, or one an upstream could resolve outside the
// configured base path however it decodes it: "." / ".." segments (raw or percent-encoded, also
// double-encoded as %252e), encoded slashes and backslashes (%2f, %5c, raw '\\'), and NUL.
bool is_unsafe_path(const std::string& path) {
  if (path.empty() || path.front() != '/') return true;
  // The common case in one pass: nothing encoded, no backslash or NUL, no segment starting with '.'.
  bool plain = true;
  for (size_t i = 1; i < path.size() && plain; ++i) {
    const char c = path[i];
    plain = c != '%' && c != '\\' && c != '\0' && !(c == '.' && path[i - 1] == '/');
  }
  if (plain) return false;
  // Decode up to three times (an upstream or a framework in front of it may decode again).
  std::string decoded;
  const bool encoded = path.find_first_of("%\\") != std::string::npos;
  if (encoded) decoded = path;
  for (int round = 0; encoded && round < 3; ++round) {
    std::string next;
    next.reserve(decoded.size());
    bool changed = false;
    for (size_t i = 0; i < decoded.size(); ++i) {
      const char c = decoded[i];
      if (c == '%' && i + 2 < decoded.size() && std::isxdigit(static_cast<unsigned char>(decoded[i + 1])) &&
          std::isxdigit(static_cast<unsigned char>(decoded[i + 2]))) {
        const char byte = static_cast<char>(std::stoi(decoded.substr(i + 1, 2), nullptr, 16));
        // An encoded separator or NUL is refused outright: no upstream may see it decoded.
        if (byte == '/' || byte == '\\' || byte == '\0') return true;
        next.push_back(byte);
        i += 2;
        changed = true;
      } else {
        next.push_back(c);
      }
    }
    decoded.swap(next);
    if (!changed) break;
  }
  const std::string& p = encoded ? decoded : path;
  if (p.find('\\') != std::string::npos || p.find('\0') != std::string::npos) return true;
  size_t pos = 1;
  while (pos <= p.size()) {
    size_t end = p.find('/', pos);
    if (end == std::string::npos) end = p.size();
    const std::string_view seg(p.data() + pos, end - pos);
    if (seg == "." || seg == "..") return true;
    pos = end + 1;
  }
  return false;
}

}  // namespace

Server::Server(config::Config cfg)
    : cfg_(std::move(cfg)),
      tls_(cfg_.server.tls_cert.empty() ? nullptr : TlsContext::load(cfg_.server.tls_cert, cfg_.server.tls_key, cfg_.server.http2)),  // throws TlsError
      metrics_([this] {
        std::vector<std::string> prefixes;
        for (const auto& r : cfg_.routes) prefixes.push_back(r.prefix);
        return prefixes;
      }()),
      store_(store::make_store(cfg_.store, &metrics_.registry())),  // throws: a proxy without its state never starts
      router_(cfg_.routes),
      access_log_(cfg_.log.access_log),
      proxy_(cfg_, pools_),
      plugin_cfg_(cfg_) {
  for (const auto& [name, ucfg] : cfg_.upstreams) pools_.emplace(name, std::make_unique<upstream::Pool>(ucfg));
  metrics_.set_refresher([this] { metrics_.refresh(pools_, proxy_.active_streams()); });
  if (tls_) metrics_.set_tls_certificate(tls_->certificate().not_after);
  chain_.publish(plugins::build_chain(cfg_, ++generation_, services()));  // throws: a broken chain never starts
}

Server::ReloadResult Server::reload() {
  std::lock_guard lock(reload_mutex_);
  ReloadResult result;
  try {
    config::Config fresh = config::load_config(cfg_.source_path);
    auto chain = plugins::build_chain(fresh, generation_ + 1, services());
    chain_.publish(std::move(chain));  // requests in flight keep the snapshot they started with
    // Each loop drops its cached snapshot now, so an idle loop does not keep the old chain loaded.
    if (engine_) {
      for (size_t i = 0; i < engine_->loop_count(); ++i)
        engine_->loop(i).ev().post([this, i] {
          loop_states_[i].chain_version = chain_.version();  // read first: never newer than the snapshot
          loop_states_[i].chain = chain_.snapshot();
        });
    }
    metrics_.reload(true);
    plugin_cfg_ = std::move(fresh);
    result.plugins_ok = true;
    result.generation = ++generation_;
    result.message = "reloaded: generation " + std::to_string(generation_) + ", " + std::to_string(chain_.snapshot()->plugins.size()) + " plugin(s)";
    Poco::Logger::get("glm-proxy").information("%s", result.message);
  } catch (const std::exception& e) {
    metrics_.reload(false);
    result.generation = generation_;
    result.message = std::string("reload failed, keeping generation ") + std::to_string(generation_) + ": " + e.what();
    Poco::Logger::get("glm-proxy").error("%s", result.message);
  }
  reload_tls(result);  // whatever became of the plugins
  result.ok = result.plugins_ok && result.tls_ok;
  if (result.tls) result.message += "; " + result.tls_message;
  return result;
}

namespace {

std::string iso_time(int64_t unix_seconds) {
  return Poco::DateTimeFormatter::format(Poco::Timestamp::fromEpochTime(static_cast<std::time_t>(unix_seconds)),
                                         Poco::DateTimeFormat::ISO8601_FORMAT);
}

std::string describe_certificate(const TlsCertificateInfo& c) {
  return "\"" + c.subject + "\" (serial " + c.serial + ", not after " + iso_time(c.not_after) + ")";
}

}  // namespace

void Server::reload_tls(ReloadResult& result) {
  if (!tls_) return;
  result.tls = true;
  auto& log = Poco::Logger::get("glm-proxy");
  try {
    auto fresh = TlsContext::load(cfg_.server.tls_cert, cfg_.server.tls_key, cfg_.server.http2);
    tls_ = fresh;
    if (engine_) engine_->set_tls(fresh);  // new connections; open ones keep theirs
    metrics_.set_tls_certificate(fresh->certificate().not_after);
    result.tls_ok = true;
    result.tls_message = "TLS certificate reloaded: " + describe_certificate(fresh->certificate());
    log.information("%s", result.tls_message);
  } catch (const std::exception& e) {
    result.tls_ok = false;
    result.tls_message = "TLS certificate reload failed, keeping " + describe_certificate(tls_->certificate()) + ": " + e.what();
    log.error("%s", result.tls_message);
  }
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
  EngineOptions options;
  const auto& sc = cfg_.server;
  options.limits.request = {sc.max_header_bytes, sc.max_headers, sc.max_uri_bytes, sc.max_request_body};
  options.limits.header_timeout = sc.header_timeout;
  options.limits.body_timeout = sc.body_timeout;
  options.limits.keepalive_timeout = sc.keepalive_timeout;
  options.limits.send_timeout = sc.send_timeout;
  options.loops = sc.workers > 0 ? sc.workers : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  options.max_connections = sc.max_connections;
  options.max_threads = sc.max_threads;
  options.max_queued = sc.max_queued;
  options.thread_stack_size = sc.thread_stack_size;
  options.tls = tls_;
  options.h2.max_concurrent_streams = static_cast<uint32_t>(sc.max_concurrent_streams);
  options.h2c = sc.http2 && sc.tls_cert.empty();  // h2c with prior knowledge on the plain listener
  options.on_tls = [this](TlsOutcome outcome) { metrics_.tls_handshake(outcome); };
  if (tls_) {
    auto& log = Poco::Logger::get("glm-proxy");
    const TlsCertificateInfo& c = tls_->certificate();
    log.information("TLS listener: certificate %s from %s", describe_certificate(c), cfg_.server.tls_cert);
    if (c.not_after <= static_cast<int64_t>(std::time(nullptr)))
      log.warning("TLS listener: the certificate in %s expired on %s", cfg_.server.tls_cert, iso_time(c.not_after));
  }
  engine_ = std::make_unique<Engine>(Poco::Net::SocketAddress(sc.host, sc.port), options,
                                     [this](Loop& loop, std::unique_ptr<ClientConnection> c) { dispatch(loop, std::move(c)); });
  engine_->on_loop_stop = [this](Loop& loop) { stop_loop(loop); };
  loop_states_.resize(engine_->loop_count());
  for (size_t i = 0; i < engine_->loop_count(); ++i) {
    loop_states_[i].read_buffer = std::make_unique<char[]>(cfg_.proxy.chunk_size);
    event_loops_.push_back(&engine_->loop(i).ev());
  }
  attach_pools();
  engine_->start();
  for (auto& [name, pool] : pools_) pool->start();
  if (cfg_.loader.watch) watcher_ = std::thread([this] { watch_loop(); });
}

// Each pool reaches the loops through these: a released connection (or a freed slot) goes to the
// loop of the request waiting for it, which registers it in its own epoll.
void Server::attach_pools() {
  for (auto& [name, p] : pools_) {
    upstream::Pool* pool = p.get();
    pool->attach(
        event_loops_.size(), event_loops_.data(),
        [this, pool](const upstream::Pool::Waiter& w, std::unique_ptr<upstream::Connection> c) {
          Loop& loop = engine_->loop(w.loop);
          upstream::Connection* raw = c.release();
          loop.ev().post([this, pool, &loop, w, raw] {
            std::unique_ptr<upstream::Connection> conn(raw);
            if (conn && !pool->register_on(loop.index(), *conn)) {
              pool->discard(std::move(conn), true);
              return;  // (its slot went to the next waiter)
            }
            auto& exchanges = loop_states_[loop.index()].exchanges;
            auto it = exchanges.find(w.id);
            if (it != exchanges.end()) return it->second->on_delivered(std::move(conn));
            if (conn) pool->keep_idle(std::move(conn));
            else pool->pass_slot();
          });
        },
        [this](size_t loop, std::function<void()> fn) { engine_->loop(loop).ev().post(std::move(fn)); });
  }
}

// The loop is stopping (after the drain and the workers): what still runs ends now.
void Server::stop_loop(Loop& loop) {
  auto& exchanges = loop_states_[loop.index()].exchanges;
  std::vector<uint64_t> ids;
  for (const auto& [id, x] : exchanges) ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = exchanges.find(id);
    if (it != exchanges.end()) it->second->abort("server stopping");
  }
  for (auto& [id, x] : exchanges) loop.ev().retire(std::move(x));
  exchanges.clear();
  loop_states_[loop.index()].chain.reset();  // the last requests' chain may be unloaded now
  for (auto& [name, pool] : pools_) pool->close_loop(loop.index());
}

uint16_t Server::port() const { return engine_ ? engine_->port() : 0; }

void Server::dispatch(Loop& loop, std::unique_ptr<ClientConnection> conn) {
  Request& req = conn->request();
  pipeline::RequestContext ctx;
  split_target(req.getURI(), ctx.path, ctx.query);
  ctx.method = req.getMethod();
  const std::string& path = ctx.path;
  LoopState& state = loop_states_[loop.index()];
  if (const uint64_t v = chain_.version(); v != state.chain_version) {
    state.chain = chain_.snapshot();  // a reload: this loop's requests take the new chain from now on
    state.chain_version = v;
  }
  std::shared_ptr<const plugins::Chain> chain = state.chain;
  // Proxied routes run on the loop; everything else (it may block: admin, plugin routes, the
  // store behind /health) is lent to a worker.
  const bool core_path = path == "/health" || path == "/metrics" || path == "/api/metrics/prometheus" ||
                         path == "/admin/reload" || path == "/admin/plugins";
  if (core_path || is_unsafe_path(path) || chain->find_route(ctx.method, path) || !(ctx.route = router_.match(path))) {
    engine_->lend(loop, std::move(conn), [this](ClientConnection& c) { return serve_one(c); });
    return;
  }
  request_started(req, ctx);
  ctx.flavour = ctx.route->flavour;
  upstream::Pool& pool = *pools_.find(ctx.route->upstream)->second;
  const uint64_t id = state.next_id++;
  auto x = std::make_unique<pipeline::Exchange>(id, loop, std::move(conn), proxy_, pool, std::move(chain),
                                                state.read_buffer.get(), cfg_.proxy.chunk_size, *this, std::move(ctx), draining());
  pipeline::Exchange* raw = x.get();
  state.exchanges.emplace(id, std::move(x));
  raw->start();
}

bool Server::serve_one(ClientConnection& conn) {
  Request& req = conn.request();
  req.sync_poco_headers();  // the handlers below read Poco's collection
  Response resp(conn, req.getMethod() == "HEAD", conn.parser().keep_alive());
  req.set_response(&resp);
  handle(req, resp);
  bool keep = resp.finish() && !draining();
  // A short body the handler did not read is skipped; anything else closes the connection.
  if (keep && !conn.body_complete()) keep = conn.skip_body(64 * 1024);
  return keep;
}

void Server::exchange_done(pipeline::Exchange& x) { request_finished(x.ctx()); }

void Server::request_started(const Request& req, pipeline::RequestContext& ctx) {
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  metrics_.request_started();
  const std::string* client_id = req.headers().find("X-Request-ID");
  if (client_id && pipeline::is_sane_request_id(*client_id)) ctx.request_id = *client_id;
  else pipeline::generate_request_id(ctx.request_id);
}

void Server::request_finished(const pipeline::RequestContext& ctx) {
  access_log_.write(ctx);
  metrics_.request_finished(ctx);
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

void Server::exchange_finished(pipeline::Exchange& x) {
  auto& exchanges = loop_states_[x.loop().index()].exchanges;
  auto it = exchanges.find(x.id());
  if (it == exchanges.end()) return;
  x.loop().ev().retire(std::move(it->second));  // it may be the watcher whose event is running
  exchanges.erase(it);
}

bool Server::drain(std::chrono::milliseconds timeout) {
  draining_ = true;
  if (engine_) engine_->stop_accepting();  // running requests continue; idle connections close
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
  if (engine_) engine_->stop();  // workers' blocked client reads and writes give up promptly; loops end what is left
  for (auto& [name, pool] : pools_) pool->stop();
  store_->flush();  // every update made by the requests above is on disk before exit
}

bool Server::admin_token_matches(const Poco::Net::HTTPServerRequest& req) const {
  const std::string& token = cfg_.admin.token;
  if (token.empty()) return false;
  std::string given = req.get("X-Admin-Token", std::string());
  const std::string auth = req.get("Authorization", std::string());
  if (given.empty() && auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
  // Constant time in the token's length: every byte is compared whatever the first mismatch.
  unsigned char diff = given.size() == token.size() ? 0 : 1;
  for (size_t i = 0; i < token.size(); ++i)
    diff |= static_cast<unsigned char>(token[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

bool Server::admin_allowed(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                           pipeline::RequestContext& ctx) {
  if (cfg_.admin.token.empty()) {
    pipeline::send_error(resp, ctx, {403, "admin API disabled (set [admin] token)", "", "admin_disabled"});
    return false;
  }
  if (!admin_token_matches(req)) {
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
    if (r.tls) {
      Poco::JSON::Object tls;
      tls.set("status", r.tls_ok ? "reloaded" : "failed");
      tls.set("message", r.tls_message);
      body.set("tls", tls);
      body.set("plugins", r.plugins_ok ? "reloaded" : "failed");
    }
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
  plugins::ChainRun run(chain);
  // KeyOrAdmin: the admin token is the operator (no chain hooks); anything else is a key.
  const bool keyed = route.access == plugins::Route::Access::Key ||
                     (route.access == plugins::Route::Access::KeyOrAdmin && !(ctx.is_admin = admin_token_matches(req)));
  // Key routes: the headers phase (auth) answers before a byte of the body is read.
  if (keyed && run.request_headers(ctx) != plugins::HookResult::Continue) {
    resp.setKeepAlive(false);
    if (!ctx.plugin_stream && ctx.early_response) pipeline::send_early(resp, ctx);
    run.complete(ctx);
    return;
  }
  if (!proxy_.read_body(req, resp, ctx)) {  // the handler sees it through request_body
    run.complete(ctx);
    return;
  }
  if (keyed) {
    // The chain's on_request hooks (auth, …) run first; a refusal answers instead of the route.
    if (run.request(ctx) != plugins::HookResult::Continue) {
      if (!ctx.plugin_stream && ctx.early_response) pipeline::send_early(resp, ctx);
      run.complete(ctx);
      return;
    }
  }
  // on_complete runs whatever the route handler does, a throw included (the pipeline's guarantee).
  try {
    route.serve(ctx);
    if (!ctx.plugin_stream) {
      if (ctx.early_response) pipeline::send_early(resp, ctx);
      else pipeline::send_error(resp, ctx, {500, "plugin '" + route.plugin + "' did not answer " + ctx.path, "", "plugin_error"});
    }
  } catch (const std::exception& e) {
    if (!resp.sent()) pipeline::send_error(resp, ctx, {500, "plugin '" + route.plugin + "' failed: " + e.what(), "", "plugin_error"});
    if (ctx.error.empty()) ctx.error = e.what();
  }
  run.complete(ctx);
}

// Public: status, version, time and uptime. With the admin token: upstreams (URLs, pools), the
// store and the load — nothing an anonymous caller needs to see.
void Server::handle_health(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, pipeline::RequestContext& ctx) {
  Poco::JSON::Object body;
  body.set("status", draining() ? "draining" : "ok");
  body.set("timestamp", Poco::DateTimeFormatter::format(Poco::Timestamp(), Poco::DateTimeFormat::ISO8601_FRAC_FORMAT));
  body.set("version", GLMP_VERSION);
  body.set("uptime_s", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_).count());
  if (!admin_token_matches(req)) {
    std::ostringstream os;
    body.stringify(os);
    return pipeline::send_json(resp, ctx, 200, os.str());
  }
  body.set("in_flight", in_flight());
  body.set("connections", engine_ ? engine_->open_connections() : 0);
  body.set("loops", engine_ ? static_cast<int>(engine_->loop_count()) : 0);
  body.set("worker_threads", engine_ ? engine_->worker_threads() : 0);
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
    if (s.h2) {
      Poco::JSON::Array conns;  // HTTP/2: open streams on each connection
      for (const auto& [serial, streams] : s.h2_per_connection) {
        Poco::JSON::Object c;
        c.set("connection", serial);
        c.set("streams", streams);
        conns.add(c);
      }
      p.set("h2_per_connection", conns);
    }
    u.set("pool", p);
    ups.set(name, u);
  }
  body.set("upstreams", ups);
  Poco::JSON::Object st;
  st.set("backend", store_->describe());  // never contains a password
  st.set("healthy", store_->healthy());
  body.set("store", st);
  if (auto tls = engine_ ? engine_->tls() : nullptr) {
    const TlsCertificateInfo& c = tls->certificate();
    Poco::JSON::Object t;
    t.set("subject", c.subject);
    t.set("issuer", c.issuer);
    t.set("serial", c.serial);
    t.set("not_before", iso_time(c.not_before));
    t.set("not_after", iso_time(c.not_after));
    t.set("not_after_unix", c.not_after);
    body.set("tls", t);
  }
  std::ostringstream os;
  body.stringify(os);
  pipeline::send_json(resp, ctx, 200, os.str());
}

void Server::handle(Request& req, Response& resp) {
  pipeline::RequestContext ctx;
  request_started(req, ctx);
  ctx.method = req.getMethod();
  ctx.request = &req;
  ctx.response = &resp;
  split_target(req.getURI(), ctx.path, ctx.query);
  resp.set_request_id(&ctx.request_id);
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
      if (ctx.method == "GET" || ctx.method == "HEAD") pipeline::send_body(resp, ctx, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_.scrape());
      else pipeline::send_error(resp, ctx, {405, "method " + ctx.method + " not allowed on " + ctx.path});
    } else if (ctx.path == "/health") {
      if (ctx.method == "GET" || ctx.method == "HEAD") handle_health(req, resp, ctx);
      else pipeline::send_error(resp, ctx, {405, "method " + ctx.method + " not allowed on /health"});
    } else {  // proxied routes never come here: they run on their loop (dispatch)
      ctx.flavour = pipeline::Router::guess_flavour(ctx.path);
      pipeline::send_error(resp, ctx, {404, "no route for " + ctx.method + " " + ctx.path, "", "unknown_route"});
    }
  } catch (const std::exception& e) {
    if (!resp.sent()) pipeline::send_error(resp, ctx, {500, std::string("internal error: ") + e.what()});
    if (ctx.error.empty()) ctx.error = e.what();
  }
  if (resp.failed()) {
    ctx.client_gone = true;
    if (req.connection().write_timed_out())
      ctx.error = pipeline::stopped_reading(cfg_.server.send_timeout);
  }
  request_finished(ctx);
}

}  // namespace glmp::core::server
