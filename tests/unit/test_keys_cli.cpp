// Unit tests for core/src/cli/keys_cli: `glm-proxy keys …` parsed into admin API requests (every
// subcommand and flag, the errors), URL/token resolution (flags, $GLMP_URL/$GLMP_ADMIN_TOKEN,
// --config), output formatting, and run_keys() against a small in-process HTTP server.

#include <gtest/gtest.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/StreamCopier.h>

#include "../support/env_guard.hpp"
#include "cli/keys_cli.hpp"

namespace cli = glmp::core::cli;
using cli::CliError;
using cli::Env;
using cli::KeysCommand;
using cli::UsageError;

namespace {

using glmp::test::EnvGuard;

// A directory under /tmp, removed with its content at the end of the test.
class TempDir {
public:
  TempDir() {
    char tmpl[] = "/tmp/glmp-keys-cli-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string write(const std::string& name, const std::string& content) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file, std::ios::binary) << content;
    return file;
  }

private:
  std::string path_;
};

// A valid proxy config with the given [server] listen and optional [admin] token.
std::string config_text(const std::string& listen, const std::string& admin_token = "") {
  std::string text = "[server]\nlisten = \"" + listen + "\"\n";
  if (!admin_token.empty()) text += "\n[admin]\ntoken = \"" + admin_token + "\"\n";
  text += "\n[upstreams.zai]\nbase_url = \"https://api.z.ai/api/coding/paas/v4\"\n"
          "\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"zai\"\n";
  return text;
}

// Parses with a token already given, so the tests below look at the request alone.
KeysCommand parse(std::vector<std::string> args, const Env& env = {}) {
  args.insert(args.end(), {"--token", "t0k"});
  return cli::parse_keys_args(args, env);
}

Poco::JSON::Object::Ptr body_of(const KeysCommand& cmd) {
  return Poco::JSON::Parser().parse(cmd.request.body).extract<Poco::JSON::Object::Ptr>();
}

// The message of the UsageError that parsing throws ("" when it throws nothing or something else).
std::string usage_error(std::vector<std::string> args, const Env& env = {}) {
  try {
    cli::parse_keys_args(args, env);
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no error>";
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

// --- help and errors of the command line ----------------------------------------------------------

TEST(KeysCliParse, HelpInEveryForm) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"help"}, {"--help"}, {"-h"}, {"create", "--help"}, {"list", "-h"}})
    EXPECT_TRUE(cli::parse_keys_args(args, {}).help) << args[0];
  std::ostringstream out, err;
  EXPECT_EQ(cli::run_keys({"help"}, {}, out, err), 0);
  EXPECT_EQ(out.str(), cli::keys_usage());
  EXPECT_TRUE(err.str().empty());
  for (const char* sub : {"create", "list", "show", "update", "revoke", "rotate", "import", "--url", "--token", "--config"})
    EXPECT_TRUE(contains(cli::keys_usage(), sub)) << sub;
}

TEST(KeysCliParse, UnknownSubcommandOrFlagIsAUsageError) {
  EXPECT_TRUE(contains(usage_error({}), "missing subcommand"));
  EXPECT_TRUE(contains(usage_error({"frobnicate"}), "unknown subcommand 'frobnicate'"));
  EXPECT_TRUE(contains(usage_error({"list", "--bogus"}), "unknown flag '--bogus'"));
  EXPECT_TRUE(contains(usage_error({"list", "-x"}), "unknown flag '-x'"));
  EXPECT_TRUE(contains(usage_error({"list", "--all=yes"}), "--all takes no value"));
  EXPECT_TRUE(contains(usage_error({"create", "--name"}), "--name needs a value"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "--model", "m"}), "--name needs a value"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "a", "--name", "b"}), "--name given twice"));
  // A flag of another subcommand.
  EXPECT_TRUE(contains(usage_error({"show", "key_1", "--name", "x"}), "'show' has no flag --name"));
  EXPECT_TRUE(contains(usage_error({"update", "key_1", "--all"}), "'update' has no flag --all"));
  EXPECT_TRUE(contains(usage_error({"list", "--disabled"}), "'list' has no flag --disabled"));
  // Positionals.
  EXPECT_TRUE(contains(usage_error({"show"}), "show needs ID"));
  EXPECT_TRUE(contains(usage_error({"show", ""}), "show needs a non-empty ID"));
  EXPECT_TRUE(contains(usage_error({"revoke", "a", "b"}), "unexpected argument 'b'"));
  EXPECT_TRUE(contains(usage_error({"list", "extra"}), "unexpected argument 'extra'"));
  EXPECT_TRUE(contains(usage_error({"import"}), "import needs FILE"));
  EXPECT_TRUE(contains(usage_error({"list", "--url", ""}), "--url needs a non-empty value"));

  std::ostringstream out, err;
  EXPECT_EQ(cli::run_keys({"frobnicate"}, {}, out, err), 2);
  EXPECT_TRUE(out.str().empty());
  EXPECT_TRUE(contains(err.str(), "glm-proxy keys: unknown subcommand 'frobnicate'\n"));
  EXPECT_TRUE(contains(err.str(), cli::keys_usage()));
  std::ostringstream out2, err2;
  EXPECT_EQ(cli::run_keys({"list", "--nope", "--token", "t"}, {}, out2, err2), 2);
  EXPECT_TRUE(contains(err2.str(), "unknown flag '--nope'"));
  EXPECT_TRUE(contains(err2.str(), "usage: glm-proxy keys"));
}

// --- every subcommand -----------------------------------------------------------------------------

TEST(KeysCliParse, CreateMinimal) {
  const KeysCommand cmd = parse({"create", "--name", "Bob"});
  EXPECT_FALSE(cmd.help);
  EXPECT_EQ(cmd.subcommand, "create");
  EXPECT_EQ(cmd.request.method, "POST");
  EXPECT_EQ(cmd.request.path, "/admin/keys");
  EXPECT_EQ(cmd.request.body, R"({"name":"Bob"})");
  EXPECT_TRUE(contains(usage_error({"create", "--token", "t"}), "create needs --name"));
}

TEST(KeysCliParse, CreateWithEveryFlag) {
  const KeysCommand cmd =
      parse({"create", "--name=Alice \"A\"", "--model", "glm-4.7", "--limit", "100000", "--expires", "2026-12-31T23:59:59Z",
             "--key", "pk_custom_12345", "--allowed-models", " glm-4.7, glm-4.5 ,,", "--disabled", "--metadata",
             R"({"team":"x","n":[1,2]})"});
  const auto body = body_of(cmd);
  EXPECT_EQ(body->getValue<std::string>("name"), "Alice \"A\"");  // JSON-escaped, not concatenated
  EXPECT_EQ(body->getValue<std::string>("model"), "glm-4.7");
  EXPECT_TRUE(body->get("token_limit_per_5h").isInteger());
  EXPECT_EQ(body->getValue<int64_t>("token_limit_per_5h"), 100000);
  EXPECT_EQ(body->getValue<std::string>("expiry_date"), "2026-12-31T23:59:59Z");
  EXPECT_EQ(body->getValue<std::string>("key"), "pk_custom_12345");
  EXPECT_TRUE(body->get("enabled").isBoolean());
  EXPECT_FALSE(body->getValue<bool>("enabled"));
  const auto models = body->getArray("allowed_models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->size(), 2u);
  EXPECT_EQ(models->getElement<std::string>(0), "glm-4.7");
  EXPECT_EQ(models->getElement<std::string>(1), "glm-4.5");
  const auto meta = body->getObject("metadata");
  ASSERT_TRUE(meta);
  EXPECT_EQ(meta->getValue<std::string>("team"), "x");
  EXPECT_EQ(meta->getArray("n")->size(), 2u);
  EXPECT_EQ(body->size(), 8u);
}

TEST(KeysCliParse, CreateExpiresNeverIsNull) {
  const KeysCommand cmd = parse({"create", "--name", "n", "--expires", "never"});
  EXPECT_EQ(cmd.request.body, R"({"name":"n","expiry_date":null})");
  EXPECT_TRUE(body_of(cmd)->isNull("expiry_date"));
}

TEST(KeysCliParse, CreateRejectsBadValues) {
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--limit", "abc"}), "--limit expects a token count"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--limit", "-1"}), "--limit expects a token count"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--limit", "12x"}), "--limit expects a token count"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--metadata", "{oops"}), "--metadata is not valid JSON"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--metadata", "[1]"}), "--metadata expects a JSON object"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--allowed-models", " , "}), "--allowed-models expects"));
  EXPECT_TRUE(contains(usage_error({"create", "--name", "n", "--expires="}), "--expires expects"));
  // A limit of 0 is a valid limit.
  EXPECT_EQ(body_of(parse({"create", "--name", "n", "--limit", "0"}))->getValue<int64_t>("token_limit_per_5h"), 0);
}

TEST(KeysCliParse, ListAndItsQuery) {
  KeysCommand cmd = parse({"list"});
  EXPECT_EQ(cmd.request.method, "GET");
  EXPECT_EQ(cmd.request.path, "/admin/keys");
  EXPECT_TRUE(cmd.request.body.empty());
  EXPECT_FALSE(cmd.all);

  cmd = parse({"list", "--search", "bob & co/=?", "--limit", "50", "--after", "key_abc", "--all"});
  EXPECT_EQ(cmd.request.path, "/admin/keys?search=bob%20%26%20co%2F%3D%3F&limit=50&after=key_abc");
  EXPECT_TRUE(cmd.all);
  EXPECT_EQ(cmd.search, "bob & co/=?");
  EXPECT_EQ(cmd.limit, "50");
  EXPECT_EQ(cmd.after, "key_abc");

  EXPECT_EQ(cli::list_path("", "", "key_x"), "/admin/keys?after=key_x");
  EXPECT_EQ(cli::list_path("", "", ""), "/admin/keys");
  for (const char* bad : {"0", "1001", "ten", "-5"})
    EXPECT_TRUE(contains(usage_error({"list", "--limit", bad, "--token", "t"}), "page size from 1 to 1000")) << bad;
  EXPECT_EQ(parse({"list", "--limit", "1000"}).limit, "1000");
}

TEST(KeysCliParse, ShowRevokeRotate) {
  KeysCommand cmd = parse({"show", "key_ABCdef0123456789"});
  EXPECT_EQ(cmd.request.method, "GET");
  EXPECT_EQ(cmd.request.path, "/admin/keys/key_ABCdef0123456789");
  EXPECT_TRUE(cmd.request.body.empty());

  cmd = parse({"revoke", "key_1"});
  EXPECT_EQ(cmd.request.method, "DELETE");
  EXPECT_EQ(cmd.request.path, "/admin/keys/key_1");
  EXPECT_TRUE(cmd.request.body.empty());

  cmd = parse({"rotate", "key_1"});
  EXPECT_EQ(cmd.request.method, "POST");
  EXPECT_EQ(cmd.request.path, "/admin/keys/key_1/rotate");
  EXPECT_TRUE(cmd.request.body.empty());

  // The id is one path segment, whatever it contains.
  EXPECT_EQ(parse({"show", "../import?x=1#y"}).request.path, "/admin/keys/..%2Fimport%3Fx%3D1%23y");
  // `--` ends the flags: an id that starts with "-".
  EXPECT_EQ(cli::parse_keys_args({"--token", "t", "show", "--", "-odd"}, {}).request.path, "/admin/keys/-odd");
}

TEST(KeysCliParse, UpdateEveryFlag) {
  KeysCommand cmd = parse({"update", "key_1", "--name", "New", "--model", "glm-4.5", "--limit", "5", "--expires",
                           "2027-01-01T00:00:00+02:00", "--enable", "--allowed-models", "a,b", "--metadata", "{}"});
  EXPECT_EQ(cmd.request.method, "PATCH");
  EXPECT_EQ(cmd.request.path, "/admin/keys/key_1");
  EXPECT_EQ(cmd.request.body,
            R"({"name":"New","model":"glm-4.5","token_limit_per_5h":5,"expiry_date":"2027-01-01T00:00:00+02:00",)"
            R"("enabled":true,"allowed_models":["a","b"],"metadata":{}})");

  cmd = parse({"update", "key_1", "--disable"});
  EXPECT_EQ(cmd.request.body, R"({"enabled":false})");
}

TEST(KeysCliParse, UpdateClearsWithNull) {
  const KeysCommand cmd =
      parse({"update", "key_1", "--clear-model", "--no-limit", "--expires", "never", "--clear-allowed-models"});
  EXPECT_EQ(cmd.request.body, R"({"model":null,"token_limit_per_5h":null,"expiry_date":null,"allowed_models":null})");
  const auto body = body_of(cmd);
  for (const char* field : {"model", "token_limit_per_5h", "expiry_date", "allowed_models"})
    EXPECT_TRUE(body->isNull(field)) << field;
}

TEST(KeysCliParse, UpdateRejectsConflictsAndNoChange) {
  EXPECT_TRUE(contains(usage_error({"update", "k", "--model", "m", "--clear-model"}), "--model and --clear-model exclude each other"));
  EXPECT_TRUE(contains(usage_error({"update", "k", "--limit", "1", "--no-limit"}), "--limit and --no-limit exclude each other"));
  EXPECT_TRUE(contains(usage_error({"update", "k", "--enable", "--disable"}), "--enable and --disable exclude each other"));
  EXPECT_TRUE(contains(usage_error({"update", "k", "--allowed-models", "a", "--clear-allowed-models"}),
                       "--allowed-models and --clear-allowed-models exclude each other"));
  EXPECT_TRUE(contains(usage_error({"update", "k", "--token", "t"}), "update needs at least one change"));
  EXPECT_TRUE(contains(usage_error({"update", "--enable"}), "update needs ID"));
}

TEST(KeysCliParse, ImportSendsTheFileAsIs) {
  TempDir dir;
  const std::string content =
      R"({"keys":[{"key":"pk_user_12345","name":"User","model":"glm-4.7","token_limit_per_5h":100000,)"
      R"("expiry_date":"2026-12-31T23:59:59Z","created_at":"2026-01-18T00:00:00Z","last_used":"2026-01-18T00:00:00Z",)"
      R"("total_lifetime_tokens":0,"usage_windows":[]}]})"
      "\n";
  const KeysCommand cmd = parse({"import", dir.write("apikeys.json", content)});
  EXPECT_EQ(cmd.request.method, "POST");
  EXPECT_EQ(cmd.request.path, "/admin/keys/import");
  EXPECT_EQ(cmd.request.body, content);
  EXPECT_THROW(parse({"import", "/nonexistent/apikeys.json"}), CliError);
  EXPECT_THROW(parse({"import", dir.write("empty.json", "")}), CliError);
}

TEST(KeysCliParse, GlobalFlagsGoAnywhere) {
  const KeysCommand a = cli::parse_keys_args({"--url", "http://h:1", "--token=tk", "list", "--all"}, {});
  EXPECT_EQ(a.base_url, "http://h:1");
  EXPECT_EQ(a.token, "tk");
  EXPECT_TRUE(a.all);
  const KeysCommand b = cli::parse_keys_args({"show", "--url=http://h:2/", "key_1", "--token", "tk"}, {});
  EXPECT_EQ(b.base_url, "http://h:2");
  EXPECT_EQ(b.request.path, "/admin/keys/key_1");
}

// --- URL and token resolution ---------------------------------------------------------------------

TEST(KeysCliResolve, UrlPrecedence) {
  TempDir dir;
  const std::string config = dir.write("proxy.toml", config_text("10.1.2.3:4100"));
  const Env env{{"GLMP_URL", "http://env-host:5000"}};
  // Nothing: the default.
  EXPECT_EQ(parse({"list"}).base_url, "http://127.0.0.1:3000");
  // $GLMP_URL beats the default…
  EXPECT_EQ(parse({"list"}, env).base_url, "http://env-host:5000");
  // … the config's [server] listen beats $GLMP_URL …
  EXPECT_EQ(parse({"list", "--config", config}, env).base_url, "http://10.1.2.3:4100");
  // … and --url beats everything.
  EXPECT_EQ(parse({"list", "--config", config, "--url", "https://admin.example:8443/proxy/"}, env).base_url,
            "https://admin.example:8443/proxy");
  // An empty variable counts as unset.
  EXPECT_EQ(parse({"list"}, {{"GLMP_URL", ""}}).base_url, "http://127.0.0.1:3000");
}

TEST(KeysCliResolve, UrlFromWildcardListenAddresses) {
  TempDir dir;
  EXPECT_EQ(parse({"list", "--config", dir.write("a.toml", config_text("0.0.0.0:3000"))}).base_url, "http://127.0.0.1:3000");
  EXPECT_EQ(parse({"list", "--config", dir.write("b.toml", config_text(":3001"))}).base_url, "http://127.0.0.1:3001");
  EXPECT_EQ(parse({"list", "--config", dir.write("c.toml", config_text("[::]:3002"))}).base_url, "http://[::1]:3002");
  EXPECT_EQ(parse({"list", "--config", dir.write("d.toml", config_text("[::1]:3003"))}).base_url, "http://[::1]:3003");
  EXPECT_EQ(parse({"list", "--config", dir.write("e.toml", config_text("localhost:3004"))}).base_url, "http://localhost:3004");
  // Port 0 is chosen at start: the CLI cannot know it.
  EXPECT_THROW(parse({"list", "--config", dir.write("f.toml", config_text("127.0.0.1:0"))}), CliError);
}

TEST(KeysCliResolve, BadUrlsAndConfigs) {
  EXPECT_TRUE(contains(usage_error({"list", "--token", "t", "--url", "ftp://h"}), "invalid URL 'ftp://h' (--url)"));
  EXPECT_TRUE(contains(usage_error({"list", "--token", "t", "--url", "127.0.0.1:3000"}), "invalid URL"));
  EXPECT_TRUE(contains(usage_error({"list", "--token", "t", "--url", "http://h:1/?q=1"}), "no query"));
  EXPECT_TRUE(contains(usage_error({"list", "--token", "t"}, {{"GLMP_URL", "nope"}}), "($GLMP_URL)"));
  TempDir dir;
  try {
    parse({"list", "--config", dir.write("bad.toml", "[server]\nlisten = 3000\n")});
    ADD_FAILURE() << "no error";
  } catch (const CliError& e) {
    EXPECT_TRUE(contains(e.what(), "config error: ")) << e.what();
    EXPECT_TRUE(contains(e.what(), "bad.toml")) << e.what();
  }
  EXPECT_THROW(parse({"list", "--config", "/nonexistent/proxy.toml"}), CliError);
  // Not read at all when --url and --token say everything.
  EXPECT_EQ(parse({"list", "--config", "/nonexistent/proxy.toml", "--url", "http://h:1"}).base_url, "http://h:1");
}

TEST(KeysCliResolve, TokenPrecedence) {
  TempDir dir;
  const std::string config = dir.write("proxy.toml", config_text("127.0.0.1:3000", "from-config"));
  const Env env{{"GLMP_ADMIN_TOKEN", "from-env"}};
  EXPECT_EQ(cli::parse_keys_args({"list", "--config", config}, {}).token, "from-config");
  EXPECT_EQ(cli::parse_keys_args({"list", "--config", config}, env).token, "from-env");
  EXPECT_EQ(cli::parse_keys_args({"list", "--config", config, "--token", "from-flag"}, env).token, "from-flag");
  EXPECT_EQ(cli::parse_keys_args({"list"}, env).token, "from-env");
  // The config is still read for the token when the URL comes from --url.
  EXPECT_EQ(cli::parse_keys_args({"list", "--config", config, "--url", "http://h:1"}, {}).token, "from-config");
}

TEST(KeysCliResolve, NoTokenIsAnErrorWithoutTheUsage) {
  TempDir dir;
  const std::string no_admin = dir.write("proxy.toml", config_text("127.0.0.1:3000"));
  EXPECT_TRUE(contains(usage_error({"list"}), "no admin token"));
  EXPECT_TRUE(contains(usage_error({"list", "--config", no_admin}), "has no [admin] token"));
  EXPECT_TRUE(contains(usage_error({"list"}, {{"GLMP_ADMIN_TOKEN", ""}}), "no admin token"));
  std::ostringstream out, err;
  EXPECT_EQ(cli::run_keys({"list"}, {}, out, err), 2);
  EXPECT_TRUE(contains(err.str(), "glm-proxy keys: no admin token"));
  EXPECT_FALSE(contains(err.str(), "usage:"));
}

// --- output formatting ----------------------------------------------------------------------------

TEST(KeysCliOutput, PrettyJsonKeepsTheOrder) {
  const std::string pretty = cli::pretty_json(R"({"z":1,"a":{"k":[true,null]},"m":"x"})");
  EXPECT_LT(pretty.find("\"z\""), pretty.find("\"a\""));
  EXPECT_LT(pretty.find("\"a\""), pretty.find("\"m\""));
  EXPECT_TRUE(contains(pretty, "\n  \"z\"")) << pretty;  // indent 2
  EXPECT_TRUE(contains(pretty, "null"));
  // Parses back to the same thing.
  const auto again = Poco::JSON::Parser().parse(pretty).extract<Poco::JSON::Object::Ptr>();
  EXPECT_EQ(again->getValue<std::string>("m"), "x");
  EXPECT_EQ(cli::pretty_json("not json"), "not json");
}

TEST(KeysCliOutput, ErrorLine) {
  EXPECT_EQ(cli::error_line(404, "Not Found", R"({"error":{"message":"unknown key key_1","type":"invalid_request_error"}})"),
            "404 unknown key key_1");
  EXPECT_EQ(cli::error_line(502, "Bad Gateway", "upstream down\n"), "502 upstream down");
  EXPECT_EQ(cli::error_line(400, "Bad Request", R"({"other":1})"), R"(400 {"other":1})");
  EXPECT_EQ(cli::error_line(503, "Service Unavailable", ""), "503 Service Unavailable");
}

// --- run_keys against an in-process HTTP server ---------------------------------------------------

namespace {

struct Recorded {
  std::string method, uri, body, authorization, content_type;
};

struct Scripted {
  int status = 200;
  std::string body = "{}";
};

// Records every request and answers from a script (the last answer repeats).
class StubState {
public:
  void push(int status, std::string body) {
    std::lock_guard lock(mu_);
    script_.push_back({status, std::move(body)});
  }
  Scripted next(Recorded rec) {
    std::lock_guard lock(mu_);
    requests_.push_back(std::move(rec));
    if (script_.empty()) return {};
    Scripted s = script_.front();
    if (script_.size() > 1) script_.pop_front();
    return s;
  }
  std::vector<Recorded> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }

private:
  std::mutex mu_;
  std::deque<Scripted> script_;
  std::vector<Recorded> requests_;
};

class StubHandler : public Poco::Net::HTTPRequestHandler {
public:
  explicit StubHandler(StubState& state) : state_(state) {}
  void handleRequest(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) override {
    Recorded rec{req.getMethod(), req.getURI(), "", req.get("Authorization", ""), req.get("Content-Type", "")};
    Poco::StreamCopier::copyToString(req.stream(), rec.body);
    const Scripted answer = state_.next(std::move(rec));
    resp.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(answer.status));
    resp.setContentType("application/json");
    resp.setContentLength64(static_cast<Poco::Int64>(answer.body.size()));
    resp.send() << answer.body;
  }

private:
  StubState& state_;
};

class StubFactory : public Poco::Net::HTTPRequestHandlerFactory {
public:
  explicit StubFactory(StubState& state) : state_(state) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new StubHandler(state_);
  }

private:
  StubState& state_;
};

class KeysCliRun : public ::testing::Test {
protected:
  StubState state;
  std::unique_ptr<Poco::Net::HTTPServer> server;
  uint16_t port = 0;

  void SetUp() override {
    Poco::Net::ServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0));
    port = socket.address().port();
    server = std::make_unique<Poco::Net::HTTPServer>(new StubFactory(state), socket, new Poco::Net::HTTPServerParams);
    server->start();
  }
  void TearDown() override { server->stopAll(true); }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }

  int run(std::vector<std::string> args, std::string& out, std::string& err, const Env& env = {}) {
    std::ostringstream o, e;
    const int rc = cli::run_keys(args, env, o, e);
    out = o.str();
    err = e.str();
    return rc;
  }
};

}  // namespace

TEST_F(KeysCliRun, CreateSendsTheRequestAndPrintsPrettyJson) {
  state.push(201, R"({"key":"pk_plain","id":"key_1","name":"Bob","key_masked":"pk_plai…ain"})");
  std::string out, err;
  ASSERT_EQ(run({"create", "--name", "Bob", "--limit", "10", "--url", url(), "--token", "s3cret"}, out, err), 0) << err;
  EXPECT_TRUE(err.empty()) << err;
  EXPECT_EQ(out, cli::pretty_json(R"({"key":"pk_plain","id":"key_1","name":"Bob","key_masked":"pk_plai…ain"})") + "\n");
  EXPECT_LT(out.find("\"key\""), out.find("\"id\""));
  const auto reqs = state.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].uri, "/admin/keys");
  EXPECT_EQ(reqs[0].authorization, "Bearer s3cret");
  EXPECT_EQ(reqs[0].content_type, "application/json");
  EXPECT_EQ(reqs[0].body, R"({"name":"Bob","token_limit_per_5h":10})");
}

TEST_F(KeysCliRun, EveryMethodReachesItsRoute) {
  std::string out, err;
  const std::vector<std::string> common{"--url", url() + "/", "--token", "t"};
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"show", "key_1"}, "GET /admin/keys/key_1"},
      {{"update", "key_1", "--disable"}, "PATCH /admin/keys/key_1"},
      {{"revoke", "key_1"}, "DELETE /admin/keys/key_1"},
      {{"rotate", "key_1"}, "POST /admin/keys/key_1/rotate"},
      {{"list", "--search", "a b"}, "GET /admin/keys?search=a%20b"},
  };
  for (const auto& [args, want] : cases) {
    std::vector<std::string> full = args;
    full.insert(full.end(), common.begin(), common.end());
    EXPECT_EQ(run(full, out, err), 0) << want << ": " << err;
    const auto last = state.requests().back();
    EXPECT_EQ(last.method + " " + last.uri, want);
  }
}

TEST_F(KeysCliRun, UrlPathPrefixIsKept) {
  std::string out, err;
  ASSERT_EQ(run({"show", "key_1", "--url", url() + "/gateway/", "--token", "t"}, out, err), 0) << err;
  EXPECT_EQ(state.requests().back().uri, "/gateway/admin/keys/key_1");
}

TEST_F(KeysCliRun, Non2xxPrintsTheServerMessageAndExits1) {
  state.push(404, R"({"error":{"message":"API key not found","type":"invalid_request_error"}})");
  std::string out, err;
  EXPECT_EQ(run({"show", "key_nope", "--url", url(), "--token", "t"}, out, err), 1);
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_EQ(err, "glm-proxy keys: 404 API key not found\n");
}

TEST_F(KeysCliRun, TheTokenIsNeverPrinted) {
  // A server that echoes the credential back in its error.
  state.push(401, R"({"error":{"message":"bad admin token 'Sup3rSecretT0ken'"}})");
  std::string out, err;
  EXPECT_EQ(run({"list", "--url", url(), "--token", "Sup3rSecretT0ken"}, out, err), 1);
  EXPECT_TRUE(contains(err, "glm-proxy keys: 401 bad admin token '***'")) << err;
  EXPECT_FALSE(contains(err + out, "Sup3rSecretT0ken"));
}

TEST_F(KeysCliRun, ListAllFollowsNextAfter) {
  state.push(200, R"({"keys":[{"id":"key_a"},{"id":"key_b"}],"more":true,"next_after":"key_b"})");
  state.push(200, R"({"keys":[{"id":"key_c"}],"more":true,"next_after":"key_c"})");
  state.push(200, R"({"keys":[{"id":"key_d"}],"more":false,"next_after":""})");
  std::string out, err;
  ASSERT_EQ(run({"list", "--all", "--limit", "2", "--search", "key", "--url", url(), "--token", "t"}, out, err), 0) << err;
  const auto reqs = state.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].uri, "/admin/keys?search=key&limit=2");
  EXPECT_EQ(reqs[1].uri, "/admin/keys?search=key&limit=2&after=key_b");
  EXPECT_EQ(reqs[2].uri, "/admin/keys?search=key&limit=2&after=key_c");
  const auto merged = Poco::JSON::Parser().parse(out).extract<Poco::JSON::Object::Ptr>();
  const auto keys = merged->getArray("keys");
  ASSERT_EQ(keys->size(), 4u);
  EXPECT_EQ(keys->getObject(3)->getValue<std::string>("id"), "key_d");
  EXPECT_FALSE(merged->getValue<bool>("more"));
  EXPECT_EQ(merged->getValue<std::string>("next_after"), "");
}

TEST_F(KeysCliRun, ListAllStopsOnARepeatedCursor) {
  state.push(200, R"({"keys":[{"id":"key_a"}],"more":true,"next_after":"key_a"})");  // repeats forever
  std::string out, err;
  ASSERT_EQ(run({"list", "--all", "--url", url(), "--token", "t"}, out, err), 0) << err;
  EXPECT_EQ(state.requests().size(), 2u);
}

TEST_F(KeysCliRun, ListAllReportsAFailedPage) {
  state.push(200, R"({"keys":[{"id":"key_a"}],"more":true,"next_after":"key_a"})");
  state.push(500, R"({"error":{"message":"store unavailable"}})");
  std::string out, err;
  EXPECT_EQ(run({"list", "--all", "--url", url(), "--token", "t"}, out, err), 1);
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_EQ(err, "glm-proxy keys: 500 store unavailable\n");
}

TEST_F(KeysCliRun, ReadsTheEnvironmentThroughArgv) {
  EnvGuard url_env("GLMP_URL", url().c_str());
  EnvGuard token_env("GLMP_ADMIN_TOKEN", "env-token");
  std::vector<std::string> storage{"keys", "show", "key_9"};
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::ostringstream out, err;
  ASSERT_EQ(cli::run_keys(static_cast<int>(storage.size()), argv.data(), out, err), 0) << err.str();
  EXPECT_EQ(state.requests().back().authorization, "Bearer env-token");
  EXPECT_EQ(state.requests().back().uri, "/admin/keys/key_9");
}

TEST(KeysCliRunOffline, ConnectionRefusedNamesTheUrl) {
  uint16_t closed_port = 0;
  {
    Poco::Net::ServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0));
    closed_port = socket.address().port();
  }
  const std::string url = "http://127.0.0.1:" + std::to_string(closed_port);
  std::ostringstream out, err;
  EXPECT_EQ(cli::run_keys({"list", "--url", url, "--token", "Sup3rSecretT0ken"}, {}, out, err), 1);
  EXPECT_TRUE(out.str().empty());
  EXPECT_TRUE(contains(err.str(), "glm-proxy keys: cannot connect to " + url + ": connection refused")) << err.str();
  EXPECT_FALSE(contains(err.str(), "Sup3rSecretT0ken"));
  // Same over https (the TLS setup must not get in the way of the message).
  std::ostringstream out2, err2;
  const std::string https_url = "https://127.0.0.1:" + std::to_string(closed_port);
  EXPECT_EQ(cli::run_keys({"show", "key_1", "--url", https_url, "--token", "t"}, {}, out2, err2), 1);
  EXPECT_TRUE(contains(err2.str(), "cannot connect to " + https_url)) << err2.str();
}
