// GLM Proxy plugin SDK: a header-only C++20 wrapper over the C ABI in <glmproxy/plugin_api.h>.
//
// A plugin is one class plus one macro:
//
//   #include <glmproxy/sdk.hpp>
//
//   class MyPlugin final : public glmp::Plugin {
//    public:
//     MyPlugin(const glmp::Settings& settings, glmp::Host host)
//         : Plugin(host), greeting_(settings.get_string("greeting", "hello")) {}
//     glmp::Status on_request(glmp::Request& request) override {
//       request.set_response_header("X-Greeting", greeting_);
//       return glmp::Status::Continue;
//     }
//    private:
//     const std::string greeting_;
//   };
//
//   GLMP_PLUGIN(MyPlugin, "my_plugin", "1.0.0");
//
// Build it with glmp_add_plugin() (find_package(GlmProxySDK)): that gives the flags the ABI needs
// (-fvisibility=hidden, -fno-gnu-unique, only glmp_plugin_init exported).
//
// Lifetime. The core calls on_config_new once per chain build (on the reload thread): the SDK parses
// the settings, constructs your class, and hands the object back to the core. The object lives
// until the chain is retired, when the core calls on_config_destroy (after the last request that
// used the chain has finished) and the SDK deletes it. A reload builds a NEW object from the new
// settings; the old one keeps serving the requests that started on it. State that must survive a
// reload does not belong in the object (nor in globals): keep it in the core's state store.
//
// Threading. One object serves all requests of its chain, and different requests run concurrently
// on different threads, so every hook must be thread-safe (std::atomic, a mutex, or immutable
// state set in the constructor). The hooks of a single request never run concurrently with each
// other. No thread_local: it keeps the library from being unloaded.
//
// Exceptions never reach the core. The SDK catches everything at the boundary:
//   - constructor (on_config_new): the configuration is refused; the exception's what() is the
//     reason the core reports (a reload then keeps the old chain);
//   - on_request_headers / on_request: the request fails with a 500 naming the plugin (GLMP_ERROR),
//     and the exception is logged;
//   - on_response_headers / on_response_body / on_complete: swallowed and logged;
//   - route handlers: logged; if the handler had not answered yet, the client gets a 500.
// Destructors must not throw (they are noexcept; a throw there terminates the process).
//
// Data lifetime. Every std::string_view the SDK returns from a Request (method(), header(),
// body(), attribute(), ...) points at host-owned bytes. It is valid only during the hook or route
// handler that obtained it, and only until a call that changes the same item (set_header on that
// header, set_body, set_model, set_attribute on that name, ...). Copy into a std::string to keep.
//
// State store and metrics (ABI 1.1). host.store() reaches the core's state store: JSON records,
// sliding-window sums and lifetime counters that survive reloads and restarts and, with Redis,
// are shared by replicas. Every store call returns a StoreStatus instead of throwing: a plugin
// decides itself what NotFound, Unavailable (backend down, fail_closed) and Degraded (backend
// down, fail_open: sums read 0, records may be stale) mean for it. host.counter() / gauge() /
// histogram() create Prometheus metrics served at GET /metrics; create them in the constructor
// and update them from any hook (lock-free, no allocation). On a host whose table lacks these
// functions (ABI 1.0), store calls answer StoreStatus::Unavailable and metrics are null handles
// whose updates do nothing, so a plugin never crashes for want of them.
//
// Headers phase (ABI 1.2). Override on_request_headers to decide from the request line and headers
// alone, BEFORE the core reads the body (a refusal there costs no body read, and no "100 Continue"
// is sent). body(), streaming() and model() are not known yet; set_body / set_model belong in
// on_request. A plugin that does not override it leaves the descriptor's hook NULL. The SDK has no
// per-request storage for a plugin: what on_request needs from the headers phase travels as a
// request attribute, or is recomputed (cheaply, e.g. through the plugin's own cache).
#pragma once

#include <glmproxy/plugin_api.h>
#include <glmproxy/units.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if GLMP_ABI_MAJOR != 1
#error "this glmproxy/sdk.hpp is written for plugin ABI major 1"
#endif

namespace glmp {

// ---------------------------------------------------------------------------------------------
// Plain values (mirror the C enums one to one)
// ---------------------------------------------------------------------------------------------

// What on_request_headers / on_request tell the core.
enum class Status : int {
  Continue = GLMP_CONTINUE,    // go on with the next plugin / the upstream
  Responded = GLMP_RESPONDED,  // the plugin answered (respond / respond_error / stream_*)
  Error = GLMP_ERROR           // the request fails with a 500 naming the plugin
};

enum class Flavour : int { OpenAI = GLMP_FLAVOUR_OPENAI, Anthropic = GLMP_FLAVOUR_ANTHROPIC };

enum class LogLevel : int {
  Trace = GLMP_LOG_TRACE,
  Debug = GLMP_LOG_DEBUG,
  Info = GLMP_LOG_INFO,
  Warning = GLMP_LOG_WARNING,
  Error = GLMP_LOG_ERROR
};

// Who may call a route registered with Host::register_route.
enum class Access : int {
  Public = GLMP_ACCESS_PUBLIC,  // anyone
  Admin = GLMP_ACCESS_ADMIN,    // needs the admin token
  Key = GLMP_ACCESS_KEY,        // runs the chain's on_request hooks first (so auth has run)
  // ABI 1.6: the admin token is served at once (Request::is_admin() true), anything else as Key.
  // An older host refuses the route (register_route throws).
  KeyOrAdmin = GLMP_ACCESS_KEY_OR_ADMIN
};

// ABI 1.6: one timed span of a request (Request::timings): a core phase ("receive", "defer",
// "follow_wait", "upstream_connect", "upstream_headers", "first_byte", "stream"; hook empty) or one
// plugin hook (name = the plugin, hook = "on_request", …; on_response_body summed over the chunks).
// Nanoseconds from the request's start. The views are valid during the hook.
struct Timing {
  std::string_view name;
  std::string_view hook;
  std::int64_t start_ns = 0;
  std::int64_t dur_ns = 0;
};

// ABI 1.6: what the core knows of a request's course so far (Request::profile).
struct Profile {
  int status = 0;           // sent to the client; 0 before the response head
  int upstream_status = 0;  // 0: no upstream response (yet)
  std::int64_t started_unix_us = 0;
  std::int64_t elapsed_ns = 0;  // start → now; in on_complete: → the last byte handed to the socket
  std::int64_t ttfb_ns = -1;    // → the first response byte handed to the socket; -1: none yet
  std::int64_t upstream_ns = 0; // waiting on the upstream (connect, send, response)
  std::uint64_t bytes_in = 0, bytes_out = 0;  // body bytes, as the access log counts them
  std::string_view route;  // the matched route's prefix; "" for none (valid during the hook)
  std::string_view error;  // why the proxy failed the request; "" when it did not
};

// Token usage of a response as extracted by the core; final in on_complete.
struct Usage {
  bool seen = false;  // true when the upstream reported usage
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::int64_t cache_read_input_tokens = 0;
  std::int64_t cache_creation_input_tokens = 0;
  std::int64_t total_tokens = 0;  // OpenAI total_tokens when given, else 0
};

// Where a response comes from (ABI 1.5; mirrors glmp_origin).
enum class Origin : int {
  Upstream = GLMP_ORIGIN_UPSTREAM,   // its own upstream call (or an answer of a plugin or the core)
  Cache = GLMP_ORIGIN_CACHE,         // replayed from a finished recording
  Coalesced = GLMP_ORIGIN_COALESCED  // followed another request's response while it was relayed
};

// A recording's state and figures (ABI 1.5; see Recording::info).
struct RecordingInfo {
  enum class State : int {
    Waiting = GLMP_RECORDING_WAITING,   // no response head yet
    Live = GLMP_RECORDING_LIVE,         // head known, body arriving
    Complete = GLMP_RECORDING_COMPLETE, // arrived whole
    Failed = GLMP_RECORDING_FAILED      // ended without a response, or cut
  };
  State state = State::Failed;
  int status = 0;               // 0 before the head
  bool streamed = false;        // text/event-stream
  bool ended_normally = false;  // Complete, whole body, a stream's terminal event and no error event
  bool replayable = false;      // every body byte is kept (within max_bytes)
  std::int64_t body_bytes = 0;
  std::int64_t started_ms = 0;   // Unix ms
  std::int64_t finished_ms = 0;  // Unix ms, 0 before the end
  std::int64_t followers = 0;    // clients following it now
  Usage usage;                   // final once Complete or Failed
};

// What a state-store call returns (mirrors glmp_store_status one to one).
enum class StoreStatus : int {
  Ok = GLMP_STORE_OK,
  NotFound = GLMP_STORE_NOT_FOUND,        // record absent (get, remove)
  Unavailable = GLMP_STORE_UNAVAILABLE,   // backend down ([store] failure_mode = "fail_closed"), a record
                                          // write failed, or the host has no store (ABI 1.0)
  Degraded = GLMP_STORE_DEGRADED,         // backend down, failure_mode = "fail_open": sums and counters
                                          // read 0, records may be stale; the write may be lost
  Invalid = GLMP_STORE_INVALID            // bad arguments: empty or oversized (> 512 bytes) name, value not
                                          // JSON or > 1 MiB, window <= 0 or > [store] max_window, limit not 1..1000
};

// "ok", "not_found", "unavailable", "degraded", "invalid" (as the core logs them).
constexpr std::string_view store_status_name(StoreStatus status) noexcept {
  switch (status) {
    case StoreStatus::Ok: return "ok";
    case StoreStatus::NotFound: return "not_found";
    case StoreStatus::Unavailable: return "unavailable";
    case StoreStatus::Degraded: return "degraded";
    case StoreStatus::Invalid: return "invalid";
  }
  return "unknown";
}

// A store call's status plus what it read. `value` is meaningful when status is Ok, and (as the
// fail_open stand-in: 0 for sums and counters, possibly stale for records) when it is Degraded;
// otherwise it holds T{}.
template <class T>
struct StoreResult {
  StoreStatus status = StoreStatus::Unavailable;
  T value{};
  bool ok() const noexcept { return status == StoreStatus::Ok; }
};

// One record of a namespace: its key and its JSON text.
struct StoreRecord {
  std::string key;
  std::string value;
};

// One page of Store::list, in key order. When `more` is true, list again with
// after = records.back().key for the next page.
struct StorePage {
  StoreStatus status = StoreStatus::Unavailable;
  std::vector<StoreRecord> records;
  bool more = false;
  bool ok() const noexcept { return status == StoreStatus::Ok; }
};

// One non-empty bucket of a sliding window: its start (Unix ms, a multiple of Store::bucket_ms())
// and the sum of the amounts added to it.
struct WindowBucket {
  std::int64_t start_ms = 0;
  std::int64_t amount = 0;
};

// A metric label: name (a Prometheus label name) and value. Only read during the creating call.
using Label = std::pair<std::string_view, std::string_view>;

// ABI 1.7: one sample of GET /metrics (Host::metrics). A histogram comes as its "<family>_bucket"
// samples (the last label is "le"), "<family>_sum" and "<family>_count".
enum class MetricKind : int { Counter = GLMP_METRIC_COUNTER, Gauge = GLMP_METRIC_GAUGE, Histogram = GLMP_METRIC_HISTOGRAM };
struct MetricSample {
  std::string family;
  std::string name;
  MetricKind kind = MetricKind::Counter;
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
  // The value of label `name` ("" when absent).
  std::string_view label(std::string_view label_name) const noexcept {
    for (const auto& [k, v] : labels)
      if (k == label_name) return v;
    return {};
  }
};

class Request;
class Host;
class Plugin;

// A route handler: answers with request.respond / respond_error / stream_*. Runs on the
// connection's thread, concurrently with other requests: it must be thread-safe.
using RouteHandler = std::function<void(Request& request)>;

namespace detail {

inline std::string_view view(const char* data, std::size_t len) noexcept {
  return (data != nullptr && len != 0) ? std::string_view(data, len) : std::string_view();
}

// Never hand the host a null pointer, even for an empty string.
inline const char* ptr(std::string_view s) noexcept { return s.data() != nullptr ? s.data() : ""; }

// Appends `text` to buf[pos..cap-1) without allocating; returns the new position.
inline std::size_t append(char* buf, std::size_t cap, std::size_t pos, std::string_view text) noexcept {
  if (pos + 1 >= cap) return pos;
  const std::size_t n = std::min(text.size(), cap - 1 - pos);
  std::memcpy(buf + pos, text.data(), n);
  return pos + n;
}

// Copies `message` into the host's error buffer: NUL-terminated, truncated to error_cap - 1 bytes
// without cutting a UTF-8 sequence in half.
inline void write_error(char* error, std::size_t error_cap, std::string_view message) noexcept {
  if (error == nullptr || error_cap == 0) return;
  std::size_t n = std::min(message.size(), error_cap - 1);
  if (n < message.size()) {
    while (n > 0 && (static_cast<unsigned char>(message[n]) & 0xC0u) == 0x80u) --n;
  }
  if (n != 0) std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

// The size of an ABI 1.0 host table (everything up to register_route): the least the SDK accepts.
inline constexpr std::size_t kHostApi10Size =
    offsetof(glmp_host_api, register_route) + sizeof(glmp_host_api::register_route);

// True when the host's table is of ABI minor >= `minor` and long enough to hold the member at
// `offset` (of `size` bytes). Tables only grow at their end, so this is how a plugin tells which
// host functions an older (or odd) host has.
inline bool host_covers(const glmp_host_api* api, std::size_t offset, std::size_t size, std::uint32_t minor) noexcept {
  return api != nullptr && api->abi_minor >= minor && offset + size <= api->struct_size;
}

// GLMP_DETAIL_HOST_HAS(api, member, minor): the table holds `member` (added in ABI minor `minor`)
// and it is not NULL. #undef'd at the end of this header.
#define GLMP_DETAIL_HOST_HAS(api, member, minor)                                                            \
  (::glmp::detail::host_covers((api), offsetof(glmp_host_api, member), sizeof(glmp_host_api::member), (minor)) && \
   (api)->member != nullptr)

// Every ABI 1.1 store function.
inline bool host_has_store(const glmp_host_api* api) noexcept {
  return GLMP_DETAIL_HOST_HAS(api, store_get, 1u) && GLMP_DETAIL_HOST_HAS(api, store_put, 1u) &&
         GLMP_DETAIL_HOST_HAS(api, store_delete, 1u) && GLMP_DETAIL_HOST_HAS(api, store_list, 1u) &&
         GLMP_DETAIL_HOST_HAS(api, window_add, 1u) && GLMP_DETAIL_HOST_HAS(api, window_sum, 1u) &&
         GLMP_DETAIL_HOST_HAS(api, window_buckets, 1u) && GLMP_DETAIL_HOST_HAS(api, counter_add, 1u) &&
         GLMP_DETAIL_HOST_HAS(api, counter_get, 1u) && GLMP_DETAIL_HOST_HAS(api, store_bucket_ms, 1u);
}

// Every ABI 1.1 metric function (a metric is only handed out when all its updates work).
inline bool host_has_metrics(const glmp_host_api* api) noexcept {
  return GLMP_DETAIL_HOST_HAS(api, metric_new, 1u) && GLMP_DETAIL_HOST_HAS(api, metric_add, 1u) &&
         GLMP_DETAIL_HOST_HAS(api, metric_set, 1u) && GLMP_DETAIL_HOST_HAS(api, metric_observe, 1u);
}

// Every ABI 1.6 timing function.
inline bool host_has_timings(const glmp_host_api* api) noexcept {
  return GLMP_DETAIL_HOST_HAS(api, request_profile, 6u) && GLMP_DETAIL_HOST_HAS(api, request_timings, 6u) &&
         GLMP_DETAIL_HOST_HAS(api, request_is_admin, 6u);
}

// Every ABI 1.5 function (recordings, the upstream body, request keys).
inline bool host_has_recordings(const glmp_host_api* api) noexcept {
  return GLMP_DETAIL_HOST_HAS(api, request_record, 5u) && GLMP_DETAIL_HOST_HAS(api, request_follow, 5u) &&
         GLMP_DETAIL_HOST_HAS(api, recording_info, 5u) && GLMP_DETAIL_HOST_HAS(api, recording_release, 5u) &&
         GLMP_DETAIL_HOST_HAS(api, recording_retain, 5u) && GLMP_DETAIL_HOST_HAS(api, response_origin, 5u) &&
         GLMP_DETAIL_HOST_HAS(api, response_set_usage, 5u) && GLMP_DETAIL_HOST_HAS(api, response_charge, 5u) &&
         GLMP_DETAIL_HOST_HAS(api, response_set_charge, 5u) && GLMP_DETAIL_HOST_HAS(api, request_upstream_body, 5u) &&
         GLMP_DETAIL_HOST_HAS(api, request_canonical_body, 5u) && GLMP_DETAIL_HOST_HAS(api, request_defer_upstream, 5u);
}

// The int a store function returned, as a StoreStatus. A value this SDK does not know (a newer
// host) is taken as Unavailable: the call cannot be assumed to have worked.
constexpr StoreStatus store_status(int raw) noexcept {
  switch (raw) {
    case GLMP_STORE_OK: return StoreStatus::Ok;
    case GLMP_STORE_NOT_FOUND: return StoreStatus::NotFound;
    case GLMP_STORE_UNAVAILABLE: return StoreStatus::Unavailable;
    case GLMP_STORE_DEGRADED: return StoreStatus::Degraded;
    case GLMP_STORE_INVALID: return StoreStatus::Invalid;
    default: return StoreStatus::Unavailable;
  }
}

// What the store callbacks (glmp_bytes_fn, ...) copy into. They run inside the host's call, so they
// must not throw: an exception (std::bad_alloc) is parked here and rethrown once the host returns.
template <class T>
struct Sink {
  T* out;
  std::exception_ptr error;

  template <class F>
  void guarded(F&& f) noexcept {
    if (error) return;
    try {
      f(*out);
    } catch (...) {
      error = std::current_exception();
    }
  }
  void rethrow() const {
    if (error) std::rethrow_exception(error);
  }
};

struct HostState;

// One registered route: the handler and the instance it belongs to. Owned by HostState; the host
// gets a pointer to it as user_data, valid until on_config_destroy.
struct Route {
  RouteHandler handler;
  HostState* state;
};

// What the SDK keeps per plugin instance besides the plugin object itself.
struct HostState {
  const glmp_host_api* api = nullptr;
  glmp_instance_host_ptr* instance = nullptr;
  const char* plugin_name = "";
  bool constructing = true;  // register_route and metrics are allowed only during construction (on_config_new)
  std::vector<std::unique_ptr<Route>> routes;

  void log(glmp_log_level level, std::string_view message) const noexcept {
    if (api != nullptr && api->log != nullptr) api->log(instance, level, ptr(message), message.size());
  }

  // Logs "<where> failed: <what>" without allocating (it may run after a std::bad_alloc).
  void log_failure(std::string_view where, const char* what) const noexcept {
    char buf[1024];
    std::size_t pos = append(buf, sizeof buf, 0, where);
    pos = append(buf, sizeof buf, pos, " failed: ");
    pos = append(buf, sizeof buf, pos, what != nullptr ? std::string_view(what) : "unknown exception (not std::exception)");
    log(GLMP_LOG_ERROR, std::string_view(buf, pos));
  }
};

inline void route_trampoline(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request, void* user_data) noexcept;

template <class Info>
struct Adapter;

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Small helpers every plugin with routes or query parameters needs (one place, not one per plugin).
// ---------------------------------------------------------------------------------------------

// Decodes %XX escapes; a '%' not followed by two hex digits stays as it is, '+' is kept.
inline std::string percent_decode(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = hex(s[i + 1]);
      const int lo = hex(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// The (percent-decoded) value of the first `name` parameter of a raw query string ("a=1&b=2"),
// "" for a parameter without '=', nullopt when absent.
inline std::optional<std::string> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return percent_decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

// Unix milliseconds as RFC 3339 UTC with milliseconds: "2026-12-31T23:59:59.000Z".
inline std::string format_rfc3339(std::int64_t unix_ms) {
  const std::time_t secs = static_cast<std::time_t>(unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000);
  const int millis = static_cast<int>(unix_ms - static_cast<std::int64_t>(secs) * 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];  // room for any int fields, so -Wformat-truncation can prove nothing is cut
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

// The current Unix time in milliseconds (the clock the core's store uses for now_ms = 0).
inline std::int64_t unix_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------------
// Settings: the plugin's [plugins.settings] TOML table, which the core hands over as JSON.
// Immutable after construction; safe to read from any thread. Copyable.
// ---------------------------------------------------------------------------------------------

// Thrown for invalid settings (not JSON, not an object, a value of the wrong type). Let it escape
// the plugin's constructor: the configuration is refused with its message.
class SettingsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Settings {
 public:
  // Empty settings ({}).
  Settings() : json_(nlohmann::json::object()) {}

  // Parses `json_text`. Empty or blank text means {}. Throws SettingsError when the text is not
  // JSON or not a JSON object.
  explicit Settings(std::string_view json_text) : raw_(json_text) {
    if (raw_.find_first_not_of(" \t\r\n") == std::string::npos) {
      json_ = nlohmann::json::object();
      return;
    }
    try {
      json_ = nlohmann::json::parse(raw_.begin(), raw_.end());
    } catch (const nlohmann::json::exception& e) {
      throw SettingsError(std::string("settings are not valid JSON: ") + e.what());
    }
    if (!json_.is_object()) {
      throw SettingsError(std::string("settings must be a JSON object, not ") + json_.type_name());
    }
  }

  // True when the top-level key is present and not null.
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters for top-level keys. An absent (or null) key yields `fallback`; a key of the wrong
  // type throws SettingsError naming the key, so a typo in the config is reported, not ignored.
  // Refuses a setting the plugin does not know (a typo must not pass silently): throws
  // SettingsError "unknown setting \"<key>\" (allowed: a, b, c)" for the first key not in `allowed`.
  void allow_only(std::initializer_list<std::string_view> allowed) const {
    for (const auto& [key, value] : json_.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string list;
      for (std::string_view a : allowed) (list += list.empty() ? "" : ", ") += a;
      throw SettingsError("unknown setting \"" + key + "\" (allowed: " + list + ")");
    }
  }

  std::string get_string(std::string_view key, std::string_view fallback = {}) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return std::string(fallback);
    if (!v->is_string()) throw wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }

  // Integers only (1.5 or "1" throw); unsigned values above INT64_MAX throw.
  std::int64_t get_int(std::string_view key, std::int64_t fallback = 0) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number_integer()) throw wrong_type(key, "an integer", *v);
    if (v->is_number_unsigned() &&
        v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw SettingsError("setting \"" + std::string(key) + "\" is out of range");
    }
    return v->get<std::int64_t>();
  }

  bool get_bool(std::string_view key, bool fallback = false) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) throw wrong_type(key, "a boolean", *v);
    return v->get<bool>();
  }

  // A duration: "250ms", "30s", "5m", "1h", "1m30s" (glmp::parse_duration, as in the proxy's own
  // config), or an integer number of milliseconds (>= 0). Anything else throws SettingsError naming
  // the key.
  std::chrono::milliseconds get_duration(std::string_view key, std::chrono::milliseconds fallback) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    if (v->is_number_integer() && v->get<std::int64_t>() >= 0) return std::chrono::milliseconds(v->get<std::int64_t>());
    if (v->is_string()) {
      try {
        return parse_duration(v->get<std::string>());
      } catch (const std::invalid_argument& e) {
        throw SettingsError("setting \"" + std::string(key) + "\": " + e.what());
      }
    }
    throw SettingsError("setting \"" + std::string(key) + "\" must be a duration like \"250ms\", \"30s\", \"5m\", \"1h\" or milliseconds");
  }

  // A size in bytes: "512KiB", "32MiB", "1GB", "100" (glmp::parse_size, as in the proxy's own
  // config) or an integer number of bytes (>= 0). Anything else throws SettingsError naming the key.
  std::uint64_t get_size(std::string_view key, std::uint64_t fallback) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    if (v->is_number_unsigned()) return v->get<std::uint64_t>();
    if (v->is_number_integer() && v->get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v->get<std::int64_t>());
    if (v->is_string()) {
      try {
        return parse_size(v->get<std::string>());
      } catch (const std::invalid_argument& e) {
        throw SettingsError("setting \"" + std::string(key) + "\": " + e.what());
      }
    }
    throw SettingsError("setting \"" + std::string(key) + "\" must be a size like \"512KiB\", \"1MiB\", \"1GB\" or a number of bytes");
  }

  // Any number (integers convert).
  double get_double(std::string_view key, double fallback = 0.0) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) throw wrong_type(key, "a number", *v);
    return v->get<double>();
  }

  // An array of strings; absent -> empty.
  std::vector<std::string> get_string_list(std::string_view key) const {
    const nlohmann::json* v = find(key);
    std::vector<std::string> out;
    if (v == nullptr) return out;
    if (!v->is_array()) throw wrong_type(key, "an array of strings", *v);
    out.reserve(v->size());
    for (const nlohmann::json& item : *v) {
      if (!item.is_string()) throw wrong_type(key, "an array of strings", item);
      out.push_back(item.get<std::string>());
    }
    return out;
  }

  // The whole settings object, for nested tables and arrays (nlohmann::json, read-only).
  const nlohmann::json& json() const noexcept { return json_; }

  // The JSON text exactly as the core passed it.
  std::string_view raw() const noexcept { return raw_; }

 private:
  const nlohmann::json* find(std::string_view key) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  static SettingsError wrong_type(std::string_view key, const char* expected, const nlohmann::json& v) {
    return SettingsError("setting \"" + std::string(key) + "\" must be " + expected + ", not " + v.type_name());
  }

  std::string raw_;
  nlohmann::json json_;
};

// ---------------------------------------------------------------------------------------------
// Recording (ABI 1.5): one reference to a recorded response (Request::record), which other
// requests can follow live or replay later (Request::follow). Copying adds a reference, the
// destructor gives it back; any thread, any time (also after the request that recorded it ended).
// A default-constructed (or moved-from) Recording is empty: `if (rec)` tells.
// ---------------------------------------------------------------------------------------------
class Recording {
 public:
  Recording() noexcept = default;
  // Adopts one reference returned by the host (NULL gives an empty Recording).
  Recording(const glmp_host_api* api, glmp_recording_host_ptr* handle) noexcept : api_(api), handle_(handle) {}
  Recording(const Recording& other) noexcept : api_(other.api_), handle_(other.handle_) {
    if (handle_ != nullptr) api_->recording_retain(handle_);
  }
  Recording(Recording&& other) noexcept : api_(other.api_), handle_(std::exchange(other.handle_, nullptr)) {}
  Recording& operator=(Recording other) noexcept {
    std::swap(api_, other.api_);
    std::swap(handle_, other.handle_);
    return *this;
  }
  ~Recording() {
    if (handle_ != nullptr) api_->recording_release(handle_);
  }
  explicit operator bool() const noexcept { return handle_ != nullptr; }
  bool operator==(const Recording& other) const noexcept { return handle_ == other.handle_; }

  // The state and figures now (an empty Recording reports State::Failed).
  RecordingInfo info() const noexcept {
    RecordingInfo r;
    if (handle_ == nullptr) return r;
    glmp_recording_info raw{};
    raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
    api_->recording_info(handle_, &raw);
    r.state = static_cast<RecordingInfo::State>(raw.state);
    r.status = raw.status;
    r.streamed = raw.streamed != 0;
    r.ended_normally = raw.ended_normally != 0;
    r.replayable = raw.replayable != 0;
    r.body_bytes = raw.body_bytes;
    r.started_ms = raw.started_ms;
    r.finished_ms = raw.finished_ms;
    r.followers = raw.followers;
    r.usage.seen = raw.usage_seen != 0;
    r.usage.input_tokens = raw.input_tokens;
    r.usage.output_tokens = raw.output_tokens;
    r.usage.cache_read_input_tokens = raw.cache_read_input_tokens;
    r.usage.cache_creation_input_tokens = raw.cache_creation_input_tokens;
    r.usage.total_tokens = raw.total_tokens;
    return r;
  }

  // Escape hatch: the raw handle (still owned by this object).
  glmp_recording_host_ptr* handle() const noexcept { return handle_; }

 private:
  const glmp_host_api* api_ = nullptr;
  glmp_recording_host_ptr* handle_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Request: a view of one request in flight, valid during the hook or route handler it is passed to.
// Not copyable; never store it (nor the host handle inside it) beyond that call. Which accessors
// are meaningful in which hook is stated per group (and in plugin_api.h).
// ---------------------------------------------------------------------------------------------
class Request {
 public:
  Request(const glmp_host_api* api, glmp_request_host_ptr* handle) noexcept : api_(api), handle_(handle) {}
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // --- request line and route (any hook) ---
  std::string_view id() const { return get(api_->request_id); }  // X-Request-ID
  std::string_view method() const { return get(api_->request_method); }
  std::string_view path() const { return get(api_->request_path); }    // without the query
  std::string_view query() const { return get(api_->request_query); }  // raw, without '?'
  Flavour flavour() const { return static_cast<Flavour>(api_->request_flavour(handle_)); }
  bool streaming() const { return api_->request_streaming(handle_) != 0; }  // top-level "stream": true
  std::string_view model() const { return get(api_->request_model); }       // "" if none
  // on_request only: the model sent upstream (the core rewrites the body's top-level "model").
  void set_model(std::string_view model) { api_->request_set_model(handle_, detail::ptr(model), model.size()); }

  // --- request headers (on_request: the headers that will go upstream) ---
  // The index-th value of `name` (case-insensitive), or nullopt.
  std::optional<std::string_view> header(std::string_view name, std::size_t index = 0) const {
    const char* value = nullptr;
    std::size_t len = 0;
    if (api_->request_header(handle_, detail::ptr(name), name.size(), index, &value, &len) == 0) return std::nullopt;
    return detail::view(value, len);
  }
  // The index-th value of `name` exactly as the client sent it (ABI 1.1), or nullopt. Unlike
  // header(), this sees what the core never forwards: the client's own credentials
  // (Authorization, x-api-key), hop-by-hop headers, Host. Read-only; nullopt on a 1.0 host.
  std::optional<std::string_view> client_header(std::string_view name, std::size_t index = 0) const {
    if (!GLMP_DETAIL_HOST_HAS(api_, request_client_header, 1u)) return std::nullopt;
    const char* value = nullptr;
    std::size_t len = 0;
    if (api_->request_client_header(handle_, detail::ptr(name), name.size(), index, &value, &len) == 0)
      return std::nullopt;
    return detail::view(value, len);
  }
  // Replaces every value of `name`.
  void set_header(std::string_view name, std::string_view value) {
    api_->request_set_header(handle_, detail::ptr(name), name.size(), detail::ptr(value), value.size());
  }
  void remove_header(std::string_view name) { api_->request_remove_header(handle_, detail::ptr(name), name.size()); }

  // --- request body (on_request; "" in on_request_headers, which runs before the body is read) ---
  std::string_view body() const { return get(api_->request_body); }
  // The core copies the body and recomputes Content-Length.
  void set_body(std::string_view body) { api_->request_set_body(handle_, detail::ptr(body), body.size()); }
  // The body's top-level member `name` as raw JSON text, exactly as the client wrote it (ABI 1.4):
  // a string keeps its quotes and escapes ("\"glm-4.7\""), a number is its digits ("64"), an
  // object its braces. The core found it when it scanned the body, so nothing is parsed here:
  // parse just this value when you need it (nlohmann::json::parse(*raw)). A key given twice
  // yields its last value; a nested member (a "model" inside "messages") is never returned.
  // nullopt when the body is not a JSON object or has no such member, in on_request_headers
  // (no body yet), and on a host older than ABI 1.4.
  std::optional<std::string_view> body_member(std::string_view name) const {
    if (!GLMP_DETAIL_HOST_HAS(api_, request_body_member, 4u)) return std::nullopt;
    const char* value = nullptr;
    std::size_t len = 0;
    if (api_->request_body_member(handle_, detail::ptr(name), name.size(), &value, &len) == 0) return std::nullopt;
    return detail::view(value, len);
  }

  // --- per-request attributes: how plugins talk to each other ("auth.key_id", ...) ---
  std::optional<std::string_view> attribute(std::string_view name) const {
    const char* value = nullptr;
    std::size_t len = 0;
    if (api_->get_attribute(handle_, detail::ptr(name), name.size(), &value, &len) == 0) return std::nullopt;
    return detail::view(value, len);
  }
  void set_attribute(std::string_view name, std::string_view value) {
    api_->set_attribute(handle_, detail::ptr(name), name.size(), detail::ptr(value), value.size());
  }

  // --- response (on_response_headers, on_response_body, on_complete) ---
  int response_status() const { return api_->response_status(handle_); }  // 0 before it is known
  std::optional<std::string_view> response_header(std::string_view name, std::size_t index = 0) const {
    const char* value = nullptr;
    std::size_t len = 0;
    if (api_->response_header(handle_, detail::ptr(name), name.size(), index, &value, &len) == 0) return std::nullopt;
    return detail::view(value, len);
  }
  // In on_request: adds the header to whatever response this request gets. In
  // on_response_headers: edits the upstream's headers before they are sent.
  void set_response_header(std::string_view name, std::string_view value) {
    api_->response_set_header(handle_, detail::ptr(name), name.size(), detail::ptr(value), value.size());
  }
  void remove_response_header(std::string_view name) {
    api_->response_remove_header(handle_, detail::ptr(name), name.size());
  }
  // Final in on_complete.
  Usage usage() const {
    glmp_usage raw{};
    raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
    api_->response_usage(handle_, &raw);
    Usage u;
    u.seen = raw.seen != 0;
    u.input_tokens = raw.input_tokens;
    u.output_tokens = raw.output_tokens;
    u.cache_read_input_tokens = raw.cache_read_input_tokens;
    u.cache_creation_input_tokens = raw.cache_creation_input_tokens;
    u.total_tokens = raw.total_tokens;
    return u;
  }

  // --- answering (on_request, then return Status::Responded; or in a route handler) ---
  // A complete response; the core copies the body.
  void respond(int status, std::string_view content_type, std::string_view body) {
    answer_ = Answer::Responded;
    api_->respond(handle_, status, detail::ptr(content_type), content_type.size(), detail::ptr(body), body.size());
  }
  // An error shaped for the caller's API flavour. type "" = the flavour's default for the status.
  void respond_error(int status, std::string_view message, std::string_view type = {}) {
    answer_ = Answer::Responded;
    api_->respond_error(handle_, status, detail::ptr(type), type.size(), detail::ptr(message), message.size());
  }
  // A streamed response: begin once, write any number of times (each write is flushed), end once.
  void stream_begin(int status, std::string_view content_type) {
    answer_ = Answer::Streaming;
    api_->stream_begin(handle_, status, detail::ptr(content_type), content_type.size());
  }
  // false when the client has gone (stop writing, still call stream_end).
  bool stream_write(std::string_view data) {
    return api_->stream_write(handle_, detail::ptr(data), data.size()) == 0;
  }
  void stream_end() {
    answer_ = Answer::Responded;
    api_->stream_end(handle_);
  }
  // True once this view answered (respond, respond_error or stream_begin).
  bool answered() const noexcept { return answer_ != Answer::None; }

  // --- recordings (ABI 1.5; on_request unless stated). See plugin_api.h for the full rules. ---
  // True when the host has them (ABI 1.5 or later); on an older host record() is empty and
  // follow() false.
  bool has_recordings() const noexcept { return detail::host_has_recordings(api_); }
  // Records this request's response as it is relayed (status, headers, body bytes as the upstream
  // sent them), keeping up to max_bytes of body for replay and late followers. Every caller of one
  // request gets the same recording. Empty when the request will not be relayed from an upstream.
  Recording record(std::size_t max_bytes) {
    if (!has_recordings()) return {};
    return Recording(api_, api_->request_record(handle_, max_bytes));
  }
  // Answers this request from `recording`: replayed at once when it is complete, followed live
  // while it is relayed. `headers` are added (replacing same-named ones) only when the answer does
  // come from the recording. fallback: when the recorded request fails before its head (connection
  // failure, timeout, 429, 5xx), go upstream on our own instead. True: return Status::Responded.
  // False: it cannot be followed (failed, no longer replayable, complete with a non-2xx status);
  // nothing changed.
  bool follow(const Recording& recording, Origin origin, bool fallback = false,
              const std::vector<std::pair<std::string_view, std::string_view>>& headers = {}) {
    if (!recording || !has_recordings()) return false;
    std::vector<glmp_header> raw;
    raw.reserve(headers.size());
    for (const auto& [name, value] : headers)
      raw.push_back(glmp_header{detail::ptr(name), name.size(), detail::ptr(value), value.size()});
    const int rc = api_->request_follow(handle_, recording.handle(), static_cast<glmp_origin>(origin),
                                        fallback ? GLMP_FOLLOW_FALLBACK : 0u, raw.empty() ? nullptr : raw.data(),
                                        raw.size());
    if (rc != 0) return false;
    answer_ = Answer::Responded;
    return true;
  }
  // Any hook: where the response comes (on_complete: came) from. Upstream on an older host.
  Origin origin() const {
    if (!GLMP_DETAIL_HOST_HAS(api_, response_origin, 5u)) return Origin::Upstream;
    return static_cast<Origin>(api_->response_origin(handle_));
  }
  // on_request or on_complete: the usage reported to on_complete, the access log and metrics.
  void set_usage(const Usage& u) {
    if (!GLMP_DETAIL_HOST_HAS(api_, response_set_usage, 5u)) return;
    glmp_usage raw{};
    raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
    raw.seen = u.seen ? 1 : 0;
    raw.input_tokens = u.input_tokens;
    raw.output_tokens = u.output_tokens;
    raw.cache_read_input_tokens = u.cache_read_input_tokens;
    raw.cache_creation_input_tokens = u.cache_creation_input_tokens;
    raw.total_tokens = u.total_tokens;
    api_->response_set_usage(handle_, &raw);
  }
  // Whether quota plugins should charge this response's usage. set_charge(false) only affects a
  // response served from a recording (origin() != Upstream).
  bool charge() const {
    if (!GLMP_DETAIL_HOST_HAS(api_, response_charge, 5u)) return true;
    return api_->response_charge(handle_) != 0;
  }
  void set_charge(bool charge) {
    if (GLMP_DETAIL_HOST_HAS(api_, response_set_charge, 5u)) api_->response_set_charge(handle_, charge ? 1 : 0);
  }
  // The body as it will go upstream (the core's model and stream_options edits applied); body()
  // on an older host.
  std::string_view upstream_body() const {
    if (!GLMP_DETAIL_HOST_HAS(api_, request_upstream_body, 5u)) return body();
    return get(api_->request_upstream_body);
  }
  // The upstream body as canonical JSON (keys sorted at every level, no insignificant whitespace,
  // numbers as written, strings in one escaping), without the top-level members in `exclude`.
  // nullopt when the body is not JSON, or on an older host.
  std::optional<std::string> canonical_body(const std::vector<std::string>& exclude = {}) const {
    if (!GLMP_DETAIL_HOST_HAS(api_, request_canonical_body, 5u)) return std::nullopt;
    std::vector<glmp_string> raw;
    raw.reserve(exclude.size());
    for (const auto& name : exclude) raw.push_back(glmp_string{detail::ptr(name), name.size()});
    std::string out;
    detail::Sink<std::string> sink{&out, nullptr};
    const int ok = api_->request_canonical_body(
        handle_, raw.empty() ? nullptr : raw.data(), raw.size(),
        [](void* ud, const char* data, std::size_t len) {
          static_cast<detail::Sink<std::string>*>(ud)->guarded([&](std::string& o) { o.assign(data, len); });
        },
        &sink);
    sink.rethrow();
    if (ok == 0) return std::nullopt;
    return out;
  }
  // The upstream call waits this long after the request hooks (at most 10 s), without a thread.
  void defer_upstream(std::chrono::milliseconds delay) {
    if (!GLMP_DETAIL_HOST_HAS(api_, request_defer_upstream, 5u) || delay.count() <= 0) return;
    api_->request_defer_upstream(handle_, static_cast<std::uint32_t>(std::min<std::int64_t>(delay.count(), 10000)));
  }

  // --- request timings (ABI 1.6; any hook). See plugin_api.h. ---
  bool has_timings() const noexcept { return detail::host_has_timings(api_); }
  // The request's course so far; nullopt on an older host.
  std::optional<Profile> profile() const {
    if (!has_timings()) return std::nullopt;
    glmp_request_profile raw{};
    raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
    if (api_->request_profile(handle_, &raw) == 0) return std::nullopt;
    Profile p;
    p.status = raw.status;
    p.upstream_status = raw.upstream_status;
    p.started_unix_us = raw.started_unix_us;
    p.elapsed_ns = raw.elapsed_ns;
    p.ttfb_ns = raw.ttfb_ns;
    p.upstream_ns = raw.upstream_ns;
    p.bytes_in = raw.bytes_in;
    p.bytes_out = raw.bytes_out;
    p.route = std::string_view(raw.route != nullptr ? raw.route : "", raw.route != nullptr ? raw.route_len : 0);
    p.error = std::string_view(raw.error != nullptr ? raw.error : "", raw.error != nullptr ? raw.error_len : 0);
    return p;
  }
  // The timed spans so far, in the order they started, into `out` (cleared first; its capacity is
  // reused, so a caller that keeps its vector allocates nothing once it is warm). Empty on an
  // older host. (No thread_local here: it would keep the plugin's library from unloading.)
  void timings(std::vector<Timing>& out) const {
    out.clear();
    std::array<glmp_timing, 32> stack;
    std::vector<glmp_timing> heap;
    const std::span<const glmp_timing> raw = raw_timings(stack, heap);
    out.reserve(raw.size());
    for (const glmp_timing& t : raw) {
      out.push_back(Timing{std::string_view(t.name != nullptr ? t.name : "", t.name != nullptr ? t.name_len : 0),
                           std::string_view(t.hook != nullptr ? t.hook : "", t.hook != nullptr ? t.hook_len : 0),
                           t.start_ns, t.dur_ns});
    }
  }
  // The same spans as the C structs, read in place: into `stack`, or into `heap` when there are
  // more (so a usual chain costs no allocation). Strings valid during the hook. Empty on an older
  // host.
  std::span<const glmp_timing> raw_timings(std::span<glmp_timing> stack, std::vector<glmp_timing>& heap) const {
    if (!has_timings()) return {};
    const std::size_t n = api_->request_timings(handle_, stack.data(), stack.size());
    if (n <= stack.size()) return stack.first(n);
    heap.resize(n);
    const std::size_t again = api_->request_timings(handle_, heap.data(), heap.size());
    return std::span<const glmp_timing>(heap.data(), std::min(again, heap.size()));
  }
  // A route registered with Access::KeyOrAdmin: true when the caller sent the admin token.
  bool is_admin() const {
    return GLMP_DETAIL_HOST_HAS(api_, request_is_admin, 6u) && api_->request_is_admin(handle_) != 0;
  }

  // Escape hatch: the raw C handles (for host functions added in later ABI minors).
  const glmp_host_api* api() const noexcept { return api_; }
  glmp_request_host_ptr* handle() const noexcept { return handle_; }

 private:
  friend void detail::route_trampoline(glmp_config_plugin_ptr*, glmp_request_host_ptr*, void*) noexcept;
  enum class Answer : unsigned char { None, Streaming, Responded };

  std::string_view get(void (*fn)(glmp_request_host_ptr*, const char**, std::size_t*)) const {
    const char* data = nullptr;
    std::size_t len = 0;
    fn(handle_, &data, &len);
    return detail::view(data, len);
  }

  const glmp_host_api* api_;
  glmp_request_host_ptr* handle_;
  Answer answer_ = Answer::None;
};

// ---------------------------------------------------------------------------------------------
// Store: the core's state store ([store] in the config), reached with host.store(). ABI 1.1.
//
// Shared by every plugin of the proxy and, with the Redis backend, by every replica; it survives
// hot reloads and (sqlite, redis) restarts, so it is where state that must outlive the plugin
// object goes. Three kinds of data:
//   - records: small JSON documents (<= 1 MiB) under a namespace and a key: get, put, remove,
//     list (by key prefix, in key order, paged);
//   - sliding windows: amounts added to time buckets of bucket_ms(); a window's sum counts the
//     buckets whose start is > now - window, so an amount ages out between window - bucket_ms()
//     and window after it was added (never later);
//   - lifetime counters: add and get.
// Names (namespaces, keys, window and counter names) are 1..512 bytes; prefix them with the
// plugin's name ("usage_meter:...") since the store is shared. Times are Unix milliseconds; now_ms
// = 0 (the default) means the host's clock; pass an explicit time only to replay events or test.
//
// Copyable, cheap (two pointers); valid as long as the Host it came from. Every call may be made
// from any thread, in the constructor, any hook or a route handler, and may block on the backend
// (bounded by [store] timeout). Calls never throw for store failures: they return a StoreStatus
// (see the enum). They throw only std::bad_alloc while copying results. Results are copies: they
// stay valid after the call. On a host without the store (ABI 1.0 table) every call returns
// Unavailable and bucket_ms() returns 0.
// ---------------------------------------------------------------------------------------------
class Store {
 public:
  // A store with no host: every call returns Unavailable.
  Store() noexcept = default;
  // Escape hatch for raw handles; plugins use host.store().
  Store(const glmp_host_api* api, glmp_instance_host_ptr* instance) noexcept : api_(api), instance_(instance) {}

  // True when the host has the store functions (ABI 1.1 or later). Plugins rarely need this: the
  // calls answer Unavailable otherwise.
  bool available() const noexcept { return detail::host_has_store(api_); }

  // --- records ---

  // Reads record ns/key into `value` (replaced; cleared unless the status is Ok or Degraded).
  // Ok; NotFound when absent; Degraded with a possibly stale copy; Unavailable; Invalid. Reusing
  // `value` across calls saves an allocation.
  StoreStatus get(std::string_view ns, std::string_view key, std::string& value) const {
    value.clear();
    if (!GLMP_DETAIL_HOST_HAS(api_, store_get, 1u)) return StoreStatus::Unavailable;
    detail::Sink<std::string> sink{&value, nullptr};
    const int rc = api_->store_get(
        instance_, detail::ptr(ns), ns.size(), detail::ptr(key), key.size(),
        [](void* user, const char* data, std::size_t len) noexcept {
          static_cast<detail::Sink<std::string>*>(user)->guarded([&](std::string& out) { out.assign(data, len); });
        },
        &sink);
    sink.rethrow();
    const StoreStatus status = detail::store_status(rc);
    if (status != StoreStatus::Ok && status != StoreStatus::Degraded) value.clear();
    return status;
  }
  // The same, returning the status and the JSON text together.
  StoreResult<std::string> get(std::string_view ns, std::string_view key) const {
    StoreResult<std::string> result;
    result.status = get(ns, key, result.value);
    return result;
  }

  // Creates or replaces record ns/key. `json` must be one JSON document (Invalid otherwise).
  // Unavailable when the write failed (it was not stored).
  StoreStatus put(std::string_view ns, std::string_view key, std::string_view json) const {
    if (!GLMP_DETAIL_HOST_HAS(api_, store_put, 1u)) return StoreStatus::Unavailable;
    return detail::store_status(
        api_->store_put(instance_, detail::ptr(ns), ns.size(), detail::ptr(key), key.size(), detail::ptr(json), json.size()));
  }

  // Deletes record ns/key: Ok, or NotFound when it did not exist.
  StoreStatus remove(std::string_view ns, std::string_view key) const {
    if (!GLMP_DETAIL_HOST_HAS(api_, store_delete, 1u)) return StoreStatus::Unavailable;
    return detail::store_status(api_->store_delete(instance_, detail::ptr(ns), ns.size(), detail::ptr(key), key.size()));
  }

  // Up to `limit` (1..1000) records of `ns` whose key starts with `prefix` and sorts after `after`
  // ("" = from the start), in key order. page.more is true when another page follows: call again
  // with after = page.records.back().key.
  StorePage list(std::string_view ns, std::string_view prefix = {}, std::string_view after = {},
                 std::size_t limit = 100) const {
    StorePage page;
    if (!GLMP_DETAIL_HOST_HAS(api_, store_list, 1u)) return page;
    detail::Sink<std::vector<StoreRecord>> sink{&page.records, nullptr};
    int more = 0;
    const int rc = api_->store_list(
        instance_, detail::ptr(ns), ns.size(), detail::ptr(prefix), prefix.size(), detail::ptr(after), after.size(),
        limit,
        [](void* user, const char* key, std::size_t key_len, const char* value, std::size_t value_len) noexcept {
          static_cast<detail::Sink<std::vector<StoreRecord>>*>(user)->guarded([&](std::vector<StoreRecord>& out) {
            out.push_back(StoreRecord{std::string(detail::view(key, key_len)), std::string(detail::view(value, value_len))});
          });
        },
        &sink, &more);
    sink.rethrow();
    page.status = detail::store_status(rc);
    if (page.status != StoreStatus::Ok && page.status != StoreStatus::Degraded) {
      page.records.clear();
      page.more = false;
    } else {
      page.more = more != 0;
    }
    return page;
  }

  // --- sliding windows ---

  // Adds `amount` (may be negative) to the bucket holding now_ms in window counter `name`, and
  // returns the sum over `window` after the add, computed atomically with it (across replicas
  // with Redis): the way to enforce a quota without a race. `window` must be > 0 and <= [store]
  // max_window (Invalid otherwise). Degraded: nothing was added and the sum reads 0.
  StoreResult<std::int64_t> window_add(std::string_view name, std::int64_t amount, std::chrono::milliseconds window,
                                       std::int64_t now_ms = 0) const {
    StoreResult<std::int64_t> result;
    if (!GLMP_DETAIL_HOST_HAS(api_, window_add, 1u)) return result;
    std::int64_t sum = 0;
    result.status = detail::store_status(
        api_->window_add(instance_, detail::ptr(name), name.size(), amount, window.count(), now_ms, &sum));
    result.value = number(result.status, sum);
    return result;
  }

  // The sum over `window` ending at now_ms (0 for a window never added to).
  StoreResult<std::int64_t> window_sum(std::string_view name, std::chrono::milliseconds window,
                                       std::int64_t now_ms = 0) const {
    StoreResult<std::int64_t> result;
    if (!GLMP_DETAIL_HOST_HAS(api_, window_sum, 1u)) return result;
    std::int64_t sum = 0;
    result.status =
        detail::store_status(api_->window_sum(instance_, detail::ptr(name), name.size(), window.count(), now_ms, &sum));
    result.value = number(result.status, sum);
    return result;
  }

  // The window's non-empty buckets, oldest first (e.g. to tell a client when its usage ages out:
  // the oldest bucket leaves the window at start_ms + window).
  StoreResult<std::vector<WindowBucket>> window_buckets(std::string_view name, std::chrono::milliseconds window,
                                                        std::int64_t now_ms = 0) const {
    StoreResult<std::vector<WindowBucket>> result;
    if (!GLMP_DETAIL_HOST_HAS(api_, window_buckets, 1u)) return result;
    detail::Sink<std::vector<WindowBucket>> sink{&result.value, nullptr};
    const int rc = api_->window_buckets(
        instance_, detail::ptr(name), name.size(), window.count(), now_ms,
        [](void* user, std::int64_t start_ms, std::int64_t amount) noexcept {
          static_cast<detail::Sink<std::vector<WindowBucket>>*>(user)->guarded(
              [&](std::vector<WindowBucket>& out) { out.push_back(WindowBucket{start_ms, amount}); });
        },
        &sink);
    sink.rethrow();
    result.status = detail::store_status(rc);
    if (result.status != StoreStatus::Ok && result.status != StoreStatus::Degraded) result.value.clear();
    return result;
  }

  // The bucket size of window counters in milliseconds ([store] bucket); 0 without a store.
  std::int64_t bucket_ms() const noexcept {
    return GLMP_DETAIL_HOST_HAS(api_, store_bucket_ms, 1u) ? api_->store_bucket_ms(instance_) : 0;
  }

  // --- lifetime counters ---

  // Adds `amount` (may be negative) to counter `name` and returns its value after the add
  // (atomically with it). Degraded: nothing was added and the value reads 0.
  StoreResult<std::int64_t> counter_add(std::string_view name, std::int64_t amount = 1) const {
    StoreResult<std::int64_t> result;
    if (!GLMP_DETAIL_HOST_HAS(api_, counter_add, 1u)) return result;
    std::int64_t value = 0;
    result.status = detail::store_status(api_->counter_add(instance_, detail::ptr(name), name.size(), amount, &value));
    result.value = number(result.status, value);
    return result;
  }

  // The counter's value (0 for a counter never added to).
  StoreResult<std::int64_t> counter_get(std::string_view name) const {
    StoreResult<std::int64_t> result;
    if (!GLMP_DETAIL_HOST_HAS(api_, counter_get, 1u)) return result;
    std::int64_t value = 0;
    result.status = detail::store_status(api_->counter_get(instance_, detail::ptr(name), name.size(), &value));
    result.value = number(result.status, value);
    return result;
  }

  // Escape hatch: the raw C handles.
  const glmp_host_api* api() const noexcept { return api_; }
  glmp_instance_host_ptr* instance() const noexcept { return instance_; }

 private:
  // Only Ok and Degraded carry a number; anything else reads 0 whatever the host wrote.
  static std::int64_t number(StoreStatus status, std::int64_t value) noexcept {
    return status == StoreStatus::Ok || status == StoreStatus::Degraded ? value : 0;
  }

  const glmp_host_api* api_ = nullptr;
  glmp_instance_host_ptr* instance_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Metrics: Counter, Gauge, Histogram. ABI 1.1.
//
// Created with host.counter() / host.gauge() / host.histogram() in the plugin's constructor, and
// served by the core at GET /metrics next to its own. Each is one child (one label set) of a
// Prometheus family. The handle is two or three pointers: copy it freely, keep it as a member.
// The metric itself is core-owned and lives until the process exits, also across reloads (a new
// plugin object asking for the same name and labels gets the same metric, so its values carry
// on).
//
// Updates may be called from any thread, concurrently; they are lock-free, allocation-free and
// never throw. A null handle (default-constructed, created outside the constructor, refused by
// the host, or from a host without metrics) is valid: every update on it does nothing, and
// valid() / operator bool tell it apart.
// ---------------------------------------------------------------------------------------------

// Only goes up: a count of events.
class Counter {
 public:
  constexpr Counter() noexcept = default;
  // Adds 1.
  void inc() const noexcept { add(1.0); }
  // Adds `value` (>= 0; the core ignores negative values).
  void add(double value) const noexcept {
    if (add_ != nullptr) add_(handle_, value);
  }
  bool valid() const noexcept { return handle_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }
  glmp_metric_host_ptr* handle() const noexcept { return handle_; }

 private:
  friend class Host;
  Counter(glmp_metric_host_ptr* handle, void (*add_fn)(glmp_metric_host_ptr*, double)) noexcept
      : handle_(handle), add_(handle != nullptr ? add_fn : nullptr) {}

  glmp_metric_host_ptr* handle_ = nullptr;
  void (*add_)(glmp_metric_host_ptr*, double) = nullptr;
};

// Goes up and down: a current level.
class Gauge {
 public:
  constexpr Gauge() noexcept = default;
  void set(double value) const noexcept {
    if (set_ != nullptr) set_(handle_, value);
  }
  // Adds `value` (may be negative).
  void add(double value) const noexcept {
    if (add_ != nullptr) add_(handle_, value);
  }
  void inc(double value = 1.0) const noexcept { add(value); }
  void dec(double value = 1.0) const noexcept { add(-value); }
  bool valid() const noexcept { return handle_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }
  glmp_metric_host_ptr* handle() const noexcept { return handle_; }

 private:
  friend class Host;
  Gauge(glmp_metric_host_ptr* handle, void (*set_fn)(glmp_metric_host_ptr*, double),
        void (*add_fn)(glmp_metric_host_ptr*, double)) noexcept
      : handle_(handle), set_(handle != nullptr ? set_fn : nullptr), add_(handle != nullptr ? add_fn : nullptr) {}

  glmp_metric_host_ptr* handle_ = nullptr;
  void (*set_)(glmp_metric_host_ptr*, double) = nullptr;
  void (*add_)(glmp_metric_host_ptr*, double) = nullptr;
};

// A distribution: counts of observations per bucket, their sum and count.
class Histogram {
 public:
  constexpr Histogram() noexcept = default;
  void observe(double value) const noexcept {
    if (observe_ != nullptr) observe_(handle_, value);
  }
  bool valid() const noexcept { return handle_ != nullptr; }
  explicit operator bool() const noexcept { return valid(); }
  glmp_metric_host_ptr* handle() const noexcept { return handle_; }

 private:
  friend class Host;
  Histogram(glmp_metric_host_ptr* handle, void (*observe_fn)(glmp_metric_host_ptr*, double)) noexcept
      : handle_(handle), observe_(handle != nullptr ? observe_fn : nullptr) {}

  glmp_metric_host_ptr* handle_ = nullptr;
  void (*observe_)(glmp_metric_host_ptr*, double) = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Host: a cheap copyable handle to the core for one plugin instance. Valid from construction of
// the plugin until its destruction (don't keep copies beyond that, e.g. in detached threads).
// ---------------------------------------------------------------------------------------------
class Host {
 public:
  // Logs under the plugin's name. Any thread, any time; never throws.
  void log(LogLevel level, std::string_view message) const noexcept {
    state_->log(static_cast<glmp_log_level>(level), message);
  }
  void log_trace(std::string_view message) const noexcept { log(LogLevel::Trace, message); }
  void log_debug(std::string_view message) const noexcept { log(LogLevel::Debug, message); }
  void log_info(std::string_view message) const noexcept { log(LogLevel::Info, message); }
  void log_warning(std::string_view message) const noexcept { log(LogLevel::Warning, message); }
  void log_error(std::string_view message) const noexcept { log(LogLevel::Error, message); }

  // Serves METHOD PATH with `handler` while this plugin's chain is live. method "" = any; a path
  // ending in '*' is a prefix. Only from the plugin's constructor (the ABI allows it in
  // on_config_new only): later calls throw std::logic_error. Throws std::runtime_error when the
  // host refuses the route (a clash with a core route, a path not starting with '/'); escaping
  // the constructor, that refuses the configuration. A clash with another plugin's route is
  // reported by the core when it builds the chain.
  // The handler is kept until the plugin is destroyed; it may capture `this`.
  void register_route(std::string_view method, std::string_view path, Access access, RouteHandler handler) const {
    if (!state_->constructing) {
      throw std::logic_error("register_route is allowed only in the plugin's constructor (on_config_new)");
    }
    if (!handler) throw std::invalid_argument("register_route: empty handler");
    state_->routes.push_back(std::make_unique<detail::Route>(detail::Route{std::move(handler), state_}));
    detail::Route* route = state_->routes.back().get();
    const int rc = state_->api->register_route(state_->instance, detail::ptr(method), method.size(),
                                               detail::ptr(path), path.size(),
                                               static_cast<glmp_route_access>(access), &detail::route_trampoline,
                                               route);
    if (rc != 0) {
      state_->routes.pop_back();
      throw std::runtime_error("the host refused route " + std::string(method.empty() ? "*" : method) + " " +
                               std::string(path) + " (it clashes with a core route, or the path is invalid)");
    }
  }

  // The core's state store (see Store). Any thread, any time while the plugin lives; on a host
  // without a store every call returns StoreStatus::Unavailable.
  Store store() const noexcept { return Store(state_->api, state_->instance); }

  // Metrics (see Counter / Gauge / Histogram). Create them in the constructor only (on_config_new);
  // later calls log a warning and return a null handle. `name` must be a Prometheus metric name
  // and should start with "glmp_<plugin>_" (counters end in "_total"); `help` is its HELP text;
  // `labels` are this child's label names and values ({{"plugin", "my_plugin"}}). The core refuses
  // (logs why and returns a null handle for) an invalid name or label, and a name already taken
  // by another kind or help text. Asking again for the same name and labels returns the same
  // metric. Never throw for a refusal; a null handle makes every update a no-op.
  Counter counter(std::string_view name, std::string_view help, const std::vector<Label>& labels = {}) const {
    glmp_metric_host_ptr* m = new_metric(GLMP_METRIC_COUNTER, name, help, labels, {});
    return m != nullptr ? Counter(m, state_->api->metric_add) : Counter();
  }
  Gauge gauge(std::string_view name, std::string_view help, const std::vector<Label>& labels = {}) const {
    glmp_metric_host_ptr* m = new_metric(GLMP_METRIC_GAUGE, name, help, labels, {});
    return m != nullptr ? Gauge(m, state_->api->metric_set, state_->api->metric_add) : Gauge();
  }
  // `buckets`: the upper bounds, strictly increasing ({} = the core's defaults, 5 ms to 60 s, for
  // durations in seconds).
  Histogram histogram(std::string_view name, std::string_view help, const std::vector<Label>& labels = {},
                      const std::vector<double>& buckets = {}) const {
    glmp_metric_host_ptr* m = new_metric(GLMP_METRIC_HISTOGRAM, name, help, labels, buckets);
    return m != nullptr ? Histogram(m, state_->api->metric_observe) : Histogram();
  }

  // ABI 1.7: every sample of every metric family whose name starts with `prefix` ("" = all: the
  // core's, the store's, every plugin's), as GET /metrics would show them now. Any thread while the
  // plugin lives, but not from a hook that runs on an event loop: it refreshes gauges, takes the
  // registry's locks and allocates (a plugin's own thread or a route handler, a few times a second
  // at most).
  // Empty on an older host (see has_metrics_collect).
  std::vector<MetricSample> metrics(std::string_view prefix = {}) const {
    std::vector<MetricSample> out;
    if (!has_metrics_collect()) return out;
    detail::Sink<std::vector<MetricSample>> sink{&out, nullptr};
    state_->api->metrics_collect(
        state_->instance, detail::ptr(prefix), prefix.size(),
        [](void* user, const glmp_metric_sample* s) {
          static_cast<detail::Sink<std::vector<MetricSample>>*>(user)->guarded([&](std::vector<MetricSample>& v) {
            MetricSample m;
            m.family.assign(s->family, s->family_len);
            m.name.assign(s->name, s->name_len);
            m.kind = static_cast<MetricKind>(s->kind);
            m.value = s->value;
            for (std::size_t i = 0; i < s->label_count; ++i)
              m.labels.emplace_back(std::string(s->labels[i].name, s->labels[i].name_len),
                                    std::string(s->labels[i].value, s->labels[i].value_len));
            v.push_back(std::move(m));
          });
        },
        &sink);
    sink.rethrow();
    return out;
  }
  bool has_metrics_collect() const noexcept { return GLMP_DETAIL_HOST_HAS(state_->api, metrics_collect, 7u); }

  // True when the host has recordings and request keys (ABI 1.5): Request::record/follow,
  // canonical_body, defer_upstream. A plugin that needs them refuses an older host here.
  bool has_recordings() const noexcept { return detail::host_has_recordings(state_->api); }

  // The name given to GLMP_PLUGIN.
  std::string_view plugin_name() const noexcept { return state_->plugin_name; }
  // The host's ABI version (>= the plugin's; a higher minor may offer more host functions).
  std::uint32_t host_abi_major() const noexcept { return state_->api->abi_major; }
  std::uint32_t host_abi_minor() const noexcept { return state_->api->abi_minor; }

  // Escape hatch: the raw C handles.
  const glmp_host_api* api() const noexcept { return state_->api; }
  glmp_instance_host_ptr* instance() const noexcept { return state_->instance; }

 private:
  template <class Info>
  friend struct detail::Adapter;
  explicit Host(detail::HostState* state) noexcept : state_(state) {}

  glmp_metric_host_ptr* new_metric(glmp_metric_kind kind, std::string_view name, std::string_view help,
                                   const std::vector<Label>& labels, const std::vector<double>& buckets) const {
    if (!state_->constructing) {
      state_->log(GLMP_LOG_WARNING, "metric " + std::string(name) +
                                        " created outside the plugin's constructor: its updates are ignored");
      return nullptr;
    }
    if (!detail::host_has_metrics(state_->api)) {
      state_->log(GLMP_LOG_WARNING, "the host (ABI " + std::to_string(state_->api->abi_major) + "." +
                                        std::to_string(state_->api->abi_minor) + ") has no plugin metrics: " +
                                        std::string(name) + " is not exported");
      return nullptr;
    }
    std::vector<glmp_label> raw;
    raw.reserve(labels.size());
    for (const Label& label : labels) {
      raw.push_back(glmp_label{detail::ptr(label.first), label.first.size(), detail::ptr(label.second), label.second.size()});
    }
    return state_->api->metric_new(state_->instance, kind, detail::ptr(name), name.size(), detail::ptr(help), help.size(),
                                   raw.empty() ? nullptr : raw.data(), raw.size(),
                                   buckets.empty() ? nullptr : buckets.data(), buckets.size());
  }

  detail::HostState* state_;
};

// ---------------------------------------------------------------------------------------------
// Plugin: derive from it, override the hooks you need, and name the class in GLMP_PLUGIN.
//
// The derived class must be constructible as T(const glmp::Settings&, glmp::Host) and pass the
// Host to this base. Hooks you don't override are not even called: GLMP_PLUGIN leaves them NULL
// in the descriptor. All hooks may run concurrently for different requests (see the top of the
// file); they run on the connection's thread and may block, always with a timeout.
// ---------------------------------------------------------------------------------------------
// Where hooks run (see GLMP_PLUGIN_NONBLOCKING in plugin_api.h): on_response_headers and
// on_response_body always run on an event loop and must only compute. on_request_headers,
// on_request and on_complete run on a worker thread unless the class declares
//   static constexpr bool nonblocking = true;
// (they then only compute and use the host API, store included) and every other plugin of the
// chain does too: the request then never leaves its loop.
class Plugin {
 public:
  explicit Plugin(Host host) noexcept : host_(host) {}
  virtual ~Plugin() = default;
  Plugin(const Plugin&) = delete;
  Plugin& operator=(const Plugin&) = delete;
  Plugin(Plugin&&) = delete;
  Plugin& operator=(Plugin&&) = delete;

  // ABI 1.2. In configured order, once the request headers are complete and BEFORE the core reads
  // the body; every plugin's on_request_headers runs before the first on_request. Method, path,
  // query, flavour, header(), client_header(), attributes and respond / respond_error are
  // available; body() is "" and streaming()/model() are not known yet (set_body and set_model
  // belong in on_request). Continue, or Responded after answering (the body is then never read and
  // no on_request runs); Error fails the request with a 500. on_complete runs for a plugin whose
  // on_request_headers ran, even if it refused or its on_request never ran. Default: Continue (and
  // not overriding it leaves the hook out of the descriptor).
  virtual Status on_request_headers(Request& /*request*/) { return Status::Continue; }

  // In configured order, before the upstream call. Continue, or Responded after answering with
  // request.respond / respond_error / stream_*; Error fails the request with a 500. Default: Continue.
  virtual Status on_request(Request& /*request*/) { return Status::Continue; }

  // In reverse order, when the upstream's response headers are known (edit them here).
  virtual void on_response_headers(Request& /*request*/) {}

  // In reverse order, for every chunk relayed to the client. `chunk` is host-owned: copy what you keep.
  virtual void on_response_body(Request& /*request*/, std::string_view /*chunk*/, bool /*end_of_stream*/) {}

  // In reverse order, exactly once for every request whose on_request or (when overridden)
  // on_request_headers ran (also when the client went away or the upstream failed). Usage is final
  // here.
  virtual void on_complete(Request& /*request*/) {}

  const Host& host() const noexcept { return host_; }

 private:
  Host host_;
};

// ---------------------------------------------------------------------------------------------
// Boundary: the C hooks behind GLMP_PLUGIN. Nothing below is API.
// ---------------------------------------------------------------------------------------------
namespace detail {

inline void route_trampoline(glmp_config_plugin_ptr* /*plugin*/, glmp_request_host_ptr* handle,
                             void* user_data) noexcept {
  // The route's own instance state travels in user_data, so the `plugin` argument is not needed.
  const Route* route = static_cast<const Route*>(user_data);
  const HostState& state = *route->state;
  Request request(state.api, handle);
  const char* failure = nullptr;
  try {
    route->handler(request);
  } catch (const std::exception& e) {
    state.log_failure("route handler", e.what());
    failure = "internal error in plugin route handler";
  } catch (...) {
    state.log_failure("route handler", nullptr);
    failure = "internal error in plugin route handler";
  }
  if (request.answer_ == Request::Answer::Streaming) {
    if (failure == nullptr) state.log(GLMP_LOG_ERROR, "route handler returned without ending its stream");
    state.api->stream_end(handle);  // the handler threw (or forgot) mid-stream: close it
  } else if (request.answer_ == Request::Answer::None) {
    if (failure == nullptr) {
      state.log(GLMP_LOG_ERROR, "route handler returned without answering");
      failure = "plugin route handler did not answer";
    }
    const std::string_view message(failure);
    state.api->respond_error(handle, 500, "", 0, message.data(), message.size());
  }
}

inline bool host_accepted(std::uint32_t host_abi_major, std::uint32_t host_abi_minor) noexcept {
  constexpr std::uint32_t plugin_major = GLMP_ABI_MAJOR;
  constexpr std::uint32_t plugin_minor = GLMP_ABI_MINOR;
  return host_abi_major == plugin_major && std::cmp_greater_equal(host_abi_minor, plugin_minor);
}

// Whether T declares its own override of a hook (so the descriptor gets a non-NULL pointer). When
// the name is not usable from here (overloaded, private), assume it is overridden.
#define GLMP_DETAIL_OVERRIDES(hook)                                                             \
  template <class T>                                                                            \
  constexpr bool overrides_##hook() {                                                           \
    if constexpr (requires { &T::hook; }) {                                                     \
      return !std::is_same_v<decltype(&T::hook), decltype(&Plugin::hook)>;                      \
    } else {                                                                                    \
      return true;                                                                              \
    }                                                                                           \
  }
GLMP_DETAIL_OVERRIDES(on_request_headers)
GLMP_DETAIL_OVERRIDES(on_request)
GLMP_DETAIL_OVERRIDES(on_response_headers)
GLMP_DETAIL_OVERRIDES(on_response_body)
GLMP_DETAIL_OVERRIDES(on_complete)
#undef GLMP_DETAIL_OVERRIDES

// `static constexpr bool nonblocking = true;` in the plugin class sets GLMP_PLUGIN_NONBLOCKING.
template <class T>
constexpr bool declares_nonblocking() {
  if constexpr (requires { T::nonblocking; }) return static_cast<bool>(T::nonblocking);
  else return false;
}

// Info (made by GLMP_PLUGIN): `using type = T;` plus `name` and `version` (const char*).
template <class Info>
struct Adapter {
  using T = typename Info::type;

  struct Instance {
    HostState state;           // declared first: destroyed after the plugin (its routes may refer to it)
    std::unique_ptr<T> plugin;
  };

  static Instance* self(glmp_config_plugin_ptr* p) noexcept { return reinterpret_cast<Instance*>(p); }

  static glmp_config_plugin_ptr* config_new(const glmp_host_api* api, glmp_instance_host_ptr* instance,
                                            const char* config_json, std::size_t config_len, char* error,
                                            std::size_t error_cap) noexcept {
    try {
      // The table must hold every ABI 1.0 member; members of later minors are checked where used
      // (detail::host_has), so a smaller table degrades those features instead of refusing.
      if (api == nullptr || api->struct_size < kHostApi10Size || api->abi_major != GLMP_ABI_MAJOR) {
        write_error(error, error_cap, "host API table is missing, too small or of another ABI major");
        return nullptr;
      }
      auto inst = std::make_unique<Instance>();
      inst->state.api = api;
      inst->state.instance = instance;
      inst->state.plugin_name = Info::name;
      const Settings settings(detail::view(config_json, config_len));
      inst->plugin = std::make_unique<T>(settings, Host(&inst->state));
      inst->state.constructing = false;
      return reinterpret_cast<glmp_config_plugin_ptr*>(inst.release());
    } catch (const std::exception& e) {
      write_error(error, error_cap, e.what());
    } catch (...) {
      write_error(error, error_cap, "unknown exception (not std::exception) in the plugin's constructor");
    }
    return nullptr;
  }

  static void config_destroy(glmp_config_plugin_ptr* p) noexcept { delete self(p); }

  // Runs a Status-returning hook: anything thrown, or a Status out of range, is GLMP_ERROR (logged).
  template <Status (Plugin::*Hook)(Request&)>
  static glmp_status status_hook(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r, const char* hook) noexcept {
    Instance* inst = self(p);
    try {
      Request request(inst->state.api, r);
      Plugin& plugin = *inst->plugin;  // virtual dispatch: T's override, also when it is private
      const Status status = (plugin.*Hook)(request);
      switch (status) {
        case Status::Continue:
        case Status::Responded:
        case Status::Error:
          return static_cast<glmp_status>(status);
      }
      inst->state.log(GLMP_LOG_ERROR, std::string(hook) + " returned an invalid glmp::Status");
    } catch (const std::exception& e) {
      inst->state.log_failure(hook, e.what());
    } catch (...) {
      inst->state.log_failure(hook, nullptr);
    }
    return GLMP_ERROR;
  }

  static glmp_status on_request_headers(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) noexcept {
    return status_hook<&Plugin::on_request_headers>(p, r, "on_request_headers");
  }

  static glmp_status on_request(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) noexcept {
    return status_hook<&Plugin::on_request>(p, r, "on_request");
  }

  static void on_response_headers(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) noexcept {
    Instance* inst = self(p);
    try {
      Request request(inst->state.api, r);
      inst->plugin->on_response_headers(request);
    } catch (const std::exception& e) {
      inst->state.log_failure("on_response_headers", e.what());
    } catch (...) {
      inst->state.log_failure("on_response_headers", nullptr);
    }
  }

  static void on_response_body(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r, const char* chunk,
                               std::size_t chunk_len, int end_of_stream) noexcept {
    Instance* inst = self(p);
    try {
      Request request(inst->state.api, r);
      inst->plugin->on_response_body(request, detail::view(chunk, chunk_len), end_of_stream != 0);
    } catch (const std::exception& e) {
      inst->state.log_failure("on_response_body", e.what());
    } catch (...) {
      inst->state.log_failure("on_response_body", nullptr);
    }
  }

  static void on_complete(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) noexcept {
    Instance* inst = self(p);
    try {
      Request request(inst->state.api, r);
      inst->plugin->on_complete(request);
    } catch (const std::exception& e) {
      inst->state.log_failure("on_complete", e.what());
    } catch (...) {
      inst->state.log_failure("on_complete", nullptr);
    }
  }

  static constexpr glmp_plugin_descriptor descriptor() noexcept {
    glmp_plugin_descriptor d{};
    d.struct_size = static_cast<std::uint32_t>(sizeof(glmp_plugin_descriptor));
    d.abi_major = GLMP_ABI_MAJOR;
    d.abi_minor = GLMP_ABI_MINOR;
    d.name = Info::name;
    d.version = Info::version;
    d.on_config_new = &config_new;
    d.on_config_destroy = &config_destroy;
    d.on_request = overrides_on_request<T>() ? &on_request : nullptr;
    d.on_response_headers = overrides_on_response_headers<T>() ? &on_response_headers : nullptr;
    d.on_response_body = overrides_on_response_body<T>() ? &on_response_body : nullptr;
    d.on_complete = overrides_on_complete<T>() ? &on_complete : nullptr;
    d.on_request_headers = overrides_on_request_headers<T>() ? &on_request_headers : nullptr;
    d.flags = declares_nonblocking<T>() ? GLMP_PLUGIN_NONBLOCKING : 0u;
    return d;
  }
};

}  // namespace detail
}  // namespace glmp

// GLMP_PLUGIN(Class, "name", "version");  — once per plugin, at global scope, in one .cpp file.
//
// Defines the plugin's static descriptor and the one exported symbol,
//   extern "C" const glmp_plugin_descriptor* glmp_plugin_init(uint32_t host_abi_major, uint32_t host_abi_minor);
// which returns NULL when the host's ABI major differs from the plugin's or its minor is older.
// `name` and `version` must be string literals. Class must derive from glmp::Plugin and be
// constructible from (const glmp::Settings&, glmp::Host).
#define GLMP_PLUGIN(Class, plugin_name_literal, plugin_version_literal)                                    \
  static_assert(std::is_base_of_v<::glmp::Plugin, Class>, "GLMP_PLUGIN: the class must derive from glmp::Plugin"); \
  static_assert(!std::is_abstract_v<Class>, "GLMP_PLUGIN: the class must not be abstract");                 \
  static_assert(std::is_constructible_v<Class, const ::glmp::Settings&, ::glmp::Host>,                     \
                "GLMP_PLUGIN: the class needs a constructor (const glmp::Settings&, glmp::Host)");          \
  namespace {                                                                                               \
  struct glmp_plugin_info_ {                                                                                \
    using type = Class;                                                                                     \
    static constexpr const char* name = "" plugin_name_literal;                                             \
    static constexpr const char* version = "" plugin_version_literal;                                       \
  };                                                                                                        \
  constexpr glmp_plugin_descriptor glmp_plugin_descriptor_ = ::glmp::detail::Adapter<glmp_plugin_info_>::descriptor(); \
  }                                                                                                         \
  extern "C" __attribute__((visibility("default"))) const glmp_plugin_descriptor* glmp_plugin_init(         \
      std::uint32_t host_abi_major, std::uint32_t host_abi_minor);                                          \
  extern "C" __attribute__((visibility("default"))) const glmp_plugin_descriptor* glmp_plugin_init(         \
      std::uint32_t host_abi_major, std::uint32_t host_abi_minor) {                                         \
    return ::glmp::detail::host_accepted(host_abi_major, host_abi_minor) ? &glmp_plugin_descriptor_ : nullptr; \
  }                                                                                                         \
  static_assert(sizeof(glmp_plugin_descriptor_) != 0, "")

#undef GLMP_DETAIL_HOST_HAS
