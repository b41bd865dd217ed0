#include "config/config.hpp"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <Poco/Exception.h>
#include <Poco/URI.h>
#include <toml++/toml.h>

namespace glmp::core::config {
namespace {

std::string where(const std::string& file, const toml::source_region& src) {
  std::string out = file;
  if (src.begin.line > 0) out += ":" + std::to_string(src.begin.line);
  return out;
}

// Reads one TOML table with strict key checking and precise, located errors.
class TableReader {
public:
  TableReader(const std::string& file, const toml::table& table, std::string path)
      : file_(file), table_(table), path_(std::move(path)) {}

  [[noreturn]] void fail(const toml::node* node, std::string_view key, const std::string& msg) const {
    const auto& src = node ? node->source() : table_.source();
    std::string dotted = path_.empty() ? std::string(key) : path_ + (key.empty() ? "" : "." + std::string(key));
    throw ConfigError(where(file_, src) + ": " + dotted + ": " + msg);
  }

  // Every key present must be one of `allowed`.
  void allow_only(std::initializer_list<std::string_view> allowed) const {
    for (const auto& [k, v] : table_) {
      bool ok = false;
      for (auto a : allowed) ok = ok || a == k.str();
      if (!ok) {
        std::string list;
        for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        fail(&v, k.str(), "unknown key (allowed: " + list + ")");
      }
    }
  }

  const toml::node* node(std::string_view key) const { return table_.get(key); }

  // String with ${ENV} interpolation. `missing` receives unset variables; when null they are an error.
  bool get_string(std::string_view key, std::string& out, std::vector<std::string>* missing = nullptr) const {
    const toml::node* n = node(key);
    if (!n) return false;
    const auto* s = n->as_string();
    if (!s) fail(n, key, std::string("expected a string, got ") + type_name(*n));
    std::vector<std::string> unset;
    try {
      out = interpolate_env(s->get(), &unset);
    } catch (const std::invalid_argument& e) {
      fail(n, key, e.what());
    }
    if (!unset.empty()) {
      if (!missing) fail(n, key, "environment variable " + unset.front() + " is not set (write ${" + unset.front() + ":-default} to give a default)");
      missing->insert(missing->end(), unset.begin(), unset.end());
    }
    return true;
  }

  bool get_bool(std::string_view key, bool& out) const {
    const toml::node* n = node(key);
    if (!n) return false;
    if (const auto* b = n->as_boolean()) { out = b->get(); return true; }
    fail(n, key, std::string("expected true or false, got ") + type_name(*n));
  }

  template <class Int>
  bool get_int(std::string_view key, Int& out, int64_t min, int64_t max) const {
    const toml::node* n = node(key);
    if (!n) return false;
    const auto* i = n->as_integer();
    if (!i) fail(n, key, std::string("expected an integer, got ") + type_name(*n));
    int64_t v = i->get();
    if (v < min || v > max) fail(n, key, "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + std::to_string(v));
    out = static_cast<Int>(v);
    return true;
  }

  bool get_duration(std::string_view key, Duration& out, bool allow_zero = false) const {
    std::string text;
    const toml::node* n = node(key);
    if (!n) return false;
    if (!n->is_string()) fail(n, key, std::string("expected a duration string such as \"10s\" or \"250ms\", got ") + type_name(*n));
    get_string(key, text);
    try {
      out = parse_duration(text);
    } catch (const std::invalid_argument& e) {
      fail(n, key, e.what());
    }
    if (!allow_zero && out.count() <= 0) fail(n, key, "must be greater than zero");
    return true;
  }

  bool get_size(std::string_view key, uint64_t& out) const {
    const toml::node* n = node(key);
    if (!n) return false;
    if (const auto* i = n->as_integer()) {
      if (i->get() < 0) fail(n, key, "must not be negative");
      out = static_cast<uint64_t>(i->get());
      return true;
    }
    std::string text;
    if (!n->is_string()) fail(n, key, std::string("expected a size such as \"32MiB\", got ") + type_name(*n));
    get_string(key, text);
    try {
      out = parse_size(text);
    } catch (const std::invalid_argument& e) {
      fail(n, key, e.what());
    }
    return true;
  }

  const toml::table* get_table(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return nullptr;
    if (const auto* t = n->as_table()) return t;
    fail(n, key, std::string("expected a table, got ") + type_name(*n));
  }

  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }
  const toml::table& table() const { return table_; }

  static const char* type_name(const toml::node& n) {
    switch (n.type()) {
      case toml::node_type::string: return "a string";
      case toml::node_type::integer: return "an integer";
      case toml::node_type::floating_point: return "a float";
      case toml::node_type::boolean: return "a boolean";
      case toml::node_type::array: return "an array";
      case toml::node_type::table: return "a table";
      default: return "a date/time";
    }
  }

private:
  const std::string& file_;
  const toml::table& table_;
  std::string path_;
};

void read_server(const TableReader& r, ServerConfig& s) {
  r.allow_only({"listen", "workers", "max_threads", "thread_stack_size", "max_queued", "max_request_body", "header_timeout",
                "keepalive_timeout", "drain_timeout", "max_connections", "max_header_bytes", "max_headers",
                "max_uri_bytes", "body_timeout", "send_timeout", "tls_cert", "tls_key", "http2",
                "max_concurrent_streams"});
  std::string listen;
  if (r.get_string("listen", listen)) {
    auto colon = listen.rfind(':');
    if (colon == std::string::npos || colon + 1 == listen.size())
      r.fail(r.node("listen"), "listen", "expected \"host:port\", got \"" + listen + "\"");
    std::string host = listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    const std::string port_text = listen.substr(colon + 1);
    char* end = nullptr;
    long port = std::strtol(port_text.c_str(), &end, 10);
    if (*end != '\0' || port < 0 || port > 65535)
      r.fail(r.node("listen"), "listen", "invalid port \"" + port_text + "\"");
    s.host = host.empty() ? "0.0.0.0" : host;
    s.port = static_cast<uint16_t>(port);
  }
  r.get_int("workers", s.workers, 0, 256);
  r.get_int("max_threads", s.max_threads, 2, 65535);
  r.get_int("max_queued", s.max_queued, 1, 1 << 20);
  r.get_int("max_connections", s.max_connections, 1, 1 << 22);
  int headers = static_cast<int>(s.max_headers);
  if (r.get_int("max_headers", headers, 8, 10000)) s.max_headers = static_cast<size_t>(headers);
  uint64_t size = 0;
  if (r.get_size("max_header_bytes", size)) {
    if (size < 1024 || size > (1u << 20)) r.fail(r.node("max_header_bytes"), "max_header_bytes", "must be between 1KiB and 1MiB");
    s.max_header_bytes = size;
  }
  if (r.get_size("max_uri_bytes", size)) {
    if (size < 256 || size > (1u << 20)) r.fail(r.node("max_uri_bytes"), "max_uri_bytes", "must be between 256 bytes and 1MiB");
    s.max_uri_bytes = size;
  }
  if (r.get_size("thread_stack_size", size)) {
    if (size < 64 * 1024) r.fail(r.node("thread_stack_size"), "thread_stack_size", "must be at least 64KiB");
    s.thread_stack_size = size;
  }
  if (r.get_size("max_request_body", size)) {
    if (size == 0) r.fail(r.node("max_request_body"), "max_request_body", "must be greater than zero");
    s.max_request_body = size;
  }
  r.get_duration("header_timeout", s.header_timeout);
  r.get_duration("keepalive_timeout", s.keepalive_timeout);
  r.get_duration("drain_timeout", s.drain_timeout, true);
  r.get_duration("body_timeout", s.body_timeout);
  r.get_duration("send_timeout", s.send_timeout);
  r.get_string("tls_cert", s.tls_cert);
  r.get_string("tls_key", s.tls_key);
  if (s.tls_cert.empty() && !s.tls_key.empty()) r.fail(r.node("tls_key"), "tls_cert", "is required with tls_key (TLS needs both)");
  if (s.tls_key.empty() && !s.tls_cert.empty()) r.fail(r.node("tls_cert"), "tls_key", "is required with tls_cert (TLS needs both)");
  if (!s.tls_cert.empty() && !std::ifstream(s.tls_cert)) r.fail(r.node("tls_cert"), "tls_cert", "cannot read \"" + s.tls_cert + "\"");
  if (!s.tls_key.empty() && !std::ifstream(s.tls_key)) r.fail(r.node("tls_key"), "tls_key", "cannot read \"" + s.tls_key + "\"");
  r.get_bool("http2", s.http2);
  r.get_int("max_concurrent_streams", s.max_concurrent_streams, 1, 10000);
}

void read_proxy(const TableReader& r, ProxyConfig& p) {
  r.allow_only({"model", "stream_usage", "chunk_size"});
  r.get_string("model", p.model);
  r.get_bool("stream_usage", p.stream_usage);
  uint64_t size = 0;
  if (r.get_size("chunk_size", size)) {
    if (size < 1024 || size > (16u << 20)) r.fail(r.node("chunk_size"), "chunk_size", "must be between 1KiB and 16MiB");
    p.chunk_size = size;
  }
}

void read_upstream(const TableReader& r, UpstreamConfig& u) {
  r.allow_only({"base_url", "auth_header", "auth_value", "min_connections", "max_connections", "warm", "connect_timeout",
                "read_timeout", "acquire_timeout", "idle_timeout", "health_interval", "ca_file", "protocol",
                "max_streams_per_connection", "ping_interval"});
  if (!r.get_string("base_url", u.base_url)) r.fail(nullptr, "base_url", "is required");
  if (u.base_url.rfind("http://", 0) != 0 && u.base_url.rfind("https://", 0) != 0)
    r.fail(r.node("base_url"), "base_url", "must start with http:// or https://, got \"" + u.base_url + "\"");
  try {
    if (Poco::URI(u.base_url).getHost().empty()) r.fail(r.node("base_url"), "base_url", "has no host: \"" + u.base_url + "\"");
  } catch (const Poco::SyntaxException& e) {
    r.fail(r.node("base_url"), "base_url", "is not a valid URL: " + e.message());
  }
  while (u.base_url.size() > 1 && u.base_url.back() == '/') u.base_url.pop_back();
  r.get_string("auth_header", u.auth_header);
  std::vector<std::string> missing;
  r.get_string("auth_value", u.auth_value, &missing);
  if (!missing.empty()) {
    u.auth_error = "upstream '" + u.name + "' has no credential: environment variable " + missing.front() + " is not set";
    u.auth_value.clear();
  }
  if (!u.auth_value.empty() && u.auth_header.empty())
    r.fail(r.node("auth_value"), "auth_value", "is set but auth_header is empty");
  r.get_int("min_connections", u.min_connections, 0, 65535);
  r.get_int("max_connections", u.max_connections, 1, 65535);
  if (u.min_connections > u.max_connections)
    r.fail(r.node("min_connections"), "min_connections", "must not exceed max_connections (" + std::to_string(u.max_connections) + ")");
  r.get_bool("warm", u.warm);
  r.get_duration("connect_timeout", u.connect_timeout);
  r.get_duration("read_timeout", u.read_timeout);
  r.get_duration("acquire_timeout", u.acquire_timeout);
  r.get_duration("idle_timeout", u.idle_timeout);
  r.get_duration("health_interval", u.health_interval, true);
  r.get_string("ca_file", u.ca_file);
  if (!u.ca_file.empty() && !std::ifstream(u.ca_file))
    r.fail(r.node("ca_file"), "ca_file", "cannot read \"" + u.ca_file + "\"");
  std::string protocol;
  if (r.get_string("protocol", protocol)) {
    if (protocol == "http1") u.protocol = UpstreamProtocol::Http1;
    else if (protocol == "h2") u.protocol = UpstreamProtocol::H2;
    else if (protocol == "auto") u.protocol = UpstreamProtocol::Auto;
    else r.fail(r.node("protocol"), "protocol", "must be \"http1\", \"h2\" or \"auto\", got \"" + protocol + "\"");
  }
  r.get_int("max_streams_per_connection", u.max_streams_per_connection, 1, 100000);
  r.get_duration("ping_interval", u.ping_interval, true);
}

void read_route(const TableReader& r, RouteConfig& route) {
  r.allow_only({"prefix", "flavour", "upstream", "strip_prefix"});
  if (!r.get_string("prefix", route.prefix)) r.fail(nullptr, "prefix", "is required");
  if (route.prefix.empty() || route.prefix.front() != '/') r.fail(r.node("prefix"), "prefix", "must start with '/'");
  std::string flavour;
  if (!r.get_string("flavour", flavour)) r.fail(nullptr, "flavour", "is required (\"openai\" or \"anthropic\")");
  if (flavour == "openai") route.flavour = pipeline::Flavour::OpenAI;
  else if (flavour == "anthropic") route.flavour = pipeline::Flavour::Anthropic;
  else r.fail(r.node("flavour"), "flavour", "must be \"openai\" or \"anthropic\", got \"" + flavour + "\"");
  if (!r.get_string("upstream", route.upstream)) r.fail(nullptr, "upstream", "is required");
  r.get_string("strip_prefix", route.strip_prefix);
  if (!route.strip_prefix.empty() && route.prefix.rfind(route.strip_prefix, 0) != 0)
    r.fail(r.node("strip_prefix"), "strip_prefix", "\"" + route.strip_prefix + "\" is not a prefix of \"" + route.prefix + "\"");
}

void read_log(const TableReader& r, LogConfig& l) {
  r.allow_only({"level", "access_log"});
  r.get_string("level", l.level);
  static const std::set<std::string> levels{"fatal", "critical", "error", "warning", "notice", "information", "debug", "trace"};
  if (!levels.count(l.level)) r.fail(r.node("level"), "level", "must be one of fatal, critical, error, warning, notice, information, debug, trace");
  r.get_string("access_log", l.access_log);
}

void read_admin(const TableReader& r, AdminConfig& a) {
  r.allow_only({"token"});
  r.get_string("token", a.token);
}

void read_loader(const TableReader& r, LoaderConfig& l) {
  r.allow_only({"dir", "runtime_dir", "watch", "watch_interval"});
  r.get_string("dir", l.dir);
  r.get_string("runtime_dir", l.runtime_dir);
  r.get_bool("watch", l.watch);
  r.get_duration("watch_interval", l.watch_interval);
}

void read_store(const TableReader& r, StoreConfig& s) {
  r.allow_only({"backend", "path", "flush_interval", "flush_batch", "bucket", "max_window", "url", "prefix", "timeout",
                "pool_size", "cache_ttl", "failure_mode"});
  std::string backend;
  if (r.get_string("backend", backend)) {
    if (backend == "sqlite") s.backend = StoreBackend::Sqlite;
    else if (backend == "redis") s.backend = StoreBackend::Redis;
    else if (backend == "memory") s.backend = StoreBackend::Memory;
    else r.fail(r.node("backend"), "backend", "must be \"sqlite\", \"redis\" or \"memory\", got \"" + backend + "\"");
  }
  r.get_string("path", s.path);
  if (s.backend == StoreBackend::Sqlite && s.path.empty()) r.fail(r.node("path"), "path", "must not be empty");
  r.get_duration("flush_interval", s.flush_interval);
  r.get_int("flush_batch", s.flush_batch, 1, 1'000'000);
  r.get_duration("bucket", s.bucket);
  if (s.bucket.count() < 1000 || 86'400'000 % s.bucket.count() != 0)
    r.fail(r.node("bucket"), "bucket", "must be at least 1s and divide a day evenly (1s, 10s, 1m, 5m, 1h…)");
  r.get_duration("max_window", s.max_window);
  if (s.max_window < s.bucket) r.fail(r.node("max_window"), "max_window", "must be at least one bucket");
  if (s.max_window.count() / s.bucket.count() > 100'000)
    r.fail(r.node("max_window"), "max_window", "spans more than 100000 buckets; use a larger bucket");
  r.get_string("url", s.url);
  if (s.backend == StoreBackend::Redis) {
    try {
      Poco::URI uri(s.url);
      if (uri.getScheme() != "redis" || uri.getHost().empty())
        r.fail(r.node("url"), "url", "must look like redis://[:password@]host[:port][/db], got \"" + redact_url(s.url) + "\"");
    } catch (const Poco::SyntaxException&) {
      r.fail(r.node("url"), "url", "is not a valid URL: \"" + redact_url(s.url) + "\"");
    }
  }
  r.get_string("prefix", s.prefix);
  r.get_duration("timeout", s.timeout);
  r.get_int("pool_size", s.pool_size, 1, 4096);
  r.get_duration("cache_ttl", s.cache_ttl, true);
  std::string mode;
  if (r.get_string("failure_mode", mode)) {
    if (mode == "fail_closed") s.failure_mode = FailureMode::FailClosed;
    else if (mode == "fail_open") s.failure_mode = FailureMode::FailOpen;
    else r.fail(r.node("failure_mode"), "failure_mode", "must be \"fail_closed\" or \"fail_open\", got \"" + mode + "\"");
  }
}

// Settings values may use ${ENV} too: interpolate every string inside the table, then format it as
// JSON for the plugin.
void interpolate_strings(const TableReader& r, toml::node& node, const std::string& path) {
  if (auto* str = node.as_string()) {
    std::vector<std::string> unset;
    try {
      str->get() = interpolate_env(str->get(), &unset);
    } catch (const std::invalid_argument& e) {
      r.fail(&node, path, e.what());
    }
    if (!unset.empty()) r.fail(&node, path, "environment variable " + unset.front() + " is not set");
  } else if (auto* tbl = node.as_table()) {
    for (auto& [k, v] : *tbl) interpolate_strings(r, v, path + "." + std::string(k.str()));
  } else if (auto* arr = node.as_array()) {
    for (size_t i = 0; i < arr->size(); ++i) interpolate_strings(r, *arr->get(i), path + "[" + std::to_string(i) + "]");
  }
}

void read_plugin(const TableReader& r, PluginConfig& p) {
  r.allow_only({"name", "path", "enabled", "settings"});
  if (!r.get_string("name", p.name) || p.name.empty()) r.fail(r.node("name"), "name", "is required");
  for (char c : p.name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'))
      r.fail(r.node("name"), "name", "must be letters, digits, '_' or '-', got \"" + p.name + "\"");
  r.get_string("path", p.path);
  r.get_bool("enabled", p.enabled);
  p.line = static_cast<int>(r.table().source().begin.line);
  if (const toml::table* settings = r.get_table("settings")) {
    toml::table copy = *settings;
    interpolate_strings(r, copy, r.path() + ".settings");
    std::ostringstream os;
    os << toml::json_formatter(copy);
    p.settings_json = os.str();
  } else {
    p.settings_json = "{}";
  }
}

// Calls `read` with a reader for every table of the array of tables `key` ([[key]]), in order.
template <class Read>
void for_each_table(const TableReader& top, const toml::table& root, const char* key, Read&& read) {
  const toml::node* node = root.get(key);
  if (!node) return;
  const auto* arr = node->as_array();
  if (!arr) top.fail(node, key, std::string("expected an array of tables [[") + key + "]]");
  size_t index = 0;
  for (const auto& item : *arr) {
    const std::string path = std::string(key) + "[" + std::to_string(index++) + "]";
    const auto* t = item.as_table();
    if (!t) top.fail(&item, path, "expected a table");
    read(TableReader(top.file(), *t, path));
  }
}

}  // namespace

std::string interpolate_env(std::string_view text, std::vector<std::string>* missing) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '$') { out.push_back(c); continue; }
    if (i + 1 < text.size() && text[i + 1] == '$') { out.push_back('$'); ++i; continue; }
    if (i + 1 >= text.size() || text[i + 1] != '{') { out.push_back(c); continue; }
    size_t close = text.find('}', i + 2);
    if (close == std::string_view::npos) throw std::invalid_argument("unterminated ${ in \"" + std::string(text) + "\"");
    std::string_view ref = text.substr(i + 2, close - i - 2);
    std::string_view name = ref, fallback;
    bool has_default = false;
    if (auto p = ref.find(":-"); p != std::string_view::npos) {
      name = ref.substr(0, p);
      fallback = ref.substr(p + 2);
      has_default = true;
    }
    if (name.empty()) throw std::invalid_argument("empty variable name in ${}");
    for (char n : name)
      if (!(std::isalnum(static_cast<unsigned char>(n)) || n == '_'))
        throw std::invalid_argument("invalid variable name \"" + std::string(name) + "\"");
    const char* value = std::getenv(std::string(name).c_str());
    if (value && *value) out += value;
    else if (has_default) out += fallback;
    else if (missing) missing->emplace_back(name);
    i = close;
  }
  return out;
}

std::string redact_url(const std::string& url) {
  const auto scheme = url.find("://");
  const auto at = url.rfind('@');
  if (scheme == std::string::npos || at == std::string::npos || at < scheme) return url;
  return url.substr(0, scheme + 3) + "***" + url.substr(at);
}

Config parse_config(std::string_view toml_text, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    throw ConfigError(where(source_name, e.source()) + ": " + std::string(e.description()));
  }

  Config cfg;
  cfg.source_path = source_name;
  TableReader top(source_name, root, "");
  top.allow_only({"server", "proxy", "upstreams", "routes", "log", "admin", "loader", "plugins", "store"});

  if (const auto* t = top.get_table("server")) read_server(TableReader(source_name, *t, "server"), cfg.server);
  if (const auto* t = top.get_table("proxy")) read_proxy(TableReader(source_name, *t, "proxy"), cfg.proxy);
  if (const auto* t = top.get_table("log")) read_log(TableReader(source_name, *t, "log"), cfg.log);
  if (const auto* t = top.get_table("admin")) read_admin(TableReader(source_name, *t, "admin"), cfg.admin);
  if (const auto* t = top.get_table("loader")) read_loader(TableReader(source_name, *t, "loader"), cfg.loader);
  if (const auto* t = top.get_table("store")) read_store(TableReader(source_name, *t, "store"), cfg.store);
  for_each_table(top, root, "plugins", [&](const TableReader& pr) {
    PluginConfig plugin;
    read_plugin(pr, plugin);
    for (const auto& other : cfg.plugins)
      if (other.name == plugin.name) pr.fail(pr.node("name"), "name", "plugin \"" + plugin.name + "\" is listed twice");
    cfg.plugins.push_back(std::move(plugin));
  });

  if (const auto* ups = top.get_table("upstreams")) {
    for (const auto& [name, node] : *ups) {
      const auto* t = node.as_table();
      if (!t) TableReader(source_name, *ups, "upstreams").fail(&node, name.str(), "expected a table [upstreams." + std::string(name.str()) + "]");
      UpstreamConfig u;
      u.name = std::string(name.str());
      read_upstream(TableReader(source_name, *t, "upstreams." + u.name), u);
      cfg.upstreams.emplace(u.name, std::move(u));
    }
  }

  for_each_table(top, root, "routes", [&](const TableReader& rr) {
    RouteConfig route;
    read_route(rr, route);
    if (!cfg.upstreams.count(route.upstream))
      rr.fail(rr.node("upstream"), "upstream", "unknown upstream \"" + route.upstream + "\" (define [upstreams." + route.upstream + "])");
    for (const auto& other : cfg.routes)
      if (other.prefix == route.prefix) rr.fail(rr.node("prefix"), "prefix", "duplicate route prefix \"" + route.prefix + "\"");
    cfg.routes.push_back(std::move(route));
  });
  if (cfg.routes.empty()) throw ConfigError(source_name + ": routes: at least one [[routes]] entry is required");
  return cfg;
}

Config load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace glmp::core::config
