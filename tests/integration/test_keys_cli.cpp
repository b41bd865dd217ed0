// `glm-proxy keys …` through the real binary against a real proxy running the auth plugin
// (plugins/auth/README.md): create → use → list (masked) → disable → rotate → revoke → import,
// the --config resolution, and the errors (wrong token, unknown key) without leaking the token.
#include <gtest/gtest.h>

#include <filesystem>

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

const std::string kToken = "kc-admin-T0ken-7f3a9";

std::string auth_plugin_path() {
  return plugin_path("auth");
}

struct CliResult {
  int rc = -1;
  std::string out, err;
};

class KeysCli : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  int runs = 0;

  void SetUp() override {
    if (!fs::exists(auth_plugin_path())) GTEST_SKIP() << "auth plugin not built: " << auth_plugin_path();
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.extra_toml = "\n[admin]\ntoken = \"" + kToken + "\"\n\n[[plugins]]\nname = \"auth\"\npath = \"" +
                      auth_plugin_path() + "\"\n";
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(proxy->port()); }

  // glm-proxy keys ARGS; $GLMP_URL and $GLMP_ADMIN_TOKEN unset unless `env` sets them.
  CliResult cli(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv{GLMP_PROXY_BIN, "keys"};
    argv.insert(argv.end(), args.begin(), args.end());
    env.emplace("GLMP_URL", "<unset>");
    env.emplace("GLMP_ADMIN_TOKEN", "<unset>");
    const std::string base = dir.file("cli" + std::to_string(++runs));
    Child child(argv, base + ".out", base + ".err", env);
    CliResult r;
    r.rc = child.wait(30s);
    r.out = child.out();
    r.err = child.err();
    EXPECT_FALSE(sanitizer_report(r.err)) << "glm-proxy keys reported a sanitizer error:\n" << r.err;
    return r;
  }
  // The same with --url and --token of this test's proxy.
  CliResult admin(std::vector<std::string> args) {
    args.insert(args.end(), {"--url", url(), "--token", kToken});
    return cli(std::move(args));
  }

  int chat_status(const std::string& key) {
    return http(proxy->port(), "POST", "/v1/chat/completions", openai_body(false), {{"Authorization", "Bearer " + key}})
        .status;
  }
};

Poco::JSON::Object::Ptr parse_object(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

TEST_F(KeysCli, RoundTripThroughTheAdminApi) {
  // create: the plain key is shown once.
  CliResult created = admin({"create", "--name", "CLI user", "--limit", "100000", "--expires", "2099-12-31T23:59:59Z",
                             "--metadata", R"({"team":"it"})"});
  ASSERT_EQ(created.rc, 0) << created.err;
  const auto record = parse_object(created.out);
  const std::string key = record->getValue<std::string>("key");
  const std::string id = record->getValue<std::string>("id");
  ASSERT_EQ(key.rfind("pk_", 0), 0u) << created.out;
  ASSERT_EQ(id.rfind("key_", 0), 0u) << created.out;
  EXPECT_EQ(record->getValue<std::string>("name"), "CLI user");
  EXPECT_EQ(record->getValue<int64_t>("token_limit_per_5h"), 100000);
  EXPECT_FALSE(record->has("hash")) << created.out;
  EXPECT_TRUE(contains(created.out, "\n  \"")) << "not pretty-printed: " << created.out;

  // The key works.
  EXPECT_EQ(chat_status(key), 200);

  // list: masked, no plain key, no hash.
  CliResult listed = admin({"list", "--search", "cli user"});
  ASSERT_EQ(listed.rc, 0) << listed.err;
  EXPECT_TRUE(contains(listed.out, id)) << listed.out;
  EXPECT_TRUE(contains(listed.out, "\"key_masked\"")) << listed.out;
  EXPECT_FALSE(contains(listed.out, key)) << listed.out;
  EXPECT_FALSE(contains(listed.out, "\"hash\"")) << listed.out;
  const auto keys = parse_object(listed.out)->getArray("keys");
  ASSERT_TRUE(keys);
  ASSERT_EQ(keys->size(), 1u) << listed.out;
  CliResult all = admin({"list", "--all", "--limit", "1"});
  ASSERT_EQ(all.rc, 0) << all.err;
  EXPECT_TRUE(contains(all.out, id)) << all.out;

  // show
  CliResult shown = admin({"show", id});
  ASSERT_EQ(shown.rc, 0) << shown.err;
  EXPECT_EQ(parse_object(shown.out)->getValue<std::string>("id"), id);
  EXPECT_FALSE(contains(shown.out, key));

  // update --disable: 403; --enable: back.
  CliResult disabled = admin({"update", id, "--disable"});
  ASSERT_EQ(disabled.rc, 0) << disabled.err;
  EXPECT_FALSE(parse_object(disabled.out)->getValue<bool>("enabled"));
  EXPECT_EQ(chat_status(key), 403);
  ASSERT_EQ(admin({"update", id, "--enable", "--no-limit", "--expires", "never"}).rc, 0);
  EXPECT_EQ(chat_status(key), 200);
  CliResult cleared = admin({"show", id});
  ASSERT_EQ(cleared.rc, 0) << cleared.err;
  EXPECT_TRUE(parse_object(cleared.out)->isNull("token_limit_per_5h")) << cleared.out;
  EXPECT_TRUE(parse_object(cleared.out)->isNull("expiry_date")) << cleared.out;

  // rotate: the old key stops working at once, the new one works.
  CliResult rotated = admin({"rotate", id});
  ASSERT_EQ(rotated.rc, 0) << rotated.err;
  const std::string new_key = parse_object(rotated.out)->getValue<std::string>("key");
  EXPECT_NE(new_key, key);
  EXPECT_EQ(chat_status(key), 401);
  EXPECT_EQ(chat_status(new_key), 200);

  // revoke
  CliResult revoked = admin({"revoke", id});
  ASSERT_EQ(revoked.rc, 0) << revoked.err;
  EXPECT_EQ(parse_object(revoked.out)->getValue<std::string>("deleted"), id);
  EXPECT_EQ(chat_status(new_key), 401);

  // show of a revoked key: the server's 404 message, exit 1.
  CliResult gone = admin({"show", id});
  EXPECT_EQ(gone.rc, 1);
  EXPECT_TRUE(gone.out.empty()) << gone.out;
  EXPECT_EQ(gone.err.rfind("glm-proxy keys: 404 ", 0), 0u) << gone.err;
}

TEST_F(KeysCli, ImportsAnOldApikeysFile) {
  const std::string file = dir.file("apikeys.json");
  write_file(file,
             R"({"keys":[{"key":"pk_user_12345","name":"User","model":"glm-4.7","token_limit_per_5h":100000,)"
             R"("expiry_date":"2099-12-31T23:59:59Z","created_at":"2026-01-18T00:00:00Z",)"
             R"("last_used":"2026-01-18T00:00:00Z","total_lifetime_tokens":0,)"
             R"("usage_windows":[{"window_start":"2026-01-18T00:00:00Z","tokens_used":0}]}]})");
  EXPECT_EQ(chat_status("pk_user_12345"), 401);
  CliResult imported = admin({"import", file});
  ASSERT_EQ(imported.rc, 0) << imported.err;
  const auto answer = parse_object(imported.out);
  ASSERT_EQ(answer->getArray("imported")->size(), 1u) << imported.out;
  EXPECT_EQ(answer->getArray("imported")->getObject(0)->getValue<std::string>("name"), "User");
  EXPECT_FALSE(contains(imported.out, "pk_user_12345")) << imported.out;
  EXPECT_EQ(chat_status("pk_user_12345"), 200);
  // Idempotent: the second import skips it.
  CliResult again = admin({"import", file});
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_EQ(parse_object(again.out)->getArray("imported")->size(), 0u) << again.out;
  EXPECT_EQ(parse_object(again.out)->getArray("skipped")->size(), 1u) << again.out;
  EXPECT_EQ(chat_status("pk_user_12345"), 200);
}

TEST_F(KeysCli, UrlAndTokenFromTheConfigAndTheEnvironment) {
  // A config that names this proxy's address (the running one listens on an ephemeral port).
  const std::string config = dir.file("client.toml");
  write_file(config, "[server]\nlisten = \"0.0.0.0:" + std::to_string(proxy->port()) + "\"\n\n[admin]\ntoken = \"" +
                         kToken + "\"\n\n[upstreams.u]\nbase_url = \"http://127.0.0.1:1\"\n\n"
                         "[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"u\"\n");
  CliResult by_config = cli({"create", "--config", config, "--name", "from config"});
  ASSERT_EQ(by_config.rc, 0) << by_config.err;
  EXPECT_EQ(chat_status(parse_object(by_config.out)->getValue<std::string>("key")), 200);

  CliResult by_env = cli({"list"}, {{"GLMP_URL", url()}, {"GLMP_ADMIN_TOKEN", kToken}});
  ASSERT_EQ(by_env.rc, 0) << by_env.err;
  EXPECT_TRUE(contains(by_env.out, "from config")) << by_env.out;
}

TEST_F(KeysCli, ErrorsExitOneWithoutLeakingTheToken) {
  const std::string wrong = "wr0ng-Admin-Token-1234";
  CliResult denied = cli({"list", "--url", url(), "--token", wrong});
  EXPECT_EQ(denied.rc, 1);
  EXPECT_TRUE(denied.out.empty()) << denied.out;
  EXPECT_EQ(denied.err.rfind("glm-proxy keys: 40", 0), 0u) << denied.err;  // 401/403 with the server's message
  EXPECT_GT(denied.err.size(), std::string("glm-proxy keys: 401 \n").size()) << denied.err;
  EXPECT_FALSE(contains(denied.err, wrong)) << denied.err;
  EXPECT_FALSE(contains(denied.err, kToken)) << denied.err;

  // A validation error names the server's message.
  CliResult bad = admin({"create", "--name", "x", "--expires", "31/12/2026"});
  EXPECT_EQ(bad.rc, 1);
  EXPECT_EQ(bad.err.rfind("glm-proxy keys: 400 ", 0), 0u) << bad.err;

  // Usage errors: exit 2, the usage on stderr, nothing sent.
  CliResult usage = admin({"frobnicate"});
  EXPECT_EQ(usage.rc, 2);
  EXPECT_TRUE(contains(usage.err, "usage: glm-proxy keys")) << usage.err;
  EXPECT_FALSE(contains(usage.err, kToken)) << usage.err;

  // Nobody listening: the URL is named.
  const std::string dead = url();
  proxy.reset();
  CliResult refused = cli({"list", "--url", dead, "--token", kToken});
  EXPECT_EQ(refused.rc, 1);
  EXPECT_TRUE(contains(refused.err, "cannot connect to " + dead)) << refused.err;
  EXPECT_FALSE(contains(refused.err, kToken)) << refused.err;
}

TEST(KeysCliBinary, HelpAndTheOtherModesStillWork) {
  TempDir dir;
  Child help({GLMP_PROXY_BIN, "keys", "help"}, dir.file("h.out"), dir.file("h.err"));
  EXPECT_EQ(help.wait(10s), 0);
  EXPECT_EQ(help.out().rfind("usage: glm-proxy keys", 0), 0u) << help.out();
  Child bare({GLMP_PROXY_BIN, "keys"}, dir.file("b.out"), dir.file("b.err"));
  EXPECT_EQ(bare.wait(10s), 2);
  EXPECT_TRUE(contains(bare.err(), "missing subcommand")) << bare.err();
  Child version({GLMP_PROXY_BIN, "--version"}, dir.file("v.out"), dir.file("v.err"));
  EXPECT_EQ(version.wait(10s), 0);
  EXPECT_EQ(version.out().rfind("glm-proxy ", 0), 0u);
  Child usage({GLMP_PROXY_BIN, "--help"}, dir.file("u.out"), dir.file("u.err"));
  EXPECT_EQ(usage.wait(10s), 0);
  EXPECT_TRUE(contains(usage.out(), "glm-proxy keys")) << usage.out();
}
