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
#include <map>
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
  std::string body;                // set_body writes here
  std::map<std::string, std::string> attributes;
  int response_status = 0;         // what response_status() returns
  std::vector<Header> response_headers;
  glmp_usage usage{};              // what response_usage() reports (struct_size is ignored)
  bool client_gone = false;        // stream_write returns -1 when true

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
    api_.request_set_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len, const char* v,
                                 std::size_t n) {
      set_header(req(r).headers, std::string_view(name, name_len), std::string_view(v, n));
    };
    api_.request_remove_header = [](glmp_request_host_ptr* r, const char* name, std::size_t name_len) {
      remove_header(req(r).headers, std::string_view(name, name_len));
    };
    api_.request_body = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) { out(req(r).body, d, n); };
    api_.request_set_body = [](glmp_request_host_ptr* r, const char* d, std::size_t n) { req(r).body.assign(d, n); };
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
    api_.register_route = &register_route_fn;
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
    self.routes.push_back({std::string(method, method_len), std::string(path, path_len), access, handler, user_data});
    return 0;
  }

  glmp_host_api api_{};
  mutable std::mutex mutex_;
  std::vector<LogLine> logs_;
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
    state_ = descriptor_->on_config_new(host.api(), host.instance(), settings_json.data(), settings_json.size(),
                                        error, sizeof error);
    if (state_ == nullptr) throw std::runtime_error(error);
  }
  ~PluginInstance() {
    if (descriptor_->on_config_destroy != nullptr) descriptor_->on_config_destroy(state_);
  }
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;

  glmp_status on_request(FakeRequest& r) {
    return descriptor_->on_request != nullptr ? descriptor_->on_request(state_, r.handle()) : GLMP_CONTINUE;
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

}  // namespace glmp::testing

#define GLMP_EXPECT(checks, ...) (checks).expect((__VA_ARGS__) ? true : false, #__VA_ARGS__, __FILE__, __LINE__)
