// GLM Proxy plugin SDK: an in-memory fake of the core, for testing a plugin without the proxy.
//
// It loads the built .so with dlopen (as the core does), fills a complete glmp_host_api whose
// functions read and write plain C++ structs, and drives the plugin's hooks through the C ABI, so
// a test exercises exactly what the core will call:
//
//   glmp::testing::PluginLibrary lib(PATH_TO_SO);               // dlopen + glmp_plugin_init
//   glmp::testing::FakeHost host;
//   glmp::testing::PluginInstance plugin(lib.descriptor(), host, R"({"greeting":"hi"})");
//   glmp::testing::FakeRequest req;
//   req.headers.push_back({"Authorization", "Bearer pk_x"});
//   assert(plugin.on_request(req) == GLMP_CONTINUE);
//   assert(req.response_header("X-Greeting") == "hi");
//
// ABI 1.1: the state store and metrics live in memory in the FakeHost too (records, windows with
// the core's bucket rule, counters, metrics readable by name and labels), and the store can be
// switched to answer Unavailable or Degraded to test a plugin's failure paths:
//
//   host.store_mode = glmp::testing::FakeHost::StoreMode::Unavailable;
//   GLMP_EXPECT(checks, host.counter("my_plugin:hits") == 3);
//   GLMP_EXPECT(checks, host.metric("glmp_my_plugin_requests_total", {{"plugin", "my_plugin"}})->value == 1);
//
// ABI 1.2: PluginInstance::on_request_headers runs the headers-phase hook as the core does (the
// body hidden: "" while it runs; a descriptor too short to hold the hook, or a NULL hook, means
// GLMP_CONTINUE), and request_hooks() runs the headers phase then on_request. register_route
// refuses the core's routes (/health, /metrics, /v1/..., and prefixes that would shadow them) as
// the core does. FakeHost::on_store_put lets a test interleave another writer with the plugin's
// store writes (e.g. an admin change landing between a plugin's read and its write).
//
// ABI 1.4: request_body_member finds a top-level member of the request body by walking its JSON
// (FakeRequest::body; keys compared as written), as the core answers it from its scan.
//
// ABI 1.6: request_profile, request_timings and request_is_admin answer from FakeRequest::profile,
// route, error, timings and is_admin (the test sets the course of the request it pretends).
//
// ABI 1.7: metrics_collect hands out the plugin's own metrics and what set_foreign_metrics gave.
//
// Test-only: header-only, depends on nothing but the C ABI, the standard library and dlopen
// (link ${CMAKE_DL_LIBS}). It models the core's contract loosely (no hook-order enforcement, no
// hop-by-hop rules); integration tests against the real binary remain the reference.
#pragma once

#include <glmproxy/plugin_api.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace glmp::testing {

struct Header {
  std::string name;
  std::string value;
};

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The index-th value of `name` (case-insensitive) in `headers`.
inline const Header* find_header(const std::vector<Header>& headers, std::string_view name, std::size_t index) {
  for (const Header& h : headers) {
    if (iequals(h.name, name) && index-- == 0) return &h;
  }
  return nullptr;
}

inline void set_header(std::vector<Header>& headers, std::string_view name, std::string_view value) {
  std::erase_if(headers, [&](const Header& h) { return iequals(h.name, name); });
  headers.push_back({std::string(name), std::string(value)});
}

inline void remove_header(std::vector<Header>& headers, std::string_view name) {
  std::erase_if(headers, [&](const Header& h) { return iequals(h.name, name); });
}

// One request as a plugin sees it. Fill the inputs, run hooks, read the outputs. Not thread-safe:
// use one FakeRequest per thread (as the core runs one request's hooks on one thread).
struct FakeRequest {
  // --- inputs (the plugin may change some of them, as it could in the core) ---
  std::string id = "test-request-1";
  std::string method = "POST";
  std::string path = "/v1/chat/completions";
  std::string query;
  glmp_flavour flavour = GLMP_FLAVOUR_OPENAI;
  bool streaming = false;
  std::string model;               // set_model writes here (and sets model_set)
  std::vector<Header> headers;     // request headers going upstream
  std::vector<Header> client_headers;  // as the client sent them (credentials included); request_client_header
  std::string body;                // set_body writes here
  std::map<std::string, std::string> attributes;
  int response_status = 0;         // what response_status() returns
  std::vector<Header> response_headers;
  glmp_usage usage{};              // what response_usage() reports (struct_size is ignored)
  bool client_gone = false;        // stream_write returns -1 when true
  // ABI 1.6: what request_profile, request_timings and request_is_admin report. profile's
  // struct_size, route and error are ignored: `route` and `error` below stand for them.
  glmp_request_profile profile{};
  std::string route = "/v1/";
  std::string error;
  struct Timing {
    std::string name;  // a core phase, or the plugin's name
    std::string hook;  // "" for a core phase
    std::int64_t start_ns = 0;
    std::int64_t dur_ns = 0;
  };
  std::vector<Timing> timings;
  bool is_admin = false;  // a KeyOrAdmin route called with the admin token

  // --- outputs ---
  bool model_set = false;
  bool responded = false;          // respond or respond_error was called
  int respond_status = 0;
  std::string respond_content_type;
  std::string respond_body;        // respond's body, or respond_error's message
  bool respond_was_error = false;  // respond_error (then error_type holds its type)
  std::string error_type;
  bool stream_begun = false;
  bool stream_ended = false;
  int stream_status = 0;
  std::string stream_content_type;
  std::string streamed;            // everything stream_write received

  std::optional<std::string> header(std::string_view name, std::size_t index = 0) const {
    const Header* h = find_header(headers, name, index);
    return h != nullptr ? std::optional<std::string>(h->value) : std::nullopt;
  }
  std::optional<std::string> response_header(std::string_view name, std::size_t index = 0) const {
    const Header* h = find_header(response_headers, name, index);
    return h != nullptr ? std::optional<std::string>(h->value) : std::nullopt;
  }
  std::optional<std::string> attribute(const std::string& name) const {
    auto it = attributes.find(name);
    return it != attributes.end() ? std::optional<std::string>(it->second) : std::nullopt;
  }

  glmp_request_host_ptr* handle() noexcept { return reinterpret_cast<glmp_request_host_ptr*>(this); }
};

namespace detail {

// A strict JSON syntax check (RFC 8259, one document, whitespace around it), so the fake store
// refuses what the core's would (GLMP_STORE_INVALID). Does not validate UTF-8.
class JsonSyntax {
 public:
  static bool valid(std::string_view text) {
    JsonSyntax p(text);
    p.ws();
    if (!p.value(0)) return false;
    p.ws();
    return p.i_ == p.s_.size();
  }

  // The raw text of the last top-level member `key` of a valid JSON object (request_body_member).
  // Keys are compared as written (the core compares them unescaped).
  static std::optional<std::string_view> top_level_member(std::string_view text, std::string_view key) {
    if (!valid(text)) return std::nullopt;
    JsonSyntax p(text);
    p.ws();
    if (!p.eat('{')) return std::nullopt;
    std::optional<std::string_view> found;
    p.ws();
    while (p.peek() == '"') {
      const std::size_t key_begin = p.i_;
      p.string();
      const std::string_view name = text.substr(key_begin + 1, p.i_ - key_begin - 2);
      p.ws();
      p.eat(':');
      p.ws();
      const std::size_t value_begin = p.i_;
      p.value(1);
      if (name == key) found = text.substr(value_begin, p.i_ - value_begin);
      p.ws();
      p.eat(',');
      p.ws();
    }
    return found;
  }

 private:
  explicit JsonSyntax(std::string_view s) : s_(s) {}

  bool more() const { return i_ < s_.size(); }
  char peek() const { return more() ? s_[i_] : '\0'; }
  bool eat(char c) {
    if (peek() != c || !more()) return false;
    ++i_;
    return true;
  }
  void ws() {
    while (more() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool digits() {
    const std::size_t start = i_;
    while (more() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ > start;
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool number() {
    eat('-');
    if (eat('0')) {
    } else if (!digits()) {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!digits()) return false;
    }
    return true;
  }
  bool string() {
    if (!eat('"')) return false;
    while (more()) {
      const char c = s_[i_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') continue;
      if (!more()) return false;
      const char e = s_[i_++];
      if (e == 'u') {
        for (int k = 0; k < 4; ++k) {
          const char h = peek();
          const bool hex = (h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F');
          if (!hex) return false;
          ++i_;
        }
      } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
        return false;
      }
    }
    return false;
  }
  bool value(int depth) {
    if (depth > 256) return false;
    switch (peek()) {
      case '{': {
        ++i_;
        ws();
        if (eat('}')) return true;
        for (;;) {
          ws();
          if (!string()) return false;
          ws();
          if (!eat(':')) return false;
          ws();
          if (!value(depth + 1)) return false;
          ws();
          if (eat('}')) return true;
          if (!eat(',')) return false;
        }
      }
      case '[': {
        ++i_;
        ws();
        if (eat(']')) return true;
        for (;;) {
          ws();
          if (!value(depth + 1)) return false;
          ws();
          if (eat(']')) return true;
          if (!eat(',')) return false;
        }
      }
      case '"': return string();
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

inline bool is_metric_name(std::string_view s) {
  if (s.empty()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

inline bool is_label_name(std::string_view s) {
  if (s.empty() || s.substr(0, 2) == "__") return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

}  // namespace detail

// One metric child (one label set) as the plugin created it, with what it recorded so far.
struct FakeMetric {
  glmp_metric_kind kind = GLMP_METRIC_COUNTER;
  std::string name;
  std::string help;
  std::vector<std::pair<std::string, std::string>> labels;  // in the order the plugin passed them
  std::vector<double> buckets;  // histogram upper bounds (the core's defaults when none were given)
  double value = 0;             // counter, gauge
  std::uint64_t count = 0;      // histogram: number of observations
  double sum = 0;               // histogram: their sum
  std::vector<std::uint64_t> bucket_counts;  // histogram: cumulative per bucket ("le"), then +Inf (== count)
  std::uint64_t misuse = 0;     // updates of the wrong kind (set on a counter, observe on a gauge, ...)
};

using Labels = std::vector<std::pair<std::string, std::string>>;

struct LogLine {
  glmp_log_level level;
  std::string message;
};

struct RegisteredRoute {
  std::string method;  // "" = any
  std::string path;    // trailing '*' = prefix
  glmp_route_access access;
  glmp_route_handler handler;
  void* user_data;
};

// The host side of ONE plugin instance: the function table, the log it receives, the routes it
// registered. Logging is thread-safe; the rest is for single-threaded setup and checks.
class FakeHost {
 public:
  FakeHost() {
    api_.struct_size = static_cast<std::uint32_t>(sizeof api_);
    api_.abi_major = GLMP_ABI_MAJOR;
    api_.abi_minor = GLMP_ABI_MINOR;
    api_.log = &log_fn;
    api_.request_id = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).id, d, n); };
    api_.request_method = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).method, d, n); };
    api_.request_path = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).path, d, n); };
    api_.request_query = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).query, d, n); };
    api_.request_flavour = [](glmp_request_host_ptr* r) { return req(r).flavour; };
    api_.request_streaming = [](glmp_request_host_ptr* r) { return req(r).streaming ? 1 : 0; };
    api_.request_model = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).model, d, n); };
    api_.request_set_model = [](glmp_request_host_ptr* r, const char* m, std::size_t n) {
      req(r).model.assign(m, n);
      req(r).model_set = true;
    };
    api_.request_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, std::size_t index,
                             const char** v, std::size_t* n) {
      return header_out(req(r).headers, std::string_view(name, name_len), index, v, n);
    };
    api_.request_client_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len,
                                    std::size_t index, const char** v, std::size_t* n) {
      return header_out(req(r).client_headers, std::string_view(name, name_len), index, v, n);
    };
    api_.request_set_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char* v,
                                 std::size_t n) {
      set_header(req(r).headers, std::string_view(name, name_len), std::string_view(v, n));
    };
    api_.request_remove_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len) {
      remove_header(req(r).headers, std::string_view(name, name_len));
    };
    api_.request_body = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).body, d, n); };
    api_.request_set_body = [](glmp_request_host_ptr* r, const char* d, std::size_t n) { req(r).body.assign(d, n); };
    api_.request_body_member = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char** v,
                                  std::size_t* n) {
      const auto raw = detail::JsonSyntax::top_level_member(req(r).body, std::string_view(name, name_len));
      if (!raw) return 0;
      *v = raw->data();
      *n = raw->size();
      return 1;
    };
    api_.get_attribute = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char** v,
                            std::size_t* n) {
      auto& attrs = req(r).attributes;
      auto it = attrs.find(std::string(name, name_len));
      if (it == attrs.end()) return 0;
      out(it->second, v, n);
      return 1;
    };
    api_.set_attribute = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char* v,
                            std::size_t n) { req(r).attributes[std::string(name, name_len)] = std::string(v, n); };
    api_.response_status = [](glmp_request_host_ptr* r) { return req(r).response_status; };
    api_.response_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, std::size_t index,
                              const char** v, std::size_t* n) {
      return header_out(req(r).response_headers, std::string_view(name, name_len), index, v, n);
    };
    api_.response_set_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char* v,
                                  std::size_t n) {
      set_header(req(r).response_headers, std::string_view(name, name_len), std::string_view(v, n));
    };
    api_.response_remove_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len) {
      remove_header(req(r).response_headers, std::string_view(name, name_len));
    };
    api_.response_usage = [](glmp_request_host_ptr* r, glmp_usage* u) {
      const std::uint32_t size = std::min<std::uint32_t>(u->struct_size, sizeof(glmp_usage));
      glmp_usage copy = req(r).usage;
      copy.struct_size = size;
      std::memcpy(static_cast<void*>(u), &copy, size);
    };
    api_.respond = [](glmp_request_host_ptr* r, int status, const char* ct, std::size_t ct_len, const char* b,
                      std::size_t b_len) {
      FakeRequest& q = req(r);
      q.responded = true;
      q.respond_was_error = false;
      q.respond_status = status;
      q.respond_content_type.assign(ct, ct_len);
      q.respond_body.assign(b, b_len);
    };
    api_.respond_error = [](glmp_request_host_ptr* r, int status, const char* type, std::size_t type_len,
                            const char* msg, std::size_t msg_len) {
      FakeRequest& q = req(r);
      q.responded = true;
      q.respond_was_error = true;
      q.respond_status = status;
      q.respond_content_type = "application/json";
      q.error_type.assign(type, type_len);
      q.respond_body.assign(msg, msg_len);
    };
    api_.stream_begin = [](glmp_request_host_ptr* r, int status, const char* ct, std::size_t ct_len) {
      FakeRequest& q = req(r);
      q.stream_begun = true;
      q.stream_status = status;
      q.stream_content_type.assign(ct, ct_len);
    };
    api_.stream_write = [](glmp_request_host_ptr* r, const char* d, std::size_t n) {
      FakeRequest& q = req(r);
      if (q.client_gone) return -1;
      q.streamed.append(d, n);
      return 0;
    };
    api_.stream_end = [](glmp_request_host_ptr* r) { req(r).stream_ended = true; };
    // 1.6
    api_.request_profile = [](glmp_request_host_ptr* r, glmp_request_profile* p) {
      if (p == nullptr || p->struct_size < sizeof(glmp_request_profile)) return 0;
      const FakeRequest& q = req(r);
      const std::uint32_t size = p->struct_size;
      *p = q.profile;
      p->struct_size = size;
      p->route = q.route.data();
      p->route_len = q.route.size();
      p->error = q.error.data();
      p->error_len = q.error.size();
      return 1;
    };
    api_.request_timings = [](glmp_request_host_ptr* r, glmp_timing* out, std::size_t cap) {
      const FakeRequest& q = req(r);
      for (std::size_t i = 0; out != nullptr && i < std::min(cap, q.timings.size()); ++i) {
        const auto& t = q.timings[i];
        out[i] = glmp_timing{t.name.data(), t.name.size(), t.hook.empty() ? nullptr : t.hook.data(), t.hook.size(),
                             t.start_ns, t.dur_ns};
      }
      return q.timings.size();
    };
    api_.request_is_admin = [](glmp_request_host_ptr* r) { return req(r).is_admin ? 1 : 0; };
    api_.register_route = &register_route_fn;
    // ABI 1.1: state store and metrics.
    api_.store_get = &store_get_fn;
    api_.store_put = &store_put_fn;
    api_.store_delete = &store_delete_fn;
    api_.store_list = &store_list_fn;
    api_.window_add = &window_add_fn;
    api_.window_sum = &window_sum_fn;
    api_.window_buckets = &window_buckets_fn;
    api_.counter_add = &counter_add_fn;
    api_.counter_get = &counter_get_fn;
    api_.store_bucket_ms = [](glmp_instance_host_ptr* i) -> std::int64_t { return host(i).bucket_ms; };
    api_.metric_new = &metric_new_fn;
    api_.metric_add = &metric_add_fn;
    api_.metric_set = &metric_set_fn;
    api_.metric_observe = &metric_observe_fn;
    // ABI 1.7
    api_.metrics_collect = &metrics_collect_fn;
  }

  FakeHost(const FakeHost&) = delete;
  FakeHost& operator=(const FakeHost&) = delete;

  const glmp_host_api* api() const noexcept { return &api_; }
  // Edit the table to simulate an older/odd host (e.g. a smaller struct_size).
  glmp_host_api& mutable_api() noexcept { return api_; }
  glmp_instance_host_ptr* instance() noexcept { return reinterpret_cast<glmp_instance_host_ptr*>(this); }

  std::vector<LogLine> logs() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return logs_;
  }
  // True when some log line contains `needle`.
  bool logged(std::string_view needle) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::any_of(logs_.begin(), logs_.end(),
                       [&](const LogLine& l) { return l.message.find(needle) != std::string::npos; });
  }

  std::vector<RegisteredRoute> routes;
  bool reject_routes = false;  // register_route returns -1 (a clash) when true

  // True when a route on `path` (a trailing '*' = prefix) would match or shadow a core route:
  // /health, /metrics, /api/metrics/prometheus, /admin/reload, /admin/plugins, /v1 and anything
  // under /v1/. register_route refuses those (returns -1), as the core does.
  static bool shadows_core_route(std::string_view path) {
    const bool prefix = !path.empty() && path.back() == '*';
    if (prefix) path.remove_suffix(1);
    constexpr std::string_view kTree = "/v1/";
    if (path.substr(0, kTree.size()) == kTree) return true;
    for (std::string_view core : {std::string_view("/health"), std::string_view("/metrics"),
                                  std::string_view("/api/metrics/prometheus"), std::string_view("/admin/reload"),
                                  std::string_view("/admin/plugins"), std::string_view("/v1")}) {
      if (prefix ? core.substr(0, path.size()) == path : core == path) return true;
    }
    return prefix && kTree.substr(0, path.size()) == path;
  }

  // --- state store (ABI 1.1) -------------------------------------------------------------------
  // The data is plain public members, for setting up and checking between hook calls; the host
  // functions (and the helpers below) take a mutex, so hooks may run on several threads.
  enum class StoreMode {
    Normal,       // works like the core's memory store
    Unavailable,  // every call (with valid arguments) answers GLMP_STORE_UNAVAILABLE and changes nothing
    Degraded      // fail_open: window/counter reads and adds answer DEGRADED with 0 and change nothing;
                  // get answers DEGRADED with the stored value (NOT_FOUND when absent); list answers
                  // DEGRADED with the records; put/delete answer UNAVAILABLE
  };
  StoreMode store_mode = StoreMode::Normal;
  void set_store_unavailable(bool unavailable = true) noexcept {
    store_mode = unavailable ? StoreMode::Unavailable : StoreMode::Normal;
  }

  // Called at the start of every store_put with valid arguments, before it is applied and outside
  // the store lock (the plugin's call is in progress; the hook may edit `records`). Lets a test
  // play another writer (an admin PATCH, another replica) landing between a plugin's read and its
  // write.
  std::function<void(std::string_view ns, std::string_view key)> on_store_put;

  std::int64_t bucket_ms = 60'000;              // [store] bucket
  std::int64_t max_window_ms = 86'400'000;      // [store] max_window
  std::int64_t clock_ms = 1'700'000'000'000;    // "the host's clock" (now_ms = 0); move it to age windows

  std::map<std::string, std::map<std::string, std::string>> records;         // namespace -> key -> JSON
  std::map<std::string, std::map<std::int64_t, std::int64_t>> windows;      // name -> bucket start -> amount
  std::map<std::string, std::int64_t> counters;                              // name -> value

  // Thread-safe readers.
  std::optional<std::string> record(std::string_view ns, std::string_view key) const {
    std::lock_guard<std::mutex> lock(store_mutex_);
    auto n = records.find(std::string(ns));
    if (n == records.end()) return std::nullopt;
    auto it = n->second.find(std::string(key));
    return it != n->second.end() ? std::optional<std::string>(it->second) : std::nullopt;
  }
  std::int64_t counter(std::string_view name) const {
    std::lock_guard<std::mutex> lock(store_mutex_);
    auto it = counters.find(std::string(name));
    return it != counters.end() ? it->second : 0;
  }
  // The window's sum as the store computes it (now_ms = 0: clock_ms).
  std::int64_t window_sum(std::string_view name, std::int64_t window_ms, std::int64_t now_ms = 0) const {
    std::lock_guard<std::mutex> lock(store_mutex_);
    return sum_locked(name, window_ms, now_ms != 0 ? now_ms : clock_ms);
  }
  // The start of the bucket holding t (floor to a multiple of bucket_ms, also for t < 0).
  std::int64_t bucket_of(std::int64_t t) const noexcept { return t - ((t % bucket_ms) + bucket_ms) % bucket_ms; }

  // --- metrics (ABI 1.1) ------------------------------------------------------------------------
  bool reject_metrics = false;  // metric_new returns NULL (as for a name clash) when true
  // True while the plugin's on_config_new runs: metric_new returns NULL otherwise, as in the core.
  // PluginInstance sets it; set it yourself around a direct descriptor->on_config_new call.
  bool configuring = false;

  // A snapshot of the metric `name` whose labels are exactly `labels` (in any order), or nullopt.
  std::optional<FakeMetric> metric(std::string_view name, const Labels& labels = {}) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& cell : metrics_) {
      std::lock_guard<std::mutex> cell_lock(cell->mutex);
      if (cell->metric.name == name && same_labels(cell->metric.labels, labels)) return cell->metric;
    }
    return std::nullopt;
  }
  // Snapshots of every metric created, in creation order.
  std::vector<FakeMetric> metrics() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<FakeMetric> out;
    for (const auto& cell : metrics_) {
      std::lock_guard<std::mutex> cell_lock(cell->mutex);
      out.push_back(cell->metric);
    }
    return out;
  }
  // ABI 1.7: what metrics_collect hands out besides the plugin's own metrics — stand-ins for the
  // core's and other plugins' families (e.g. {GLMP_METRIC_GAUGE, "glmp_upstream_pool", "", {{"upstream",
  // "openai"}, {"figure", "in_use"}}, 3}). Histograms among them come out as _bucket/_sum/_count.
  // Guarded by the host's lock: set it while no plugin thread collects, or through set_foreign_metrics.
  void set_foreign_metrics(std::vector<FakeMetric> metrics) {
    std::lock_guard<std::mutex> lock(mutex_);
    foreign_metrics_ = std::move(metrics);
  }
  std::size_t collect_calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return collect_calls_;
  }

  // The core's default histogram buckets (seconds, 5 ms to 60 s).
  static std::vector<double> default_buckets() {
    return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  }

  // The first route matching METHOD PATH, or nullptr.
  const RegisteredRoute* find_route(std::string_view method, std::string_view path) const {
    for (const RegisteredRoute& r : routes) {
      if (!r.method.empty() && r.method != method) continue;
      if (!r.path.empty() && r.path.back() == '*') {
        if (path.substr(0, r.path.size() - 1) == std::string_view(r.path).substr(0, r.path.size() - 1)) return &r;
      } else if (r.path == path) {
        return &r;
      }
    }
    return nullptr;
  }

 private:
  static FakeRequest& req(glmp_request_host_ptr* r) noexcept { return *reinterpret_cast<FakeRequest*>(r); }
  static FakeHost& host(glmp_instance_host_ptr* i) noexcept { return *reinterpret_cast<FakeHost*>(i); }

  static void out(const std::string& s, const char** data, std::size_t* len) noexcept {
    *data = s.data();
    *len = s.size();
  }
  static int header_out(const std::vector<Header>& headers, std::string_view name, std::size_t index,
                        const char** v, std::size_t* n) {
    const Header* h = find_header(headers, name, index);
    if (h == nullptr) return 0;
    out(h->value, v, n);
    return 1;
  }

  static void log_fn(glmp_instance_host_ptr* instance, glmp_log_level level, const char* msg, std::size_t len) {
    FakeHost& self = host(instance);
    std::lock_guard<std::mutex> lock(self.mutex_);
    self.logs_.push_back({level, std::string(msg, len)});
  }

  static int register_route_fn(glmp_instance_host_ptr* instance, const char* method, std::size_t method_len,
                               const char* path, std::size_t path_len, glmp_route_access access,
                               glmp_route_handler handler, void* user_data) {
    FakeHost& self = host(instance);
    if (self.reject_routes) return -1;
    if (path == nullptr || path_len == 0 || path[0] != '/' || handler == nullptr) return -1;
    if (shadows_core_route(std::string_view(path, path_len))) return -1;
    if (access < GLMP_ACCESS_PUBLIC || access > GLMP_ACCESS_KEY_OR_ADMIN) return -1;
    self.routes.push_back({std::string(method, method_len), std::string(path, path_len), access, handler, user_data});
    return 0;
  }

  // --- store ---
  static constexpr std::size_t kMaxName = 512;
  static constexpr std::size_t kMaxValue = std::size_t{1} << 20;
  static constexpr std::size_t kMaxListLimit = 1000;

  static bool valid_name(std::string_view s) noexcept {
    return !s.empty() && s.size() <= kMaxName && s.find('\0') == std::string_view::npos;
  }
  bool valid_window(std::string_view name, std::int64_t window, std::int64_t now) const noexcept {
    return valid_name(name) && window > 0 && window <= max_window_ms && now >= 0;
  }
  std::int64_t resolve(std::int64_t now) const noexcept { return now != 0 ? now : clock_ms; }
  std::int64_t sum_locked(std::string_view name, std::int64_t window, std::int64_t now) const {
    auto w = windows.find(std::string(name));
    if (w == windows.end()) return 0;
    std::int64_t sum = 0;
    for (const auto& [start, amount] : w->second) {
      if (start > now - window && start <= now) sum += amount;
    }
    return sum;
  }

  static int store_get_fn(glmp_instance_host_ptr* i, const char* ns, std::size_t ns_len, const char* key,
                          std::size_t key_len, glmp_bytes_fn out, void* user_data) {
    FakeHost& self = host(i);
    const std::string_view n(ns, ns_len), k(key, key_len);
    if (!valid_name(n) || !valid_name(k)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    std::string value;
    {
      std::lock_guard<std::mutex> lock(self.store_mutex_);
      auto rn = self.records.find(std::string(n));
      if (rn == self.records.end()) return GLMP_STORE_NOT_FOUND;
      auto it = rn->second.find(std::string(k));
      if (it == rn->second.end()) return GLMP_STORE_NOT_FOUND;
      value = it->second;
    }
    out(user_data, value.data(), value.size());  // outside the lock: the callback may call the host
    return self.store_mode == StoreMode::Degraded ? GLMP_STORE_DEGRADED : GLMP_STORE_OK;
  }

  static int store_put_fn(glmp_instance_host_ptr* i, const char* ns, std::size_t ns_len, const char* key,
                          std::size_t key_len, const char* json, std::size_t json_len) {
    FakeHost& self = host(i);
    const std::string_view n(ns, ns_len), k(key, key_len), v(json, json_len);
    if (!valid_name(n) || !valid_name(k) || v.empty() || v.size() > kMaxValue || !detail::JsonSyntax::valid(v)) {
      return GLMP_STORE_INVALID;
    }
    if (self.on_store_put) self.on_store_put(n, k);
    if (self.store_mode != StoreMode::Normal) return GLMP_STORE_UNAVAILABLE;
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    self.records[std::string(n)][std::string(k)] = std::string(v);
    return GLMP_STORE_OK;
  }

  static int store_delete_fn(glmp_instance_host_ptr* i, const char* ns, std::size_t ns_len, const char* key,
                             std::size_t key_len) {
    FakeHost& self = host(i);
    const std::string_view n(ns, ns_len), k(key, key_len);
    if (!valid_name(n) || !valid_name(k)) return GLMP_STORE_INVALID;
    if (self.store_mode != StoreMode::Normal) return GLMP_STORE_UNAVAILABLE;
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    auto rn = self.records.find(std::string(n));
    if (rn == self.records.end() || rn->second.erase(std::string(k)) == 0) return GLMP_STORE_NOT_FOUND;
    return GLMP_STORE_OK;
  }

  static int store_list_fn(glmp_instance_host_ptr* i, const char* ns, std::size_t ns_len, const char* prefix,
                           std::size_t prefix_len, const char* after, std::size_t after_len, std::size_t limit,
                           glmp_record_fn out, void* user_data, int* more) {
    FakeHost& self = host(i);
    if (more != nullptr) *more = 0;
    const std::string_view n(ns, ns_len), p(prefix, prefix_len), a(after, after_len);
    if (!valid_name(n) || p.size() > kMaxName || a.size() > kMaxName || limit < 1 || limit > kMaxListLimit) {
      return GLMP_STORE_INVALID;
    }
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    std::vector<std::pair<std::string, std::string>> page;
    bool has_more = false;
    {
      std::lock_guard<std::mutex> lock(self.store_mutex_);
      auto rn = self.records.find(std::string(n));
      if (rn != self.records.end()) {
        const auto& map = rn->second;
        auto it = a.empty() || a < p ? map.lower_bound(std::string(p)) : map.upper_bound(std::string(a));
        for (; it != map.end() && std::string_view(it->first).substr(0, p.size()) == p; ++it) {
          if (page.size() == limit) {
            has_more = true;
            break;
          }
          page.emplace_back(it->first, it->second);
        }
      }
    }
    for (const auto& [k, v] : page) out(user_data, k.data(), k.size(), v.data(), v.size());
    if (more != nullptr) *more = has_more ? 1 : 0;
    return self.store_mode == StoreMode::Degraded ? GLMP_STORE_DEGRADED : GLMP_STORE_OK;
  }

  static int window_add_fn(glmp_instance_host_ptr* i, const char* name, std::size_t name_len, std::int64_t amount,
                           std::int64_t window_ms, std::int64_t now_ms, std::int64_t* sum) {
    FakeHost& self = host(i);
    const std::string_view n(name, name_len);
    if (!self.valid_window(n, window_ms, now_ms)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    if (self.store_mode == StoreMode::Degraded) {
      if (sum != nullptr) *sum = 0;
      return GLMP_STORE_DEGRADED;
    }
    const std::int64_t now = self.resolve(now_ms);
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    self.windows[std::string(n)][self.bucket_of(now)] += amount;
    if (sum != nullptr) *sum = self.sum_locked(n, window_ms, now);
    return GLMP_STORE_OK;
  }

  static int window_sum_fn(glmp_instance_host_ptr* i, const char* name, std::size_t name_len, std::int64_t window_ms,
                           std::int64_t now_ms, std::int64_t* sum) {
    FakeHost& self = host(i);
    const std::string_view n(name, name_len);
    if (!self.valid_window(n, window_ms, now_ms)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    if (self.store_mode == StoreMode::Degraded) {
      if (sum != nullptr) *sum = 0;
      return GLMP_STORE_DEGRADED;
    }
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    if (sum != nullptr) *sum = self.sum_locked(n, window_ms, self.resolve(now_ms));
    return GLMP_STORE_OK;
  }

  static int window_buckets_fn(glmp_instance_host_ptr* i, const char* name, std::size_t name_len,
                               std::int64_t window_ms, std::int64_t now_ms, glmp_bucket_fn out, void* user_data) {
    FakeHost& self = host(i);
    const std::string_view n(name, name_len);
    if (!self.valid_window(n, window_ms, now_ms)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    if (self.store_mode == StoreMode::Degraded) return GLMP_STORE_DEGRADED;
    const std::int64_t now = self.resolve(now_ms);
    std::vector<std::pair<std::int64_t, std::int64_t>> buckets;
    {
      std::lock_guard<std::mutex> lock(self.store_mutex_);
      auto w = self.windows.find(std::string(n));
      if (w != self.windows.end()) {
        for (const auto& [start, amount] : w->second) {
          if (start > now - window_ms && start <= now && amount != 0) buckets.emplace_back(start, amount);
        }
      }
    }
    for (const auto& [start, amount] : buckets) out(user_data, start, amount);
    return GLMP_STORE_OK;
  }

  static int counter_add_fn(glmp_instance_host_ptr* i, const char* name, std::size_t name_len, std::int64_t amount,
                            std::int64_t* value) {
    FakeHost& self = host(i);
    const std::string_view n(name, name_len);
    if (!valid_name(n)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    if (self.store_mode == StoreMode::Degraded) {
      if (value != nullptr) *value = 0;
      return GLMP_STORE_DEGRADED;
    }
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    const std::int64_t after = self.counters[std::string(n)] += amount;
    if (value != nullptr) *value = after;
    return GLMP_STORE_OK;
  }

  static int counter_get_fn(glmp_instance_host_ptr* i, const char* name, std::size_t name_len, std::int64_t* value) {
    FakeHost& self = host(i);
    const std::string_view n(name, name_len);
    if (!valid_name(n)) return GLMP_STORE_INVALID;
    if (self.store_mode == StoreMode::Unavailable) return GLMP_STORE_UNAVAILABLE;
    if (self.store_mode == StoreMode::Degraded) {
      if (value != nullptr) *value = 0;
      return GLMP_STORE_DEGRADED;
    }
    std::lock_guard<std::mutex> lock(self.store_mutex_);
    auto it = self.counters.find(std::string(n));
    if (value != nullptr) *value = it != self.counters.end() ? it->second : 0;
    return GLMP_STORE_OK;
  }

  // --- metrics ---
  struct MetricCell {
    mutable std::mutex mutex;
    FakeMetric metric;
  };
  static MetricCell& cell(glmp_metric_host_ptr* m) noexcept { return *reinterpret_cast<MetricCell*>(m); }

  static bool same_labels(Labels a, Labels b) {
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    return a == b;
  }

  void refuse_metric(std::string_view name, std::string_view why) {
    std::lock_guard<std::mutex> lock(mutex_);
    logs_.push_back({GLMP_LOG_ERROR, "metric " + std::string(name) + " refused: " + std::string(why)});
  }

  static std::size_t metrics_collect_fn(glmp_instance_host_ptr* i, const char* prefix, std::size_t prefix_len,
                                        glmp_sample_fn out, void* user) {
    FakeHost& self = host(i);
    std::vector<FakeMetric> all;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      ++self.collect_calls_;
      all = self.foreign_metrics_;
      for (const auto& cell : self.metrics_) {
        std::lock_guard<std::mutex> cell_lock(cell->mutex);
        all.push_back(cell->metric);
      }
    }
    const std::string_view want(prefix != nullptr ? prefix : "", prefix != nullptr ? prefix_len : 0);
    std::size_t n = 0;
    for (const FakeMetric& m : all) {
      if (m.name.compare(0, want.size(), want) != 0) continue;
      std::vector<glmp_label> labels;
      for (const auto& [k, v] : m.labels) labels.push_back({k.data(), k.size(), v.data(), v.size()});
      auto emit = [&](const std::string& name, double value) {
        const glmp_metric_sample sample{m.name.data(), m.name.size(), name.data(), name.size(), m.kind, 0,
                                        labels.data(), labels.size(), value};
        out(user, &sample);
        ++n;
      };
      if (m.kind != GLMP_METRIC_HISTOGRAM) {
        emit(m.name, m.value);
        continue;
      }
      std::vector<std::string> bounds;
      for (double b : m.buckets) bounds.push_back(std::to_string(b));
      bounds.emplace_back("+Inf");
      for (std::size_t b = 0; b < bounds.size(); ++b) {
        labels.push_back({"le", 2, bounds[b].data(), bounds[b].size()});
        emit(m.name + "_bucket", static_cast<double>(b < m.bucket_counts.size() ? m.bucket_counts[b] : m.count));
        labels.pop_back();
      }
      emit(m.name + "_sum", m.sum);
      emit(m.name + "_count", static_cast<double>(m.count));
    }
    return n;
  }

  static glmp_metric_host_ptr* metric_new_fn(glmp_instance_host_ptr* i, glmp_metric_kind kind, const char* name,
                                             std::size_t name_len, const char* help, std::size_t help_len,
                                             const glmp_label* labels, std::size_t label_count, const double* buckets,
                                             std::size_t bucket_count) {
    FakeHost& self = host(i);
    const std::string n(name, name_len);
    if (!self.configuring) return self.refuse_metric(n, "created outside on_config_new"), nullptr;
    if (self.reject_metrics) return self.refuse_metric(n, "reject_metrics is set"), nullptr;
    if (!detail::is_metric_name(n)) return self.refuse_metric(n, "not a valid metric name"), nullptr;
    if (kind != GLMP_METRIC_COUNTER && kind != GLMP_METRIC_GAUGE && kind != GLMP_METRIC_HISTOGRAM) {
      return self.refuse_metric(n, "unknown kind"), nullptr;
    }
    FakeMetric m;
    m.kind = kind;
    m.name = n;
    m.help.assign(help, help_len);
    for (std::size_t k = 0; k < label_count; ++k) {
      std::string label_name(labels[k].name, labels[k].name_len);
      if (!detail::is_label_name(label_name)) return self.refuse_metric(n, "invalid label name " + label_name), nullptr;
      for (const auto& existing : m.labels) {
        if (existing.first == label_name) return self.refuse_metric(n, "duplicate label " + label_name), nullptr;
      }
      m.labels.emplace_back(std::move(label_name), std::string(labels[k].value, labels[k].value_len));
    }
    if (kind == GLMP_METRIC_HISTOGRAM) {
      if (buckets == nullptr || bucket_count == 0) {
        m.buckets = default_buckets();
      } else {
        m.buckets.assign(buckets, buckets + bucket_count);
        for (std::size_t k = 1; k < m.buckets.size(); ++k) {
          if (!(m.buckets[k - 1] < m.buckets[k])) return self.refuse_metric(n, "buckets not increasing"), nullptr;
        }
      }
      m.bucket_counts.assign(m.buckets.size() + 1, 0);
    }
    std::lock_guard<std::mutex> lock(self.mutex_);
    for (const auto& c : self.metrics_) {
      const FakeMetric& e = c->metric;  // name, kind, help and labels never change after creation
      if (e.name != n) continue;
      if (e.kind != kind || e.help != m.help) {
        self.logs_.push_back({GLMP_LOG_ERROR, "metric " + n + " refused: name taken by another kind or help text"});
        return nullptr;
      }
      if (same_labels(e.labels, m.labels)) return reinterpret_cast<glmp_metric_host_ptr*>(c.get());
    }
    self.metrics_.push_back(std::make_unique<MetricCell>());
    self.metrics_.back()->metric = std::move(m);
    return reinterpret_cast<glmp_metric_host_ptr*>(self.metrics_.back().get());
  }

  static void metric_add_fn(glmp_metric_host_ptr* h, double value) {
    MetricCell& c = cell(h);
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.metric.kind == GLMP_METRIC_COUNTER) {
      if (value > 0) c.metric.value += value;  // negative (and NaN) ignored, as in the core
    } else if (c.metric.kind == GLMP_METRIC_GAUGE) {
      c.metric.value += value;
    } else {
      ++c.metric.misuse;
    }
  }

  static void metric_set_fn(glmp_metric_host_ptr* h, double value) {
    MetricCell& c = cell(h);
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.metric.kind == GLMP_METRIC_GAUGE) {
      c.metric.value = value;
    } else {
      ++c.metric.misuse;
    }
  }

  static void metric_observe_fn(glmp_metric_host_ptr* h, double value) {
    MetricCell& c = cell(h);
    std::lock_guard<std::mutex> lock(c.mutex);
    FakeMetric& m = c.metric;
    if (m.kind != GLMP_METRIC_HISTOGRAM) {
      ++m.misuse;
      return;
    }
    ++m.count;
    m.sum += value;
    for (std::size_t k = 0; k < m.buckets.size(); ++k) {
      if (value <= m.buckets[k]) ++m.bucket_counts[k];
    }
    ++m.bucket_counts.back();
  }

  glmp_host_api api_{};
  mutable std::mutex mutex_;
  std::vector<LogLine> logs_;
  mutable std::mutex store_mutex_;
  std::vector<std::unique_ptr<MetricCell>> metrics_;
  std::vector<FakeMetric> foreign_metrics_;  // ABI 1.7: set_foreign_metrics
  std::size_t collect_calls_ = 0;
};

// A plugin library, dlopen'ed (RTLD_NOW | RTLD_LOCAL) and dlclose'd on destruction.
class PluginLibrary {
 public:
  explicit PluginLibrary(const std::string& path) : path_(path) {
    handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) throw std::runtime_error(std::string("dlopen failed: ") + ::dlerror());
    void* sym = ::dlsym(handle_, GLMP_PLUGIN_INIT_SYMBOL);
    if (sym == nullptr) {
      ::dlclose(handle_);
      throw std::runtime_error(path + ": no symbol " GLMP_PLUGIN_INIT_SYMBOL);
    }
    init_ = reinterpret_cast<glmp_plugin_init_fn>(sym);
  }
  ~PluginLibrary() {
    if (handle_ != nullptr) ::dlclose(handle_);
  }
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  // glmp_plugin_init with the given host version (default: this header's).
  const glmp_plugin_descriptor* init(std::uint32_t major = GLMP_ABI_MAJOR, std::uint32_t minor = GLMP_ABI_MINOR) const {
    return init_(major, minor);
  }
  // The descriptor for this header's ABI version; throws if the plugin refuses it.
  const glmp_plugin_descriptor* descriptor() const {
    const glmp_plugin_descriptor* d = init();
    if (d == nullptr) throw std::runtime_error(path_ + ": glmp_plugin_init refused the host version");
    return d;
  }
  void* handle() const noexcept { return handle_; }
  const std::string& path() const noexcept { return path_; }

  // Closes the library now (to check it really unloads: is_loaded(path) is false afterwards).
  void close() {
    if (handle_ != nullptr) ::dlclose(handle_);
    handle_ = nullptr;
  }
  // True while `path` is mapped in the process (RTLD_NOLOAD probe).
  static bool is_loaded(const std::string& path) {
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (h == nullptr) return false;
    ::dlclose(h);
    return true;
  }

 private:
  std::string path_;
  void* handle_ = nullptr;
  glmp_plugin_init_fn init_ = nullptr;
};

// One configured plugin instance: on_config_new in the constructor (throws std::runtime_error
// with the plugin's error text when it refuses), on_config_destroy in the destructor. The hook
// helpers treat a NULL hook as the core does: on_request -> GLMP_CONTINUE, others -> nothing.
class PluginInstance {
 public:
  PluginInstance(const glmp_plugin_descriptor* descriptor, FakeHost& host, std::string_view settings_json = "{}")
      : descriptor_(descriptor), host_(host) {
    char error[512] = {0};
    host.configuring = true;
    state_ = descriptor_->on_config_new(host.api(), host.instance(), settings_json.data(), settings_json.size(),
                                        error, sizeof error);
    host.configuring = false;
    if (state_ == nullptr) throw std::runtime_error(error);
  }
  ~PluginInstance() {
    if (descriptor_->on_config_destroy != nullptr) descriptor_->on_config_destroy(state_);
  }
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;

  // ABI 1.2: the headers-phase hook, as the core runs it: only when the descriptor's struct_size
  // covers the member and it is not NULL (GLMP_CONTINUE otherwise), and with r.body hidden ("")
  // while it runs, since the core has not read the body yet (restored afterwards).
  glmp_status on_request_headers(FakeRequest& r) {
    if (!has_request_headers_hook()) return GLMP_CONTINUE;
    std::string body = std::move(r.body);
    r.body.clear();
    const glmp_status status = descriptor_->on_request_headers(state_, r.handle());
    r.body = std::move(body);
    return status;
  }
  bool has_request_headers_hook() const noexcept {
    return descriptor_->struct_size >= offsetof(glmp_plugin_descriptor, on_request_headers) +
                                           sizeof(glmp_plugin_descriptor::on_request_headers) &&
           descriptor_->on_request_headers != nullptr;
  }
  glmp_status on_request(FakeRequest& r) {
    return descriptor_->on_request != nullptr ? descriptor_->on_request(state_, r.handle()) : GLMP_CONTINUE;
  }
  // What the core runs before the upstream call: on_request_headers, then on_request if it continued.
  glmp_status request_hooks(FakeRequest& r) {
    const glmp_status headers = on_request_headers(r);
    return headers != GLMP_CONTINUE ? headers : on_request(r);
  }
  void on_response_headers(FakeRequest& r) {
    if (descriptor_->on_response_headers != nullptr) descriptor_->on_response_headers(state_, r.handle());
  }
  void on_response_body(FakeRequest& r, std::string_view chunk, bool end_of_stream) {
    if (descriptor_->on_response_body != nullptr) {
      descriptor_->on_response_body(state_, r.handle(), chunk.data(), chunk.size(), end_of_stream ? 1 : 0);
    }
  }
  void on_complete(FakeRequest& r) {
    if (descriptor_->on_complete != nullptr) descriptor_->on_complete(state_, r.handle());
  }

  // Runs the route registered for r.method / r.path, as the core would. false when none matches.
  bool call_route(FakeRequest& r) {
    const RegisteredRoute* route = host_.find_route(r.method, r.path);
    if (route == nullptr) return false;
    route->handler(state_, r.handle(), route->user_data);
    return true;
  }

  glmp_config_plugin_ptr* state() const noexcept { return state_; }

 private:
  const glmp_plugin_descriptor* descriptor_;
  FakeHost& host_;
  glmp_config_plugin_ptr* state_ = nullptr;
};

// A dependency-free check counter for plugin test programs:
//
//   int main() {
//     glmp::testing::Checks checks;
//     GLMP_EXPECT(checks, 1 + 1 == 2);
//     return checks.finish();  // prints "N passed, N failed"; exit code 1 on any failure
//   }
class Checks {
 public:
  // Records one check; prints the failing expression with its location.
  bool expect(bool ok, const char* expression, const char* file, int line) {
    if (ok) {
      ++passed_;
    } else {
      ++failed_;
      std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, expression);
    }
    return ok;
  }
  int passed() const noexcept { return passed_; }
  int failed() const noexcept { return failed_; }
  // Prints the summary line and returns the process exit code.
  int finish() const {
    std::printf("%d passed, %d failed\n", passed_, failed_);
    return failed_ == 0 && passed_ > 0 ? 0 : 1;
  }

 private:
  int passed_ = 0;
  int failed_ = 0;
};

// Why `descriptor` refuses `settings_json` (the text it reported), or "" when it accepts them.
inline std::string refusal(const glmp_plugin_descriptor* descriptor, std::string_view settings_json) {
  FakeHost host;
  try {
    PluginInstance plugin(descriptor, host, settings_json);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace glmp::testing

#define GLMP_EXPECT(checks, ...) (checks).expect((__VA_ARGS__) ? true : false, #__VA_ARGS__, __FILE__, __LINE__)
