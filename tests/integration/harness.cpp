#include "harness.hpp"

#include <filesystem>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include <Poco/Dynamic/Var.h>
#include <Poco/File.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/StreamCopier.h>
#include <Poco/StringTokenizer.h>

extern char** environ;

namespace glmp::test {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path);
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/glmp-it-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  try {
    Poco::File(path_).remove(true);
  } catch (...) {
  }
}

Child::Child(const std::vector<std::string>& argv, const std::string& out_file, const std::string& err_file,
             const std::map<std::string, std::string>& env)
    : out_file_(out_file), err_file_(err_file) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : env) {
    if (v == "<unset>") merged.erase(k);
    else merged[k] = v;
  }
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : merged) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  // Children must not inherit a blocked signal mask (ctest/gtest threads) — reset it.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  int rc = posix_spawn(&pid_, args[0], &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
}

Child::~Child() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    wait(5s);
  }
}

bool Child::running() {
  if (exited_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

void Child::signal(int sig) { ::kill(pid_, sig); }

int Child::wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(10ms);
  }
  return status_;
}

std::string Child::wait_for(bool stderr_file, const std::string& needle, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::string text = read_file(stderr_file ? err_file_ : out_file_);
    auto pos = text.find(needle);
    if (pos != std::string::npos) {
      auto eol = text.find('\n', pos);
      if (eol != std::string::npos) return text.substr(pos + needle.size(), eol - pos - needle.size());
    }
    if (!running())
      throw std::runtime_error("process exited before printing '" + needle + "'. stderr:\n" + read_file(err_file_) +
                               "\nstdout:\n" + read_file(out_file_));
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("timed out waiting for '" + needle + "'. stderr:\n" + read_file(err_file_));
    std::this_thread::sleep_for(10ms);
  }
}

long Child::rss_kib() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

int Child::fd_count() const {
  int n = 0;
  DIR* d = opendir(("/proc/" + std::to_string(pid_) + "/fd").c_str());
  if (!d) return -1;
  while (auto* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

Mock::Mock(const TempDir& dir, MockOptions opts, const std::string& name) : opts_(std::move(opts)) {
  std::vector<std::string> argv{GLMP_MOCK_BIN, "--host", "127.0.0.1", "--port", "0", "--api-key", opts_.api_key,
                                "--keepalive-timeout-ms", std::to_string(opts_.keepalive_timeout_ms)};
  if (opts_.https) {
    argv.insert(argv.end(), {"--https", "--cert", opts_.cert, "--key", opts_.key});
  }
  if (opts_.fast) argv.push_back("--fast");
  argv.insert(argv.end(), opts_.extra_args.begin(), opts_.extra_args.end());
  child_ = std::make_unique<Child>(argv, dir.file(name + ".out"), dir.file(name + ".err"));
  port_ = static_cast<uint16_t>(std::stoi(child_->wait_for(false, "LISTENING ")));
}

bool sanitizer_report(const std::string& err) {
  return err.find("Sanitizer") != std::string::npos || err.find("runtime error:") != std::string::npos;
}

namespace {

// A child that died on its own (not by our SIGKILL/SIGTERM) or printed a sanitizer report fails
// the test that was using it, with its stderr attached.
void check_child(Child& child, const char* what) {
  const std::string err = child.err();
  const bool sanitizer = sanitizer_report(err);
  const bool died = !child.running() && child.wait(0ms) != 0 && child.wait(0ms) != 128 + SIGTERM;
  if (sanitizer || died) ADD_FAILURE() << what << (died ? " exited unexpectedly" : " reported a sanitizer error") << ":\n" << err;
}

}  // namespace

Mock::~Mock() {
  if (child_) check_child(*child_, "mock-upstream");
}

void Proxy::kill9() {
  check_child(*child_, "glm-proxy");
  child_->signal(SIGKILL);
  child_->wait(5s);
  killed_ = true;
}

Proxy::~Proxy() {
  if (!child_ || killed_) return;
  check_child(*child_, "glm-proxy");
  // A clean stop (not the SIGKILL of ~Child), so the proxy removes its runtime dir.
  if (child_->running()) {
    child_->signal(SIGTERM);
    child_->wait(5s);  // a sanitizer build's teardown and leak check take ~2 s on a quiet machine
    // What the proxy reports while shutting down and exiting (drain, stop, leak check) counts too.
    const std::string err = child_->err();
    if (sanitizer_report(err)) ADD_FAILURE() << "glm-proxy reported a sanitizer error while stopping:\n" << err;
  }
}

std::string Mock::base_url(const std::string& path) const {
  return std::string(opts_.https ? "https" : "http") + "://" + (opts_.https ? "localhost" : "127.0.0.1") + ":" +
         std::to_string(port_) + path;
}

std::map<std::string, long> Mock::stats() const {
  std::string body;
  if (opts_.https) {
    // The mock's certificate comes from the test's own CA; only the figures matter here.
    const Poco::Net::Context::Ptr ctx = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", "",
                                                               Poco::Net::Context::VERIFY_NONE);
    try {
      Poco::Net::HTTPSClientSession session("127.0.0.1", port_, ctx);
      session.setTimeout(Poco::Timespan(5, 0));
      Poco::Net::HTTPRequest req(Poco::Net::HTTPRequest::HTTP_GET, "/__mock/stats", Poco::Net::HTTPMessage::HTTP_1_1);
      session.sendRequest(req);
      Poco::Net::HTTPResponse resp;
      std::istream& in = session.receiveResponse(resp);
      if (resp.getStatus() != Poco::Net::HTTPResponse::HTTP_OK) return {};
      Poco::StreamCopier::copyToString(in, body);
    } catch (const Poco::Exception&) {
      return {};
    }
  } else {
    const Response r = http(port_, "GET", "/__mock/stats");
    if (r.status != 200) return {};
    body = r.body;
  }
  std::map<std::string, long> out;
  const Poco::JSON::Object::Ptr obj = Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
  for (const auto& [name, value] : *obj)
    if (value.isNumeric()) out[name] = value.convert<long>();
  return out;
}

long Mock::requests() const {
  const auto s = stats();
  const auto it = s.find("requests");
  return it == s.end() ? -1 : it->second;
}

Proxy::Proxy(const TempDir& dir, const Mock* mock, ProxyOptions opts) {
  config_path_ = dir.file("proxy.toml");
  std::string toml = opts.custom_toml;
  if (toml.empty()) {
    const std::string openai = !opts.openai_base.empty() ? opts.openai_base : mock->base_url("/api/coding/paas/v4");
    const std::string anthropic = !opts.anthropic_base.empty() ? opts.anthropic_base : mock->base_url("/api/anthropic");
    // The harness's upstream defaults, minus the keys upstream_extra sets itself (TOML refuses a key twice).
    std::string defaults;
    for (const char* line : {"min_connections = 0", "max_connections = 32", "read_timeout = \"10s\"", "health_interval = \"0s\""}) {
      const std::string key = std::string(line).substr(0, std::string(line).find(' '));
      if (opts.upstream_extra.rfind(key + " ", 0) != 0 && opts.upstream_extra.find("\n" + key + " ") == std::string::npos)
        defaults += std::string(line) + "\n";
    }
    toml = "[server]\nlisten = \"127.0.0.1:0\"\nmax_threads = 64\ndrain_timeout = \"10s\"\n" + opts.server_extra +
           "\n[proxy]\nmodel = \"" + opts.model + "\"\n" + opts.proxy_extra +
           "\n[log]\nlevel = \"information\"\naccess_log = \"" + dir.file("access.log") + "\"\n" +
           "\n[upstreams.openai]\nbase_url = \"" + openai + "\"\nauth_header = \"Authorization\"\nauth_value = \"" +
           opts.auth_value_openai + "\"\n" + defaults +
           opts.upstream_extra + "\n[upstreams.anthropic]\nbase_url = \"" + anthropic +
           "\"\nauth_header = \"x-api-key\"\nauth_value = \"" + opts.auth_value_anthropic +
           "\"\n" + defaults + opts.upstream_extra +
           "\n[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"anthropic\"\n"
           "\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\nstrip_prefix = \"/v1\"\n" +
           opts.extra_toml;
  }
  // An admin token unless the test sets its own: /health shows its details only to the operator.
  if (toml.find("[admin]") == std::string::npos) toml += std::string("\n[admin]\ntoken = \"") + kTestAdminToken + "\"\n";
  if (toml.find("[store]") == std::string::npos)
    toml += "\n" + (opts.store_toml.empty() ? "[store]\npath = \"" + dir.file("state.db") + "\"\n" : opts.store_toml);
  write_file(config_path_, toml);
  child_ = std::make_unique<Child>(std::vector<std::string>{GLMP_PROXY_BIN, "--config", config_path_},
                                   dir.file("proxy.out"), dir.file("proxy.err"), opts.env);
  std::string rest = child_->wait_for(true, "listening on ");
  port_ = static_cast<uint16_t>(std::stoi(rest.substr(rest.rfind(':') + 1)));
}

std::vector<std::string> Proxy::access_log() const {
  std::vector<std::string> lines;
  std::istringstream in(read_file(std::string(config_path_.substr(0, config_path_.rfind('/'))) + "/access.log"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(line);
  return lines;
}

std::string Proxy::wait_log(const std::vector<std::string>& needles, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    for (const auto& line : access_log()) {
      bool all = true;
      for (const auto& n : needles) all = all && line.find(n) != std::string::npos;
      if (all) return line;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::string want;
      for (const auto& n : needles) want += " [" + n + "]";
      std::string log;
      for (const auto& l : access_log()) log += l + "\n";
      throw std::runtime_error("no access-log line with" + want + "; log:\n" + log);
    }
    std::this_thread::sleep_for(10ms);
  }
}

std::string Response::header(const std::string& name) const {
  std::string lower;
  for (char c : name) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  auto it = headers.find(lower);
  return it == headers.end() ? std::string() : it->second;
}

namespace {

void collect_headers(const Poco::Net::HTTPResponse& resp, std::map<std::string, std::string>& out) {
  for (const auto& [k, v] : resp) {
    std::string lower;
    for (char c : k) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    auto& slot = out[lower];
    slot = slot.empty() ? v : slot + ", " + v;
  }
}

}  // namespace

Response settled_metrics(uint16_t port) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    Response r = http(port, "GET", "/metrics");
    if (r.status != 200 || r.body.find("\nglmp_requests_in_flight 1\n") != std::string::npos ||
        std::chrono::steady_clock::now() >= deadline)
      return r;
    std::this_thread::sleep_for(10ms);
  }
}

Response http(uint16_t port, const std::string& method, const std::string& uri, const std::string& body,
              const std::map<std::string, std::string>& headers, std::chrono::milliseconds timeout) {
  Response r;
  try {
    Poco::Net::HTTPClientSession session("127.0.0.1", port);
    session.setTimeout(Poco::Timespan(timeout.count() * 1000));
    Poco::Net::HTTPRequest req(method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
    bool has_ct = false;
    for (const auto& [k, v] : headers) {
      req.set(k, v);
      if (strcasecmp(k.c_str(), "content-type") == 0) has_ct = true;
    }
    if (!body.empty() || method == "POST") {
      req.setContentLength64(static_cast<Poco::Int64>(body.size()));
      if (!has_ct) req.setContentType("application/json");
    }
    std::ostream& os = session.sendRequest(req);
    os << body;
    Poco::Net::HTTPResponse resp;
    std::istream& is = session.receiveResponse(resp);
    r.status = resp.getStatus();
    collect_headers(resp, r.headers);
    std::stringstream ss;
    ss << is.rdbuf();
    r.body = ss.str();
    if (resp.hasContentLength() && static_cast<Poco::Int64>(r.body.size()) != resp.getContentLength64())
      r.error = "short body: " + std::to_string(r.body.size()) + " of " + std::to_string(resp.getContentLength64());
  } catch (const Poco::Exception& e) {
    r.error = e.displayText();
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  return r;
}

std::string StreamedResponse::body() const {
  std::string out;
  for (const auto& [t, bytes] : pieces) out += bytes;
  return out;
}

StreamedResponse http_stream(uint16_t port, const std::string& method, const std::string& uri, const std::string& body,
                             const std::map<std::string, std::string>& headers, std::chrono::milliseconds timeout) {
  StreamedResponse r;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Poco::Net::HTTPClientSession session("127.0.0.1", port);
    session.setTimeout(Poco::Timespan(timeout.count() * 1000));
    Poco::Net::HTTPRequest req(method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
    for (const auto& [k, v] : headers) req.set(k, v);
    req.setContentLength64(static_cast<Poco::Int64>(body.size()));
    if (!req.has("Content-Type")) req.setContentType("application/json");
    std::ostream& os = session.sendRequest(req);
    os << body;
    Poco::Net::HTTPResponse resp;
    std::istream& is = session.receiveResponse(resp);
    r.status = resp.getStatus();
    collect_headers(resp, r.headers);
    is.exceptions(std::ios::badbit);
    char buf[65536];
    while (is.peek() != std::char_traits<char>::eof()) {
      auto n = is.readsome(buf, sizeof buf);
      if (n <= 0) continue;
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      r.pieces.emplace_back(ms, std::string(buf, static_cast<size_t>(n)));
    }
  } catch (const Poco::Exception& e) {
    r.error = e.displayText();
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  return r;
}

std::string health(uint16_t port, const std::string& admin_token) {
  return http(port, "GET", "/health", "", {{"X-Admin-Token", admin_token}}).body;
}

TestPki make_pki(const TempDir& dir) {
  TestPki p{dir.file("ca.pem"), dir.file("server.pem"), dir.file("server.key")};
  const std::string d = dir.path();
  const std::string cmd =
      "cd " + d + " && "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=glmp-test-ca "
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 && "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost >/dev/null 2>&1 && "
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 "
      "-extfile ext.cnf >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("openssl failed to make the test PKI");
  return p;
}

IssuedCert issue_cert(const TempDir& dir, const std::string& name, const std::string& cn, int days) {
  IssuedCert c{dir.file(name + ".pem"), dir.file(name + ".key")};
  const std::string cmd =
      "cd " + dir.path() + " && "
      "openssl req -newkey rsa:2048 -nodes -keyout " + name + ".key -out " + name + ".csr -subj /CN=" + cn + " >/dev/null 2>&1 && "
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > " + name + ".cnf && "
      "openssl x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key -CAserial ca.srl -CAcreateserial -out " + name +
      ".pem -days " + std::to_string(days) + " -extfile " + name + ".cnf >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("openssl failed to issue " + name);
  return c;
}

std::string openai_error_event(const std::string& body) {
  const auto pos = body.rfind("data: {\"error\":");
  if (pos == std::string::npos) return "";
  const auto end = body.find("\n\n", pos);
  return body.substr(pos + 6, end == std::string::npos ? std::string::npos : end - pos - 6);
}

std::string json_get(const std::string& json, const std::string& path) {
  Poco::Dynamic::Var v = Poco::JSON::Parser().parse(json);
  Poco::StringTokenizer parts(path, ".");
  for (const auto& part : parts) {
    if (v.type() == typeid(Poco::JSON::Object::Ptr)) {
      auto obj = v.extract<Poco::JSON::Object::Ptr>();
      if (!obj->has(part)) return "<missing>";
      v = obj->get(part);
    } else if (v.type() == typeid(Poco::JSON::Array::Ptr)) {
      v = v.extract<Poco::JSON::Array::Ptr>()->get(static_cast<unsigned>(std::stoul(part)));
    } else {
      return "<missing>";
    }
  }
  if (v.isEmpty()) return "null";
  if (v.type() == typeid(Poco::JSON::Object::Ptr) || v.type() == typeid(Poco::JSON::Array::Ptr)) {
    std::ostringstream os;
    Poco::JSON::Stringifier::stringify(v, os);
    return os.str();
  }
  return v.convert<std::string>();
}

std::string jget(const std::string& json, const std::string& path) {
  try {
    return json_get(json, path);
  } catch (...) {
    return "<unparsable>";
  }
}

long to_long(const std::string& text, long fallback) {
  try {
    size_t pos = 0;
    const long n = std::stol(text, &pos);
    return pos == text.size() ? n : fallback;
  } catch (...) {
    return fallback;
  }
}

long jlong(const std::string& json, const std::string& path, long fallback) { return to_long(jget(json, path), fallback); }

double metric(const std::string& text, const std::string& name, const std::vector<std::string>& labels) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  bool found = false;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    const std::string series = line.substr(0, space);
    const std::string series_name = series.substr(0, series.find('{'));
    if (series_name != name) continue;
    bool all = true;
    for (const auto& l : labels) all = all && series.find(l) != std::string::npos;
    if (!all) continue;
    sum += std::strtod(line.c_str() + space + 1, nullptr);
    found = true;
  }
  return found ? sum : -1;
}

std::string plugin_path(const std::string& name) {
  return (std::filesystem::path(GLMP_PROXY_BIN).parent_path().parent_path() / "plugins" / (name + ".so")).string();
}

std::string openai_body(bool stream, const std::string& extra) {
  return std::string("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]") +
         (stream ? ",\"stream\":true" : "") + extra + "}";
}

std::string anthropic_body(bool stream, const std::string& extra) {
  return std::string("{\"model\":\"claude-sonnet-4\",\"max_tokens\":256,\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]") +
         (stream ? ",\"stream\":true" : "") + extra + "}";
}

}  // namespace glmp::test
