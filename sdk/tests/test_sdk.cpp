// The SDK's C boundary, through the fake host: accessors map to the right host functions,
// exceptions never escape (GLMP_ERROR / refusal / logged), the ABI 1.2 headers phase, routes (and
// the core-route guard), descriptors, unloading.
#include <glmproxy/fake_host.hpp>

#include <cstddef>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace {

using glmp::testing::Checks;
using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;

FakeRequest with_action(const char* action) {
  FakeRequest r;
  r.headers.push_back({"X-Probe", action});
  return r;
}

std::string config_error(const glmp_plugin_descriptor* d, std::string_view settings, std::size_t cap = 512) {
  FakeHost host;
  std::string error(cap + 8, '#');
  glmp_config_plugin_ptr* p = d->on_config_new(host.api(), host.instance(), settings.data(), settings.size(),
                                               cap == 0 ? nullptr : error.data(), cap);
  if (p != nullptr) {
    d->on_config_destroy(p);
    return "<accepted>";
  }
  if (cap == 0) return "";
  if (error.find('\0') == std::string::npos || error.find('\0') >= cap) return "<not NUL-terminated>";
  return error.substr(0, error.find('\0'));
}

void descriptors(Checks& c, const PluginLibrary& probe, const PluginLibrary& minimal) {
  const glmp_plugin_descriptor* d = probe.descriptor();
  GLMP_EXPECT(c, std::strcmp(d->name, "probe") == 0 && std::strcmp(d->version, "0.0.1") == 0);
  GLMP_EXPECT(c, d->on_request && d->on_response_headers && d->on_response_body && d->on_complete);
  GLMP_EXPECT(c, d->on_request_headers != nullptr);
  GLMP_EXPECT(c, d->struct_size == sizeof(glmp_plugin_descriptor) && d->abi_minor == GLMP_ABI_MINOR);
  const glmp_plugin_descriptor* m = minimal.descriptor();
  GLMP_EXPECT(c, std::strcmp(m->name, "minimal") == 0 && std::strcmp(m->version, "1") == 0);
  GLMP_EXPECT(c, m->on_config_new && m->on_config_destroy);
  GLMP_EXPECT(c, !m->on_request && !m->on_response_headers && !m->on_response_body && !m->on_complete);
  GLMP_EXPECT(c, !m->on_request_headers);
  GLMP_EXPECT(c, minimal.init(GLMP_ABI_MAJOR + 1, GLMP_ABI_MINOR) == nullptr);
  GLMP_EXPECT(c, minimal.init(GLMP_ABI_MAJOR, GLMP_ABI_MINOR + 7) == m);
  // Same descriptor every time (static storage).
  GLMP_EXPECT(c, probe.descriptor() == d);

  FakeHost host;
  PluginInstance inst(m, host, "{}");
  FakeRequest r;
  GLMP_EXPECT(c, inst.on_request(r) == GLMP_CONTINUE);
}

void accessors(Checks& c, PluginInstance& p) {
  FakeRequest r = with_action("read");
  r.id = "rid-7";
  r.method = "POST";
  r.path = "/v1/messages";
  r.query = "beta=true";
  r.flavour = GLMP_FLAVOUR_ANTHROPIC;
  r.streaming = true;
  r.model = "glm-4.5";
  r.body = R"({"model":"glm-4.5"})";
  r.headers.push_back({"X-Multi", "one"});
  r.headers.push_back({"x-multi", "two"});
  r.attributes["auth.key_id"] = "k1";
  GLMP_EXPECT(c, p.on_request(r) == GLMP_CONTINUE);
  GLMP_EXPECT(c, r.attribute("probe.read") ==
                     R"(rid-7|POST|/v1/messages|beta=true|anthropic|stream|glm-4.5|{"model":"glm-4.5"}|one|two|<none>|k1|<none>)");

  FakeRequest w = with_action("write");
  w.headers.push_back({"X-Remove-Me", "x"});
  w.response_headers.push_back({"X-Gone", "x"});
  GLMP_EXPECT(c, p.on_request(w) == GLMP_CONTINUE);
  GLMP_EXPECT(c, w.model_set && w.model == "glm-4.6");
  GLMP_EXPECT(c, w.header("X-Added") == "1");
  GLMP_EXPECT(c, !w.header("X-Remove-Me") && !w.header("X-Probe"));
  GLMP_EXPECT(c, w.body == std::string("{\"a\":\0}", 7));
  GLMP_EXPECT(c, w.attribute("probe.written") == "yes");
  GLMP_EXPECT(c, w.response_header("X-From-Request") == "tagged");
  GLMP_EXPECT(c, !w.response_header("X-Gone"));

  w.response_status = 201;
  w.response_headers.push_back({"X-Upstream", "up"});
  p.on_response_headers(w);
  GLMP_EXPECT(c, w.response_header("X-Seen-Status") == "201");
  GLMP_EXPECT(c, w.response_header("X-Seen-Upstream") == "up");

  p.on_response_body(w, "ab", false);
  p.on_response_body(w, "", false);
  p.on_response_body(w, "cd", true);
  GLMP_EXPECT(c, w.attribute("probe.body") == "abcd<eos>");

  w.usage.seen = 1;
  w.usage.input_tokens = 10;
  w.usage.output_tokens = 20;
  w.usage.cache_read_input_tokens = 3;
  w.usage.cache_creation_input_tokens = 4;
  w.usage.total_tokens = 30;
  p.on_complete(w);
  GLMP_EXPECT(c, w.attribute("probe.usage") == "seen,10,20,3,4,30");
}

void answering(Checks& c, PluginInstance& p) {
  FakeRequest r = with_action("respond");
  GLMP_EXPECT(c, p.on_request(r) == GLMP_RESPONDED);
  GLMP_EXPECT(c, r.responded && r.respond_status == 418 && r.respond_content_type == "text/plain" &&
                     r.respond_body == "teapot");
  FakeRequest e = with_action("respond-error");
  GLMP_EXPECT(c, p.on_request(e) == GLMP_RESPONDED);
  GLMP_EXPECT(c, e.respond_was_error && e.respond_status == 429 && e.respond_body == "slow down" &&
                     e.error_type == "rate_limit_error");
  FakeRequest d = with_action("respond-error-default");
  GLMP_EXPECT(c, p.on_request(d) == GLMP_RESPONDED);
  GLMP_EXPECT(c, d.respond_was_error && d.respond_status == 401 && d.error_type.empty());
  FakeRequest x = with_action("error");
  GLMP_EXPECT(c, p.on_request(x) == GLMP_ERROR);
}

void exceptions_in_hooks(Checks& c, FakeHost& host, PluginInstance& p) {
  FakeRequest a = with_action("throw");
  GLMP_EXPECT(c, p.on_request(a) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("on_request failed: on_request exploded"));
  FakeRequest b = with_action("throw-int");
  GLMP_EXPECT(c, p.on_request(b) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("on_request failed: unknown exception"));
  FakeRequest m = with_action("bad-alloc");
  GLMP_EXPECT(c, p.on_request(m) == GLMP_ERROR);
  FakeRequest s = with_action("bad-status");
  GLMP_EXPECT(c, p.on_request(s) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("invalid glmp::Status"));
  FakeRequest l = with_action("late-route");
  GLMP_EXPECT(c, p.on_request(l) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("register_route is allowed only in the plugin's constructor"));

  FakeRequest h;
  h.attributes["probe.throw_headers"] = "1";
  p.on_response_headers(h);  // must not throw
  GLMP_EXPECT(c, host.logged("on_response_headers failed: headers exploded"));
  p.on_response_body(h, "throw", false);
  GLMP_EXPECT(c, host.logged("on_response_body failed: body exploded"));
  h.attributes["probe.throw_complete"] = "1";
  p.on_complete(h);
  GLMP_EXPECT(c, host.logged("on_complete failed: unknown exception"));
  for (const auto& line : host.logs()) {
    if (line.message.find("failed") != std::string::npos) GLMP_EXPECT(c, line.level == GLMP_LOG_ERROR);
  }
}

// ABI 1.4: Request::body_member, a top-level member of the body as raw JSON text; nullopt for a
// nested or absent member, and on a host whose table ends before request_body_member.
void body_member(Checks& c, const glmp_plugin_descriptor* d) {
  FakeHost host;
  FakeRequest r = with_action("body-member");
  r.body = R"({"model" : "glm-4.7", "messages":[{"role":"user"}], "max_tokens": 64})";
  {
    PluginInstance p(d, host, "{}");
    GLMP_EXPECT(c, p.on_request(r) == GLMP_CONTINUE);
    GLMP_EXPECT(c, r.attribute("probe.body_member") == R"("glm-4.7"|64|<none>|<none>)");
  }
  FakeHost old;
  old.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, request_body_member));
  PluginInstance p(d, old, "{}");
  FakeRequest o = with_action("body-member");
  o.body = r.body;
  GLMP_EXPECT(c, p.on_request(o) == GLMP_CONTINUE);
  GLMP_EXPECT(c, o.attribute("probe.body_member") == "<none>|<none>|<none>|<none>");
}

// ABI 1.2: on_request_headers through the boundary, and the fake host running it as the core does.
void headers_phase(Checks& c, FakeHost& host, PluginInstance& p, const glmp_plugin_descriptor* d) {
  FakeRequest r;
  r.method = "POST";
  r.path = "/v1/chat/completions";
  r.query = "q=1";
  r.body = R"({"model":"m"})";
  r.headers.push_back({"X-Probe-Headers", "read"});
  r.client_headers.push_back({"X-Client", "c1"});
  GLMP_EXPECT(c, p.has_request_headers_hook());
  GLMP_EXPECT(c, p.on_request_headers(r) == GLMP_CONTINUE);
  // The body is not read yet in the headers phase: "" there, and back afterwards.
  GLMP_EXPECT(c, r.attribute("probe.headers_read") == "POST|/v1/chat/completions|q=1|c1|body=|model=<none>");
  GLMP_EXPECT(c, r.body == R"({"model":"m"})");

  FakeRequest refused;
  refused.headers.push_back({"X-Probe-Headers", "refuse"});
  refused.headers.push_back({"X-Probe", "respond"});  // on_request would answer 418
  GLMP_EXPECT(c, p.request_hooks(refused) == GLMP_RESPONDED);
  GLMP_EXPECT(c, refused.respond_was_error && refused.respond_status == 401 &&
                     refused.respond_body == "refused from the headers");
  FakeRequest passed = with_action("respond");
  GLMP_EXPECT(c, p.request_hooks(passed) == GLMP_RESPONDED);
  GLMP_EXPECT(c, passed.respond_status == 418);
  FakeRequest both = with_action("write");
  GLMP_EXPECT(c, p.request_hooks(both) == GLMP_CONTINUE);
  GLMP_EXPECT(c, both.attribute("probe.written") == "yes");

  FakeRequest t;
  t.headers.push_back({"X-Probe-Headers", "throw"});
  GLMP_EXPECT(c, p.on_request_headers(t) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("on_request_headers failed: on_request_headers exploded"));
  FakeRequest b;
  b.headers.push_back({"X-Probe-Headers", "bad-status"});
  GLMP_EXPECT(c, p.on_request_headers(b) == GLMP_ERROR);
  GLMP_EXPECT(c, host.logged("on_request_headers returned an invalid glmp::Status"));
  FakeRequest e;
  e.headers.push_back({"X-Probe-Headers", "error"});
  GLMP_EXPECT(c, p.on_request_headers(e) == GLMP_ERROR);
  GLMP_EXPECT(c, !e.responded);

  // A descriptor whose struct_size ends before the member (an ABI 1.0/1.1 plugin) has no headers
  // hook, whatever the bytes after it hold: the fake host, like the core, does not call it.
  glmp_plugin_descriptor old = *d;
  old.struct_size = static_cast<std::uint32_t>(offsetof(glmp_plugin_descriptor, on_request_headers));
  FakeHost old_host;
  PluginInstance old_plugin(&old, old_host, "{}");
  FakeRequest o;
  o.headers.push_back({"X-Probe-Headers", "refuse"});
  GLMP_EXPECT(c, !old_plugin.has_request_headers_hook());
  GLMP_EXPECT(c, old_plugin.on_request_headers(o) == GLMP_CONTINUE && !o.responded);
  GLMP_EXPECT(c, old_plugin.request_hooks(o) == GLMP_CONTINUE && !o.responded);
}

// The fake host refuses the routes the core refuses: anything that would match or shadow a core route.
void core_route_guard(Checks& c) {
  for (const char* path : {"/health", "/metrics", "/api/metrics/prometheus", "/admin/reload", "/admin/plugins", "/v1",
                           "/v1/models", "/v1*", "/v1/*", "/heal*", "/*", "/admin/*", "/m*", "/api/*"})
    GLMP_EXPECT(c, FakeHost::shadows_core_route(path));
  for (const char* path : {"/admin/keys", "/admin/keys/*", "/stats", "/healthz", "/v1x", "/v2/*", "/metrics/*"})
    GLMP_EXPECT(c, !FakeHost::shadows_core_route(path));
  FakeHost host;
  auto handler = [](glmp_config_plugin_ptr*, glmp_request_host_ptr*, void*) {};
  auto reg = [&](std::string_view path) {
    return host.api()->register_route(host.instance(), "GET", 3, path.data(), path.size(), GLMP_ACCESS_PUBLIC, handler,
                                      nullptr);
  };
  GLMP_EXPECT(c, reg("/v1*") == -1 && reg("/heal*") == -1 && reg("/*") == -1 && reg("/admin/reload") == -1);
  GLMP_EXPECT(c, reg("no-slash") == -1);
  GLMP_EXPECT(c, host.routes.empty());
  GLMP_EXPECT(c, reg("/mine/*") == 0 && host.routes.size() == 1);
}

void routes(Checks& c, FakeHost& host, PluginInstance& p) {
  GLMP_EXPECT(c, host.routes.size() == 7);
  const auto* ok = host.find_route("GET", "/probe/ok");
  GLMP_EXPECT(c, ok != nullptr && ok->access == GLMP_ACCESS_ADMIN);
  const auto* st = host.find_route("GET", "/probe/stream");
  GLMP_EXPECT(c, st != nullptr && st->access == GLMP_ACCESS_KEY);

  FakeRequest r;
  r.method = "GET";
  r.path = "/probe/ok";
  GLMP_EXPECT(c, p.call_route(r));
  GLMP_EXPECT(c, r.respond_status == 200 && r.respond_body == "tagged GET /probe/ok");

  FakeRequest t;
  t.method = "GET";
  t.path = "/probe/throw";
  GLMP_EXPECT(c, p.call_route(t));
  GLMP_EXPECT(c, t.respond_was_error && t.respond_status == 500);
  GLMP_EXPECT(c, host.logged("route handler failed: route exploded"));

  FakeRequest ti;
  ti.method = "GET";
  ti.path = "/probe/throw-int";
  GLMP_EXPECT(c, p.call_route(ti));
  GLMP_EXPECT(c, ti.respond_was_error && ti.respond_status == 500);

  FakeRequest s;
  s.method = "GET";
  s.path = "/probe/silent";
  GLMP_EXPECT(c, p.call_route(s));
  GLMP_EXPECT(c, s.respond_was_error && s.respond_status == 500);
  GLMP_EXPECT(c, host.logged("route handler returned without answering"));

  FakeRequest sm;
  sm.method = "GET";
  sm.path = "/probe/stream";
  GLMP_EXPECT(c, p.call_route(sm));
  GLMP_EXPECT(c, sm.stream_begun && sm.stream_ended && sm.stream_status == 200 &&
                     sm.stream_content_type == "text/event-stream" && sm.streamed == "data: 1\n\ndata: 2\n\n");
  GLMP_EXPECT(c, !sm.responded);

  FakeRequest gone;
  gone.method = "GET";
  gone.path = "/probe/stream";
  gone.client_gone = true;
  GLMP_EXPECT(c, p.call_route(gone));
  GLMP_EXPECT(c, gone.stream_ended && gone.streamed.empty());

  FakeRequest sx;
  sx.method = "GET";
  sx.path = "/probe/stream-throw";
  GLMP_EXPECT(c, p.call_route(sx));
  GLMP_EXPECT(c, sx.stream_begun && sx.stream_ended && sx.streamed == "data: 1\n\n" && !sx.responded);

  FakeRequest px;
  px.method = "DELETE";
  px.path = "/probe/prefix/a/b";
  GLMP_EXPECT(c, p.call_route(px));
  GLMP_EXPECT(c, px.respond_body == "/probe/prefix/a/b");
}

void refusals(Checks& c, const glmp_plugin_descriptor* d) {
  GLMP_EXPECT(c, config_error(d, R"({"throw_in_ctor":"no thanks"})") == "no thanks");
  GLMP_EXPECT(c, config_error(d, R"({"throw_int_in_ctor":true})").find("unknown exception") != std::string::npos);
  GLMP_EXPECT(c, config_error(d, R"({"tag": 1})") == R"(setting "tag" must be a string, not number)");
  GLMP_EXPECT(c, config_error(d, "{").find("settings are not valid JSON") == 0);
  GLMP_EXPECT(c, config_error(d, R"("str")") == "settings must be a JSON object, not string");
  GLMP_EXPECT(c, config_error(d, "{}") == "<accepted>");
  GLMP_EXPECT(c, config_error(d, "") == "<accepted>");
  // Truncated to error_cap - 1 bytes, NUL-terminated, never past the buffer.
  GLMP_EXPECT(c, config_error(d, R"({"throw_in_ctor":"0123456789"})", 8) == "0123456");
  GLMP_EXPECT(c, config_error(d, R"({"throw_in_ctor":"0123456789"})", 1).empty());
  GLMP_EXPECT(c, config_error(d, R"({"throw_in_ctor":"0123456789"})", 0).empty());
  // Never cut a UTF-8 sequence: "é" is 2 bytes; cap 3 leaves room for "a" + half of it -> "a".
  GLMP_EXPECT(c, config_error(d, "{\"throw_in_ctor\":\"a\xC3\xA9z\"}", 3) == "a");

  // A route registered before the constructor threw: refused, nothing leaks or dangles on our side.
  GLMP_EXPECT(c, config_error(d, R"({"register_then_throw":true})") == "after register");

  // Host table checks.
  FakeHost old;
  old.mutable_api().struct_size = static_cast<std::uint32_t>(offsetof(glmp_host_api, register_route));
  char error[256] = {0};
  GLMP_EXPECT(c, d->on_config_new(old.api(), old.instance(), "{}", 2, error, sizeof error) == nullptr);
  GLMP_EXPECT(c, std::string(error).find("host API table") != std::string::npos);
  GLMP_EXPECT(c, d->on_config_new(nullptr, nullptr, "{}", 2, error, sizeof error) == nullptr);
  FakeHost other;
  other.mutable_api().abi_major = GLMP_ABI_MAJOR + 1;
  GLMP_EXPECT(c, d->on_config_new(other.api(), other.instance(), "{}", 2, error, sizeof error) == nullptr);
  // A NULL settings pointer with length 0 is taken as {}.
  FakeHost fine;
  glmp_config_plugin_ptr* state = d->on_config_new(fine.api(), fine.instance(), nullptr, 0, error, sizeof error);
  GLMP_EXPECT(c, state != nullptr);
  if (state != nullptr) d->on_config_destroy(state);
}

}  // namespace

int main() {
  Checks c;
  try {
    PluginLibrary probe(GLMP_PROBE_PLUGIN);
    PluginLibrary minimal(GLMP_MINIMAL_PLUGIN);
    descriptors(c, probe, minimal);
    refusals(c, probe.descriptor());
    {
      FakeHost host;
      PluginInstance p(probe.descriptor(), host, R"({"tag":"tagged"})");
      GLMP_EXPECT(c, host.logged("probe ready"));
      accessors(c, p);
      answering(c, p);
      exceptions_in_hooks(c, host, p);
      headers_phase(c, host, p, probe.descriptor());
      routes(c, host, p);
    }
    core_route_guard(c);
    body_member(c, probe.descriptor());
    probe.close();
    minimal.close();
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(GLMP_PROBE_PLUGIN));
    GLMP_EXPECT(c, !PluginLibrary::is_loaded(GLMP_MINIMAL_PLUGIN));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    GLMP_EXPECT(c, false);
  }
  return c.finish();
}
