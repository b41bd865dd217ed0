#pragma once
// The TLS listener's server context (docs/design.md, "HTTP/1.1 server and hostile input", "TLS
// listener"): a Poco::Net::Context for server use built from [server] tls_cert (the PEM chain) and
// tls_key, TLS >= 1.2, ECDHE-only AEAD ciphers for TLS 1.2, no client certificates, no
// renegotiation, and an ALPN callback that picks from kAlpnProtocols.
//
// A context is immutable once loaded. Connections take its SSL_CTX with SSL_new (OpenSSL counts
// the reference), so a reload can replace the context while connections made from the old one keep
// their certificate until they close.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <openssl/types.h>

#include <Poco/Net/Context.h>

namespace glmp::core::server {

// What became of one TLS connection's start (glmp_tls_handshakes_total{result}).
enum class TlsOutcome { Ok, Failed, PlainHttp };

// The application protocols the listener selects with ALPN, most preferred first, in ALPN wire
// format (length-prefixed): h2 (served by server::H2Front), then http/1.1.
inline constexpr std::string_view kAlpnProtocols{"\x02h2\x08http/1.1", 12};
// [server] http2 = false: HTTP/1.1 only.
inline constexpr std::string_view kAlpnHttp1Only{"\x08http/1.1", 9};

// ALPN selection, server preference: the first of `server` (wire format) that the client's list
// `client` (wire format, as received) offers. Empty when there is none or the client's list is
// malformed: the handshake then goes on without ALPN. The result points into `client`.
std::string_view select_alpn(std::string_view client, std::string_view server = kAlpnProtocols);

// The certificate a context serves (its leaf), for /health and the metrics.
struct TlsCertificateInfo {
  std::string subject;   // RFC 2253, e.g. "CN=proxy.example.com,O=Example"
  std::string issuer;
  std::string serial;    // hex
  int64_t not_before = 0;  // unix seconds
  int64_t not_after = 0;   // unix seconds
};

// A certificate or key that cannot be used; the message names the file.
class TlsError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class TlsContext {
public:
  // Reads the PEM certificate chain and private key. Throws TlsError when a file cannot be read
  // or parsed, or the key does not belong to the certificate. `http2`: ALPN offers h2 as well.
  static std::shared_ptr<const TlsContext> load(const std::string& cert_file, const std::string& key_file, bool http2 = true);

  SSL_CTX* ssl_ctx() const { return context_->sslContext(); }
  const TlsCertificateInfo& certificate() const { return info_; }
  const std::string& cert_file() const { return cert_file_; }
  const std::string& key_file() const { return key_file_; }

  TlsContext(Poco::Net::Context::Ptr context, TlsCertificateInfo info, std::string cert_file, std::string key_file);

private:
  Poco::Net::Context::Ptr context_;
  TlsCertificateInfo info_;
  std::string cert_file_, key_file_;
};

}  // namespace glmp::core::server
