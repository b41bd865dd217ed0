#pragma once
// Integration-test harness: starts the real mock-upstream and glm-proxy binaries as child
// processes (stdout/stderr to files in a per-test temp dir), discovers their ephemeral ports,
// and offers small HTTP helpers built on Poco.

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>

namespace glmp::test {

using namespace std::chrono_literals;

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

// A fresh directory under /tmp, removed on destruction.
class TempDir {
public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
private:
  std::string path_;
};

// A child process with stdout/stderr redirected to files.
// True when `err` (a child's stderr) holds an ASan/UBSan/LSan/TSan report. Children whose exit
// status the test expects to be non-zero (CLI errors, refused configs) must be checked with this
// too: ASan exits with 1, the same status as an ordinary error exit.
bool sanitizer_report(const std::string& err);

class Child {
public:
  Child(const std::vector<std::string>& argv, const std::string& out_file, const std::string& err_file,
        const std::map<std::string, std::string>& env = {});
  ~Child();  // SIGKILL if still running
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  int pid() const { return pid_; }
  bool running();
  void signal(int sig);
  // Waits for exit; returns the exit status (or 128+signal), -1 on timeout.
  int wait(std::chrono::milliseconds timeout);
  std::string out() const { return read_file(out_file_); }
  std::string err() const { return read_file(err_file_); }
  // Polls `file` until `needle` appears; returns the text after it up to the end of line.
  std::string wait_for(bool stderr_file, const std::string& needle, std::chrono::milliseconds timeout = 10s);
  // Resident set size in KiB from /proc.
  long rss_kib() const;
  int fd_count() const;
private:
  int pid_ = -1;
  int status_ = -1;
  bool exited_ = false;
  std::string out_file_, err_file_;
};

struct MockOptions {
  bool https = false;
  std::string cert, key;
  std::string api_key = "test-upstream-key";
  int keepalive_timeout_ms = 10000;
  bool fast = false;
  std::vector<std::string> extra_args;  // further flags (--alpn, --max-concurrent-streams, …)
};

class Mock {
public:
  explicit Mock(const TempDir& dir, MockOptions opts = {}, const std::string& name = "mock");
  ~Mock();  // fails the running test if the mock reported a sanitizer error or crashed
  uint16_t port() const { return port_; }
  std::string base_url(const std::string& path = "") const;
  Child& process() { return *child_; }
  // GET /__mock/stats (over TLS for an https mock): every figure, by name ("connections",
  // "requests", "active", "h2_streams", …); empty when unreadable.
  std::map<std::string, long> stats() const;
  // Requests the mock has served so far (stats()["requests"]), -1 when the stats are unreadable.
  long requests() const;
private:
  MockOptions opts_;
  std::unique_ptr<Child> child_;
  uint16_t port_ = 0;
};

struct ProxyOptions {
  // Extra TOML appended verbatim after the generated [server]/[proxy]/[log] tables, or a
  // replacement for the generated [upstreams]/[[routes]] (see Proxy::config_for).
  std::string server_extra;          // lines inside [server]
  std::string proxy_extra;           // lines inside [proxy]
  std::string upstream_extra;        // lines inside both [upstreams.*]
  std::string model = "glm-4.7";
  std::string openai_base;           // default: mock base_url("/api/coding/paas/v4")
  std::string anthropic_base;        // default: mock base_url("/api/anthropic")
  std::string auth_value_openai = "Bearer test-upstream-key";
  std::string auth_value_anthropic = "test-upstream-key";
  std::string extra_toml;            // appended after the generated config ([admin], [[plugins]], …)
  std::string custom_toml;           // if set, used as the whole config (with @PORT@ etc. left to the caller)
  // The [store] table; "" = sqlite in the test's temp dir (state.db). Also appended to custom_toml
  // unless that has its own [store].
  std::string store_toml;
  std::map<std::string, std::string> env;
};

class Proxy {
public:
  Proxy(const TempDir& dir, const Mock* mock, ProxyOptions opts = {});
  ~Proxy();  // fails the running test if the proxy reported a sanitizer error or crashed
  uint16_t port() const { return port_; }
  Child& process() { return *child_; }
  const std::string& config_path() const { return config_path_; }
  // All access-log lines written so far.
  std::vector<std::string> access_log() const;
  // kill -9, as a crash would: no flush, no cleanup. The destructor then expects nothing more.
  void kill9();
  // Polls the access log for a line containing every needle; returns it (throws on timeout).
  std::string wait_log(const std::vector<std::string>& needles, std::chrono::milliseconds timeout = 10s) const;
private:
  std::unique_ptr<Child> child_;
  uint16_t port_ = 0;
  std::string config_path_;
  bool killed_ = false;
};

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-cased names; duplicates joined with ", "
  std::string body;
  std::string error;  // transport error (exception text), "" if none
  std::string header(const std::string& name) const;
};

// One HTTP/1.1 request on a fresh connection.
Response http(uint16_t port, const std::string& method, const std::string& uri, const std::string& body = "",
              const std::map<std::string, std::string>& headers = {}, std::chrono::milliseconds timeout = 30s);

// GET /metrics once every request answered before it has been accounted. The proxy counts a
// request (metrics, access log) right after its last byte is handed to the socket, so a client
// can read a response and scrape, on another event loop, before that: this scrapes until
// glmp_requests_in_flight is 1 (the scrape itself), at most 5 s, and returns that scrape.
Response settled_metrics(uint16_t port);

// A streamed response read as it arrives: each element is (ms since the request was sent, bytes).
struct StreamedResponse {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::vector<std::pair<double, std::string>> pieces;
  std::string body() const;
  std::string error;
};
StreamedResponse http_stream(uint16_t port, const std::string& method, const std::string& uri, const std::string& body,
                             const std::map<std::string, std::string>& headers = {},
                             std::chrono::milliseconds timeout = 60s);

// The admin token the harness configures when a test sets no [admin] table of its own.
inline constexpr const char* kTestAdminToken = "glmp-test-admin-token";

// GET /health with the admin token (the details: upstreams, pools, store): returns the JSON body.
std::string health(uint16_t port, const std::string& admin_token = kTestAdminToken);

// Makes a self-signed CA and a server cert for 127.0.0.1/localhost signed by it (openssl CLI).
struct TestPki {
  std::string ca_cert, server_cert, server_key;
};
TestPki make_pki(const TempDir& dir);
// Another server certificate (and its key), signed by make_pki's CA in `dir` (a new serial each
// time), for 127.0.0.1/localhost, with subject CN=`cn`: <dir>/<name>.pem and <dir>/<name>.key.
struct IssuedCert {
  std::string cert, key;
};
IssuedCert issue_cert(const TempDir& dir, const std::string& name, const std::string& cn, int days = 2);

// JSON helpers (Poco::JSON): value at a dotted path like "usage.prompt_tokens" or "error.type".
std::string json_get(const std::string& json, const std::string& path);
// The JSON of the last OpenAI error event (`data: {"error":…}`) of a stream body; "" without one.
std::string openai_error_event(const std::string& body);
// The same, but a body that is not JSON reads as "<unparsable>" instead of throwing.
std::string jget(const std::string& json, const std::string& path);
// A whole decimal integer, or `fallback` when `text` is anything else.
long to_long(const std::string& text, long fallback = -1);
// The integer at `path`, or `fallback` when missing or not an integer.
long jlong(const std::string& json, const std::string& path, long fallback = -1);

// The sum of the Prometheus samples of family `name` (a /metrics text) whose series contains every
// fragment in `labels` (e.g. {"origin=\"cache\""}); -1 when there is none.
double metric(const std::string& text, const std::string& name, const std::vector<std::string>& labels = {});

// A plugin module built next to the proxy: plugin_path("auth") = <build>/plugins/auth.so.
std::string plugin_path(const std::string& name);

// Standard request bodies.
std::string openai_body(bool stream, const std::string& extra = "");
std::string anthropic_body(bool stream, const std::string& extra = "");

// A fresh mock upstream and a proxy in front of it (default options) for every test.
class ProxyTest : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  void SetUp() override {
    mock = std::make_unique<Mock>(dir);
    proxy = std::make_unique<Proxy>(dir, mock.get());
  }
};

}  // namespace glmp::test
