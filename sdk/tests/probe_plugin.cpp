// Test plugin for the SDK's boundary: every Request accessor, every way to fail.
// Driven by test_sdk.cpp through the fake host. Behaviour is chosen per request by the request
// headers X-Probe-Headers (on_request_headers) and X-Probe (on_request), and by request attributes
// (later hooks).
#include <glmproxy/sdk.hpp>

#include <stdexcept>
#include <string>

namespace {

std::string opt(const std::optional<std::string_view>& v) { return v ? std::string(*v) : std::string("<none>"); }

class Probe final : public glmp::Plugin {
 public:
  Probe(const glmp::Settings& settings, glmp::Host host) : Plugin(host), tag_(settings.get_string("tag", "probe")) {
    if (settings.has("throw_in_ctor")) throw std::runtime_error(settings.get_string("throw_in_ctor"));
    if (settings.get_bool("throw_int_in_ctor")) throw 42;
    if (settings.get_bool("register_then_throw")) {
      host.register_route("GET", "/probe/never", glmp::Access::Public, [](glmp::Request& r) { r.respond(200, "", ""); });
      throw std::runtime_error("after register");
    }
    host.register_route("GET", "/probe/ok", glmp::Access::Admin, [this](glmp::Request& r) {
      r.respond(200, "text/plain", tag_ + " " + std::string(r.method()) + " " + std::string(r.path()));
    });
    host.register_route("GET", "/probe/throw", glmp::Access::Public,
                        [](glmp::Request&) { throw std::runtime_error("route exploded"); });
    host.register_route("GET", "/probe/throw-int", glmp::Access::Public, [](glmp::Request&) { throw 5; });
    host.register_route("GET", "/probe/silent", glmp::Access::Public, [](glmp::Request&) {});
    host.register_route("GET", "/probe/stream", glmp::Access::Key, [](glmp::Request& r) {
      r.stream_begin(200, "text/event-stream");
      r.stream_write("data: 1\n\n");
      r.stream_write("data: 2\n\n");
      r.stream_end();
    });
    host.register_route("GET", "/probe/stream-throw", glmp::Access::Public, [](glmp::Request& r) {
      r.stream_begin(200, "text/event-stream");
      r.stream_write("data: 1\n\n");
      throw std::runtime_error("mid-stream");
    });
    host.register_route("", "/probe/prefix/*", glmp::Access::Public,
                        [](glmp::Request& r) { r.respond(200, "text/plain", r.path()); });
    host.log_debug("probe ready");
  }

  glmp::Status on_request_headers(glmp::Request& r) override {
    const std::string action = opt(r.header("X-Probe-Headers"));
    if (action == "throw") throw std::runtime_error("on_request_headers exploded");
    if (action == "bad-status") return static_cast<glmp::Status>(9);
    if (action == "error") return glmp::Status::Error;
    if (action == "refuse") {
      r.respond_error(401, "refused from the headers");
      return glmp::Status::Responded;
    }
    if (action == "read") {
      r.set_attribute("probe.headers_read", std::string(r.method()) + "|" + std::string(r.path()) + "|" +
                                                std::string(r.query()) + "|" + opt(r.client_header("x-client")) +
                                                "|body=" + std::string(r.body()) + "|model=" + opt(r.body_member("model")));
    }
    return glmp::Status::Continue;
  }

  glmp::Status on_request(glmp::Request& r) override {
    const std::string action = opt(r.header("X-Probe"));
    if (action == "throw") throw std::runtime_error("on_request exploded");
    if (action == "throw-int") throw 7;
    if (action == "bad-alloc") throw std::bad_alloc();
    if (action == "bad-status") return static_cast<glmp::Status>(9);
    if (action == "error") return glmp::Status::Error;
    if (action == "late-route") {
      host().register_route("GET", "/late", glmp::Access::Public, [](glmp::Request&) {});
      return glmp::Status::Continue;
    }
    if (action == "respond") {
      r.respond(418, "text/plain", "teapot");
      return glmp::Status::Responded;
    }
    if (action == "respond-error") {
      r.respond_error(429, "slow down", "rate_limit_error");
      return glmp::Status::Responded;
    }
    if (action == "respond-error-default") {
      r.respond_error(401, "who are you");
      return glmp::Status::Responded;
    }
    if (action == "read") {
      std::string s;
      s += std::string(r.id()) + "|" + std::string(r.method()) + "|" + std::string(r.path()) + "|" +
           std::string(r.query()) + "|" + (r.flavour() == glmp::Flavour::Anthropic ? "anthropic" : "openai") + "|" +
           (r.streaming() ? "stream" : "nostream") + "|" + std::string(r.model()) + "|" + std::string(r.body()) +
           "|" + opt(r.header("x-multi", 0)) + "|" + opt(r.header("X-MULTI", 1)) + "|" + opt(r.header("x-multi", 2)) +
           "|" + opt(r.attribute("auth.key_id")) + "|" + opt(r.attribute("nope"));
      r.set_attribute("probe.read", s);
      return glmp::Status::Continue;
    }
    if (action == "body-member") {  // ABI 1.4
      r.set_attribute("probe.body_member", opt(r.body_member("model")) + "|" + opt(r.body_member("max_tokens")) + "|" +
                                               opt(r.body_member("role")) + "|" + opt(r.body_member("absent")));
      return glmp::Status::Continue;
    }
    if (action == "write") {
      r.set_model("glm-4.6");
      r.set_header("X-Added", "1");
      r.remove_header("X-Remove-Me");
      r.set_body(std::string_view("{\"a\":\0}", 7));  // embedded NUL survives (pointer + length)
      r.set_attribute("probe.written", "yes");
      r.set_response_header("X-From-Request", tag_);
      r.remove_response_header("X-Gone");
      r.remove_header("X-Probe");
      return glmp::Status::Continue;
    }
    return glmp::Status::Continue;
  }

  void on_response_headers(glmp::Request& r) override {
    if (r.attribute("probe.throw_headers")) throw std::runtime_error("headers exploded");
    r.set_response_header("X-Seen-Status", std::to_string(r.response_status()));
    r.set_response_header("X-Seen-Upstream", opt(r.response_header("X-Upstream")));
  }

  void on_response_body(glmp::Request& r, std::string_view chunk, bool end_of_stream) override {
    if (chunk == "throw") throw std::runtime_error("body exploded");
    std::string seen = opt(r.attribute("probe.body"));
    if (seen == "<none>") seen.clear();
    seen += chunk;
    if (end_of_stream) seen += "<eos>";
    r.set_attribute("probe.body", seen);
  }

  void on_complete(glmp::Request& r) override {
    if (r.attribute("probe.throw_complete")) throw 3.5;
    const glmp::Usage u = r.usage();
    r.set_attribute("probe.usage", std::string(u.seen ? "seen" : "unseen") + "," + std::to_string(u.input_tokens) +
                                       "," + std::to_string(u.output_tokens) + "," +
                                       std::to_string(u.cache_read_input_tokens) + "," +
                                       std::to_string(u.cache_creation_input_tokens) + "," +
                                       std::to_string(u.total_tokens));
  }

 private:
  const std::string tag_;
};

}  // namespace

GLMP_PLUGIN(Probe, "probe", "0.0.1");
