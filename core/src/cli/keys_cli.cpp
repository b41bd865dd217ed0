#include "cli/keys_cli.hpp"

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include <Poco/Dynamic/Var.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/ParseHandler.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/Net/RejectCertificateHandler.h>
#include <Poco/Net/SSLException.h>
#include <Poco/Net/SSLManager.h>
#include <Poco/StreamCopier.h>
#include <Poco/Timespan.h>
#include <Poco/URI.h>

#include "config/config.hpp"

namespace glmp::core::cli {

namespace {

constexpr const char* kDefaultUrl = "http://127.0.0.1:3000";
constexpr const char* kPrefix = "glm-proxy keys: ";

// Every long flag and whether it takes a value.
const std::map<std::string, bool>& all_flags() {
  static const std::map<std::string, bool> flags{
      {"url", true},         {"token", true},       {"config", true},         {"help", false},
      {"name", true},        {"model", true},       {"limit", true},          {"expires", true},
      {"key", true},         {"allowed-models", true}, {"disabled", false},   {"metadata", true},
      {"search", true},      {"after", true},       {"all", false},           {"clear-model", false},
      {"no-limit", false},   {"enable", false},     {"disable", false},       {"clear-allowed-models", false},
  };
  return flags;
}

const std::set<std::string> kGlobalFlags{"url", "token", "config", "help"};

// The flags each subcommand accepts besides the global ones, and how many positionals it takes.
struct SubcommandSpec {
  std::set<std::string> flags;
  const char* positional;  // nullptr = none, else its name in messages ("ID", "FILE")
};

const std::map<std::string, SubcommandSpec>& subcommands() {
  static const std::map<std::string, SubcommandSpec> specs{
      {"create", {{"name", "model", "limit", "expires", "key", "allowed-models", "disabled", "metadata"}, nullptr}},
      {"list", {{"search", "limit", "after", "all"}, nullptr}},
      {"show", {{}, "ID"}},
      {"update",
       {{"name", "model", "clear-model", "limit", "no-limit", "expires", "enable", "disable", "allowed-models",
         "clear-allowed-models", "metadata"},
        "ID"}},
      {"revoke", {{}, "ID"}},
      {"rotate", {{}, "ID"}},
      {"import", {{}, "FILE"}},
  };
  return specs;
}

// A parsed command line: flags by name (value "" for booleans) and positionals.
struct ParsedArgs {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positionals;
  bool has(const std::string& name) const { return flags.count(name) != 0; }
  const std::string& get(const std::string& name) const { return flags.at(name); }
};

ParsedArgs split_args(const std::vector<std::string>& args) {
  ParsedArgs parsed;
  bool only_positionals = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (only_positionals || arg.size() < 2 || arg[0] != '-') {
      parsed.positionals.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positionals = true;
      continue;
    }
    if (arg == "-h") {
      parsed.flags["help"] = "";
      continue;
    }
    if (arg.rfind("--", 0) != 0) throw UsageError("unknown flag '" + arg + "'");
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    const auto spec = all_flags().find(name);
    if (spec == all_flags().end()) throw UsageError("unknown flag '--" + name + "'");
    if (spec->second) {
      if (!value) {
        // The next argument is the value, unless it is another long flag (`--name --model x`).
        if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)
          throw UsageError("--" + name + " needs a value");
        value = args[++i];
      }
    } else if (value) {
      throw UsageError("--" + name + " takes no value");
    }
    if (parsed.has(name)) throw UsageError("--" + name + " given twice");
    parsed.flags[name] = value.value_or("");
  }
  return parsed;
}

std::optional<int64_t> parse_int(const std::string& text) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return v;
}

int64_t parse_token_limit(const std::string& text) {
  const auto v = parse_int(text);
  if (!v || *v < 0) throw UsageError("--limit expects a token count (an integer >= 0), got '" + text + "'");
  return *v;
}

Poco::Dynamic::Var parse_expires(const std::string& text) {
  if (text == "never") return Poco::Dynamic::Var();  // null: never expires
  if (text.empty()) throw UsageError("--expires expects an RFC 3339 date (2026-12-31T23:59:59Z) or 'never'");
  return text;  // the server validates RFC 3339 and refuses anything else
}

Poco::JSON::Array::Ptr parse_models(const std::string& text) {
  Poco::JSON::Array::Ptr models = new Poco::JSON::Array;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    const auto last = item.find_last_not_of(" \t");
    models->add(item.substr(first, last - first + 1));
  }
  if (models->size() == 0)
    throw UsageError("--allowed-models expects a comma-separated list of models (to lift the restriction, use "
                     "--clear-allowed-models)");
  return models;
}

Poco::JSON::Object::Ptr parse_metadata(const std::string& text) {
  Poco::Dynamic::Var v;
  try {
    Poco::JSON::Parser parser(new Poco::JSON::ParseHandler(true));
    v = parser.parse(text);
  } catch (const Poco::Exception& e) {
    throw UsageError("--metadata is not valid JSON: " + e.message());
  }
  if (v.type() != typeid(Poco::JSON::Object::Ptr)) throw UsageError("--metadata expects a JSON object ({...})");
  return v.extract<Poco::JSON::Object::Ptr>();
}

std::string compact(const Poco::JSON::Object& obj) {
  std::ostringstream os;
  obj.stringify(os);
  return os.str();
}

// "/admin/keys/<id>" with the id percent-encoded as one path segment.
std::string key_path(const std::string& id, const std::string& suffix = "") {
  std::string encoded;
  Poco::URI::encode(id, "/?#@&=+;:", encoded);
  return "/admin/keys/" + encoded + suffix;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CliError("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw CliError("cannot read " + path);
  return ss.str();
}

// Checks an admin API base URL; returns it without trailing '/'.
std::string normalize_url(const std::string& url, const std::string& origin) {
  const auto bad = [&](const std::string& why) {
    return UsageError("invalid URL '" + config::redact_url(url) + "' (" + origin + "): " + why);
  };
  Poco::URI uri;
  try {
    uri = Poco::URI(url);
  } catch (const Poco::Exception& e) {
    throw bad(e.message());
  }
  if (uri.getScheme() != "http" && uri.getScheme() != "https") throw bad("expected http://HOST[:PORT] or https://…");
  if (uri.getHost().empty()) throw bad("no host");
  if (!uri.getRawQuery().empty() || !uri.getFragment().empty()) throw bad("no query or fragment allowed");
  std::string out = url;
  while (!out.empty() && out.back() == '/') out.pop_back();
  return out;
}

// Loads --config once, only when the URL or the token has to come from it.
class LazyConfig {
public:
  explicit LazyConfig(std::string path) : path_(std::move(path)) {}
  bool given() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  const config::Config& get() {
    if (!cfg_) {
      try {
        cfg_ = config::load_config(path_);
      } catch (const config::ConfigError& e) {
        throw CliError(std::string("config error: ") + e.what());
      }
    }
    return *cfg_;
  }
private:
  std::string path_;
  std::optional<config::Config> cfg_;
};

std::string url_from_config(LazyConfig& cfg) {
  const auto& server = cfg.get().server;
  if (server.port == 0)
    throw CliError(cfg.path() + ": [server] listen has port 0 (chosen at start): pass --url");
  std::string host = server.host;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  else if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";  // IPv6 literal
  return "http://" + host + ":" + std::to_string(server.port);
}

std::string env_value(const Env& env, const std::string& name) {
  const auto it = env.find(name);
  return it == env.end() ? std::string() : it->second;
}

void require_flag_value(const ParsedArgs& parsed, const std::string& name) {
  if (parsed.has(name) && parsed.get(name).empty()) throw UsageError("--" + name + " needs a non-empty value");
}

void exclusive(const ParsedArgs& parsed, const std::string& a, const std::string& b) {
  if (parsed.has(a) && parsed.has(b)) throw UsageError("--" + a + " and --" + b + " exclude each other");
}

KeysRequest build_create(const ParsedArgs& p) {
  if (!p.has("name")) throw UsageError("create needs --name");
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("name", p.get("name"));
  if (p.has("key")) body.set("key", p.get("key"));
  if (p.has("model")) body.set("model", p.get("model"));
  if (p.has("limit")) body.set("token_limit_per_5h", parse_token_limit(p.get("limit")));
  if (p.has("expires")) body.set("expiry_date", parse_expires(p.get("expires")));
  if (p.has("disabled")) body.set("enabled", false);
  if (p.has("allowed-models")) body.set("allowed_models", parse_models(p.get("allowed-models")));
  if (p.has("metadata")) body.set("metadata", parse_metadata(p.get("metadata")));
  return {"POST", "/admin/keys", compact(body)};
}

KeysRequest build_update(const ParsedArgs& p, const std::string& id) {
  exclusive(p, "model", "clear-model");
  exclusive(p, "limit", "no-limit");
  exclusive(p, "enable", "disable");
  exclusive(p, "allowed-models", "clear-allowed-models");
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  if (p.has("name")) body.set("name", p.get("name"));
  if (p.has("model")) body.set("model", p.get("model"));
  if (p.has("clear-model")) body.set("model", Poco::Dynamic::Var());
  if (p.has("limit")) body.set("token_limit_per_5h", parse_token_limit(p.get("limit")));
  if (p.has("no-limit")) body.set("token_limit_per_5h", Poco::Dynamic::Var());
  if (p.has("expires")) body.set("expiry_date", parse_expires(p.get("expires")));
  if (p.has("enable")) body.set("enabled", true);
  if (p.has("disable")) body.set("enabled", false);
  if (p.has("allowed-models")) body.set("allowed_models", parse_models(p.get("allowed-models")));
  if (p.has("clear-allowed-models")) body.set("allowed_models", Poco::Dynamic::Var());
  if (p.has("metadata")) body.set("metadata", parse_metadata(p.get("metadata")));
  if (body.size() == 0) throw UsageError("update needs at least one change (see the flags below)");
  return {"PATCH", key_path(id), compact(body)};
}

struct HttpAnswer {
  int status = 0;
  std::string reason;
  std::string body;
};

// Poco's SSL library, for https URLs only (see run_keys).
class SslScope {
public:
  SslScope() { Poco::Net::initializeSSL(); }
  ~SslScope() { Poco::Net::uninitializeSSL(); }
  SslScope(const SslScope&) = delete;
  SslScope& operator=(const SslScope&) = delete;
};

// A client context that checks the server's certificate (chain against the system CAs, and the host
// name) and rejects a bad one instead of asking on the console.
Poco::Net::Context::Ptr client_context() {
  Poco::Net::Context::Ptr ctx =
      new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", "", Poco::Net::Context::VERIFY_RELAXED, 9, true);
  ctx->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
  Poco::Net::SSLManager::instance().initializeClient(nullptr, new Poco::Net::RejectCertificateHandler(false), ctx);
  return ctx;
}

// Replaces every occurrence of the token (should a server ever echo it) before anything is printed.
// Tokens shorter than 6 characters are left alone: masking them would garble every message.
std::string scrub(std::string text, const std::string& token) {
  if (token.size() < 6) return text;
  for (auto pos = text.find(token); pos != std::string::npos; pos = text.find(token, pos + 3))
    text.replace(pos, token.size(), "***");
  return text;
}

HttpAnswer send_request(const std::string& base_url, const std::string& token, const KeysRequest& req) {
  const std::string shown_url = config::redact_url(base_url);
  const Poco::URI uri(base_url);
  const bool https = uri.getScheme() == "https";
  try {
    std::unique_ptr<Poco::Net::HTTPClientSession> session;
    if (https) session = std::make_unique<Poco::Net::HTTPSClientSession>(uri.getHost(), uri.getPort(), client_context());
    else session = std::make_unique<Poco::Net::HTTPClientSession>(uri.getHost(), uri.getPort());
    session->setTimeout(Poco::Timespan(5, 0), Poco::Timespan(30, 0), Poco::Timespan(30, 0));
    std::string prefix = uri.getPath();
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    Poco::Net::HTTPRequest request(req.method, prefix + req.path, Poco::Net::HTTPMessage::HTTP_1_1);
    request.set("Authorization", "Bearer " + token);
    request.set("Accept", "application/json");
    request.set("User-Agent", std::string("glm-proxy-keys/") + GLMP_VERSION);
    if (!req.body.empty() || req.method == "POST" || req.method == "PATCH") {
      request.setContentType("application/json");
      request.setContentLength64(static_cast<Poco::Int64>(req.body.size()));
    }
    std::ostream& os = session->sendRequest(request);
    os << req.body;
    Poco::Net::HTTPResponse response;
    std::istream& is = session->receiveResponse(response);
    HttpAnswer answer;
    answer.status = static_cast<int>(response.getStatus());
    answer.reason = response.getReason();
    Poco::StreamCopier::copyToString(is, answer.body);
    return answer;
  } catch (const Poco::Net::ConnectionRefusedException&) {
    throw CliError("cannot connect to " + shown_url + ": connection refused (is glm-proxy running there? see --url)");
  } catch (const Poco::TimeoutException&) {
    throw CliError("no answer from " + shown_url + " in time (connect 5 s, receive 30 s)");
  } catch (const Poco::Net::SSLException& e) {
    throw CliError("TLS error with " + shown_url + ": " + scrub(e.displayText(), token));
  } catch (const Poco::Exception& e) {
    throw CliError("cannot talk to " + shown_url + ": " + scrub(e.displayText(), token));
  }
}

Poco::Dynamic::Var parse_json(const std::string& text) {
  Poco::JSON::Parser parser(new Poco::JSON::ParseHandler(true));
  return parser.parse(text);
}

// One request; throws CliError with the error line on a non-2xx answer.
std::string call(const KeysCommand& cmd, const KeysRequest& req) {
  const HttpAnswer answer = send_request(cmd.base_url, cmd.token, req);
  if (answer.status < 200 || answer.status > 299)
    throw CliError(scrub(error_line(answer.status, answer.reason, answer.body), cmd.token));
  return answer.body;
}

// list --all: every page, merged into one {"keys":[…],"more":false,"next_after":""}.
std::string list_all(const KeysCommand& cmd) {
  Poco::JSON::Array::Ptr keys = new Poco::JSON::Array;
  std::string after = cmd.after;
  std::set<std::string> seen_cursors;
  for (;;) {
    const std::string body = call(cmd, {"GET", list_path(cmd.search, cmd.limit, after), ""});
    Poco::JSON::Object::Ptr page;
    try {
      page = parse_json(body).extract<Poco::JSON::Object::Ptr>();
    } catch (const Poco::Exception&) {
      throw CliError("unexpected answer to GET /admin/keys (not a JSON object): " + scrub(body, cmd.token));
    }
    if (auto arr = page->getArray("keys"))
      for (size_t i = 0; i < arr->size(); ++i) keys->add(arr->get(static_cast<unsigned>(i)));
    const bool more = page->optValue<bool>("more", false);
    const std::string next = page->optValue<std::string>("next_after", "");
    if (!more || next.empty() || !seen_cursors.insert(next).second) break;
    after = next;
  }
  Poco::JSON::Object merged(Poco::JSON_PRESERVE_KEY_ORDER);
  merged.set("keys", keys);
  merged.set("more", false);
  merged.set("next_after", "");
  return compact(merged);
}

Env process_env() {
  Env env;
  for (const char* name : {"GLMP_URL", "GLMP_ADMIN_TOKEN"})
    if (const char* v = std::getenv(name); v && *v) env[name] = v;
  return env;
}

}  // namespace

const std::string& keys_usage() {
  static const std::string usage =
      "usage: glm-proxy keys SUBCOMMAND [FLAGS]     manage API keys through the auth plugin's admin API\n"
      "\n"
      "  create --name NAME [--model M] [--limit TOKENS] [--expires RFC3339|never] [--key KEY]\n"
      "         [--allowed-models a,b] [--disabled] [--metadata JSON]\n"
      "                      new key; the answer's \"key\" is the plain key, shown this once\n"
      "  list   [--search S] [--limit N] [--after ID] [--all]\n"
      "                      keys, masked; N per page (1..1000, default 100); --all follows every page\n"
      "  show   ID           one key\n"
      "  update ID [--name NAME] [--model M | --clear-model] [--limit TOKENS | --no-limit]\n"
      "         [--expires RFC3339|never] [--enable | --disable]\n"
      "         [--allowed-models a,b | --clear-allowed-models] [--metadata JSON]\n"
      "  revoke ID           delete the key; it stops working at once\n"
      "  rotate ID           new plain key for ID; the old one stops working at once\n"
      "  import FILE         import an old-format apikeys.json (idempotent)\n"
      "  help                this text\n"
      "\n"
      "  --limit TOKENS is the key's token limit per 5 hours; --expires never, --no-limit and --clear-*\n"
      "  remove the setting. Flags may also be written --flag=VALUE.\n"
      "\n"
      "global flags:\n"
      "  --url URL       the proxy (default: --config's [server] listen, else $GLMP_URL, else http://127.0.0.1:3000)\n"
      "  --token TOKEN   the admin token (default: $GLMP_ADMIN_TOKEN, else --config's [admin] token)\n"
      "  --config FILE   the proxy's config file\n"
      "\n"
      "Prints the server's JSON on stdout. Exit status: 0 done, 1 failed (the server's message on stderr),\n"
      "2 usage error.\n";
  return usage;
}

std::string list_path(const std::string& search, const std::string& limit, const std::string& after) {
  Poco::URI uri("/admin/keys");
  if (!search.empty()) uri.addQueryParameter("search", search);
  if (!limit.empty()) uri.addQueryParameter("limit", limit);
  if (!after.empty()) uri.addQueryParameter("after", after);
  return uri.getPathAndQuery();
}

KeysCommand parse_keys_args(const std::vector<std::string>& args, const Env& env) {
  const ParsedArgs parsed = split_args(args);
  KeysCommand cmd;
  if (parsed.has("help") || (!parsed.positionals.empty() && parsed.positionals[0] == "help")) {
    cmd.help = true;
    return cmd;
  }
  if (parsed.positionals.empty()) throw UsageError("missing subcommand");
  cmd.subcommand = parsed.positionals[0];
  const auto spec_it = subcommands().find(cmd.subcommand);
  if (spec_it == subcommands().end()) throw UsageError("unknown subcommand '" + cmd.subcommand + "'");
  const SubcommandSpec& spec = spec_it->second;
  for (const auto& [name, value] : parsed.flags)
    if (!kGlobalFlags.count(name) && !spec.flags.count(name))
      throw UsageError("'" + cmd.subcommand + "' has no flag --" + name);

  const size_t want = spec.positional ? 1 : 0;
  if (parsed.positionals.size() - 1 < want)
    throw UsageError(cmd.subcommand + " needs " + spec.positional);
  if (parsed.positionals.size() - 1 > want)
    throw UsageError("unexpected argument '" + parsed.positionals[want + 1] + "'");
  const std::string operand = want ? parsed.positionals[1] : std::string();
  if (want && operand.empty()) throw UsageError(cmd.subcommand + " needs a non-empty " + spec.positional);
  for (const char* name : {"url", "token", "config"}) require_flag_value(parsed, name);

  // The request first: a bad flag is reported before the config is read.
  if (cmd.subcommand == "create") {
    cmd.request = build_create(parsed);
  } else if (cmd.subcommand == "list") {
    if (parsed.has("search")) cmd.search = parsed.get("search");
    if (parsed.has("after")) cmd.after = parsed.get("after");
    if (parsed.has("limit")) {
      const auto n = parse_int(parsed.get("limit"));
      if (!n || *n < 1 || *n > 1000)
        throw UsageError("list --limit expects a page size from 1 to 1000, got '" + parsed.get("limit") + "'");
      cmd.limit = std::to_string(*n);
    }
    cmd.all = parsed.has("all");
    cmd.request = {"GET", list_path(cmd.search, cmd.limit, cmd.after), ""};
  } else if (cmd.subcommand == "show") {
    cmd.request = {"GET", key_path(operand), ""};
  } else if (cmd.subcommand == "update") {
    cmd.request = build_update(parsed, operand);
  } else if (cmd.subcommand == "revoke") {
    cmd.request = {"DELETE", key_path(operand), ""};
  } else if (cmd.subcommand == "rotate") {
    cmd.request = {"POST", key_path(operand, "/rotate"), ""};
  } else {  // import
    cmd.request = {"POST", "/admin/keys/import", read_whole_file(operand)};
    if (cmd.request.body.empty()) throw CliError(operand + " is empty");
  }

  LazyConfig cfg(parsed.has("config") ? parsed.get("config") : std::string());
  if (parsed.has("url")) cmd.base_url = normalize_url(parsed.get("url"), "--url");
  else if (cfg.given()) cmd.base_url = normalize_url(url_from_config(cfg), cfg.path() + " [server] listen");
  else if (!env_value(env, "GLMP_URL").empty()) cmd.base_url = normalize_url(env_value(env, "GLMP_URL"), "$GLMP_URL");
  else cmd.base_url = kDefaultUrl;

  if (parsed.has("token")) cmd.token = parsed.get("token");
  else if (!env_value(env, "GLMP_ADMIN_TOKEN").empty()) cmd.token = env_value(env, "GLMP_ADMIN_TOKEN");
  else if (cfg.given()) cmd.token = cfg.get().admin.token;
  if (cmd.token.empty())
    throw UsageError(cfg.given() ? "no admin token: " + cfg.path() + " has no [admin] token; pass --token or set $GLMP_ADMIN_TOKEN"
                                 : std::string("no admin token: pass --token, set $GLMP_ADMIN_TOKEN, or --config FILE"),
                     false);
  return cmd;
}

std::string pretty_json(const std::string& text) {
  Poco::Dynamic::Var v;
  try {
    v = parse_json(text);
  } catch (const Poco::Exception&) {
    return text;
  }
  std::ostringstream os;
  Poco::JSON::Stringifier::stringify(v, os, 2);
  return os.str();
}

std::string error_line(int status, const std::string& reason, const std::string& body) {
  std::string message;
  try {
    const auto v = parse_json(body);
    if (v.type() == typeid(Poco::JSON::Object::Ptr)) {
      const auto obj = v.extract<Poco::JSON::Object::Ptr>();
      if (const auto error = obj->getObject("error"); error && error->has("message"))
        message = error->get("message").toString();
    }
  } catch (const Poco::Exception&) {
  }
  if (message.empty()) {
    message = body;
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r' || message.back() == ' ')) message.pop_back();
  }
  if (message.empty()) message = reason;
  return std::to_string(status) + (message.empty() ? "" : " " + message);
}

int run_keys(const std::vector<std::string>& args, const Env& env, std::ostream& out, std::ostream& err) {
  KeysCommand cmd;
  try {
    cmd = parse_keys_args(args, env);
  } catch (const UsageError& e) {
    err << kPrefix << e.what() << "\n";
    if (e.show_usage()) err << "\n" << keys_usage();
    return 2;
  } catch (const CliError& e) {
    err << kPrefix << e.what() << "\n";
    return 1;
  }
  if (cmd.help) {
    out << keys_usage();
    return 0;
  }
  std::optional<SslScope> ssl;
  if (Poco::URI(cmd.base_url).getScheme() == "https") ssl.emplace();
  try {
    const std::string body = cmd.subcommand == "list" && cmd.all ? list_all(cmd) : call(cmd, cmd.request);
    if (!body.empty()) out << pretty_json(body) << "\n";
    out.flush();
    return 0;
  } catch (const CliError& e) {
    err << kPrefix << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    err << kPrefix << scrub(e.what(), cmd.token) << "\n";
    return 1;
  }
}

int run_keys(int argc, char** argv, std::ostream& out, std::ostream& err) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return run_keys(args, process_env(), out, err);
}

}  // namespace glmp::core::cli
