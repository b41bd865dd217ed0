// Unit tests for core/src/server/tls: ALPN selection (server preference, malformed lists, no
// overlap) and TlsContext::load (a good pair and its certificate facts, a chain file, and every
// error naming the file: missing, unreadable, not PEM, encrypted key, key of another certificate).
// The certificates are made with the openssl CLI in a temporary directory.

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <openssl/ssl.h>

#include "server/tls.hpp"

namespace fs = std::filesystem;
using glmp::core::server::select_alpn;
using glmp::core::server::TlsContext;
using glmp::core::server::TlsError;

namespace {

std::string wire(std::initializer_list<std::string> protocols) {
  std::string out;
  for (const auto& p : protocols) out += static_cast<char>(p.size()) + p;
  return out;
}

TEST(TlsAlpn, ServerPreferenceH2ThenHttp11) {
  EXPECT_EQ(select_alpn(wire({"http/1.1"})), "http/1.1");
  EXPECT_EQ(select_alpn(wire({"h2", "http/1.1"})), "h2");
  EXPECT_EQ(select_alpn(wire({"http/1.1", "h2"})), "h2") << "the server's order decides";
  EXPECT_EQ(select_alpn(wire({"spdy/3", "http/1.0", "http/1.1"})), "http/1.1");
  EXPECT_EQ(select_alpn(wire({"h2"})), "h2");
}

TEST(TlsAlpn, Http2OffHttp11Only) {
  using glmp::core::server::kAlpnHttp1Only;
  EXPECT_EQ(select_alpn(wire({"h2", "http/1.1"}), kAlpnHttp1Only), "http/1.1");
  EXPECT_EQ(select_alpn(wire({"h2"}), kAlpnHttp1Only), "");
}

TEST(TlsAlpn, NoOverlapOrMalformedListsSelectNothing) {
  EXPECT_EQ(select_alpn(""), "");
  EXPECT_EQ(select_alpn(wire({"http/1.0", "spdy/3"})), "");
  EXPECT_EQ(select_alpn(std::string("\x08http/1.", 8)), "") << "an entry longer than the list";
  EXPECT_EQ(select_alpn(std::string("\x00\x08http/1.1", 10)), "") << "an empty entry";
  EXPECT_EQ(select_alpn(wire({"http/1.1"}) + std::string("\x05h2", 3)), "") << "a truncated entry after a good one";
  // A prefix of a supported name is not that name.
  EXPECT_EQ(select_alpn(wire({"http/1"})), "");
  EXPECT_EQ(select_alpn(wire({"http/1.11"})), "");
}

TEST(TlsAlpn, ServerPreferenceOrderAndResultPointsIntoTheClientList) {
  const std::string server = wire({"h2", "http/1.1"});  // what the list will be with an HTTP/2 server
  const std::string client = wire({"http/1.1", "h2"});
  const std::string_view picked = select_alpn(client, server);
  EXPECT_EQ(picked, "h2");
  EXPECT_GE(picked.data(), client.data());
  EXPECT_LE(picked.data() + picked.size(), client.data() + client.size());
  EXPECT_EQ(select_alpn(wire({"http/1.1"}), server), "http/1.1");
}

// A CA, a server certificate signed by it, a second key pair, and an encrypted key.
class TlsLoad : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/glmp-ut-tls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const std::string cmd =
        "cd " + dir_ + " && "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=unit-ca "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 && "
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=unit.example/O=Glmp >/dev/null 2>&1 && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 0x1234ABCD -out server.pem -days 3 >/dev/null 2>&1 && "
        "cat server.pem ca.pem > chain.pem && "
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key >/dev/null 2>&1 && "
        "openssl pkey -in server.key -aes256 -passout pass:secret -out encrypted.key >/dev/null 2>&1 && "
        "printf 'not a pem file\\n' > garbage.pem && chmod 000 ca.key";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl failed";
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  static std::string file(const std::string& name) { return dir_ + "/" + name; }
  // The TlsError's message for this pair ("" when it loads).
  static std::string error_of(const std::string& cert, const std::string& key) {
    try {
      TlsContext::load(cert, key);
    } catch (const TlsError& e) {
      return e.what();
    }
    return "";
  }
  static inline std::string dir_;
};

TEST_F(TlsLoad, GoodPairLoadsWithItsCertificateFacts) {
  auto ctx = TlsContext::load(file("server.pem"), file("server.key"));
  ASSERT_NE(ctx, nullptr);
  ASSERT_NE(ctx->ssl_ctx(), nullptr);
  const auto& c = ctx->certificate();
  EXPECT_EQ(c.subject, "O=Glmp,CN=unit.example");
  EXPECT_EQ(c.issuer, "CN=unit-ca");
  EXPECT_EQ(c.serial, "1234ABCD");
  // -days 3 from now: the expiry is about three days after the start (no clock assertion).
  EXPECT_EQ(c.not_after - c.not_before, 3 * 86400);
  EXPECT_EQ(ctx->cert_file(), file("server.pem"));
  // TLS >= 1.2, no client certificates.
  EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx->ssl_ctx()), TLS1_2_VERSION);
  EXPECT_EQ(SSL_CTX_get_verify_mode(ctx->ssl_ctx()), SSL_VERIFY_NONE);
  EXPECT_NE(SSL_CTX_get_options(ctx->ssl_ctx()) & SSL_OP_NO_RENEGOTIATION, 0u);
  // Writes are retried from the connection's queue (another address), records read in one go.
  EXPECT_NE(SSL_CTX_get_mode(ctx->ssl_ctx()) & SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, 0u);
  EXPECT_EQ(SSL_CTX_get_read_ahead(ctx->ssl_ctx()), 1);
}

TEST_F(TlsLoad, ChainFileServesTheLeaf) {
  auto ctx = TlsContext::load(file("chain.pem"), file("server.key"));
  EXPECT_EQ(ctx->certificate().subject, "O=Glmp,CN=unit.example");
  STACK_OF(X509)* chain = nullptr;
  ASSERT_EQ(SSL_CTX_get0_chain_certs(ctx->ssl_ctx(), &chain), 1);
  ASSERT_NE(chain, nullptr);
  EXPECT_EQ(sk_X509_num(chain), 1) << "the CA certificate is sent with the leaf";
}

TEST_F(TlsLoad, MissingFilesAreNamed) {
  const std::string e1 = error_of(file("absent.pem"), file("server.key"));
  EXPECT_NE(e1.find("tls_cert"), std::string::npos) << e1;
  EXPECT_NE(e1.find(file("absent.pem")), std::string::npos) << e1;
  EXPECT_NE(e1.find("No such file"), std::string::npos) << e1;
  const std::string e2 = error_of(file("server.pem"), file("absent.key"));
  EXPECT_NE(e2.find("tls_key"), std::string::npos) << e2;
  EXPECT_NE(e2.find(file("absent.key")), std::string::npos) << e2;
}

TEST_F(TlsLoad, UnreadableKeyIsNamed) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files whatever their mode";
  const std::string e = error_of(file("server.pem"), file("ca.key"));
  EXPECT_NE(e.find(file("ca.key")), std::string::npos) << e;
  EXPECT_NE(e.find("Permission denied"), std::string::npos) << e;
}

TEST_F(TlsLoad, NotPemIsRefused) {
  const std::string e1 = error_of(file("garbage.pem"), file("server.key"));
  EXPECT_NE(e1.find("tls_cert \"" + file("garbage.pem") + "\""), std::string::npos) << e1;
  EXPECT_NE(e1.find("no PEM certificate"), std::string::npos) << e1;
  const std::string e2 = error_of(file("server.pem"), file("garbage.pem"));
  EXPECT_NE(e2.find("tls_key \"" + file("garbage.pem") + "\""), std::string::npos) << e2;
  // A certificate where the key should be.
  const std::string e3 = error_of(file("server.pem"), file("server.pem"));
  EXPECT_NE(e3.find("private key"), std::string::npos) << e3;
}

TEST_F(TlsLoad, EncryptedKeyIsRefusedWithoutPrompting) {
  const std::string e = error_of(file("server.pem"), file("encrypted.key"));
  EXPECT_NE(e.find("tls_key \"" + file("encrypted.key") + "\""), std::string::npos) << e;
  EXPECT_NE(e.find("unencrypted"), std::string::npos) << e;
}

TEST_F(TlsLoad, KeyOfAnotherCertificateIsAMismatch) {
  const std::string e = error_of(file("server.pem"), file("other.key"));
  EXPECT_NE(e.find("does not match"), std::string::npos) << e;
  EXPECT_NE(e.find(file("other.key")), std::string::npos) << e;
  EXPECT_NE(e.find(file("server.pem")), std::string::npos) << e;
  // The CA's own certificate with the server's key: a mismatch too.
  const std::string e2 = error_of(file("ca.pem"), file("server.key"));
  EXPECT_NE(e2.find("does not match"), std::string::npos) << e2;
}

TEST_F(TlsLoad, ErrorsAreTlsErrors) {
  EXPECT_THROW(TlsContext::load(file("absent.pem"), file("absent.key")), TlsError);
  EXPECT_THROW(TlsContext::load(file("server.pem"), file("other.key")), std::runtime_error);
}

}  // namespace
