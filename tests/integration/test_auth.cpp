// The auth plugin (plugins/auth, contract in plugins/auth/README.md) with the real binary: every
// refusal in both API flavours (and the upstream never called for them), the credential sources and
// their precedence, what reaches the upstream (never the client's key; the per-key model), the
// admin API, the old apikeys.json import (by API and by the import_file setting), persistence
// across a clean restart and kill -9, immediate revocation, and no plain key in any log or file.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Timespan.h>

#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

const std::string kAuthSo = plugin_path("auth");
const std::map<std::string, std::string> kAdmin{{"Authorization", "Bearer t0ken-admin"}};
const std::string kRequired = "API key required. Use Authorization: Bearer <key> or x-api-key: <key>";
const std::string kEmpty = "API key is empty";
const std::string kInvalid = "Invalid API key";
const std::string kDisabled = "API key is disabled";

using Headers = std::map<std::string, std::string>;

std::string auth_toml(const std::string& settings) {
  return "\n[admin]\ntoken = \"t0ken-admin\"\n\n[[plugins]]\nname = \"auth\"\npath = \"" + kAuthSo + "\"\n" +
         (settings.empty() ? "" : "[plugins.settings]\n" + settings + "\n");
}

// Number of elements of the array at `path` (-1 if it is not an array).
long jlen(const std::string& json, const std::string& path) {
  try {
    auto v = Poco::JSON::Parser().parse(json_get(json, path));
    return static_cast<long>(v.extract<Poco::JSON::Array::Ptr>()->size());
  } catch (...) {
    return -1;
  }
}

// The model the upstream received, from an x-mock-echo answer.
std::string echoed_model(const Response& r) { return jget(jget(r.body, "body"), "model"); }

// The masked form (plugins/auth/README.md): at most the first 7 and last 4 characters, and no more
// than a third / a quarter of the key, so short custom keys reveal proportionally less.
std::string masked(const std::string& plain) {
  const size_t prefix = std::min<size_t>(7, plain.size() / 3), suffix = std::min<size_t>(4, plain.size() / 4);
  return plain.substr(0, prefix) + "\xE2\x80\xA6" + plain.substr(plain.size() - suffix);
}

std::string default_type(int status) {
  return status == 401 ? "authentication_error" : status == 403 ? "permission_error" : "invalid_request_error";
}

// The refusal body in the caller's flavour, with the flavour's default error type.
void expect_refusal(const Response& r, bool anthropic, int status, const std::string& message, const std::string& what) {
  const std::string where = what + (anthropic ? " [anthropic]" : " [openai]") + ": " + r.body;
  EXPECT_EQ(r.status, status) << where;
  EXPECT_EQ(jget(r.body, "error.message"), message) << where;
  EXPECT_EQ(jget(r.body, "error.type"), default_type(status)) << where;
  if (anthropic) {
    EXPECT_EQ(jget(r.body, "type"), "error") << where;
  } else {
    EXPECT_EQ(jget(r.body, "type"), "<missing>") << where;
  }
}

// An admin API validation error: 400 naming `field`.
void expect_invalid(const Response& r, const std::string& field, const std::string& what) {
  EXPECT_EQ(r.status, 400) << what << ": " << r.body;
  EXPECT_EQ(jget(r.body, "error.type"), "invalid_request_error") << what << ": " << r.body;
  if (!field.empty()) {
    EXPECT_EQ(jget(r.body, "error.field"), field) << what << ": " << r.body;
    EXPECT_NE(jget(r.body, "error.message").find(field), std::string::npos) << what << ": " << r.body;
  }
}

struct Key {
  std::string id, plain;
};

const std::string kOldFile = R"({"keys":[
  {"key":"pk_user_12345","name":"User","model":"glm-4.5-air","token_limit_per_5h":100000,
   "expiry_date":"2099-12-31T23:59:59Z","created_at":"2026-01-18T00:00:00Z",
   "last_used":"2026-01-18T00:00:00Z","total_lifetime_tokens":1234,
   "usage_windows":[{"window_start":"2026-01-18T00:00:00Z","tokens_used":0}]},
  {"key":"pk_old_expired_67890","name":"Old","model":"glm-4.7","token_limit_per_5h":5000,
   "expiry_date":"2024-01-01T00:00:00Z","created_at":"2023-06-01T00:00:00Z",
   "last_used":"2023-12-31T00:00:00Z","total_lifetime_tokens":99,"usage_windows":[]}
]})";

class Auth : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  ProxyOptions opts;

  void start(const std::string& settings = "") {
    ASSERT_TRUE(fs::exists(kAuthSo)) << "auth plugin not built: " << kAuthSo;
    if (!mock) mock = std::make_unique<Mock>(dir);
    opts.extra_toml = auth_toml(settings);
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  // A clean stop (SIGTERM, the store flushes) and a new proxy on the same temp dir and options.
  void restart() {
    proxy.reset();
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  uint16_t port() const { return proxy->port(); }

  Response admin(const std::string& method, const std::string& path, const std::string& body = "") const {
    return http(port(), method, path, body, kAdmin);
  }
  Key create(const std::string& body) const {
    Response r = admin("POST", "/admin/keys", body);
    EXPECT_EQ(r.status, 201) << body << " -> " << r.body;
    if (r.status != 201) return {"<none>", "<none>"};
    return {jget(r.body, "id"), jget(r.body, "key")};
  }
  long upstream_requests() const { return mock->requests(); }
  // One non-streamed request in either flavour.
  Response call(bool anthropic, const Headers& h, const std::string& query = "") const {
    return http(port(), "POST", std::string(anthropic ? "/v1/messages" : "/v1/chat/completions") + query,
                anthropic ? anthropic_body(false) : openai_body(false), h);
  }
  Response bearer(const std::string& key, bool anthropic = false, Headers extra = {}) const {
    extra["Authorization"] = "Bearer " + key;
    return call(anthropic, extra);
  }
};

// ---------------------------------------------------------------------------------------------
// 1. Refusals

TEST_F(Auth, EveryRefusalInBothFlavoursNeverReachesTheUpstream) {
  start();
  const Key expired = create(R"({"name":"expired","expiry_date":"2020-01-01T00:00:00Z"})");
  const Key disabled = create(R"({"name":"disabled","enabled":false})");
  const Key limited = create(R"({"name":"limited","allowed_models":["glm-4.5-air"]})");
  const long before = upstream_requests();
  ASSERT_GE(before, 0);

  struct Case {
    std::string what;
    Headers headers;
    std::string query;
    int status;
    std::string message;  // "" = the allowed_models message for the flavour's model
  };
  const std::vector<Case> cases{
      {"no credential", {}, "", 401, kRequired},
      {"Basic only", {{"Authorization", "Basic dXNlcjpwYXNz"}}, "", 401, kRequired},
      {"empty Bearer", {{"Authorization", "Bearer "}}, "", 401, kEmpty},
      {"empty x-api-key", {{"x-api-key", ""}}, "", 401, kEmpty},
      {"empty ?api_key=", {}, "?api_key=", 401, kEmpty},
      {"empty ?api_key= among others", {}, "?a=1&api_key=&b=2", 401, kEmpty},
      {"unknown Bearer", {{"Authorization", "Bearer pk_unknownUnknownUnknownUnknownUnknown1234"}}, "", 401, kInvalid},
      {"unknown x-api-key", {{"x-api-key", "pk_unknownUnknownUnknownUnknownUnknown1234"}}, "", 401, kInvalid},
      {"unknown ?api_key", {}, "?api_key=pk_unknownUnknownUnknownUnknownUnknown1234", 401, kInvalid},
      {"expired", {{"Authorization", "Bearer " + expired.plain}}, "", 403, "API key expired on 2020-01-01T00:00:00Z"},
      {"disabled", {{"x-api-key", disabled.plain}}, "", 403, kDisabled},
      {"model not allowed", {{"Authorization", "Bearer " + limited.plain}}, "", 403, ""},
  };
  for (const auto& c : cases) {
    for (const bool anthropic : {false, true}) {
      const std::string message =
          !c.message.empty() ? c.message
                             : "Model '" + std::string(anthropic ? "claude-sonnet-4" : "gpt-4o") + "' is not allowed for this API key";
      expect_refusal(call(anthropic, c.headers, c.query), anthropic, c.status, message, c.what);
    }
  }
  // Streamed requests are refused the same way, before any stream starts.
  Response streamed = http(port(), "POST", "/v1/messages", anthropic_body(true));
  expect_refusal(streamed, true, 401, kRequired, "streamed, no credential");
  EXPECT_EQ(upstream_requests(), before) << "a refused request reached the upstream";
}

// Without a valid key a request is refused from its headers alone (auth's on_request_headers),
// before the core reads its body: a client that announces a large body and sends only its first
// bytes gets the 401 (or 403) at once, with Connection: close, and the connection is closed.
TEST_F(Auth, RefusedFromTheHeadersBeforeTheBodyIsRead) {
  start();
  const Key disabled = create(R"({"name":"off","enabled":false})");
  struct Case {
    std::string credential_header;
    int status;
    std::string message;
  };
  const std::vector<Case> cases{
      {"", 401, kRequired},
      {"Authorization: Bearer pk_unknownUnknownUnknownUnknownUnknown1234\r\n", 401, kInvalid},
      {"x-api-key: " + disabled.plain + "\r\n", 403, kDisabled},
  };
  const long before = upstream_requests();
  for (const Case& c : cases) {
    Poco::Net::StreamSocket sock(Poco::Net::SocketAddress("127.0.0.1", port()));
    sock.setReceiveTimeout(Poco::Timespan(3, 0));
    const std::string head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
                             c.credential_header + "Content-Length: 30000000\r\n\r\n{\"model\":";
    sock.sendBytes(head.data(), static_cast<int>(head.size()));
    const auto sent = std::chrono::steady_clock::now();
    std::string got;
    bool eof = false;
    char buf[4096];
    for (int i = 0; i < 100 && !eof; ++i) {  // bounded: bytes, EOF or a timeout each time
      int n = 0;
      try {
        n = sock.receiveBytes(buf, sizeof buf);
      } catch (const Poco::TimeoutException&) {
        break;
      }
      if (n <= 0) eof = true;
      else got.append(buf, static_cast<size_t>(n));
    }
    const auto waited = std::chrono::steady_clock::now() - sent;
    ASSERT_EQ(got.rfind("HTTP/1.1 " + std::to_string(c.status), 0), 0u) << c.message << ": " << got;
    EXPECT_LT(waited, 1500ms) << c.message << ": the refusal waited for the body";
    const size_t body_at = got.find("\r\n\r\n");
    ASSERT_NE(body_at, std::string::npos) << got;
    const std::string body = got.substr(body_at + 4);
    EXPECT_EQ(jget(body, "error.message"), c.message) << got;
    EXPECT_EQ(jget(body, "type"), "error") << "Anthropic flavour: " << got;
    std::string lower = got.substr(0, body_at);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
    EXPECT_NE(lower.find("connection: close"), std::string::npos) << got;
    EXPECT_TRUE(eof) << "the connection stayed open with an unread body: " << got;
  }
  EXPECT_EQ(upstream_requests(), before);
}

// last_used lives in its own record (key_last_used/<id>), so the write-back never rewrites the
// key record: the admin views still show it, next to every admin change.
TEST_F(Auth, LastUsedIsShownAlongsideAdminChanges) {
  start();
  const Key k = create(R"({"name":"used"})");
  ASSERT_EQ(bearer(k.plain).status, 200);
  std::string last_used;
  for (int i = 0; i < 100; ++i) {  // written after the request was admitted
    last_used = jget(admin("GET", "/admin/keys/" + k.id).body, "last_used");
    if (last_used != "null" && !last_used.empty()) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_NE(last_used, "null") << "last_used not recorded after a use";
  Response patched = admin("PATCH", "/admin/keys/" + k.id, R"({"name":"renamed","enabled":false})");
  ASSERT_EQ(patched.status, 200) << patched.body;
  EXPECT_EQ(jget(patched.body, "last_used"), last_used) << patched.body;
  EXPECT_EQ(jget(patched.body, "enabled"), "false") << patched.body;
  Response shown = admin("GET", "/admin/keys/" + k.id);
  EXPECT_EQ(jget(shown.body, "last_used"), last_used) << shown.body;
  EXPECT_EQ(jget(shown.body, "name"), "renamed") << shown.body;
  Response listed = admin("GET", "/admin/keys?search=renamed");
  EXPECT_EQ(jget(listed.body, "keys.0.last_used"), last_used) << listed.body;
  expect_refusal(bearer(k.plain), false, 403, kDisabled, "after the PATCH");
}

// ---------------------------------------------------------------------------------------------
// 2. Credential sources and precedence

TEST_F(Auth, EveryCredentialSourceAndTheirPrecedence) {
  start();
  const Key k = create(R"({"name":"sources"})");
  create(R"({"name":"special","key":"my+key/with=chars%"})");
  const std::string bad = "pk_wrongWrongWrongWrongWrongWrongWrongWrong1";
  for (const bool anthropic : {false, true}) {
    const std::string f = anthropic ? " [anthropic]" : " [openai]";
    EXPECT_EQ(call(anthropic, {{"Authorization", "Bearer " + k.plain}}).status, 200) << "Bearer" << f;
    EXPECT_EQ(call(anthropic, {{"Authorization", "bearer " + k.plain}}).status, 200) << "lower-case scheme" << f;
    EXPECT_EQ(call(anthropic, {{"Authorization", "BEARER   " + k.plain}}).status, 200) << "upper-case scheme, spaces" << f;
    EXPECT_EQ(call(anthropic, {{"x-api-key", k.plain}}).status, 200) << "x-api-key" << f;
    EXPECT_EQ(call(anthropic, {{"x-api-key", "  " + k.plain}}).status, 200) << "x-api-key, spaces" << f;
    EXPECT_EQ(call(anthropic, {}, "?api_key=" + k.plain).status, 200) << "?api_key" << f;
    EXPECT_EQ(call(anthropic, {}, "?x=1&api_key=%70" + k.plain.substr(1) + "&y=2").status, 200) << "?api_key percent-encoded" << f;
    EXPECT_EQ(call(anthropic, {}, "?api_key=my%2Bkey%2Fwith%3Dchars%25").status, 200) << "?api_key decoded" << f;
    EXPECT_EQ(call(anthropic, {{"Authorization", "Bearer my+key/with=chars%"}}).status, 200) << "custom key as Bearer" << f;
    // Precedence: Bearer > x-api-key > ?api_key.
    EXPECT_EQ(call(anthropic, {{"Authorization", "Bearer " + k.plain}, {"x-api-key", bad}}).status, 200)
        << "valid Bearer + invalid x-api-key" << f;
    expect_refusal(call(anthropic, {{"Authorization", "Bearer " + bad}, {"x-api-key", k.plain}}), anthropic, 401, kInvalid,
                   "invalid Bearer + valid x-api-key (Bearer wins)");
    EXPECT_EQ(call(anthropic, {{"x-api-key", k.plain}}, "?api_key=" + bad).status, 200) << "valid x-api-key + invalid ?api_key" << f;
    expect_refusal(call(anthropic, {{"x-api-key", bad}}, "?api_key=" + k.plain), anthropic, 401, kInvalid,
                   "invalid x-api-key + valid ?api_key (x-api-key wins)");
    EXPECT_EQ(call(anthropic, {{"Authorization", "Bearer " + bad}}, "?api_key=" + k.plain).status, 401)
        << "invalid Bearer + valid ?api_key" << f;
    // Another Authorization scheme is ignored.
    EXPECT_EQ(call(anthropic, {{"Authorization", "Basic dXNlcjpwYXNz"}, {"x-api-key", k.plain}}).status, 200)
        << "Basic + valid x-api-key" << f;
    EXPECT_EQ(call(anthropic, {{"Authorization", "Basic dXNlcjpwYXNz"}}, "?api_key=" + k.plain).status, 200)
        << "Basic + valid ?api_key" << f;
    // An empty source is not "the" credential when another one is present.
    EXPECT_EQ(call(anthropic, {{"Authorization", "Bearer "}, {"x-api-key", k.plain}}).status, 200)
        << "empty Bearer + valid x-api-key" << f;
    EXPECT_EQ(call(anthropic, {{"x-api-key", ""}}, "?api_key=" + k.plain).status, 200) << "empty x-api-key + valid ?api_key" << f;
  }
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. What reaches the upstream

TEST_F(Auth, TheClientsCredentialNeverReachesTheUpstream) {
  start();
  const Key k = create(R"({"name":"echo"})");
  // OpenAI route: every source at once; the upstream sees only the operator's credential.
  Response o = call(false, {{"Authorization", "Bearer " + k.plain}, {"x-api-key", k.plain}, {"x-mock-echo", "1"}},
                    "?foo=1&api_key=" + k.plain + "&bar=two");
  ASSERT_EQ(o.status, 200) << o.body;
  EXPECT_EQ(jget(o.body, "path"), "/api/coding/paas/v4/chat/completions") << o.body;
  EXPECT_EQ(jget(o.body, "headers.authorization"), "Bearer test-upstream-key") << o.body;
  EXPECT_EQ(jget(o.body, "headers.x-api-key"), "<missing>") << o.body;
  EXPECT_EQ(jget(o.body, "query"), "foo=1&bar=two") << o.body;
  EXPECT_EQ(o.body.find(k.plain), std::string::npos) << "the client's key reached the upstream: " << o.body;
  // ?api_key alone.
  Response q = call(false, {{"x-mock-echo", "1"}}, "?api_key=" + k.plain + "&keep=me");
  ASSERT_EQ(q.status, 200) << q.body;
  EXPECT_EQ(jget(q.body, "query"), "keep=me") << q.body;
  EXPECT_EQ(jget(q.body, "headers.authorization"), "Bearer test-upstream-key") << q.body;
  EXPECT_EQ(q.body.find(k.plain), std::string::npos) << q.body;
  // Anthropic route: the operator's x-api-key, no Authorization at all.
  Response a = call(true, {{"Authorization", "Bearer " + k.plain}, {"x-mock-echo", "1"}}, "?beta=true&api_key=" + k.plain);
  ASSERT_EQ(a.status, 200) << a.body;
  EXPECT_EQ(jget(a.body, "path"), "/api/anthropic/v1/messages") << a.body;
  EXPECT_EQ(jget(a.body, "headers.x-api-key"), "test-upstream-key") << a.body;
  EXPECT_EQ(jget(a.body, "headers.authorization"), "<missing>") << a.body;
  EXPECT_EQ(jget(a.body, "query"), "beta=true") << a.body;
  EXPECT_EQ(a.body.find(k.plain), std::string::npos) << a.body;
  Response ax = call(true, {{"x-api-key", k.plain}, {"x-mock-echo", "1"}});
  ASSERT_EQ(ax.status, 200) << ax.body;
  EXPECT_EQ(jget(ax.body, "headers.x-api-key"), "test-upstream-key") << ax.body;
  EXPECT_EQ(ax.body.find(k.plain), std::string::npos) << ax.body;
}

TEST_F(Auth, PerKeyModelAndAllowedModelsReachTheUpstream) {
  start();  // [proxy] model = "glm-4.7"
  const Key fixed = create(R"({"name":"fixed","model":"glm-4.5-air"})");
  const Key allowed = create(R"({"name":"allowed","allowed_models":["gpt-4o","claude-sonnet-4"]})");
  const Key plain = create(R"({"name":"plain"})");
  const Key fixed_and_list = create(R"({"name":"both","model":"glm-4.5-air","allowed_models":["other"]})");
  const Headers echo{{"x-mock-echo", "1"}};
  for (const bool anthropic : {false, true}) {
    const std::string f = anthropic ? " [anthropic]" : " [openai]";
    const std::string client_model = anthropic ? "claude-sonnet-4" : "gpt-4o";
    Response r = bearer(fixed.plain, anthropic, echo);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(echoed_model(r), "glm-4.5-air") << "the key's model replaces the client's and [proxy] model" << f;
    r = bearer(allowed.plain, anthropic, echo);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(echoed_model(r), client_model) << "an allowed client model passes through unchanged" << f;
    r = bearer(plain.plain, anthropic, echo);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(echoed_model(r), "glm-4.7") << "no key model: the core's [proxy] model applies" << f;
    r = bearer(fixed_and_list.plain, anthropic, echo);
    ASSERT_EQ(r.status, 200) << "a fixed model wins over allowed_models" << f << ": " << r.body;
    EXPECT_EQ(echoed_model(r), "glm-4.5-air") << f;
  }
  // Streamed too.
  StreamedResponse s = http_stream(port(), "POST", "/v1/chat/completions", openai_body(true),
                                   {{"Authorization", "Bearer " + fixed.plain}, {"x-mock-echo", "1"}});
  ASSERT_EQ(s.status, 200) << s.body();
  EXPECT_EQ(jget(jget(s.body(), "body"), "model"), "glm-4.5-air") << s.body();
}

// ---------------------------------------------------------------------------------------------
// 5. Admin API

TEST_F(Auth, AdminCreateListShow) {
  start();
  Response c = admin("POST", "/admin/keys",
                     R"({"name":"Alice Key","model":"glm-4.7","token_limit_per_5h":1000,)"
                     R"("expiry_date":"2030-01-01T00:00:00Z","metadata":{"team":"a"}})");
  ASSERT_EQ(c.status, 201) << c.body;
  const std::string alice = jget(c.body, "key");
  const std::string alice_id = jget(c.body, "id");
  EXPECT_EQ(alice.rfind("pk_", 0), 0u) << alice;
  EXPECT_GE(alice.size(), 40u) << alice;
  for (char ch : alice.substr(3)) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch))) << "not base62: " << alice;
  EXPECT_EQ(alice_id.rfind("key_", 0), 0u) << c.body;
  EXPECT_EQ(alice_id.size(), 20u) << c.body;
  EXPECT_EQ(jget(c.body, "key_masked"), masked(alice)) << c.body;
  EXPECT_EQ(jget(c.body, "key_prefix"), alice.substr(0, 7)) << c.body;
  EXPECT_EQ(jget(c.body, "key_suffix"), alice.substr(alice.size() - 4)) << c.body;
  EXPECT_EQ(jget(c.body, "hash"), "<missing>") << c.body;
  EXPECT_EQ(jget(c.body, "name"), "Alice Key");
  EXPECT_EQ(jget(c.body, "model"), "glm-4.7");
  EXPECT_EQ(jget(c.body, "token_limit_per_5h"), "1000");
  EXPECT_EQ(jget(c.body, "expiry_date"), "2030-01-01T00:00:00Z");
  EXPECT_EQ(jget(c.body, "enabled"), "true");
  EXPECT_EQ(jget(c.body, "metadata.team"), "a");
  EXPECT_NE(jget(c.body, "created_at"), "<missing>");
  EXPECT_EQ(bearer(alice).status, 200);

  const Key bob = create(R"({"name":"Bob"})");
  EXPECT_NE(bob.plain, alice);

  Response list = admin("GET", "/admin/keys");
  ASSERT_EQ(list.status, 200) << list.body;
  EXPECT_EQ(jlen(list.body, "keys"), 2) << list.body;
  EXPECT_EQ(jget(list.body, "more"), "false") << list.body;
  EXPECT_EQ(list.body.find("\"hash\""), std::string::npos) << list.body;
  EXPECT_EQ(list.body.find(alice), std::string::npos) << "plain key in the list: " << list.body;
  EXPECT_EQ(list.body.find(bob.plain), std::string::npos) << "plain key in the list: " << list.body;
  for (int i = 0; i < 2; ++i) {
    const std::string item = jget(list.body, "keys." + std::to_string(i));
    EXPECT_EQ(jget(item, "key"), "<missing>") << item;
    const std::string plain_i = jget(item, "id") == alice_id ? alice : bob.plain;
    EXPECT_EQ(jget(item, "key_masked"), masked(plain_i)) << item;
  }

  // Search: case-insensitive substring of name, id or key_prefix.
  Response s = admin("GET", "/admin/keys?search=aLiCe");
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_EQ(jlen(s.body, "keys"), 1) << s.body;
  EXPECT_EQ(jget(s.body, "keys.0.id"), alice_id) << s.body;
  s = admin("GET", "/admin/keys?search=" + bob.id);
  EXPECT_EQ(jlen(s.body, "keys"), 1) << s.body;
  EXPECT_EQ(jget(s.body, "keys.0.name"), "Bob") << s.body;
  s = admin("GET", "/admin/keys?search=" + alice.substr(0, 7));
  EXPECT_GE(jlen(s.body, "keys"), 1) << s.body;
  EXPECT_NE(s.body.find(alice_id), std::string::npos) << "search by key_prefix: " << s.body;
  s = admin("GET", "/admin/keys?search=nobody-has-this");
  EXPECT_EQ(jlen(s.body, "keys"), 0) << s.body;

  // Paging.
  Response p1 = admin("GET", "/admin/keys?limit=1");
  ASSERT_EQ(p1.status, 200) << p1.body;
  EXPECT_EQ(jlen(p1.body, "keys"), 1) << p1.body;
  EXPECT_EQ(jget(p1.body, "more"), "true") << p1.body;
  const std::string after = jget(p1.body, "next_after");
  EXPECT_FALSE(after.empty()) << p1.body;
  Response p2 = admin("GET", "/admin/keys?limit=1&after=" + after);
  ASSERT_EQ(p2.status, 200) << p2.body;
  EXPECT_EQ(jlen(p2.body, "keys"), 1) << p2.body;
  EXPECT_EQ(jget(p2.body, "more"), "false") << p2.body;
  EXPECT_EQ(jget(p2.body, "next_after"), "") << p2.body;
  const std::set<std::string> paged{jget(p1.body, "keys.0.id"), jget(p2.body, "keys.0.id")};
  EXPECT_EQ(paged, (std::set<std::string>{alice_id, bob.id}));

  // One record.
  Response one = admin("GET", "/admin/keys/" + alice_id);
  ASSERT_EQ(one.status, 200) << one.body;
  EXPECT_EQ(jget(one.body, "id"), alice_id);
  EXPECT_EQ(jget(one.body, "name"), "Alice Key");
  EXPECT_EQ(jget(one.body, "key_masked"), masked(alice));
  EXPECT_EQ(jget(one.body, "key"), "<missing>") << one.body;
  EXPECT_EQ(jget(one.body, "hash"), "<missing>") << one.body;
  EXPECT_EQ(one.body.find(alice), std::string::npos) << one.body;
  // last_used is set by use (written back at most once a minute; this was the first use).
  std::string last_used;
  for (int i = 0; i < 100; ++i) {
    last_used = jget(admin("GET", "/admin/keys/" + alice_id).body, "last_used");
    if (last_used != "null" && !last_used.empty()) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_NE(last_used, "null") << "last_used not recorded after a use";
}

TEST_F(Auth, AdminPatchAndValidation) {
  start();
  const Key k = create(R"({"name":"Patchy","token_limit_per_5h":10,"expiry_date":"2030-01-01T00:00:00Z"})");
  ASSERT_EQ(bearer(k.plain).status, 200);
  const std::string path = "/admin/keys/" + k.id;

  Response p = admin("PATCH", path, R"({"name":"Patched","model":"glm-4.5-air","token_limit_per_5h":5})");
  ASSERT_EQ(p.status, 200) << p.body;
  EXPECT_EQ(jget(p.body, "name"), "Patched");
  EXPECT_EQ(jget(p.body, "model"), "glm-4.5-air");
  EXPECT_EQ(jget(p.body, "token_limit_per_5h"), "5");
  EXPECT_EQ(jget(p.body, "hash"), "<missing>") << p.body;
  EXPECT_EQ(jget(p.body, "key"), "<missing>") << p.body;
  Response g = admin("GET", path);
  EXPECT_EQ(jget(g.body, "name"), "Patched") << g.body;
  EXPECT_EQ(jget(g.body, "token_limit_per_5h"), "5") << g.body;
  // The new model applies at once.
  Response e = bearer(k.plain, false, {{"x-mock-echo", "1"}});
  ASSERT_EQ(e.status, 200) << e.body;
  EXPECT_EQ(echoed_model(e), "glm-4.5-air");
  // null clears an optional field.
  p = admin("PATCH", path, R"({"model":null,"token_limit_per_5h":null})");
  ASSERT_EQ(p.status, 200) << p.body;
  EXPECT_EQ(jget(p.body, "model"), "null") << p.body;
  EXPECT_EQ(jget(p.body, "token_limit_per_5h"), "null") << p.body;
  e = bearer(k.plain, false, {{"x-mock-echo", "1"}});
  EXPECT_EQ(echoed_model(e), "glm-4.7") << e.body;

  // Invalid input is refused with the field named, and changes nothing.
  expect_invalid(admin("PATCH", path, R"({"expiry_date":"2026-13-45"})"), "expiry_date", "PATCH expiry 2026-13-45");
  expect_invalid(admin("PATCH", path, R"({"expiry_date":"tomorrow"})"), "expiry_date", "PATCH expiry tomorrow");
  expect_invalid(admin("PATCH", path, R"({"colour":"red"})"), "colour", "PATCH unknown field");
  expect_invalid(admin("PATCH", path, "this is not json"), "", "PATCH non-JSON");
  expect_invalid(admin("PATCH", path, "[1,2]"), "", "PATCH array body");
  expect_invalid(admin("PATCH", path, R"({"enabled":"yes"})"), "enabled", "PATCH enabled string");
  expect_invalid(admin("PATCH", path, R"({"token_limit_per_5h":-1})"), "token_limit_per_5h", "PATCH negative limit");
  expect_invalid(admin("PATCH", path, R"({"allowed_models":"glm-4.7"})"), "allowed_models", "PATCH allowed_models string");
  expect_invalid(admin("PATCH", path, R"({"metadata":[1]})"), "metadata", "PATCH metadata array");
  expect_invalid(admin("PATCH", path, R"({"name":""})"), "name", "PATCH empty name");
  g = admin("GET", path);
  EXPECT_EQ(jget(g.body, "expiry_date"), "2030-01-01T00:00:00Z") << g.body;
  EXPECT_EQ(jget(g.body, "name"), "Patched") << g.body;
  EXPECT_EQ(jget(g.body, "enabled"), "true") << g.body;
  EXPECT_EQ(bearer(k.plain).status, 200);
  // A valid offset date is accepted.
  p = admin("PATCH", path, R"({"expiry_date":"2031-06-30T12:00:00+02:00"})");
  EXPECT_EQ(p.status, 200) << p.body;
  EXPECT_EQ(bearer(k.plain).status, 200);

  // Create-time validation.
  expect_invalid(admin("POST", "/admin/keys", "{}"), "name", "create without name");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":""})"), "name", "create empty name");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":")" + std::string(201, 'n') + "\"}"), "name", "create long name");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":"x","key":"short"})"), "key", "create short custom key");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":"x","key":"has a space"})"), "key", "create custom key with space");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":"x","expiry_date":"2026-13-45"})"), "expiry_date", "create bad expiry");
  expect_invalid(admin("POST", "/admin/keys", R"({"name":"x","wat":1})"), "wat", "create unknown field");
  expect_invalid(admin("POST", "/admin/keys", "nope"), "", "create non-JSON");
  Response list = admin("GET", "/admin/keys");
  EXPECT_EQ(jlen(list.body, "keys"), 1) << "a refused create must not store anything: " << list.body;
}

TEST_F(Auth, AdminRotateDeleteUnknownAndUnauthorized) {
  start();
  const Key k = create(R"({"name":"rotor","model":"glm-4.5-air"})");
  ASSERT_EQ(bearer(k.plain).status, 200);  // cached now

  Response rot = admin("POST", "/admin/keys/" + k.id + "/rotate");
  ASSERT_EQ(rot.status, 200) << rot.body;
  const std::string fresh = jget(rot.body, "key");
  EXPECT_NE(fresh, k.plain);
  EXPECT_EQ(fresh.rfind("pk_", 0), 0u) << fresh;
  EXPECT_GE(fresh.size(), 40u);
  EXPECT_EQ(jget(rot.body, "id"), k.id);
  EXPECT_EQ(jget(rot.body, "key_masked"), masked(fresh));
  EXPECT_EQ(jget(rot.body, "hash"), "<missing>");
  EXPECT_EQ(jget(rot.body, "model"), "glm-4.5-air") << "rotate keeps the record";
  expect_refusal(bearer(k.plain), false, 401, kInvalid, "old key right after rotate");
  Response now = bearer(fresh, false, {{"x-mock-echo", "1"}});
  ASSERT_EQ(now.status, 200) << now.body;
  EXPECT_EQ(echoed_model(now), "glm-4.5-air");

  // Unknown ids.
  for (const auto& [method, suffix] : std::vector<std::pair<std::string, std::string>>{
           {"GET", ""}, {"PATCH", ""}, {"DELETE", ""}, {"POST", "/rotate"}}) {
    Response r = admin(method, "/admin/keys/key_DoesNotExist0000" + suffix, method == "PATCH" ? R"({"name":"x"})" : "");
    EXPECT_EQ(r.status, 404) << method << " " << suffix << ": " << r.body;
  }

  // No or a wrong admin token; a user key is not an admin token.
  EXPECT_EQ(http(port(), "GET", "/admin/keys").status, 401);
  EXPECT_EQ(http(port(), "GET", "/admin/keys", "", {{"Authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(http(port(), "GET", "/admin/keys", "", {{"Authorization", "Bearer " + fresh}}).status, 401);
  EXPECT_EQ(http(port(), "POST", "/admin/keys", R"({"name":"intruder"})").status, 401);
  EXPECT_EQ(http(port(), "DELETE", "/admin/keys/" + k.id).status, 401);
  EXPECT_EQ(http(port(), "POST", "/admin/keys/import", kOldFile, {{"x-api-key", fresh}}).status, 401);
  EXPECT_EQ(http(port(), "GET", "/admin/keys", "", {{"X-Admin-Token", "t0ken-admin"}}).status, 200);
  EXPECT_EQ(bearer(fresh).status, 200) << "the refused admin calls changed nothing";

  // Delete.
  Response d = admin("DELETE", "/admin/keys/" + k.id);
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_EQ(jget(d.body, "deleted"), k.id);
  expect_refusal(bearer(fresh), false, 401, kInvalid, "deleted key");
  EXPECT_EQ(admin("GET", "/admin/keys/" + k.id).status, 404);
  EXPECT_EQ(admin("DELETE", "/admin/keys/" + k.id).status, 404);
  EXPECT_EQ(jlen(admin("GET", "/admin/keys").body, "keys"), 0);
}

TEST_F(Auth, AdminCustomKeyWorksAndIsUnique) {
  start();
  const std::string custom = "my-own-secret-key-0001";
  Response c = admin("POST", "/admin/keys", R"({"name":"custom","key":")" + custom + "\"}");
  ASSERT_EQ(c.status, 201) << c.body;
  EXPECT_EQ(jget(c.body, "key"), custom);
  EXPECT_EQ(jget(c.body, "key_masked"), masked(custom));
  EXPECT_EQ(bearer(custom).status, 200);
  EXPECT_EQ(call(true, {{"x-api-key", custom}}).status, 200);
  Response again = admin("POST", "/admin/keys", R"({"name":"custom again","key":")" + custom + "\"}");
  EXPECT_EQ(again.status, 409) << again.body;
  EXPECT_EQ(again.body.find(custom), std::string::npos) << "the 409 echoes the key: " << again.body;
  EXPECT_EQ(jlen(admin("GET", "/admin/keys").body, "keys"), 1);
}

// ---------------------------------------------------------------------------------------------
// 6 and 7. The old apikeys.json

TEST_F(Auth, ImportOldApikeysJsonThroughTheAdminApi) {
  start();
  Response imp = admin("POST", "/admin/keys/import", kOldFile);
  ASSERT_EQ(imp.status, 200) << imp.body;
  EXPECT_EQ(jlen(imp.body, "imported"), 2) << imp.body;
  EXPECT_EQ(jlen(imp.body, "skipped"), 0) << imp.body;
  EXPECT_EQ(jlen(imp.body, "errors"), 0) << imp.body;
  EXPECT_EQ(jget(imp.body, "imported.0.name"), "User") << imp.body;
  EXPECT_EQ(jget(imp.body, "imported.0.key_masked"), masked("pk_user_12345")) << imp.body;
  EXPECT_EQ(jget(imp.body, "imported.0.id").rfind("key_", 0), 0u) << imp.body;
  EXPECT_EQ(jget(imp.body, "imported.1.name"), "Old") << imp.body;
  EXPECT_EQ(imp.body.find("pk_user_12345"), std::string::npos) << imp.body;
  EXPECT_EQ(imp.body.find("pk_old_expired_67890"), std::string::npos) << imp.body;

  for (const bool anthropic : {false, true}) {
    Response ok = bearer("pk_user_12345", anthropic, {{"x-mock-echo", "1"}});
    ASSERT_EQ(ok.status, 200) << ok.body;
    EXPECT_EQ(echoed_model(ok), "glm-4.5-air") << "the imported model override";
    expect_refusal(call(anthropic, {{"x-api-key", "pk_old_expired_67890"}}), anthropic, 403,
                   "API key expired on 2024-01-01T00:00:00Z", "imported expired key");
  }
  Response one = admin("GET", "/admin/keys/" + jget(imp.body, "imported.0.id"));
  EXPECT_EQ(jget(one.body, "token_limit_per_5h"), "100000") << one.body;
  EXPECT_EQ(jget(one.body, "expiry_date"), "2099-12-31T23:59:59Z") << one.body;

  Response again = admin("POST", "/admin/keys/import", kOldFile);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(jlen(again.body, "imported"), 0) << again.body;
  EXPECT_EQ(jlen(again.body, "skipped"), 2) << again.body;
  EXPECT_EQ(jget(again.body, "skipped.0.reason"), "already present") << again.body;
  EXPECT_EQ(jget(again.body, "skipped.0.key_masked"), masked("pk_user_12345")) << again.body;
  EXPECT_EQ(again.body.find("pk_user_12345"), std::string::npos) << again.body;
  EXPECT_EQ(jlen(admin("GET", "/admin/keys").body, "keys"), 2) << "a second import made duplicates";

  // A broken entry is reported by index and field, the good ones still imported.
  Response mixed = admin("POST", "/admin/keys/import",
                         R"({"keys":[{"key":"pk_fine_key_0001","name":"Fine"},)"
                         R"({"key":"pk_bad_date_0002","name":"Bad","expiry_date":"2026-13-45"}]})");
  ASSERT_EQ(mixed.status, 200) << mixed.body;
  EXPECT_EQ(jlen(mixed.body, "imported"), 1) << mixed.body;
  EXPECT_EQ(jlen(mixed.body, "errors"), 1) << mixed.body;
  EXPECT_EQ(jget(mixed.body, "errors.0.index"), "1") << mixed.body;
  EXPECT_EQ(jget(mixed.body, "errors.0.field"), "expiry_date") << mixed.body;
  EXPECT_EQ(bearer("pk_fine_key_0001").status, 200);
  EXPECT_EQ(bearer("pk_bad_date_0002").status, 401) << "an entry with an invalid date must not be imported";
}

TEST_F(Auth, ImportFileSettingImportsOnceAtStart) {
  const std::string file = dir.file("apikeys.json");
  write_file(file, kOldFile);
  start("import_file = \"" + file + "\"");
  Response ok = bearer("pk_user_12345", false, {{"x-mock-echo", "1"}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(echoed_model(ok), "glm-4.5-air");
  expect_refusal(bearer("pk_old_expired_67890", true), true, 403, "API key expired on 2024-01-01T00:00:00Z",
                 "import_file expired key");

  // Restart with different content: the store already has keys, so nothing is imported again.
  write_file(file, R"({"keys":[{"key":"pk_second_file_key_1","name":"Second","expiry_date":"2099-01-01T00:00:00Z"}]})");
  restart();
  expect_refusal(bearer("pk_second_file_key_1"), false, 401, kInvalid, "key of the second file");
  EXPECT_EQ(bearer("pk_user_12345").status, 200);
  EXPECT_EQ(jlen(admin("GET", "/admin/keys").body, "keys"), 2);
}

// ---------------------------------------------------------------------------------------------
// 8 and 9. Persistence and immediate effect

TEST_F(Auth, KeysSurviveACleanRestartAndKillNine) {
  start();
  const Key a = create(R"({"name":"before restart","model":"glm-4.5-air"})");
  const Key gone = create(R"({"name":"deleted before restart"})");
  ASSERT_EQ(admin("DELETE", "/admin/keys/" + gone.id).status, 200);
  restart();
  Response r = bearer(a.plain, false, {{"x-mock-echo", "1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(echoed_model(r), "glm-4.5-air");
  EXPECT_EQ(bearer(gone.plain).status, 401) << "a deleted key came back after a restart";

  const Key b = create(R"({"name":"before kill"})");
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + a.id, R"({"name":"renamed before kill"})").status, 200);
  std::this_thread::sleep_for(1300ms);  // the sqlite write-behind flushes every second by default
  proxy->kill9();
  proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  EXPECT_EQ(bearer(b.plain).status, 200) << "a key created > 1 s before kill -9 was lost";
  EXPECT_EQ(call(true, {{"x-api-key", a.plain}}).status, 200);
  EXPECT_EQ(jget(admin("GET", "/admin/keys/" + a.id).body, "name"), "renamed before kill");
  EXPECT_EQ(jlen(admin("GET", "/admin/keys").body, "keys"), 2);
}

TEST_F(Auth, RevokeAndDisableTakeEffectAtOnce) {
  start();
  const Key k = create(R"({"name":"revoked"})");
  ASSERT_EQ(bearer(k.plain).status, 200);  // in the lookup cache now
  ASSERT_EQ(admin("DELETE", "/admin/keys/" + k.id).status, 200);
  expect_refusal(bearer(k.plain), false, 401, kInvalid, "right after DELETE");
  expect_refusal(call(true, {{"x-api-key", k.plain}}), true, 401, kInvalid, "right after DELETE");

  const Key d = create(R"({"name":"toggled"})");
  ASSERT_EQ(bearer(d.plain).status, 200);
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + d.id, R"({"enabled":false})").status, 200);
  expect_refusal(bearer(d.plain), false, 403, kDisabled, "right after enabled=false");
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + d.id, R"({"enabled":true})").status, 200);
  EXPECT_EQ(bearer(d.plain).status, 200) << "right after enabled=true";
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + d.id, R"({"expiry_date":"2021-02-03T04:05:06Z"})").status, 200);
  expect_refusal(bearer(d.plain, true), true, 403, "API key expired on 2021-02-03T04:05:06Z", "right after a past expiry");
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + d.id, R"({"expiry_date":null})").status, 200);
  EXPECT_EQ(bearer(d.plain).status, 200) << "expiry cleared";
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + d.id, R"({"allowed_models":["only-this"]})").status, 200);
  expect_refusal(bearer(d.plain), false, 403, "Model 'gpt-4o' is not allowed for this API key", "right after allowed_models");
}

// ---------------------------------------------------------------------------------------------
// 10. No secret in any log or file

TEST_F(Auth, PlainKeysNeverAppearInLogsOrFiles) {
  start();
  std::vector<std::string> secrets;
  const Key a = create(R"({"name":"secret a","model":"glm-4.5-air"})");
  const Key b = create(R"({"name":"secret b","key":"custom-Secret-Value-42"})");
  const Key c = create(R"({"name":"secret c"})");
  secrets.insert(secrets.end(), {a.plain, b.plain, c.plain});
  Response imp = admin("POST", "/admin/keys/import", kOldFile);
  ASSERT_EQ(imp.status, 200) << imp.body;
  secrets.insert(secrets.end(), {"pk_user_12345", "pk_old_expired_67890"});
  for (const auto& key : secrets) {
    for (const bool anthropic : {false, true}) {
      call(anthropic, {{"Authorization", "Bearer " + key}});
      call(anthropic, {{"x-api-key", key}});
      call(anthropic, {}, "?api_key=" + key);
      http_stream(port(), "POST", anthropic ? "/v1/messages" : "/v1/chat/completions",
                  anthropic ? anthropic_body(true) : openai_body(true), {{"Authorization", "Bearer " + key}});
    }
  }
  Response rot = admin("POST", "/admin/keys/" + c.id + "/rotate");
  ASSERT_EQ(rot.status, 200) << rot.body;
  secrets.push_back(jget(rot.body, "key"));
  EXPECT_EQ(bearer(secrets.back()).status, 200);
  EXPECT_EQ(bearer(c.plain).status, 401);
  ASSERT_EQ(admin("PATCH", "/admin/keys/" + a.id, R"({"enabled":false})").status, 200);
  EXPECT_EQ(bearer(a.plain).status, 403);
  ASSERT_EQ(admin("DELETE", "/admin/keys/" + b.id).status, 200);
  EXPECT_EQ(bearer(b.plain).status, 401);
  EXPECT_EQ(admin("POST", "/admin/keys", R"({"name":"dup","key":"pk_user_12345"})").status, 409);
  admin("GET", "/admin/keys");
  // Presented-but-unknown credentials must not be logged either (they may be a typo of a real key).
  const std::string typo = "pk_typoTypoTypoTypoTypoTypoTypoTypoTypo99";
  call(false, {{"Authorization", "Bearer " + typo}});

  proxy->wait_log({"\"/v1/chat/completions\""});
  proxy.reset();  // clean stop: every log line and the store are on disk
  std::vector<std::string> access;
  {
    std::istringstream in(read_file(dir.file("access.log")));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) access.push_back(line);
  }
  EXPECT_GE(access.size(), 40u) << "the access log misses the proxied requests";

  std::vector<std::pair<std::string, std::string>> files;  // name, content
  for (const auto& entry : fs::recursive_directory_iterator(dir.path()))
    if (entry.is_regular_file()) files.emplace_back(entry.path().string(), read_file(entry.path().string()));
  ASSERT_FALSE(files.empty());
  bool saw_err = false, saw_access = false;
  for (const auto& [name, content] : files) {
    saw_err = saw_err || name == dir.file("proxy.err");
    saw_access = saw_access || name == dir.file("access.log");
  }
  EXPECT_TRUE(saw_err);
  EXPECT_TRUE(saw_access);
  for (const auto& key : secrets) {
    ASSERT_GE(key.size(), 8u);
    for (const auto& line : access) EXPECT_EQ(line.find(key), std::string::npos) << "plain key in the access log: " << line;
    for (const auto& [name, content] : files)
      EXPECT_EQ(content.find(key), std::string::npos) << "plain key " << masked(key) << " found in " << name;
  }
  for (const auto& [name, content] : files)
    EXPECT_EQ(content.find(typo), std::string::npos) << "a presented unknown key was written to " << name;
}

}  // namespace

// An upstream whose credential is not configured (env var unset) answers 503 — but only to a
// caller with a valid key: without one the caller gets the 401 and learns nothing about the setup.
TEST_F(Auth, UnconfiguredUpstreamIsRevealedOnlyToValidKeys) {
  opts.auth_value_openai = "Bearer ${GLMP_TEST_SURELY_UNSET_VARIABLE}";
  start();
  const Key k = create(R"({"name":"configured?"})");
  Response anonymous = call(false, {});
  EXPECT_EQ(anonymous.status, 401) << anonymous.body;
  EXPECT_EQ(anonymous.body.find("GLMP_TEST_SURELY_UNSET_VARIABLE"), std::string::npos) << anonymous.body;
  Response keyed = bearer(k.plain);
  EXPECT_EQ(keyed.status, 503) << keyed.body;
  EXPECT_EQ(jget(keyed.body, "error.code"), "upstream_not_configured");
  EXPECT_EQ(bearer(k.plain, true).status, 200) << "the other upstream is configured";
}
