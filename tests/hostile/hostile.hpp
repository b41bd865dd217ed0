#pragma once
// Shared pieces of the hostile-client suite: a fixture that starts a fresh mock upstream and proxy
// per test (optionally with the auth + ratelimit plugins and a key), the checks every
// proxy-generated error must pass, and a runner for "refused and closed" cases.
//
// The contract these tests hold the server to is the "Hostile input" specification (Framing;
// Memory, slow clients, limits; Paths; Bodies bound for a JSON API; Forwarded headers; /health).

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.hpp"
#include "raw_client.hpp"

namespace glmp::hostile {

using test::Mock;
using test::Proxy;
using test::ProxyOptions;
using test::TempDir;

enum class Flavour { OpenAI, Anthropic };

#ifdef GLMP_SANITIZED
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// "Answered promptly" on loopback: 1 s (sanitizer builds are several times slower).
inline constexpr Ms kPrompt = kSanitized ? Ms(4000) : Ms(1000);

inline const std::string kAdminToken = "hostile-adm1n-t0ken";

// A request that, if the proxy ever forwarded it, the mock would answer (x-mock-echo) and count.
// Appended after a refused request in the same write: it must never be answered.
inline const std::string kFollowUp =
    "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nx-mock-echo: 1\r\nX-Request-ID: follow-up-never-served\r\n\r\n";

// json_get that never throws ("<unparsable>" for a body that is not JSON).
std::string jget(const std::string& json, const std::string& path);

// Every proxy-generated error: the status line is "HTTP/1.1 <status>", the body is JSON in the
// flavour, Content-Type application/json, a Content-Length matching the body, an X-Request-ID.
void expect_proxy_error(const RawResponse& r, int status, Flavour flavour, const std::string& what);

// Exactly one response — a proxy error with one of `statuses` and Connection: close — and then
// the server closed the connection (nothing after the refused request was answered).
void expect_refused_and_closed(const Exchange& x, const std::vector<int>& statuses, Flavour flavour,
                               const std::string& what);

struct RefusalCase {
  std::string what;
  std::string bytes;          // the hostile request (kFollowUp is appended when follow_up is set)
  std::vector<int> statuses;  // acceptable statuses (usually one)
  Flavour flavour = Flavour::OpenAI;
  bool follow_up = true;
  Ms within{0};  // > 0: the server must have closed within this long after the bytes were sent
};

// Runs every case on its own connection, all at once (bytes + kFollowUp in one write, then read
// until the server closes, at most `timeout`), and checks each with expect_refused_and_closed.
void expect_refusals(uint16_t port, const std::vector<RefusalCase>& cases, Ms timeout = 3s);

// The OpenAI and Anthropic request bodies of the harness.
std::string openai_json(bool stream = false);
std::string anthropic_json(bool stream = false);

class Hostile : public ::testing::Test {
protected:
  TempDir dir;
  std::unique_ptr<Mock> mock;
  std::unique_ptr<Proxy> proxy;
  std::string key;  // a valid proxy key (start_keyed)

  // A fresh mock and a proxy in front of it (plugins off).
  void start(ProxyOptions opts = {});
  // The same with [admin] token, the auth and ratelimit plugins, and one key created through
  // POST /admin/keys (in `key`).
  void start_keyed(ProxyOptions opts = {});
  uint16_t port() const { return proxy->port(); }
  // Requests the mock has served (its /__mock/* requests excluded); -1 if the stats failed.
  long upstream_requests() const;
};

}  // namespace glmp::hostile
