#pragma once
// The proxy's configuration: the TOML file (toml++) turned into typed, validated structs.
// Every error names the file, the line and the dotted key, so an operator can fix it at once.

#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <glmproxy/units.hpp>

#include "pipeline/usage.hpp"  // Flavour

namespace glmp::core::config {

using Duration = std::chrono::milliseconds;

class ConfigError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 3000;
  int workers = 0;                       // event loops (threads owning connections); 0 = one per core
  int max_threads = 512;                 // worker threads for blocking work (admin and plugin routes, blocking hooks)
  size_t thread_stack_size = 256 * 1024; // small stacks for those worker threads
  int max_queued = 1024;                 // blocking tasks waiting for a worker thread; beyond -> 503
  int max_connections = 10000;           // open client connections; beyond -> 503 and close at once
  size_t max_request_body = 32u << 20;   // larger -> 413
  size_t max_header_bytes = 32 * 1024;   // request line + headers; larger -> 431
  size_t max_headers = 100;              // header fields; more -> 431
  size_t max_uri_bytes = 8 * 1024;       // request-target; longer -> 414
  Duration header_timeout{10'000};       // total time to receive a request's line and headers -> 408
  Duration body_timeout{60'000};         // total time to receive a request's body -> 408
  Duration send_timeout{30'000};         // a client that takes nothing for this long is disconnected
  Duration keepalive_timeout{10'000};    // idle keep-alive connections close after this
  Duration drain_timeout{30'000};        // SIGTERM: how long in-flight requests may take to finish
  // TLS on the listener: both set = every connection is TLS (ALPN http/1.1); neither = plain
  // HTTP. PEM files, read at start and again on SIGHUP (or POST /admin/reload).
  std::string tls_cert;
  std::string tls_key;
  bool http2 = true;                    // TLS: ALPN offers h2 (then http/1.1)
  int max_concurrent_streams = 128;     // HTTP/2 clients: streams one connection may have open
};

struct ProxyConfig {
  std::string model = "glm-4.7";  // forced on every proxied body that has a "model"; "" = pass through
  bool stream_usage = true;       // ask OpenAI upstreams for usage in streams; hide it from clients that did not ask
  size_t chunk_size = 32 * 1024;  // response relay buffer (STREAM_RESPONSE_CHUNK_SIZE in the old proxy)
};

// How the proxy speaks to an upstream: HTTP/1.1, HTTP/2, or (https) whatever ALPN agrees on.
enum class UpstreamProtocol { Http1, H2, Auto };

struct UpstreamConfig {
  std::string name;
  std::string base_url;
  std::string auth_header;        // e.g. "Authorization" or "x-api-key"; "" = no credential added
  std::string auth_value;         // secret: never logged, never shown
  std::string auth_error;         // non-empty when auth_value could not be built (e.g. unset env var)
  int min_connections = 2;
  int max_connections = 256;
  bool warm = true;
  Duration connect_timeout{5'000};
  Duration read_timeout{300'000};   // longest silence allowed between two reads (incl. before headers)
  Duration acquire_timeout{5'000};  // pool exhausted past this -> 503
  Duration idle_timeout{60'000};    // idle pooled connections older than this are closed
  Duration health_interval{30'000}; // background TCP health check; 0 = off
  std::string ca_file;              // extra PEM CA bundle for HTTPS upstreams
  // auto: https negotiates h2 or http/1.1 with ALPN, http is HTTP/1.1; h2 over http = h2c with
  // prior knowledge.
  UpstreamProtocol protocol = UpstreamProtocol::Auto;
  int max_streams_per_connection = 100;  // HTTP/2: streams per connection (also bounded by the peer's setting)
  Duration ping_interval{30'000};        // HTTP/2: an idle connection is PINGed this often; 0 = never
};

struct RouteConfig {
  std::string prefix;
  pipeline::Flavour flavour = pipeline::Flavour::OpenAI;
  std::string upstream;
  std::string strip_prefix;
};

struct LogConfig {
  std::string level = "information";  // Poco levels: fatal … trace
  std::string access_log = "stdout";   // "stdout", "stderr", "off", or a file path (appended)
};

struct AdminConfig {
  std::string token;  // "" = admin API disabled (403); compared in constant time; never logged
};

// The plugin loader: where plugins live and how reloads are triggered besides POST /admin/reload
// and SIGHUP.
struct LoaderConfig {
  std::string dir;          // where "<name>.so" is looked up; "" = <bin>/../plugins or <bin>/../lib/glm-proxy/plugins
  std::string runtime_dir;  // private copies of loaded .so files; "" = /tmp/glm-proxy-<pid>
  bool watch = false;       // poll the config file and the .so files, reload on change
  Duration watch_interval{1'000};
};

// One [[plugins]] entry, in chain order.
struct PluginConfig {
  std::string name;
  std::string path;           // "" = <loader.dir>/<name>.so; relative paths are relative to the config file
  bool enabled = true;
  std::string settings_json;  // [plugins.settings] as JSON ("{}" when absent)
  int line = 0;               // where the entry starts, for error messages
};

// The state store ([store]): records and window counters shared by plugins (see store/store.hpp).
enum class StoreBackend { Sqlite, Redis, Memory };
enum class FailureMode { FailClosed, FailOpen };

struct StoreConfig {
  StoreBackend backend = StoreBackend::Sqlite;
  std::string path = "data/glm-proxy.db";  // sqlite: relative to the working directory; parent dirs are created
  Duration flush_interval{1'000};          // sqlite write-behind: at most this long …
  int flush_batch = 100;                   // … or this many distinct pending items (rows)
  Duration bucket{60'000};                 // window counter bucket size
  Duration max_window{86'400'000};         // longest window asked for; older buckets are dropped
  std::string url = "redis://127.0.0.1:6379/0";  // redis://[:password@]host[:port][/db]; password never logged
  std::string prefix = "glmp:";            // redis key prefix (several deployments can share one Redis)
  Duration timeout{1'000};                 // redis connect/read timeout per call
  int pool_size = 16;                      // redis connections
  Duration cache_ttl{2'000};               // redis: local record cache TTL (pub/sub invalidates sooner)
  FailureMode failure_mode = FailureMode::FailClosed;  // what window/counter reads answer when redis is down
};

struct Config {
  std::string source_path;
  StoreConfig store;
  AdminConfig admin;
  LoaderConfig loader;
  std::vector<PluginConfig> plugins;
  ServerConfig server;
  ProxyConfig proxy;
  std::map<std::string, UpstreamConfig> upstreams;
  std::vector<RouteConfig> routes;
  LogConfig log;
};

// The redis URL with any password replaced by "***" (for logs and /health).
std::string redact_url(const std::string& url);

// Loads and validates a config file. Throws ConfigError("file:line: key: message").
Config load_config(const std::string& path);
// Same, from a string (tests); `source_name` stands for the file name in messages.
Config parse_config(std::string_view toml_text, const std::string& source_name);

// "${VAR}" / "${VAR:-default}" / "$$" (a literal '$'). Unset variables without a default are
// collected in `missing` and expand to "". Throws std::invalid_argument on a malformed reference.
std::string interpolate_env(std::string_view text, std::vector<std::string>* missing);

// "250ms", "10s", "5m", "1h" (also combined: "1m30s") and "32MiB", "512KiB", "1GB", "100" (bytes):
// the SDK's <glmproxy/units.hpp>, so plugins' settings read sizes and durations exactly alike.
// Both throw std::invalid_argument.
using glmp::parse_duration;
using glmp::parse_size;

}  // namespace glmp::core::config
