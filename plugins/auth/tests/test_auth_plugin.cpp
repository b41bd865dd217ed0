// The built auth.so through the SDK's fake host (glmproxy/fake_host.hpp): which checks run in the
// headers phase (before the core reads the body) and which in on_request, that on_request reuses
// the headers phase's lookup instead of asking the store again, and that the last_used write-back
// never undoes an admin change that lands between its read and its write.
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include <glmproxy/fake_host.hpp>
#include <nlohmann/json.hpp>

namespace {

using glmp::testing::FakeHost;
using glmp::testing::FakeRequest;
using glmp::testing::PluginInstance;
using glmp::testing::PluginLibrary;
using Json = nlohmann::json;

const std::string kRequired = "API key required. Use Authorization: Bearer <key> or x-api-key: <key>";

struct Key {
  std::string id, plain;
};

class AuthPlugin : public ::testing::Test {
protected:
  PluginLibrary lib{AUTH_SO};
  FakeHost host;
  std::unique_ptr<PluginInstance> auth;

  void start(const std::string& settings = "{}") { auth = std::make_unique<PluginInstance>(lib.descriptor(), host, settings); }

  FakeRequest admin(const std::string& method, const std::string& path, const std::string& body = "") {
    FakeRequest r;
    r.method = method;
    r.path = path;
    r.body = body;
    EXPECT_TRUE(auth->call_route(r)) << method << " " << path;
    return r;
  }
  Key create(const std::string& body) {
    FakeRequest r = admin("POST", "/admin/keys", body);
    EXPECT_EQ(r.respond_status, 201) << r.respond_body;
    const Json j = Json::parse(r.respond_body, nullptr, false);
    if (!j.is_object()) return {"<none>", "<none>"};
    return {j.value("id", "<none>"), j.value("key", "<none>")};
  }
  // A proxied OpenAI request whose body asks for gpt-4o.
  static FakeRequest proxied(const std::string& authorization) {
    FakeRequest r;
    r.body = R"({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})";
    if (!authorization.empty()) r.client_headers.push_back({"Authorization", authorization});
    return r;
  }
  double lookups(const std::string& result) const {
    const auto m = host.metric("glmp_auth_lookups_total", {{"result", result}});
    return m ? m->value : -1;
  }
};

TEST_F(AuthPlugin, DescriptorHasTheHeadersHook) {
  const glmp_plugin_descriptor* d = lib.descriptor();
  EXPECT_EQ(d->struct_size, sizeof(glmp_plugin_descriptor));
  EXPECT_EQ(d->abi_minor, GLMP_ABI_MINOR);
  EXPECT_NE(d->on_request_headers, nullptr);
  EXPECT_NE(d->on_request, nullptr);
}

// Missing, empty, unknown, disabled and expired keys are refused in the headers phase, i.e.
// without the body; on_request is not needed for them.
TEST_F(AuthPlugin, CredentialChecksRunInTheHeadersPhase) {
  start();
  const Key disabled = create(R"({"name":"off","enabled":false})");
  const Key expired = create(R"({"name":"old","expiry_date":"2020-01-01T00:00:00Z"})");
  struct Case {
    std::string authorization;
    int status;
    std::string message;
  };
  const Case cases[] = {
      {"", 401, kRequired},
      {"Basic dXNlcjpwYXNz", 401, kRequired},
      {"Bearer ", 401, "API key is empty"},
      {"Bearer pk_unknownUnknownUnknownUnknownUnknown1234", 401, "Invalid API key"},
      {"Bearer " + disabled.plain, 403, "API key is disabled"},
      {"Bearer " + expired.plain, 403, "API key expired on 2020-01-01T00:00:00Z"},
  };
  for (const Case& c : cases) {
    FakeRequest r = proxied(c.authorization);
    EXPECT_EQ(auth->on_request_headers(r), GLMP_RESPONDED) << c.authorization;
    EXPECT_TRUE(r.respond_was_error) << c.authorization;
    EXPECT_EQ(r.respond_status, c.status) << c.authorization;
    EXPECT_EQ(r.respond_body, c.message) << c.authorization;
    EXPECT_FALSE(r.attribute("auth.key_id")) << c.authorization;
  }
  // The same refusals still come from on_request alone (a host that ran no headers phase).
  FakeRequest direct = proxied("Bearer " + disabled.plain);
  EXPECT_EQ(auth->on_request(direct), GLMP_RESPONDED);
  EXPECT_EQ(direct.respond_status, 403);
}

// What needs the body (the client's model against allowed_models) stays in on_request: the headers
// phase lets such a key through, on_request refuses the model.
TEST_F(AuthPlugin, ModelChecksStayInOnRequest) {
  start();
  const Key limited = create(R"({"name":"limited","allowed_models":["glm-4.5-air"]})");
  FakeRequest r = proxied("Bearer " + limited.plain);
  EXPECT_EQ(auth->on_request_headers(r), GLMP_CONTINUE) << r.respond_body;
  EXPECT_FALSE(r.responded);
  EXPECT_EQ(auth->on_request(r), GLMP_RESPONDED);
  EXPECT_EQ(r.respond_status, 403);
  EXPECT_EQ(r.respond_body, "Model 'gpt-4o' is not allowed for this API key");

  FakeRequest ok = proxied("Bearer " + limited.plain);
  ok.body = R"({"model":"glm-4.5-air"})";
  EXPECT_EQ(auth->request_hooks(ok), GLMP_CONTINUE) << ok.respond_body;
  EXPECT_EQ(ok.model, "glm-4.5-air");
  EXPECT_EQ(ok.attribute("auth.key_id"), limited.id);
  EXPECT_EQ(ok.attribute("auth.model"), "glm-4.5-air");
}

// on_request finds the key the headers phase looked up without asking the store again: with the
// store gone between the two phases, on_request still continues with the key's facts; and only one
// lookup is counted per request.
TEST_F(AuthPlugin, OnRequestReusesTheHeadersPhaseLookup) {
  start();
  const Key k = create(R"({"name":"reuse","model":"glm-4.5-air"})");
  FakeRequest r = proxied("Bearer " + k.plain);
  ASSERT_EQ(auth->on_request_headers(r), GLMP_CONTINUE) << r.respond_body;
  EXPECT_EQ(lookups("store"), 1);
  EXPECT_EQ(lookups("cache_hit"), 0);
  host.store_mode = FakeHost::StoreMode::Unavailable;
  EXPECT_EQ(auth->on_request(r), GLMP_CONTINUE) << r.respond_body;
  EXPECT_EQ(r.attribute("auth.key_id"), k.id);
  EXPECT_EQ(r.model, "glm-4.5-air");
  EXPECT_EQ(lookups("store"), 1) << "on_request went to the store again";
  EXPECT_EQ(lookups("cache_hit"), 0) << "the re-read in on_request was counted as a second lookup";
  auth->on_complete(r);
  host.store_mode = FakeHost::StoreMode::Normal;

  FakeRequest again = proxied("Bearer " + k.plain);
  EXPECT_EQ(auth->request_hooks(again), GLMP_CONTINUE);
  EXPECT_EQ(lookups("store"), 1);
  EXPECT_EQ(lookups("cache_hit"), 1);
}

// The last_used write-back and an admin change to the same key landing between the plugin's read
// and its write (another replica's PATCH, or this one's on another thread): the admin change must
// survive. Before the fix the write-back rewrote the whole key record from its earlier read and
// silently re-enabled a key an admin had just disabled.
TEST_F(AuthPlugin, LastUsedNeverUndoesAConcurrentAdminChange) {
  start(R"({"cache_size":0})");  // every lookup reads the store, so the admin change is seen at once
  const Key k = create(R"({"name":"raced"})");
  int patches = 0;
  host.on_store_put = [&](std::string_view, std::string_view) {
    if (patches++ != 0) return;  // the first write of the request: play the PATCH right before it
    auto& stored = host.records["keys"][k.id];
    Json rec = Json::parse(stored);
    rec["enabled"] = false;
    stored = rec.dump();
  };
  FakeRequest r = proxied("Bearer " + k.plain);
  ASSERT_EQ(auth->request_hooks(r), GLMP_CONTINUE) << r.respond_body;  // admitted before the PATCH
  auth->on_complete(r);
  host.on_store_put = nullptr;
  ASSERT_EQ(patches, 1) << "the request wrote nothing: last_used was not recorded";

  const auto stored = host.record("keys", k.id);
  ASSERT_TRUE(stored);
  EXPECT_EQ(Json::parse(*stored).value("enabled", true), false) << "the last_used write-back undid the PATCH: " << *stored;
  FakeRequest shown = admin("GET", "/admin/keys/" + k.id);
  ASSERT_EQ(shown.respond_status, 200) << shown.respond_body;
  const Json view = Json::parse(shown.respond_body);
  EXPECT_EQ(view.value("enabled", true), false) << view.dump();
  EXPECT_TRUE(view.contains("last_used") && view["last_used"].is_string()) << "last_used not recorded: " << view.dump();
  FakeRequest next = proxied("Bearer " + k.plain);
  EXPECT_EQ(auth->on_request_headers(next), GLMP_RESPONDED);
  EXPECT_EQ(next.respond_status, 403);
  EXPECT_EQ(next.respond_body, "API key is disabled");
}

}  // namespace
