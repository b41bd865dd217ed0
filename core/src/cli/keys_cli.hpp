#pragma once
// `glm-proxy keys …`: the API-key admin CLI, a thin client of the auth plugin's admin API
// (plugins/auth/README.md, sections "Admin API" and "CLI").
//
// The command line is turned into a KeysCommand (method, path, JSON body, URL, token) by a pure
// function, parse_keys_args(), so every flag can be unit-tested without a server; run_keys() then
// sends it with Poco::Net and prints the answer. The admin token is never printed, not even in errors.

#include <map>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace glmp::core::cli {

// A bad command line (unknown subcommand or flag, missing or malformed value): message + usage on
// stderr, exit 2.
class UsageError : public std::runtime_error {
public:
  explicit UsageError(const std::string& what, bool show_usage = true)
      : std::runtime_error(what), show_usage_(show_usage) {}
  bool show_usage() const { return show_usage_; }  // false: the message alone (e.g. no admin token)
private:
  bool show_usage_;
};

// Anything else that stops the command (unreadable file, bad config, server unreachable, non-2xx):
// message on stderr, exit 1.
class CliError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// One admin API call.
struct KeysRequest {
  std::string method;  // GET, POST, PATCH or DELETE
  std::string path;    // absolute, with the query: "/admin/keys?search=bob&limit=10"
  std::string body;    // compact JSON text; "" = no body
};

struct KeysCommand {
  bool help = false;       // `keys help`, `keys --help`, `-h`: print the usage on stdout, exit 0
  std::string subcommand;  // create, list, show, update, revoke, rotate, import
  std::string base_url;    // resolved: "http://127.0.0.1:3000" (no trailing '/'; may carry a path prefix)
  std::string token;       // resolved admin token, sent as "Authorization: Bearer <token>"; never printed
  KeysRequest request;
  // list: the query parts, so --all can ask for the following pages.
  bool all = false;
  std::string search;
  std::string limit;  // page size as given ("" = server default)
  std::string after;
};

// The environment variables the CLI reads (GLMP_URL, GLMP_ADMIN_TOKEN); empty values count as unset.
using Env = std::map<std::string, std::string>;

// Parses the arguments after "keys" (args = {"create", "--name", "bob", …}). Pure apart from reading
// the --config file (only when it is needed for the URL or the token) and the import FILE.
// URL: --url > --config's [server] listen (0.0.0.0 → 127.0.0.1) > $GLMP_URL > http://127.0.0.1:3000.
// Token: --token > $GLMP_ADMIN_TOKEN > --config's [admin] token.
// Throws UsageError (exit 2) or CliError (exit 1).
KeysCommand parse_keys_args(const std::vector<std::string>& args, const Env& env);

// GET /admin/keys with the given query parts ("" = omitted), percent-encoded.
std::string list_path(const std::string& search, const std::string& limit, const std::string& after);

// The usage text of `glm-proxy keys`.
const std::string& keys_usage();

// `text` re-indented (Poco::JSON, indent 2, key order kept); unchanged when it is not JSON.
std::string pretty_json(const std::string& text);

// The stderr line for a non-2xx answer, without the "glm-proxy keys: " prefix:
// "<status> <error.message from the body | the raw body | the reason phrase>".
std::string error_line(int status, const std::string& reason, const std::string& body);

// main()'s entry for `glm-proxy keys …`: argv[0] is "keys". Returns the exit status:
// 0 done (the server's JSON on `out`), 1 failed (message on `err`), 2 usage error.
int run_keys(int argc, char** argv, std::ostream& out, std::ostream& err);
// The same with the arguments after "keys" and an explicit environment (tests).
int run_keys(const std::vector<std::string>& args, const Env& env, std::ostream& out, std::ostream& err);

}  // namespace glmp::core::cli
