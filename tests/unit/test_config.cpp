// Unit tests for core/src/config: TOML parsing, defaults, ${ENV} interpolation, durations, sizes
// and the located error messages ("file:line: dotted.key: message").

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include "../support/env_guard.hpp"
#include "config/config.hpp"

namespace cfg = glmp::core::config;
using glmp::core::pipeline::Flavour;
using namespace std::chrono_literals;

namespace {

using glmp::test::EnvGuard;

// A temporary file removed at the end of the test.
class TempFile {
public:
  explicit TempFile(const std::string& content, const std::string& tag = "cfg") {
    path_ = (std::filesystem::temp_directory_path() /
             ("glmp_ut_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++) + ".tmp"))
                .string();
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

private:
  static inline int counter_ = 0;
  std::string path_;
};

// The smallest valid config: one upstream, one route. 7 lines, so a section appended after it
// starts on line 8 and one prepended before it keeps its own line numbers.
const std::string kMinimal =
    "[upstreams.u]\n"                 // 1
    "base_url = \"http://127.0.0.1:9\"\n"  // 2
    "\n"                              // 3
    "[[routes]]\n"                    // 4
    "prefix = \"/v1/\"\n"             // 5
    "flavour = \"openai\"\n"          // 6
    "upstream = \"u\"\n";             // 7

// Parses `text` expecting a ConfigError whose message contains every one of `parts`.
void expect_error(const std::string& text, const std::vector<std::string>& parts) {
  try {
    cfg::parse_config(text, "t.toml");
    ADD_FAILURE() << "expected a ConfigError containing \"" << (parts.empty() ? "" : parts.front()) << "\" for:\n"
                  << text;
  } catch (const cfg::ConfigError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

// The message of the ConfigError thrown for `text` ("" if none).
std::string error_of(const std::string& text) {
  try {
    cfg::parse_config(text, "t.toml");
  } catch (const cfg::ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string shipped_config_path() {
#ifdef GLMP_SOURCE_DIR
  return std::string(GLMP_SOURCE_DIR) + "/config/glm-proxy.toml";
#else
  return (std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "config" / "glm-proxy.toml")
      .lexically_normal()
      .string();
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Valid configs
// ---------------------------------------------------------------------------------------------

TEST(ConfigParse, FullConfigParsesEveryKey) {
  TempFile ca("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "ca");
  EnvGuard key("GLMP_UT_KEY", "sk-123");
  const std::string text =
      "[server]\n"
      "listen = \"0.0.0.0:8080\"\n"
      "max_threads = 64\n"
      "thread_stack_size = \"128KiB\"\n"
      "max_queued = 100\n"
      "max_request_body = \"1MiB\"\n"
      "header_timeout = \"3s\"\n"
      "keepalive_timeout = \"1m30s\"\n"
      "drain_timeout = \"0s\"\n"
      "\n"
      "[proxy]\n"
      "model = \"\"\n"
      "stream_usage = false\n"
      "chunk_size = \"64KiB\"\n"
      "\n"
      "[log]\n"
      "level = \"debug\"\n"
      "access_log = \"/tmp/access.log\"\n"
      "\n"
      "[upstreams.zai]\n"
      "base_url = \"https://api.example.com/api/v4/\"\n"
      "auth_header = \"Authorization\"\n"
      "auth_value = \"Bearer ${GLMP_UT_KEY}\"\n"
      "min_connections = 1\n"
      "max_connections = 8\n"
      "warm = false\n"
      "connect_timeout = \"250ms\"\n"
      "read_timeout = \"2m\"\n"
      "acquire_timeout = \"1s\"\n"
      "idle_timeout = \"1h\"\n"
      "health_interval = \"0s\"\n"
      "ca_file = \"" + ca.path() + "\"\n"
      "protocol = \"h2\"\n"
      "max_streams_per_connection = 50\n"
      "ping_interval = \"10s\"\n"
      "\n"
      "[upstreams.local]\n"
      "base_url = \"http://127.0.0.1:9000\"\n"
      "\n"
      "[[routes]]\n"
      "prefix = \"/v1/messages\"\n"
      "flavour = \"anthropic\"\n"
      "upstream = \"local\"\n"
      "\n"
      "[[routes]]\n"
      "prefix = \"/v1/\"\n"
      "flavour = \"openai\"\n"
      "upstream = \"zai\"\n"
      "strip_prefix = \"/v1\"\n";

  const cfg::Config c = cfg::parse_config(text, "full.toml");
  EXPECT_EQ(c.source_path, "full.toml");

  EXPECT_EQ(c.server.host, "0.0.0.0");
  EXPECT_EQ(c.server.port, 8080);
  EXPECT_EQ(c.server.max_threads, 64);
  EXPECT_EQ(c.server.thread_stack_size, 128u * 1024);
  EXPECT_EQ(c.server.max_queued, 100);
  EXPECT_EQ(c.server.max_request_body, 1024u * 1024);
  EXPECT_EQ(c.server.header_timeout, 3s);
  EXPECT_EQ(c.server.keepalive_timeout, 90s);
  EXPECT_EQ(c.server.drain_timeout, 0ms);

  EXPECT_EQ(c.proxy.model, "");
  EXPECT_FALSE(c.proxy.stream_usage);
  EXPECT_EQ(c.proxy.chunk_size, 64u * 1024);

  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.access_log, "/tmp/access.log");

  ASSERT_EQ(c.upstreams.size(), 2u);
  const cfg::UpstreamConfig& z = c.upstreams.at("zai");
  EXPECT_EQ(z.name, "zai");
  EXPECT_EQ(z.base_url, "https://api.example.com/api/v4");  // trailing '/' removed
  EXPECT_EQ(z.auth_header, "Authorization");
  EXPECT_EQ(z.auth_value, "Bearer sk-123");
  EXPECT_EQ(z.auth_error, "");
  EXPECT_EQ(z.min_connections, 1);
  EXPECT_EQ(z.max_connections, 8);
  EXPECT_FALSE(z.warm);
  EXPECT_EQ(z.connect_timeout, 250ms);
  EXPECT_EQ(z.read_timeout, 2min);
  EXPECT_EQ(z.acquire_timeout, 1s);
  EXPECT_EQ(z.idle_timeout, 1h);
  EXPECT_EQ(z.health_interval, 0ms);
  EXPECT_EQ(z.ca_file, ca.path());
  EXPECT_EQ(z.protocol, cfg::UpstreamProtocol::H2);
  EXPECT_EQ(z.max_streams_per_connection, 50);
  EXPECT_EQ(z.ping_interval, 10s);

  const cfg::UpstreamConfig& l = c.upstreams.at("local");
  EXPECT_EQ(l.name, "local");
  EXPECT_EQ(l.base_url, "http://127.0.0.1:9000");
  EXPECT_EQ(l.auth_header, "");
  EXPECT_EQ(l.auth_value, "");

  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].prefix, "/v1/messages");
  EXPECT_EQ(c.routes[0].flavour, Flavour::Anthropic);
  EXPECT_EQ(c.routes[0].upstream, "local");
  EXPECT_EQ(c.routes[0].strip_prefix, "");
  EXPECT_EQ(c.routes[1].prefix, "/v1/");
  EXPECT_EQ(c.routes[1].flavour, Flavour::OpenAI);
  EXPECT_EQ(c.routes[1].upstream, "zai");
  EXPECT_EQ(c.routes[1].strip_prefix, "/v1");
}

TEST(ConfigParse, DefaultsWhenKeysAreOmitted) {
  const cfg::Config c = cfg::parse_config(kMinimal, "min.toml");
  EXPECT_EQ(c.server.host, "127.0.0.1");
  EXPECT_EQ(c.server.port, 3000);
  EXPECT_EQ(c.server.max_threads, 512);
  EXPECT_EQ(c.server.thread_stack_size, 256u * 1024);
  EXPECT_EQ(c.server.max_queued, 1024);
  EXPECT_EQ(c.server.max_request_body, 32u << 20);
  EXPECT_EQ(c.server.header_timeout, 10s);
  EXPECT_EQ(c.server.keepalive_timeout, 10s);
  EXPECT_EQ(c.server.drain_timeout, 30s);

  EXPECT_EQ(c.proxy.model, "glm-4.7");
  EXPECT_TRUE(c.proxy.stream_usage);
  EXPECT_EQ(c.proxy.chunk_size, 32u * 1024);

  EXPECT_EQ(c.log.level, "information");
  EXPECT_EQ(c.log.access_log, "stdout");

  const cfg::UpstreamConfig& u = c.upstreams.at("u");
  EXPECT_EQ(u.name, "u");
  EXPECT_EQ(u.base_url, "http://127.0.0.1:9");
  EXPECT_EQ(u.auth_header, "");
  EXPECT_EQ(u.auth_value, "");
  EXPECT_EQ(u.auth_error, "");
  EXPECT_EQ(u.min_connections, 2);
  EXPECT_EQ(u.max_connections, 256);
  EXPECT_TRUE(u.warm);
  EXPECT_EQ(u.connect_timeout, 5s);
  EXPECT_EQ(u.read_timeout, 300s);
  EXPECT_EQ(u.acquire_timeout, 5s);
  EXPECT_EQ(u.idle_timeout, 60s);
  EXPECT_EQ(u.health_interval, 30s);
  EXPECT_EQ(u.ca_file, "");
  EXPECT_EQ(u.protocol, cfg::UpstreamProtocol::Auto);
  EXPECT_EQ(u.max_streams_per_connection, 100);
  EXPECT_EQ(u.ping_interval, 30s);

  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].strip_prefix, "");
}

TEST(ConfigParse, ListenForms) {
  auto listen = [](const std::string& value) {
    return cfg::parse_config("[server]\nlisten = \"" + value + "\"\n" + kMinimal, "t.toml").server;
  };
  auto s = listen(":8080");
  EXPECT_EQ(s.host, "0.0.0.0");
  EXPECT_EQ(s.port, 8080);
  s = listen("[::1]:9000");
  EXPECT_EQ(s.host, "::1");
  EXPECT_EQ(s.port, 9000);
  s = listen("example.internal:65535");
  EXPECT_EQ(s.host, "example.internal");
  EXPECT_EQ(s.port, 65535);
}

TEST(ConfigParse, SizesMayBePlainIntegers) {
  const auto c = cfg::parse_config("[server]\nmax_request_body = 1000\nthread_stack_size = 65536\n" + kMinimal, "t.toml");
  EXPECT_EQ(c.server.max_request_body, 1000u);
  EXPECT_EQ(c.server.thread_stack_size, 65536u);
}

TEST(ConfigParse, ZeroHealthIntervalAndDrainTimeoutAreAllowed) {
  const auto c = cfg::parse_config(
      "[server]\ndrain_timeout = \"0ms\"\n"
      "[upstreams.u]\nbase_url = \"http://h\"\nhealth_interval = \"0s\"\nmin_connections = 0\n"
      "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
      "t.toml");
  EXPECT_EQ(c.server.drain_timeout.count(), 0);
  EXPECT_EQ(c.upstreams.at("u").health_interval.count(), 0);
  EXPECT_EQ(c.upstreams.at("u").min_connections, 0);
}

// ---------------------------------------------------------------------------------------------
// ${ENV} interpolation
// ---------------------------------------------------------------------------------------------

TEST(ConfigEnv, InterpolateEnvForms) {
  EnvGuard a("GLMP_UT_A", "alpha");
  EnvGuard b("GLMP_UT_B", nullptr);
  EnvGuard e("GLMP_UT_EMPTY", "");

  std::vector<std::string> missing;
  EXPECT_EQ(cfg::interpolate_env("x-${GLMP_UT_A}-y", &missing), "x-alpha-y");
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_A:-fallback}", &missing), "alpha");
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_B:-fallback}", &missing), "fallback");
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_B:-}", &missing), "");
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_B:-127.0.0.1:3000}", &missing), "127.0.0.1:3000");
  // An empty variable counts as unset for the default.
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_EMPTY:-d}", &missing), "d");
  EXPECT_TRUE(missing.empty());

  // "$$" is a literal '$', also in front of '{' (no expansion then).
  EXPECT_EQ(cfg::interpolate_env("a$$b", &missing), "a$b");
  EXPECT_EQ(cfg::interpolate_env("$${GLMP_UT_A}", &missing), "${GLMP_UT_A}");
  EXPECT_EQ(cfg::interpolate_env("$$$$", &missing), "$$");
  // A lone '$' not followed by '{' is kept.
  EXPECT_EQ(cfg::interpolate_env("cost $5 $", &missing), "cost $5 $");
  EXPECT_EQ(cfg::interpolate_env("no refs", &missing), "no refs");
  EXPECT_TRUE(missing.empty());

  // Unset without default: expands to "" and is reported, in order.
  EXPECT_EQ(cfg::interpolate_env("[${GLMP_UT_B}][${GLMP_UT_EMPTY}]${GLMP_UT_A}", &missing), "[][]alpha");
  ASSERT_EQ(missing.size(), 2u);
  EXPECT_EQ(missing[0], "GLMP_UT_B");
  EXPECT_EQ(missing[1], "GLMP_UT_EMPTY");

  // A null `missing` is allowed.
  EXPECT_EQ(cfg::interpolate_env("${GLMP_UT_B}x", nullptr), "x");
}

TEST(ConfigEnv, MalformedReferencesThrow) {
  std::vector<std::string> missing;
  EXPECT_THROW(cfg::interpolate_env("${GLMP_UT_A", &missing), std::invalid_argument);
  EXPECT_THROW(cfg::interpolate_env("${}", &missing), std::invalid_argument);
  EXPECT_THROW(cfg::interpolate_env("${:-x}", &missing), std::invalid_argument);
  EXPECT_THROW(cfg::interpolate_env("${BAD NAME}", &missing), std::invalid_argument);
  EXPECT_THROW(cfg::interpolate_env("${A-B}", &missing), std::invalid_argument);
}

TEST(ConfigEnv, InterpolationAppliesToConfigValues) {
  EnvGuard listen("GLMP_UT_LISTEN", "10.1.2.3:4567");
  EnvGuard model("GLMP_UT_MODEL", nullptr);
  const auto c = cfg::parse_config(
      "[server]\nlisten = \"${GLMP_UT_LISTEN}\"\n"
      "[proxy]\nmodel = \"${GLMP_UT_MODEL:-glm-x}$$\"\n" + kMinimal,
      "t.toml");
  EXPECT_EQ(c.server.host, "10.1.2.3");
  EXPECT_EQ(c.server.port, 4567);
  EXPECT_EQ(c.proxy.model, "glm-x$");
}

TEST(ConfigEnv, UnsetVariableInAuthValueIsNotFatal) {
  EnvGuard key("ZAI_API_KEY", nullptr);
  const auto c = cfg::parse_config(
      "[upstreams.u]\nbase_url = \"http://h\"\nauth_header = \"Authorization\"\n"
      "auth_value = \"Bearer ${ZAI_API_KEY}\"\n"
      "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
      "t.toml");
  const auto& u = c.upstreams.at("u");
  EXPECT_EQ(u.auth_value, "");  // never half a credential such as "Bearer "
  EXPECT_NE(u.auth_error.find("ZAI_API_KEY"), std::string::npos) << u.auth_error;
  EXPECT_NE(u.auth_error.find("'u'"), std::string::npos) << u.auth_error;
}

TEST(ConfigEnv, EmptyVariableInAuthValueCountsAsUnset) {
  EnvGuard key("ZAI_API_KEY", "");
  const auto c = cfg::parse_config(
      "[upstreams.u]\nbase_url = \"http://h\"\nauth_header = \"x-api-key\"\nauth_value = \"${ZAI_API_KEY}\"\n"
      "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
      "t.toml");
  EXPECT_EQ(c.upstreams.at("u").auth_value, "");
  EXPECT_NE(c.upstreams.at("u").auth_error.find("ZAI_API_KEY"), std::string::npos);
}

TEST(ConfigEnv, SetVariableInAuthValueIsExpanded) {
  EnvGuard key("ZAI_API_KEY", "zk-1");
  const auto c = cfg::parse_config(
      "[upstreams.u]\nbase_url = \"http://h\"\nauth_header = \"x-api-key\"\nauth_value = \"${ZAI_API_KEY}\"\n"
      "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
      "t.toml");
  EXPECT_EQ(c.upstreams.at("u").auth_value, "zk-1");
  EXPECT_EQ(c.upstreams.at("u").auth_error, "");
}

TEST(ConfigEnv, UnsetVariableElsewhereIsAnErrorNamingIt) {
  EnvGuard v("GLMP_UT_UNSET_LISTEN", nullptr);
  expect_error("[server]\nlisten = \"${GLMP_UT_UNSET_LISTEN}\"\n" + kMinimal,
               {"t.toml:2:", "server.listen", "GLMP_UT_UNSET_LISTEN", "not set"});
  EnvGuard d("GLMP_UT_UNSET_DUR", nullptr);
  expect_error("[server]\n\nheader_timeout = \"${GLMP_UT_UNSET_DUR}\"\n" + kMinimal,
               {"t.toml:3:", "server.header_timeout", "GLMP_UT_UNSET_DUR"});
  expect_error(kMinimal + "[upstreams.v]\nbase_url = \"${GLMP_UT_UNSET_LISTEN}\"\n",
               {"t.toml:9:", "upstreams.v.base_url", "GLMP_UT_UNSET_LISTEN"});
}

TEST(ConfigEnv, MalformedReferenceInConfigNamesKey) {
  expect_error("[proxy]\nmodel = \"${oops\"\n" + kMinimal, {"t.toml:2:", "proxy.model", "unterminated"});
}

// ---------------------------------------------------------------------------------------------
// parse_duration / parse_size
// ---------------------------------------------------------------------------------------------

TEST(ConfigDuration, Units) {
  EXPECT_EQ(cfg::parse_duration("250ms"), 250ms);
  EXPECT_EQ(cfg::parse_duration("10s"), 10s);
  EXPECT_EQ(cfg::parse_duration("5m"), 5min);
  EXPECT_EQ(cfg::parse_duration("1h"), 1h);
  EXPECT_EQ(cfg::parse_duration("1m30s"), 90s);
  EXPECT_EQ(cfg::parse_duration("2h30m15s500ms"), 2h + 30min + 15s + 500ms);
  EXPECT_EQ(cfg::parse_duration("0s"), 0ms);
  EXPECT_EQ(cfg::parse_duration("1500ms"), 1500ms);
}

TEST(ConfigDuration, Invalid) {
  for (const char* bad : {"10", "5x", "", "s", "-5s", " 5s", "5s ", "1.5s", "5S", "5 s", "ms10", "1m30"})
    EXPECT_THROW(cfg::parse_duration(bad), std::invalid_argument) << "input: \"" << bad << "\"";
}

TEST(ConfigDuration, HugeValuesAreRejectedNotWrapped) {
  EXPECT_THROW(cfg::parse_duration("99999999999999999999s"), std::invalid_argument);
}

TEST(ConfigDuration, SumOverflowIsRejected) {
  EXPECT_THROW(cfg::parse_duration("1099511627776h1099511627776h1099511627776h"), std::invalid_argument);
}

TEST(ConfigDuration, AbsurdlyLongIsRejectedLongIsFine) {
  EXPECT_EQ(cfg::parse_duration("8760h"), std::chrono::hours(8760));  // a year
  EXPECT_THROW(cfg::parse_duration("10000000h"), std::invalid_argument);  // > 1000 years
  EXPECT_THROW(cfg::parse_duration("1099511627776ms1099511627776h"), std::invalid_argument);
  // In a config file, the error names the key instead of wrapping into a negative duration.
  expect_error("[server]\ndrain_timeout = \"1099511627776h1099511627776h1099511627776h\"\n" + kMinimal,
               {"t.toml:2:", "server.drain_timeout", "too large"});
}

TEST(ConfigSize, Units) {
  EXPECT_EQ(cfg::parse_size("100"), 100u);
  EXPECT_EQ(cfg::parse_size("100B"), 100u);
  EXPECT_EQ(cfg::parse_size("512KiB"), 512u * 1024);
  EXPECT_EQ(cfg::parse_size("32MiB"), 32u * 1024 * 1024);
  EXPECT_EQ(cfg::parse_size("2GiB"), 2ull * 1024 * 1024 * 1024);
  EXPECT_EQ(cfg::parse_size("1KB"), 1000u);
  EXPECT_EQ(cfg::parse_size("1kB"), 1000u);
  EXPECT_EQ(cfg::parse_size("3MB"), 3'000'000u);
  EXPECT_EQ(cfg::parse_size("1GB"), 1'000'000'000u);
  EXPECT_EQ(cfg::parse_size("1 MiB"), 1024u * 1024);
  EXPECT_EQ(cfg::parse_size("0"), 0u);
}

TEST(ConfigSize, Invalid) {
  for (const char* bad : {"", "MiB", "1.5MiB", "-1", "5XB", "1mib", "10 KiBs", "1TB", " 1"})
    EXPECT_THROW(cfg::parse_size(bad), std::invalid_argument) << "input: \"" << bad << "\"";
  EXPECT_THROW(cfg::parse_size("99999999999999999999"), std::invalid_argument);
}

TEST(ConfigSize, ProductOverflowIsRejected) {
  EXPECT_THROW(cfg::parse_size("17179869184GiB"), std::invalid_argument);  // 2^64 would wrap to 0
  EXPECT_THROW(cfg::parse_size("17179869185GiB"), std::invalid_argument);  // would wrap to 1 GiB
  EXPECT_THROW(cfg::parse_size("1000000000000GB"), std::invalid_argument);
  EXPECT_EQ(cfg::parse_size("1024GiB"), uint64_t{1} << 40);  // large but sane
  expect_error("[server]\nmax_request_body = \"17179869184GiB\"\n" + kMinimal,
               {"t.toml:2:", "server.max_request_body", "too large"});
}

// ---------------------------------------------------------------------------------------------
// Errors: every one names file, line (when there is one) and dotted key
// ---------------------------------------------------------------------------------------------

TEST(ConfigErrors, TomlSyntaxErrorHasLine) {
  const std::string msg = error_of("[server]\nmax_threads = 4\nlisten = \"127.0.0.1:3000\n" + kMinimal);
  EXPECT_EQ(msg.rfind("t.toml:3:", 0), 0u) << msg;
  const std::string msg2 = error_of(kMinimal + "this is not toml\n");
  EXPECT_EQ(msg2.rfind("t.toml:8:", 0), 0u) << msg2;
}

TEST(ConfigErrors, UnknownKeys) {
  const std::string msg = error_of("[server]\nmax_threads = 8\nmax_thread = 4\n" + kMinimal);
  EXPECT_EQ(msg.rfind("t.toml:3: server.max_thread: unknown key", 0), 0u) << msg;
  EXPECT_NE(msg.find("max_threads"), std::string::npos) << "lists the allowed keys: " << msg;

  expect_error("[proxy]\nmodle = \"x\"\n" + kMinimal, {"t.toml:2:", "proxy.modle", "unknown key"});
  expect_error("[log]\nlevel = \"debug\"\nfile = \"x\"\n" + kMinimal, {"t.toml:3:", "log.file", "unknown key"});
  expect_error(kMinimal + "max_conns = 3\n", {"t.toml:8:", "routes[0].max_conns", "unknown key"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmax_conns = 3\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.max_conns", "unknown key"});
  expect_error("bogus = 1\n" + kMinimal, {"t.toml:1:", "bogus", "unknown key"});
}

TEST(ConfigErrors, WrongTypes) {
  expect_error("[server]\nmax_threads = \"512\"\n" + kMinimal,
               {"t.toml:2:", "server.max_threads", "expected an integer, got a string"});
  expect_error("[server]\nlisten = 3000\n" + kMinimal, {"t.toml:2:", "server.listen", "expected a string"});
  expect_error("[server]\n\nheader_timeout = 10\n" + kMinimal,
               {"t.toml:3:", "server.header_timeout", "duration"});
  expect_error("[server]\nmax_request_body = true\n" + kMinimal, {"t.toml:2:", "server.max_request_body", "size"});
  expect_error("[proxy]\nstream_usage = \"yes\"\n" + kMinimal,
               {"t.toml:2:", "proxy.stream_usage", "expected true or false"});
  expect_error("[proxy]\nchunk_size = 1.5\n" + kMinimal, {"t.toml:2:", "proxy.chunk_size", "a float"});
  expect_error("server = 5\n" + kMinimal, {"t.toml:1:", "server", "expected a table"});
  expect_error("[upstreams]\nu = \"http://h\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u", "expected a table"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nwarm = 1\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.warm", "expected true or false"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nroutes = 5\n", {"upstreams.u.routes"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[routes]\nprefix = \"/\"\n",
               {"t.toml:3:", "routes", "expected an array of tables"});
}

TEST(ConfigErrors, OutOfRangeIntegers) {
  expect_error("[server]\nmax_threads = 1\n" + kMinimal, {"t.toml:2:", "server.max_threads", "between 2 and 65535", "got 1"});
  expect_error("[server]\nmax_threads = 70000\n" + kMinimal, {"t.toml:2:", "server.max_threads", "got 70000"});
  expect_error("[server]\nmax_queued = 0\n" + kMinimal, {"t.toml:2:", "server.max_queued"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmax_connections = 0\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.max_connections", "between 1 and 65535"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmin_connections = -1\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.min_connections", "between 0 and 65535"});
  expect_error("[server]\nthread_stack_size = \"16KiB\"\n" + kMinimal,
               {"t.toml:2:", "server.thread_stack_size", "at least 64KiB"});
  expect_error("[server]\nmax_request_body = 0\n" + kMinimal, {"t.toml:2:", "server.max_request_body", "greater than zero"});
  expect_error("[server]\nmax_request_body = -5\n" + kMinimal, {"t.toml:2:", "server.max_request_body", "negative"});
  expect_error("[proxy]\nchunk_size = \"512B\"\n" + kMinimal, {"t.toml:2:", "proxy.chunk_size", "1KiB and 16MiB"});
  expect_error("[proxy]\nchunk_size = \"17MiB\"\n" + kMinimal, {"t.toml:2:", "proxy.chunk_size"});
}

TEST(ConfigErrors, BadDurations) {
  expect_error("[server]\nheader_timeout = \"10\"\n" + kMinimal, {"t.toml:2:", "server.header_timeout", "\"10\""});
  expect_error("[server]\nheader_timeout = \"5x\"\n" + kMinimal, {"t.toml:2:", "server.header_timeout", "\"5x\""});
  expect_error("[server]\nheader_timeout = \"\"\n" + kMinimal, {"t.toml:2:", "server.header_timeout", "empty"});
  expect_error("[server]\nkeepalive_timeout = \"0s\"\n" + kMinimal,
               {"t.toml:2:", "server.keepalive_timeout", "greater than zero"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n\nacquire_timeout = \"0ms\"\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:4:", "upstreams.u.acquire_timeout", "greater than zero"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nread_timeout = \"1d\"\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.read_timeout"});
}

TEST(ConfigErrors, BadSizes) {
  expect_error("[server]\nmax_request_body = \"32 MB s\"\n" + kMinimal, {"t.toml:2:", "server.max_request_body"});
  expect_error("[server]\nmax_request_body = \"lots\"\n" + kMinimal, {"t.toml:2:", "server.max_request_body", "\"lots\""});
  expect_error("[server]\nthread_stack_size = \"1.5MiB\"\n" + kMinimal, {"t.toml:2:", "server.thread_stack_size"});
}

TEST(ConfigErrors, BadListen) {
  expect_error("[server]\nlisten = \"localhost\"\n" + kMinimal, {"t.toml:2:", "server.listen", "host:port", "localhost"});
  expect_error("[server]\nlisten = \"x:99999\"\n" + kMinimal, {"t.toml:2:", "server.listen", "99999"});
  expect_error("[server]\nlisten = \"x:\"\n" + kMinimal, {"t.toml:2:", "server.listen"});
  expect_error("[server]\nlisten = \"x:80a\"\n" + kMinimal, {"t.toml:2:", "server.listen", "80a"});
  expect_error("[server]\nlisten = \"x:-1\"\n" + kMinimal, {"t.toml:2:", "server.listen"});
}

TEST(ConfigErrors, Routes) {
  // Unknown upstream.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"nope\"\n",
               {"t.toml:6:", "routes[0].upstream", "unknown upstream \"nope\""});
  // Duplicate prefix: the second entry is named.
  expect_error(kMinimal + "[[routes]]\nprefix = \"/v1/\"\nflavour = \"anthropic\"\nupstream = \"u\"\n",
               {"t.toml:9:", "routes[1].prefix", "duplicate", "/v1/"});
  // strip_prefix that is not a prefix of prefix.
  expect_error(kMinimal + "strip_prefix = \"/v2\"\n", {"t.toml:8:", "routes[0].strip_prefix", "not a prefix"});
  // Flavour.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nprefix = \"/\"\nflavour = \"gemini\"\nupstream = \"u\"\n",
               {"t.toml:5:", "routes[0].flavour", "openai", "anthropic", "gemini"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nprefix = \"/\"\nupstream = \"u\"\n",
               {"t.toml:", "routes[0].flavour", "required"});
  // Prefix.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nprefix = \"v1\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:4:", "routes[0].prefix", "'/'"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:", "routes[0].prefix", "required"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\n",
               {"t.toml:", "routes[0].upstream", "required"});
  // Not a table.
  expect_error("routes = [1]\n[upstreams.u]\nbase_url = \"http://h\"\n", {"t.toml:1:", "routes[0]", "expected a table"});
}

TEST(ConfigErrors, MissingRoutes) {
  const std::string msg = error_of("[upstreams.u]\nbase_url = \"http://h\"\n");
  EXPECT_EQ(msg.rfind("t.toml", 0), 0u) << msg;
  EXPECT_NE(msg.find("routes"), std::string::npos) << msg;
  expect_error("", {"t.toml", "routes"});
}

TEST(ConfigErrors, Upstreams) {
  // base_url without scheme.
  expect_error("[upstreams.u]\nbase_url = \"api.z.ai/v4\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u.base_url", "http://", "api.z.ai/v4"});
  expect_error("[upstreams.u]\nbase_url = \"ftp://h\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u.base_url"});
  // base_url missing: points at the table.
  expect_error("[upstreams.u]\nwarm = false\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:1:", "upstreams.u.base_url", "required"});
  // min > max.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmax_connections = 4\nmin_connections = 5\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:4:", "upstreams.u.min_connections", "max_connections", "4"});
  // min > default max (256).
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmin_connections = 300\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.min_connections", "256"});
  // Unreadable ca_file.
  const std::string missing_ca = "/nonexistent/glmp-ut/ca.pem";
  expect_error("[upstreams.u]\nbase_url = \"https://h\"\nca_file = \"" + missing_ca +
                   "\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.ca_file", missing_ca});
  // A credential without a header to carry it.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nauth_value = \"secret\"\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.auth_value", "auth_header"});
  // HTTP/2 settings.
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nprotocol = \"http2\"\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.protocol", "\"http1\", \"h2\" or \"auto\"", "http2"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nmax_streams_per_connection = 0\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.max_streams_per_connection"});
  expect_error("[upstreams.u]\nbase_url = \"http://h\"\nping_interval = \"soon\"\n"
               "[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:3:", "upstreams.u.ping_interval"});
}

TEST(ConfigErrors, BaseUrlWithoutHostIsRejected) {
  expect_error("[upstreams.u]\nbase_url = \"http://\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u.base_url", "host"});
  expect_error("[upstreams.u]\nbase_url = \"https:///v1\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u.base_url"});
}

TEST(ConfigErrors, BaseUrlWithBadPortIsRejected) {
  expect_error("[upstreams.u]\nbase_url = \"http://h:99999\"\n[[routes]]\nprefix = \"/\"\nflavour = \"openai\"\nupstream = \"u\"\n",
               {"t.toml:2:", "upstreams.u.base_url"});
}

TEST(ConfigErrors, LogLevel) {
  expect_error("[log]\nlevel = \"verbose\"\n" + kMinimal, {"t.toml:2:", "log.level", "information"});
}

TEST(ConfigErrors, ErrorsAreConfigErrors) {
  // ConfigError is the one exception type callers need to catch (also a runtime_error).
  EXPECT_THROW(cfg::parse_config("[server]\nmax_threads = 1\n" + kMinimal, "t.toml"), cfg::ConfigError);
  EXPECT_THROW(cfg::parse_config("[[[", "t.toml"), std::runtime_error);
}

// ---------------------------------------------------------------------------------------------
// load_config
// ---------------------------------------------------------------------------------------------

TEST(ConfigLoad, MissingFile) {
  const std::string path = "/nonexistent/glmp-ut/missing.toml";
  try {
    cfg::load_config(path);
    FAIL() << "expected ConfigError";
  } catch (const cfg::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ":", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
  }
}

TEST(ConfigLoad, FileErrorsNameThePath) {
  TempFile f("[server]\nmax_threads = 1\n" + kMinimal);
  try {
    cfg::load_config(f.path());
    FAIL() << "expected ConfigError";
  } catch (const cfg::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(f.path() + ":2: server.max_threads:", 0), 0u) << e.what();
  }
}

TEST(ConfigLoad, ValidFile) {
  TempFile f("[server]\nlisten = \"127.0.0.1:4001\"\n" + kMinimal);
  const auto c = cfg::load_config(f.path());
  EXPECT_EQ(c.source_path, f.path());
  EXPECT_EQ(c.server.port, 4001);
  EXPECT_EQ(c.routes.size(), 1u);
}

TEST(ConfigLoad, ShippedConfigLoads) {
  EnvGuard listen("GLMP_LISTEN", nullptr);
  EnvGuard key("ZAI_API_KEY", nullptr);
  const std::string path = shipped_config_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  const cfg::Config c = cfg::load_config(path);

  EXPECT_EQ(c.server.host, "127.0.0.1");
  EXPECT_EQ(c.server.port, 3000);

  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].prefix, "/v1/messages");
  EXPECT_EQ(c.routes[0].flavour, Flavour::Anthropic);
  EXPECT_EQ(c.routes[0].strip_prefix, "");
  EXPECT_EQ(c.routes[1].prefix, "/v1/");
  EXPECT_EQ(c.routes[1].flavour, Flavour::OpenAI);
  EXPECT_EQ(c.routes[1].strip_prefix, "/v1");
  for (const auto& r : c.routes) EXPECT_EQ(c.upstreams.count(r.upstream), 1u) << r.upstream;

  // Without ZAI_API_KEY the file still loads; every upstream the routes use reports why it has no
  // credential.
  for (const auto& r : c.routes) {
    const auto& u = c.upstreams.at(r.upstream);
    EXPECT_FALSE(u.auth_header.empty()) << r.upstream;
    EXPECT_EQ(u.auth_value, "") << r.upstream;
    EXPECT_NE(u.auth_error.find("ZAI_API_KEY"), std::string::npos) << r.upstream << ": " << u.auth_error;
  }
}

TEST(ConfigLoad, ShippedConfigWithEnvironment) {
  EnvGuard listen("GLMP_LISTEN", "0.0.0.0:8088");
  EnvGuard key("ZAI_API_KEY", "zk-test");
  const cfg::Config c = cfg::load_config(shipped_config_path());
  EXPECT_EQ(c.server.host, "0.0.0.0");
  EXPECT_EQ(c.server.port, 8088);
  ASSERT_EQ(c.upstreams.count("openai"), 1u);
  ASSERT_EQ(c.upstreams.count("anthropic"), 1u);
  EXPECT_EQ(c.upstreams.at("openai").auth_value, "Bearer zk-test");
  EXPECT_EQ(c.upstreams.at("openai").auth_header, "Authorization");
  EXPECT_EQ(c.upstreams.at("anthropic").auth_value, "zk-test");
  EXPECT_EQ(c.upstreams.at("anthropic").auth_header, "x-api-key");
  for (const auto& [name, u] : c.upstreams) EXPECT_EQ(u.auth_error, "") << name;
}

namespace {
cfg::Config parse(const std::string& text) { return cfg::parse_config(text, "t.toml"); }
}  // namespace

TEST(ConfigStore, DefaultsAreSqliteWithWriteBehind) {
  const auto c = parse(kMinimal);
  EXPECT_EQ(c.store.backend, cfg::StoreBackend::Sqlite);
  EXPECT_EQ(c.store.path, "data/glm-proxy.db");
  EXPECT_EQ(c.store.flush_interval, 1s);
  EXPECT_EQ(c.store.flush_batch, 100);
  EXPECT_EQ(c.store.bucket, 60s);
  EXPECT_EQ(c.store.max_window, 24h);
  EXPECT_EQ(c.store.failure_mode, cfg::FailureMode::FailClosed);
}

TEST(ConfigStore, RedisSettings) {
  const auto c = parse("[store]\nbackend = \"redis\"\nurl = \"redis://:pw@10.0.0.5:6380/2\"\nprefix = \"x:\"\n"
                       "timeout = \"250ms\"\npool_size = 4\ncache_ttl = \"0s\"\nfailure_mode = \"fail_open\"\n" + kMinimal);
  EXPECT_EQ(c.store.backend, cfg::StoreBackend::Redis);
  EXPECT_EQ(c.store.url, "redis://:pw@10.0.0.5:6380/2");
  EXPECT_EQ(c.store.prefix, "x:");
  EXPECT_EQ(c.store.timeout, 250ms);
  EXPECT_EQ(c.store.pool_size, 4);
  EXPECT_EQ(c.store.cache_ttl, 0ms);
  EXPECT_EQ(c.store.failure_mode, cfg::FailureMode::FailOpen);
}

TEST(ConfigStore, ErrorsNameTheKeyAndHideSecrets) {
  expect_error("[store]\nbackend = \"postgres\"\n" + kMinimal, {"t.toml:2:", "store.backend", "\"sqlite\", \"redis\" or \"memory\""});
  expect_error("[store]\nbucket = \"7s\"\n" + kMinimal, {"t.toml:2:", "store.bucket", "divide a day"});
  expect_error("[store]\nbucket = \"500ms\"\n" + kMinimal, {"store.bucket", "at least 1s"});
  expect_error("[store]\nmax_window = \"30s\"\n" + kMinimal, {"store.max_window", "at least one bucket"});
  expect_error("[store]\nfailure_mode = \"open\"\n" + kMinimal, {"store.failure_mode", "fail_closed"});
  expect_error("[store]\nflush_batch = 0\n" + kMinimal, {"store.flush_batch"});
  expect_error("[store]\nsync = true\n" + kMinimal, {"store.sync", "unknown key"});
  const std::string msg = error_of("[store]\nbackend = \"redis\"\nurl = \"http://:hunter2@h:1/0\"\n" + kMinimal);
  EXPECT_NE(msg.find("store.url"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("hunter2"), std::string::npos) << "the password leaked into the error: " << msg;
}

TEST(ConfigStore, RedactUrl) {
  EXPECT_EQ(cfg::redact_url("redis://:secret@h:6379/0"), "redis://***@h:6379/0");
  EXPECT_EQ(cfg::redact_url("redis://user:secret@h/1"), "redis://***@h/1");
  EXPECT_EQ(cfg::redact_url("redis://h:6379/0"), "redis://h:6379/0");
}

// ---------------------------------------------------------------------------------------------
// [server] tls_cert / tls_key (the TLS listener; the files' contents are checked by
// server::TlsContext, see test_tls.cpp)
// ---------------------------------------------------------------------------------------------

TEST(ConfigTls, OffByDefault) {
  const cfg::Config c = cfg::parse_config(kMinimal, "min.toml");
  EXPECT_EQ(c.server.tls_cert, "");
  EXPECT_EQ(c.server.tls_key, "");
  EXPECT_TRUE(c.server.http2);
  EXPECT_EQ(c.server.max_concurrent_streams, 128);
}

TEST(ConfigTls, Http2Settings) {
  const cfg::Config c = cfg::parse_config("[server]\nhttp2 = false\nmax_concurrent_streams = 16\n" + kMinimal, "t.toml");
  EXPECT_FALSE(c.server.http2);
  EXPECT_EQ(c.server.max_concurrent_streams, 16);
  expect_error("[server]\nmax_concurrent_streams = 0\n" + kMinimal, {"t.toml:2:", "server.max_concurrent_streams"});
  expect_error("[server]\nhttp2 = \"yes\"\n" + kMinimal, {"t.toml:2:", "server.http2"});
}

TEST(ConfigTls, BothReadableFilesAreTaken) {
  TempFile cert("-----BEGIN CERTIFICATE-----\n", "crt");
  TempFile key("-----BEGIN PRIVATE KEY-----\n", "key");
  const cfg::Config c = cfg::parse_config(
      "[server]\ntls_cert = \"" + cert.path() + "\"\ntls_key = \"" + key.path() + "\"\n" + kMinimal, "t.toml");
  EXPECT_EQ(c.server.tls_cert, cert.path());
  EXPECT_EQ(c.server.tls_key, key.path());
}

TEST(ConfigTls, OneWithoutTheOtherIsAnError) {
  TempFile cert("pem", "crt");
  expect_error("[server]\ntls_cert = \"" + cert.path() + "\"\n" + kMinimal, {"t.toml:2:", "tls_key", "TLS needs both"});
  expect_error("[server]\ntls_key = \"" + cert.path() + "\"\n" + kMinimal, {"t.toml:2:", "tls_cert", "TLS needs both"});
}

TEST(ConfigTls, UnreadableFilesAreNamed) {
  TempFile key("pem", "key");
  expect_error("[server]\ntls_cert = \"/nonexistent/glmp/cert.pem\"\ntls_key = \"" + key.path() + "\"\n" + kMinimal,
               {"t.toml:2:", "tls_cert", "cannot read", "/nonexistent/glmp/cert.pem"});
  expect_error("[server]\ntls_cert = \"" + key.path() + "\"\ntls_key = \"/nonexistent/glmp/key.pem\"\n" + kMinimal,
               {"t.toml:3:", "tls_key", "cannot read", "/nonexistent/glmp/key.pem"});
}

TEST(ConfigTls, WrongTypeIsAnError) {
  expect_error("[server]\ntls_cert = 1\ntls_key = \"k\"\n" + kMinimal, {"t.toml:2:", "tls_cert"});
}
