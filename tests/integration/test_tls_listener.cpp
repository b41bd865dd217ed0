// The TLS listener ([server] tls_cert / tls_key; docs/design.md, "TLS listener") through the real
// binary: both API flavours, streamed and not, keep-alive, /health and /metrics, the auth plugin
// with a proxy key, ALPN, a plain HTTP request on the TLS port, handshakes that stall or fail,
// certificate reload (SIGHUP and POST /admin/reload, good and broken), refusal to start, and a slow
// reader. The client side is OpenSSL itself (TlsClient below), trusting only the test CA, and
// Poco's HTTPSClientSession once, as an ordinary client would.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>

#include "harness.hpp"

using namespace glmp::test;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
using Headers = std::map<std::string, std::string>;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string ssl_errors() {
  std::string text;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    text += std::string(text.empty() ? "" : "; ") + buf;
  }
  return text;
}

int tcp_connect(uint16_t port, int rcvbuf = 0) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Waits until the peer closes `fd` (EOF or reset); what arrived before goes to `got`. False on
// timeout.
bool wait_closed(int fd, std::chrono::milliseconds timeout, std::string* got = nullptr) {
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (got) got->append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    return true;
  }
  return false;
}

// The certificate in a PEM file: subject (OpenSSL's one-line form), serial (hex), notAfter (unix).
struct CertFacts {
  std::string subject, serial;
  long not_after = 0;
};
CertFacts facts(X509* cert) {
  CertFacts f;
  char name[512];
  X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof name);
  f.subject = name;
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  char* hex = BN_bn2hex(bn);
  f.serial = hex;
  OPENSSL_free(hex);
  BN_free(bn);
  tm t{};
  ASN1_TIME_to_tm(X509_get0_notAfter(cert), &t);
  f.not_after = static_cast<long>(timegm(&t));
  return f;
}
CertFacts file_facts(const std::string& pem) {
  FILE* f = std::fopen(pem.c_str(), "r");
  if (!f) return {};
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (!cert) return {};
  CertFacts out = facts(cert);
  X509_free(cert);
  return out;
}

// An HTTP/1.1 client over OpenSSL that trusts only the test CA and checks the name "localhost":
// one connection, any number of requests on it.
class TlsClient {
public:
  struct Options {
    std::vector<std::string> alpn{"http/1.1"};  // offered protocols; empty = no ALPN extension
    int rcvbuf = 0;                             // a small receive window (slow-reader tests)
  };
  struct Reply {
    int status = 0;
    Headers headers;  // lower-cased names
    std::string body;
    std::vector<std::pair<double, std::string>> pieces;  // body chunks as they were decoded: (ms, bytes)
    std::string error;
    std::string header(const std::string& name) const {
      auto it = headers.find(lower(name));
      return it == headers.end() ? std::string() : it->second;
    }
  };

  TlsClient(uint16_t port, const std::string& ca_file) : TlsClient(port, ca_file, Options()) {}
  TlsClient(uint16_t port, const std::string& ca_file, const Options& opts) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    fd_ = tcp_connect(port, opts.rcvbuf);
    if (fd_ < 0) {
      error_ = "connect failed";
      return;
    }
    timeval tv{20, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    SSL_set_tlsext_host_name(ssl_, "localhost");
    SSL_set1_host(ssl_, "localhost");
    if (!opts.alpn.empty()) {
      std::string wire;
      for (const auto& p : opts.alpn) wire += static_cast<char>(p.size()) + p;
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(wire.data()), static_cast<unsigned>(wire.size()));
    }
    ERR_clear_error();
    if (SSL_connect(ssl_) != 1) error_ = "handshake failed: " + ssl_errors();
  }
  ~TlsClient() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
    if (ctx_) SSL_CTX_free(ctx_);
  }
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  std::string alpn() const {
    const unsigned char* data = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl_, &data, &len);
    return data ? std::string(reinterpret_cast<const char*>(data), len) : std::string();
  }
  CertFacts peer() const {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (!cert) return {};
    CertFacts f = facts(cert);
    X509_free(cert);
    return f;
  }

  bool send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const int n = SSL_write(ssl_, bytes.data() + off, static_cast<int>(bytes.size() - off));
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  static std::string request_bytes(const std::string& method, const std::string& path, const std::string& body,
                                   const Headers& headers) {
    std::string r = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n";
    bool has_ct = false;
    for (const auto& [k, v] : headers) {
      r += k + ": " + v + "\r\n";
      has_ct = has_ct || lower(k) == "content-type";
    }
    if (!body.empty() || method == "POST") {
      if (!has_ct) r += "Content-Type: application/json\r\n";
      r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    return r + "\r\n" + body;
  }
  Reply request(const std::string& method, const std::string& path, const std::string& body = "", const Headers& headers = {}) {
    const auto t0 = Clock::now();
    if (!ok()) return Reply{0, {}, {}, {}, error_};
    if (!send(request_bytes(method, path, body, headers))) return Reply{0, {}, {}, {}, "write failed: " + ssl_errors()};
    return read_response(t0);
  }

  // One response: Content-Length, chunked, or until the connection ends.
  Reply read_response(Clock::time_point t0 = Clock::now()) {
    Reply r;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill()) return fail(r, "connection ended before the response head");
    std::istringstream head(buf_.substr(0, end));
    buf_.erase(0, end + 4);
    std::string line;
    std::getline(head, line);
    if (line.rfind("HTTP/1.1 ", 0) != 0) return fail(r, "bad status line: " + line);
    r.status = std::atoi(line.c_str() + 9);
    while (std::getline(head, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      r.headers[lower(line.substr(0, colon))] = value;
    }
    if (lower(r.header("transfer-encoding")) == "chunked") {
      for (;;) {
        size_t eol;
        while ((eol = buf_.find("\r\n")) == std::string::npos)
          if (!fill()) return fail(r, "connection ended inside the chunked body");
        const size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
        while (buf_.size() < eol + 2 + size + 2)
          if (!fill()) return fail(r, "connection ended inside a chunk");
        if (size == 0) {
          buf_.erase(0, eol + 4);
          return r;
        }
        r.pieces.emplace_back(ms_since(t0), buf_.substr(eol + 2, size));
        r.body += r.pieces.back().second;
        buf_.erase(0, eol + 2 + size + 2);
      }
    }
    if (!r.header("content-length").empty()) {
      const size_t len = std::stoul(r.header("content-length"));
      while (buf_.size() < len)
        if (!fill()) return fail(r, "connection ended inside the body");
      r.body = buf_.substr(0, len);
      buf_.erase(0, len);
      return r;
    }
    while (fill()) {
    }
    r.body = std::move(buf_);
    buf_.clear();
    return r;
  }

  // True when the server ends the connection (close_notify, EOF or reset) within `timeout`;
  // `clean` tells whether it sent close_notify first.
  bool closed_by_peer(std::chrono::milliseconds timeout, bool* clean = nullptr) {
    const auto deadline = Clock::now() + timeout;
    char b[16384];
    while (Clock::now() < deadline) {
      const int n = SSL_read(ssl_, b, sizeof b);
      if (n > 0) continue;
      const int err = SSL_get_error(ssl_, n);
      if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_SYSCALL) && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (clean) *clean = err == SSL_ERROR_ZERO_RETURN;
      return true;
    }
    return false;
  }
  int fd() const { return fd_; }

private:
  bool fill() {
    char b[16384];
    ERR_clear_error();
    const int n = SSL_read(ssl_, b, sizeof b);
    if (n <= 0) return false;
    buf_.append(b, static_cast<size_t>(n));
    return true;
  }
  static Reply fail(Reply& r, const std::string& why) {
    r.error = why;
    return r;
  }

  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  std::string error_;
  std::string buf_;
};

class TlsListener : public ::testing::Test {
protected:
  TempDir dir;
  TestPki pki;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;

  void start(const std::string& server_extra = "", const std::string& extra_toml = "") {
    pki = make_pki(dir);
    mock = std::make_unique<Mock>(dir);
    ProxyOptions opts;
    opts.server_extra = "tls_cert = \"" + pki.server_cert + "\"\ntls_key = \"" + pki.server_key + "\"\n" + server_extra;
    opts.extra_toml = extra_toml;
    proxy = std::make_unique<Proxy>(dir, mock.get(), opts);
  }
  uint16_t port() const { return proxy->port(); }
  // One request on a fresh TLS connection.
  TlsClient::Reply https(const std::string& method, const std::string& path, const std::string& body = "",
                         const Headers& headers = {}) const {
    TlsClient c(port(), pki.ca_cert);
    return c.request(method, path, body, headers);
  }
  std::string metrics() const { return https("GET", "/metrics").body; }
  double handshakes(const std::string& result) const {
    return metric(metrics(), "glmp_tls_handshakes_total", {"result=\"" + result + "\""});
  }
  // Polls /metrics until glmp_tls_handshakes_total{result} reaches `at_least` (at most 10 s).
  double wait_handshakes(const std::string& result, double at_least) const {
    double v = -1;
    for (int i = 0; i < 200 && (v = handshakes(result)) < at_least; ++i) std::this_thread::sleep_for(50ms);
    return v;
  }
  std::string admin_token() const { return kTestAdminToken; }
};

// ---------------------------------------------------------------------------------------------

TEST_F(TlsListener, BothFlavoursNonStreaming) {
  start();
  TlsClient c(port(), pki.ca_cert);
  ASSERT_TRUE(c.ok()) << c.error();
  EXPECT_EQ(c.peer().subject, "/CN=localhost");
  EXPECT_EQ(c.alpn(), "http/1.1");
  auto r = c.request("POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(r.status, 200) << r.error << r.body;
  EXPECT_EQ(json_get(r.body, "choices.0.message.content"), "tok0 tok1 tok2 ");
  auto a = c.request("POST", "/v1/messages", anthropic_body(false));
  ASSERT_EQ(a.status, 200) << a.error << a.body;
  EXPECT_EQ(json_get(a.body, "type"), "message");
  EXPECT_NO_THROW(proxy->wait_log({"/v1/messages", "\"status\":200"}));
  // Plain HTTP clients are not served on this port at all.
  EXPECT_EQ(mock->requests(), 2);
}

TEST_F(TlsListener, PocoHttpsClientWithTheTestCa) {
  start();
  Poco::Net::Context::Ptr ctx = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", pki.ca_cert,
                                                       Poco::Net::Context::VERIFY_RELAXED, 9, false);
  ctx->enableExtendedCertificateVerification(false);  // the chain is checked; the name check is TlsClient's
  Poco::Net::HTTPSClientSession session("127.0.0.1", port(), ctx);
  session.setTimeout(Poco::Timespan(30, 0));
  for (const auto& [path, body] : {std::pair<std::string, std::string>{"/v1/chat/completions", openai_body(false)},
                                   {"/v1/messages", anthropic_body(false)}}) {
    Poco::Net::HTTPRequest req("POST", path, Poco::Net::HTTPMessage::HTTP_1_1);
    req.setContentType("application/json");
    req.setContentLength64(static_cast<Poco::Int64>(body.size()));
    session.sendRequest(req) << body;
    Poco::Net::HTTPResponse resp;
    std::istream& in = session.receiveResponse(resp);
    std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(resp.getStatus(), 200) << path << ": " << got;
    EXPECT_NE(got.find("tok1"), std::string::npos) << got;
  }
}

TEST_F(TlsListener, StreamingEventsArriveAsProduced) {
  start();
  TlsClient c(port(), pki.ca_cert);
  ASSERT_TRUE(c.ok()) << c.error();
  auto s = c.request("POST", "/v1/chat/completions", openai_body(true), {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "150"}});
  ASSERT_EQ(s.status, 200) << s.error;
  EXPECT_EQ(s.header("content-type").rfind("text/event-stream", 0), 0u);
  EXPECT_NE(s.body.find("tok3"), std::string::npos);
  EXPECT_NE(s.body.find("data: [DONE]"), std::string::npos);
  ASSERT_GE(s.pieces.size(), 4u);
  EXPECT_GT(s.pieces.back().first - s.pieces.front().first, 400.0) << "the events were not relayed as they came";
  // Anthropic's stream on the same connection.
  auto a = c.request("POST", "/v1/messages", anthropic_body(true), {{"x-mock-chunks", "4"}, {"x-mock-delay-ms", "150"}});
  ASSERT_EQ(a.status, 200) << a.error;
  EXPECT_NE(a.body.find("message_stop"), std::string::npos);
  ASSERT_GE(a.pieces.size(), 4u);
  EXPECT_GT(a.pieces.back().first - a.pieces.front().first, 400.0);
  EXPECT_NO_THROW(proxy->wait_log({"\"stream\":true", "\"tokens_out\":4", "/v1/chat/completions"}));
}

TEST_F(TlsListener, KeepAliveCarriesManyRequestsOnOneHandshake) {
  start();
  {
    TlsClient c(port(), pki.ca_cert);
    ASSERT_TRUE(c.ok()) << c.error();
    for (int i = 0; i < 6; ++i) {
      auto r = i % 2 ? c.request("POST", "/v1/messages", anthropic_body(i == 3))
                     : c.request("POST", "/v1/chat/completions", openai_body(i == 2));
      ASSERT_EQ(r.status, 200) << "request " << i << ": " << r.error << r.body;
      EXPECT_NE(r.header("connection"), "close");
    }
    // A worker-served route (/health) and a big body on the same connection.
    auto h = c.request("GET", "/health");
    ASSERT_EQ(h.status, 200) << h.error;
    EXPECT_EQ(json_get(h.body, "status"), "ok");
    const std::string big = openai_body(false, ",\"pad\":\"" + std::string(200 * 1024, 'x') + "\"");
    auto b = c.request("POST", "/v1/chat/completions", big, {{"x-mock-echo", "1"}});
    ASSERT_EQ(b.status, 200) << b.error;
    EXPECT_NE(b.body.find(std::string(1000, 'x')), std::string::npos);
    auto l = c.request("POST", "/v1/chat/completions", openai_body(false), {{"x-mock-large-bytes", "3000000"}});
    ASSERT_EQ(l.status, 200) << l.error;
    EXPECT_GE(l.body.size(), 3000000u);
  }
  // One handshake for all of them, one for this scrape.
  EXPECT_EQ(handshakes("ok"), 2);
  EXPECT_EQ(handshakes("failed"), 0);
}

TEST_F(TlsListener, HealthAndMetricsOverTls) {
  start();
  auto pub = https("GET", "/health");
  ASSERT_EQ(pub.status, 200) << pub.error;
  EXPECT_EQ(json_get(pub.body, "status"), "ok");
  EXPECT_EQ(jget(pub.body, "tls"), "<missing>") << "the certificate is the operator's business";
  auto admin = https("GET", "/health", "", {{"X-Admin-Token", admin_token()}});
  ASSERT_EQ(admin.status, 200) << admin.error;
  const CertFacts cert = file_facts(pki.server_cert);
  ASSERT_GT(cert.not_after, 0);
  EXPECT_EQ(json_get(admin.body, "tls.subject"), "CN=localhost");
  EXPECT_EQ(json_get(admin.body, "tls.issuer"), "CN=glmp-test-ca");
  EXPECT_EQ(json_get(admin.body, "tls.serial"), cert.serial);
  EXPECT_EQ(jlong(admin.body, "tls.not_after_unix"), cert.not_after);
  const std::string m = metrics();
  EXPECT_EQ(metric(m, "glmp_tls_certificate_not_after_seconds"), static_cast<double>(cert.not_after)) << m;
  EXPECT_GE(metric(m, "glmp_tls_handshakes_total", {"result=\"ok\""}), 3);
  EXPECT_EQ(metric(m, "glmp_tls_handshakes_total", {"result=\"plain_http\""}), 0);
  EXPECT_NE(m.find("glmp_requests_total"), std::string::npos);
}

TEST_F(TlsListener, AuthPluginWithAProxyKey) {
  const std::string auth = plugin_path("auth");
  ASSERT_TRUE(fs::exists(auth)) << auth;
  start("", "\n[admin]\ntoken = \"tls-admin\"\n\n[[plugins]]\nname = \"auth\"\npath = \"" + auth + "\"\n");
  auto created = https("POST", "/admin/keys", "{\"name\":\"over-tls\"}", {{"Authorization", "Bearer tls-admin"}});
  ASSERT_EQ(created.status, 201) << created.error << created.body;
  const std::string key = json_get(created.body, "key");
  TlsClient c(port(), pki.ca_cert);
  auto r = c.request("POST", "/v1/chat/completions", openai_body(false), {{"Authorization", "Bearer " + key}});
  EXPECT_EQ(r.status, 200) << r.body;
  auto a = c.request("POST", "/v1/messages", anthropic_body(true), {{"x-api-key", key}});
  EXPECT_EQ(a.status, 200) << a.body;
  EXPECT_NE(a.body.find("message_stop"), std::string::npos);
  auto refused = https("POST", "/v1/chat/completions", openai_body(false), {{"Authorization", "Bearer pk_wrong"}});
  EXPECT_EQ(refused.status, 401) << refused.body;
  EXPECT_EQ(json_get(refused.body, "error.message"), "Invalid API key");
  EXPECT_EQ(mock->requests(), 2);
}

// ALPN: the listener selects http/1.1 (h2 is not offered until the HTTP/2 server exists). A client
// that offers only protocols the proxy does not speak gets no ALPN answer and the handshake goes
// on (RFC 7301 allows either; a client that insists on h2 gives up by itself, one that tries
// HTTP/1.1 anyway is served).
TEST_F(TlsListener, AlpnPrefersH2ThenHttp11) {
  start();
  {
    TlsClient both(port(), pki.ca_cert, {.alpn = {"http/1.1", "h2"}});
    ASSERT_TRUE(both.ok()) << both.error();
    EXPECT_EQ(both.alpn(), "h2") << "the server's preference decides (HTTP/2 clients: tests/e2e/h2.test.mjs)";
  }
  {
    TlsClient http11(port(), pki.ca_cert, {.alpn = {"http/1.1"}});
    ASSERT_TRUE(http11.ok()) << http11.error();
    EXPECT_EQ(http11.alpn(), "http/1.1");
    EXPECT_EQ(http11.request("POST", "/v1/chat/completions", openai_body(false)).status, 200);
  }
  {
    TlsClient none(port(), pki.ca_cert, {.alpn = {}});
    ASSERT_TRUE(none.ok()) << none.error();
    EXPECT_EQ(none.alpn(), "");
    EXPECT_EQ(none.request("GET", "/health").status, 200) << "no ALPN: HTTP/1.1";
  }
  {
    TlsClient odd(port(), pki.ca_cert, {.alpn = {"spdy/3", "http/1.0", "http/1.1"}});
    ASSERT_TRUE(odd.ok()) << odd.error();
    EXPECT_EQ(odd.alpn(), "http/1.1");
  }
  {
    TlsClient unknown(port(), pki.ca_cert, {.alpn = {"spdy/3"}});
    ASSERT_TRUE(unknown.ok()) << "nothing in common: the handshake goes on without ALPN: " << unknown.error();
    EXPECT_EQ(unknown.alpn(), "");
  }
  EXPECT_EQ(handshakes("failed"), 0);
}

TEST_F(TlsListener, PlainHttpRequestGets400SayingThePortSpeaksTls) {
  start();
  Response r = http(port(), "POST", "/v1/chat/completions", openai_body(false));
  ASSERT_EQ(r.status, 400) << r.error << r.body;
  EXPECT_NE(json_get(r.body, "error.message").find("plain HTTP request was sent to HTTPS port"), std::string::npos) << r.body;
  EXPECT_EQ(json_get(r.body, "error.code"), "plain_http_to_tls_port") << r.body;
  EXPECT_EQ(r.header("connection"), "close");
  EXPECT_EQ(r.header("content-type"), "application/json");
  // The answer is in the flavour the path suggests.
  Response a = http(port(), "POST", "/v1/messages", anthropic_body(false));
  ASSERT_EQ(a.status, 400) << a.error;
  EXPECT_EQ(json_get(a.body, "type"), "error") << a.body;
  // The connection is closed after the answer, and nothing reached the upstream.
  const int fd = tcp_connect(port());
  ASSERT_GE(fd, 0);
  const std::string req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  std::string got;
  EXPECT_TRUE(wait_closed(fd, 10s, &got));
  ::close(fd);
  EXPECT_EQ(got.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << got;
  EXPECT_EQ(got.find("HTTP/1.1", 10), std::string::npos) << "one answer, then close: " << got;
  EXPECT_EQ(mock->requests(), 0);
  EXPECT_EQ(wait_handshakes("plain_http", 3), 3);
  EXPECT_EQ(handshakes("failed"), 0);
  // TLS clients are served as ever.
  EXPECT_EQ(https("POST", "/v1/chat/completions", openai_body(false)).status, 200);
}

TEST_F(TlsListener, StalledHandshakeIsClosedAfterHeaderTimeout) {
  start("header_timeout = \"1s\"\n");
  // One that never sends a byte, one that stops inside its ClientHello (a record header only).
  const int silent = tcp_connect(port());
  const int partial = tcp_connect(port());
  ASSERT_GE(silent, 0);
  ASSERT_GE(partial, 0);
  const char hello_start[] = {0x16, 0x03, 0x01, 0x02, 0x00};
  ASSERT_EQ(::send(partial, hello_start, sizeof hello_start, MSG_NOSIGNAL), 5);
  const auto t0 = Clock::now();
  // Meanwhile the proxy serves TLS clients.
  auto r = https("POST", "/v1/chat/completions", openai_body(false));
  EXPECT_EQ(r.status, 200) << r.error;
  std::string got_silent, got_partial;
  EXPECT_TRUE(wait_closed(silent, 15s, &got_silent)) << "a silent connection must be closed";
  EXPECT_TRUE(wait_closed(partial, 15s, &got_partial)) << "a stalled handshake must be closed";
  EXPECT_GE(ms_since(t0), 500.0) << "closed long before header_timeout";
  ::close(silent);
  ::close(partial);
  EXPECT_EQ(got_silent, "") << "no 408 on a connection that has no TLS session";
  EXPECT_EQ(got_partial.find("408"), std::string::npos) << got_partial;
  // The stalled handshake counts as failed; the silent one (a port probe) does not count.
  EXPECT_EQ(wait_handshakes("failed", 1), 1);
  EXPECT_EQ(https("GET", "/health").status, 200);
}

TEST_F(TlsListener, GarbageInsteadOfClientHelloIsClosedAndCounted) {
  start();
  // Not a record header at all, and a handshake record header with nonsense after it.
  const std::string garbage[] = {std::string("\x01\x02\x03garbage that is not TLS\r\n\r\n", 30),
                                 std::string("\x16\x03\x01\x00\x20", 5) + std::string(32, '\x7f')};
  for (const auto& g : garbage) {
    const int fd = tcp_connect(port());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, g.data(), g.size(), MSG_NOSIGNAL), static_cast<ssize_t>(g.size()));
    std::string got;
    EXPECT_TRUE(wait_closed(fd, 10s, &got)) << "the proxy must close a connection that sends garbage";
    ::close(fd);
    EXPECT_EQ(got.find("HTTP/"), std::string::npos) << got;
  }
  EXPECT_EQ(wait_handshakes("failed", 2), 2);
  EXPECT_EQ(handshakes("plain_http"), 0);
  EXPECT_EQ(https("POST", "/v1/messages", anthropic_body(false)).status, 200);
  // A client that does not trust the certificate fails its own handshake: counted too.
  {
    TempDir other;
    TestPki foreign = make_pki(other);
    TlsClient distrust(port(), foreign.ca_cert);
    EXPECT_FALSE(distrust.ok());
  }
  EXPECT_EQ(wait_handshakes("failed", 3), 3);
}

TEST_F(TlsListener, SighupReloadsTheCertificateForNewConnections) {
  start();
  TlsClient old_conn(port(), pki.ca_cert);
  ASSERT_TRUE(old_conn.ok()) << old_conn.error();
  const CertFacts before = old_conn.peer();
  EXPECT_EQ(before.subject, "/CN=localhost");
  ASSERT_EQ(old_conn.request("POST", "/v1/chat/completions", openai_body(false)).status, 200);

  const IssuedCert next = issue_cert(dir, "server2", "glmp-reloaded", 3);
  fs::copy_file(next.cert, pki.server_cert, fs::copy_options::overwrite_existing);
  fs::copy_file(next.key, pki.server_key, fs::copy_options::overwrite_existing);
  const CertFacts expected = file_facts(pki.server_cert);
  ASSERT_NE(expected.serial, before.serial);
  proxy->process().signal(SIGHUP);

  CertFacts seen;
  for (int i = 0; i < 200; ++i) {
    TlsClient fresh(port(), pki.ca_cert);
    ASSERT_TRUE(fresh.ok()) << fresh.error();
    seen = fresh.peer();
    if (seen.serial == expected.serial) {
      EXPECT_EQ(fresh.request("POST", "/v1/messages", anthropic_body(false)).status, 200);
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(seen.serial, expected.serial) << "new connections never got the new certificate";
  EXPECT_EQ(seen.subject, "/CN=glmp-reloaded");
  // The connection made before keeps its session and goes on working.
  auto r = old_conn.request("POST", "/v1/chat/completions", openai_body(true));
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_NE(r.body.find("[DONE]"), std::string::npos);
  EXPECT_EQ(old_conn.peer().serial, before.serial);
  // The metrics and /health follow the new certificate.
  EXPECT_EQ(metric(metrics(), "glmp_tls_certificate_not_after_seconds"), static_cast<double>(expected.not_after));
  auto h = https("GET", "/health", "", {{"X-Admin-Token", admin_token()}});
  EXPECT_EQ(json_get(h.body, "tls.subject"), "CN=glmp-reloaded");
  EXPECT_NO_THROW(proxy->process().wait_for(true, "TLS certificate reloaded", 5s));
}

TEST_F(TlsListener, ReloadWithABrokenKeyKeepsTheCertificate) {
  start();
  const CertFacts original = file_facts(pki.server_cert);
  // A key that belongs to another certificate, then one that is not a key at all.
  const IssuedCert other = issue_cert(dir, "other", "other", 1);
  fs::copy_file(other.key, pki.server_key, fs::copy_options::overwrite_existing);
  auto r = https("POST", "/admin/reload", "", {{"Authorization", std::string("Bearer ") + admin_token()}});
  EXPECT_EQ(r.status, 500) << r.body;
  EXPECT_EQ(json_get(r.body, "status"), "failed");
  EXPECT_EQ(json_get(r.body, "plugins"), "reloaded") << "the plugin reload goes on regardless";
  EXPECT_EQ(json_get(r.body, "tls.status"), "failed");
  EXPECT_NE(json_get(r.body, "tls.message").find("does not match"), std::string::npos) << r.body;
  EXPECT_NE(json_get(r.body, "tls.message").find(pki.server_key), std::string::npos) << r.body;

  write_file(pki.server_key, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
  proxy->process().signal(SIGHUP);
  EXPECT_NO_THROW(proxy->process().wait_for(true, "TLS certificate reload failed", 10s));
  // Still serving with the original certificate, old and new connections alike.
  for (int i = 0; i < 3; ++i) {
    TlsClient c(port(), pki.ca_cert);
    ASSERT_TRUE(c.ok()) << c.error();
    EXPECT_EQ(c.peer().serial, original.serial);
    EXPECT_EQ(c.request("POST", "/v1/chat/completions", openai_body(false)).status, 200);
  }
  EXPECT_EQ(metric(metrics(), "glmp_tls_certificate_not_after_seconds"), static_cast<double>(original.not_after));
  // A good pair again: the reload succeeds.
  const IssuedCert good = issue_cert(dir, "good", "glmp-good", 4);
  fs::copy_file(good.cert, pki.server_cert, fs::copy_options::overwrite_existing);
  fs::copy_file(good.key, pki.server_key, fs::copy_options::overwrite_existing);
  auto ok = https("POST", "/admin/reload", "", {{"X-Admin-Token", admin_token()}});
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(json_get(ok.body, "tls.status"), "reloaded");
  TlsClient after(port(), pki.ca_cert);
  EXPECT_EQ(after.peer().subject, "/CN=glmp-good");
}

// A minimal config of our own: the harness's Proxy expects a proxy that starts.
std::string refusing_config(const TempDir& dir, const std::string& cert, const std::string& key) {
  return "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"" + cert + "\"\ntls_key = \"" + key +
         "\"\n\n[upstreams.u]\nbase_url = \"http://127.0.0.1:9\"\n\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\n"
         "upstream = \"u\"\n\n[store]\npath = \"" + dir.file("refused.db") + "\"\n";
}

TEST(TlsListenerStart, RefusesToStartWithoutAUsableCertificateAndKey) {
  TempDir dir;
  TestPki pki = make_pki(dir);
  const IssuedCert other = issue_cert(dir, "other", "other", 1);
  write_file(dir.file("garbage.pem"), "this is no certificate\n");
  struct Case {
    std::string what, cert, key;
    std::vector<std::string> needles;
  };
  const Case cases[] = {
      {"mismatched key", pki.server_cert, other.key, {"does not match", other.key, pki.server_cert}},
      {"missing key", pki.server_cert, dir.file("absent.key"), {"tls_key", dir.file("absent.key")}},
      {"garbage certificate", dir.file("garbage.pem"), pki.server_key, {"tls_cert", dir.file("garbage.pem")}},
      {"a certificate as the key", pki.server_cert, pki.server_cert, {"tls_key", "private key"}},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string path = dir.file("refused" + std::to_string(n) + ".toml");
    write_file(path, refusing_config(dir, c.cert, c.key));
    Child run({GLMP_PROXY_BIN, "--config", path}, dir.file("r" + std::to_string(n) + ".out"), dir.file("r" + std::to_string(n) + ".err"));
    EXPECT_EQ(run.wait(20s), 1) << c.what << ": " << run.err();
    EXPECT_FALSE(sanitizer_report(run.err())) << run.err();
    EXPECT_NE(run.err().find("config error"), std::string::npos) << c.what << ": " << run.err();
    for (const auto& needle : c.needles) EXPECT_NE(run.err().find(needle), std::string::npos) << c.what << ": " << run.err();
    EXPECT_EQ(run.err().find("listening on"), std::string::npos) << c.what;
    Child check({GLMP_PROXY_BIN, "--check-config", path}, dir.file("c" + std::to_string(n) + ".out"), dir.file("c" + std::to_string(n) + ".err"));
    EXPECT_EQ(check.wait(20s), 1) << c.what << ": --check-config passed: " << check.out();
    for (const auto& needle : c.needles) EXPECT_NE(check.err().find(needle), std::string::npos) << c.what << ": " << check.err();
    ++n;
  }
  // And the good pair passes --check-config.
  const std::string good = dir.file("good.toml");
  write_file(good, refusing_config(dir, pki.server_cert, pki.server_key));
  Child check({GLMP_PROXY_BIN, "--check-config", good}, dir.file("g.out"), dir.file("g.err"));
  EXPECT_EQ(check.wait(20s), 0) << check.err();
  EXPECT_NE(check.out().find("TLS"), std::string::npos) << check.out();
}

// A client that stops reading a large stream over TLS is dropped after send_timeout; the others
// are served meanwhile.
TEST_F(TlsListener, SlowReaderIsDroppedAfterSendTimeout) {
  start("send_timeout = \"2s\"\n");
  TlsClient reader(port(), pki.ca_cert, {.alpn = {"http/1.1"}, .rcvbuf = 4096});
  ASSERT_TRUE(reader.ok()) << reader.error();
  ASSERT_TRUE(reader.send(TlsClient::request_bytes("POST", "/v1/chat/completions", openai_body(true),
                                                   {{"x-mock-large-bytes", "268435456"}, {"X-Request-ID", "tls-stalled-reader"}})));
  std::string line;
  int failures = 0;
  const auto deadline = Clock::now() + 30s;
  while (Clock::now() < deadline && line.empty()) {
    if (https("POST", "/v1/messages", anthropic_body(false)).status != 200) ++failures;
    for (const auto& l : proxy->access_log())
      if (l.find("tls-stalled-reader") != std::string::npos) line = l;
    if (line.empty()) std::this_thread::sleep_for(200ms);
  }
  ASSERT_FALSE(line.empty()) << "the stalled TLS reader was never disconnected";
  EXPECT_NE(line.find("\"client_gone\":true"), std::string::npos) << line;
  EXPECT_NE(line.find("stopped reading"), std::string::npos) << line;
  EXPECT_EQ(failures, 0) << "other clients were not served while one stalled";
  EXPECT_TRUE(reader.closed_by_peer(20s)) << "the connection of the stalled reader is still open";
  EXPECT_EQ(https("GET", "/health").status, 200);
}

// close_notify: a connection the proxy closes (Connection: close) ends with the TLS alert, not
// just a FIN.
TEST_F(TlsListener, ProxyClosesWithCloseNotify) {
  start();
  TlsClient c(port(), pki.ca_cert);
  auto r = c.request("GET", "/health", "", {{"Connection", "close"}});
  ASSERT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.header("connection"), "close");
  bool clean = false;
  EXPECT_TRUE(c.closed_by_peer(10s, &clean));
  EXPECT_TRUE(clean) << "the proxy closed without close_notify";
}

}  // namespace
