#include "server/tls.hpp"

#include "util/openssl_errors.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <Poco/Exception.h>

namespace glmp::core::server {
namespace {

// TLS 1.2: forward secrecy and AEAD only (Mozilla's "intermediate" list without the finite-field
// DHE suites). TLS 1.3 keeps OpenSSL's default suites, all of them AEAD.
constexpr const char* kCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kGroups = "X25519:P-256:P-384";

std::string openssl_errors() {
  std::string text = util::openssl_error_queue();
  return text.empty() ? "unknown error" : text;
}

struct BioCloser {
  void operator()(BIO* b) const { ::BIO_free(b); }
};
struct X509Closer {
  void operator()(X509* x) const { ::X509_free(x); }
};
struct PkeyCloser {
  void operator()(EVP_PKEY* k) const { ::EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioCloser> open_file(const char* setting, const std::string& path) {
  errno = 0;
  std::unique_ptr<BIO, BioCloser> bio(::BIO_new_file(path.c_str(), "r"));
  if (!bio) {
    const int e = errno;
    ::ERR_clear_error();
    throw TlsError(std::string("[server] ") + setting + " \"" + path + "\": cannot open: " + (e ? std::strerror(e) : "unknown error"));
  }
  return bio;
}

// Encrypted keys are refused: the proxy starts unattended (keep the key unencrypted, mode 0600).
int no_passphrase(char*, int, int, void*) { return -1; }

std::string name_text(const X509_NAME* name) {
  std::unique_ptr<BIO, BioCloser> bio(::BIO_new(::BIO_s_mem()));
  if (!bio || ::X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

int64_t unix_time(const ASN1_TIME* t) {
  tm parts{};
  if (!t || ::ASN1_TIME_to_tm(t, &parts) != 1) return 0;
  return static_cast<int64_t>(::timegm(&parts));
}

TlsCertificateInfo describe(X509* cert) {
  TlsCertificateInfo info;
  info.subject = name_text(::X509_get_subject_name(cert));
  info.issuer = name_text(::X509_get_issuer_name(cert));
  if (BIGNUM* bn = ::ASN1_INTEGER_to_BN(::X509_get0_serialNumber(cert), nullptr)) {
    if (char* hex = ::BN_bn2hex(bn)) {
      info.serial = hex;
      ::OPENSSL_free(hex);
    }
    ::BN_free(bn);
  }
  info.not_before = unix_time(::X509_get0_notBefore(cert));
  info.not_after = unix_time(::X509_get0_notAfter(cert));
  return info;
}

// `arg`: the server's list (a static std::string_view).
int alpn_select(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen, void* arg) {
  const std::string_view picked =
      select_alpn(std::string_view(reinterpret_cast<const char*>(in), inlen), *static_cast<const std::string_view*>(arg));
  if (picked.empty()) return SSL_TLSEXT_ERR_NOACK;  // no protocol in common: go on without ALPN
  *out = reinterpret_cast<const unsigned char*>(picked.data());
  *outlen = static_cast<unsigned char>(picked.size());
  return SSL_TLSEXT_ERR_OK;
}

// A list in ALPN wire format: non-empty entries, each within the list.
bool well_formed(std::string_view list) {
  size_t i = 0;
  while (i < list.size()) {
    const size_t len = static_cast<unsigned char>(list[i]);
    if (len == 0 || i + 1 + len > list.size()) return false;
    i += 1 + len;
  }
  return true;
}

}  // namespace

std::string_view select_alpn(std::string_view client, std::string_view server) {
  if (client.empty() || !well_formed(client) || !well_formed(server)) return {};
  for (size_t s = 0; s < server.size();) {
    const size_t slen = static_cast<unsigned char>(server[s]);
    const std::string_view want = server.substr(s + 1, slen);
    for (size_t c = 0; c < client.size();) {
      const size_t clen = static_cast<unsigned char>(client[c]);
      if (client.substr(c + 1, clen) == want) return client.substr(c + 1, clen);
      c += 1 + clen;
    }
    s += 1 + slen;
  }
  return {};
}

TlsContext::TlsContext(Poco::Net::Context::Ptr context, TlsCertificateInfo info, std::string cert_file, std::string key_file)
    : context_(std::move(context)), info_(std::move(info)), cert_file_(std::move(cert_file)), key_file_(std::move(key_file)) {}

std::shared_ptr<const TlsContext> TlsContext::load(const std::string& cert_file, const std::string& key_file, bool http2) {
  ::ERR_clear_error();
  // Read both files first, with OpenSSL directly: an error names the file and what is wrong with
  // it, and an encrypted key fails here instead of reaching Poco's passphrase prompt.
  std::unique_ptr<X509, X509Closer> cert;
  {
    auto bio = open_file("tls_cert", cert_file);
    cert.reset(::PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
    if (!cert)
      throw TlsError("[server] tls_cert \"" + cert_file + "\": no PEM certificate could be read (" + openssl_errors() + ")");
  }
  std::unique_ptr<EVP_PKEY, PkeyCloser> key;
  {
    auto bio = open_file("tls_key", key_file);
    key.reset(::PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
    if (!key)
      throw TlsError("[server] tls_key \"" + key_file + "\": no unencrypted PEM private key could be read (" + openssl_errors() + ")");
  }
  if (::X509_check_private_key(cert.get(), key.get()) != 1) {
    ::ERR_clear_error();
    throw TlsError("[server] tls_key \"" + key_file + "\" does not match the certificate in tls_cert \"" + cert_file + "\"");
  }

  Poco::Net::Context::Params params;
  params.certificateFile = cert_file;  // the whole chain (SSL_CTX_use_certificate_chain_file)
  params.privateKeyFile = key_file;
  params.verificationMode = Poco::Net::Context::VERIFY_NONE;  // no client certificates
  params.loadDefaultCAs = false;
  params.cipherList = kCiphers;
  params.dhUse2048Bits = true;
  params.ecdhCurve = kGroups;
  Poco::Net::Context::Ptr context;
  try {
    context = new Poco::Net::Context(Poco::Net::Context::SERVER_USE, params);
    context->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
    context->preferServerCiphers();
  } catch (const Poco::Exception& e) {
    ::ERR_clear_error();
    throw TlsError("[server] tls_cert \"" + cert_file + "\" / tls_key \"" + key_file + "\": " + e.displayText());
  }
  SSL_CTX* ctx = context->sslContext();
  // OpenSSL drops a key that does not match the chain's leaf silently: check the pair as loaded.
  if (::SSL_CTX_check_private_key(ctx) != 1) {
    ::ERR_clear_error();
    throw TlsError("[server] tls_key \"" + key_file + "\" does not match the certificate in tls_cert \"" + cert_file + "\"");
  }
  ::SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // Writes are retried from the connection's own queue (another address, same bytes); idle
  // connections give their record buffers back (as nginx does).
  ::SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS | SSL_MODE_AUTO_RETRY);
  // Read-ahead: one read(2) takes what the socket has (a record's header and body, and what
  // follows) instead of two per record; the connection checks SSL_has_pending wherever epoll
  // would not report those bytes.
  ::SSL_CTX_set_read_ahead(ctx, 1);
  ::SSL_CTX_set_alpn_select_cb(ctx, alpn_select, const_cast<std::string_view*>(http2 ? &kAlpnProtocols : &kAlpnHttp1Only));
  TlsCertificateInfo info;
  if (X509* leaf = ::SSL_CTX_get0_certificate(ctx)) info = describe(leaf);
  ::ERR_clear_error();
  return std::make_shared<const TlsContext>(std::move(context), std::move(info), cert_file, key_file);
}

}  // namespace glmp::core::server
