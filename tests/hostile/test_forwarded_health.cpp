// Forwarded headers: client-sent X-Forwarded-For, Forwarded and X-Real-IP never reach the upstream
// as sent (Forwarded and X-Real-IP dropped, X-Forwarded-For = the TCP peer). /health: without the
// admin token only {status, version, timestamp, uptime_s}; with it (Bearer or X-Admin-Token) the
// full details.
#include <set>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

class Forwarded : public Hostile {
protected:
  void SetUp() override { start(); }

  // The headers the upstream received (x-mock-echo), as the echo's JSON object.
  std::string echoed_headers(const std::vector<std::string>& lines) {
    std::vector<std::string> all{"x-mock-echo: 1"};
    all.insert(all.end(), lines.begin(), lines.end());
    RawConn c(port());
    c.send(request("GET", "/v1/models", all));
    const Exchange x = c.read_responses(1, 5s);
    if (x.finals().size() != 1 || x.finals()[0]->status != 200) {
      ADD_FAILURE() << x.describe();
      return "{}";
    }
    return jget(x.finals()[0]->body, "headers");
  }
};

TEST_F(Forwarded, ClientForwardingHeadersAreReplacedByThePeerAddress) {
  const std::string spoofed = echoed_headers({"X-Forwarded-For: 203.0.113.7, 10.0.0.1", "Forwarded: for=203.0.113.7;proto=https",
                                              "X-Real-IP: 203.0.113.7", "X-Forwarded-For: 198.51.100.9"});
  EXPECT_EQ(jget(spoofed, "x-forwarded-for"), "127.0.0.1") << spoofed;
  EXPECT_EQ(jget(spoofed, "forwarded"), "<missing>") << spoofed;
  EXPECT_EQ(jget(spoofed, "x-real-ip"), "<missing>") << spoofed;
  EXPECT_EQ(spoofed.find("203.0.113.7"), std::string::npos) << spoofed;
  EXPECT_EQ(spoofed.find("198.51.100.9"), std::string::npos) << spoofed;
  // Without any: the upstream still learns the peer.
  const std::string plain = echoed_headers({});
  EXPECT_EQ(jget(plain, "x-forwarded-for"), "127.0.0.1") << plain;
  // Case variations are the same headers.
  const std::string cased = echoed_headers({"x-forwarded-for: 203.0.113.7", "FORWARDED: for=203.0.113.7", "x-REAL-ip: 203.0.113.7"});
  EXPECT_EQ(jget(cased, "x-forwarded-for"), "127.0.0.1") << cased;
  EXPECT_EQ(cased.find("203.0.113.7"), std::string::npos) << cased;
}

class Health : public Hostile {
protected:
  void SetUp() override { start({.extra_toml = "\n[admin]\ntoken = \"" + kAdminToken + "\"\n"}); }

  RawResponse health(const std::vector<std::string>& lines) {
    RawConn c(port());
    c.send(request("GET", "/health", lines));
    const Exchange x = c.read_responses(1, 5s);
    if (x.finals().size() != 1) {
      ADD_FAILURE() << x.describe();
      return {};
    }
    return *x.finals()[0];
  }
};

std::set<std::string> member_names(const std::string& json) {
  std::set<std::string> out;
  try {
    auto obj = Poco::JSON::Parser().parse(json).extract<Poco::JSON::Object::Ptr>();
    for (const auto& [k, v] : *obj) out.insert(k);
  } catch (...) {
    out.insert("<unparsable>");
  }
  return out;
}

TEST_F(Health, WithoutTheAdminTokenOnlyStatusVersionTimestampUptime) {
  for (const auto& lines : std::vector<std::vector<std::string>>{
           {}, {"Authorization: Bearer wrong-token"}, {"X-Admin-Token: wrong-token"}, {"Authorization: Basic " + kAdminToken}}) {
    const RawResponse r = health(lines);
    const std::string what = lines.empty() ? "no token" : lines[0];
    EXPECT_EQ(r.status, 200) << what;
    EXPECT_EQ(member_names(r.body), (std::set<std::string>{"status", "version", "timestamp", "uptime_s"})) << what << ": " << r.body;
    EXPECT_EQ(jget(r.body, "status"), "ok") << r.body;
    EXPECT_EQ(r.body.find(std::to_string(mock->port())), std::string::npos) << "upstream address leaked: " << r.body;
    EXPECT_EQ(r.body.find("state.db"), std::string::npos) << "store path leaked: " << r.body;
    EXPECT_EQ(r.body.find(dir.path()), std::string::npos) << "a local path leaked: " << r.body;
  }
}

TEST_F(Health, WithTheAdminTokenFullDetails) {
  for (const std::string& line : {"Authorization: Bearer " + kAdminToken, "X-Admin-Token: " + kAdminToken}) {
    const RawResponse r = health({line});
    EXPECT_EQ(r.status, 200) << line;
    EXPECT_EQ(jget(r.body, "status"), "ok") << r.body;
    EXPECT_EQ(jget(r.body, "upstreams.openai.base_url"), mock->base_url("/api/coding/paas/v4")) << line << ": " << r.body;
    EXPECT_NE(jget(r.body, "upstreams.anthropic.pool"), "<missing>") << line << ": " << r.body;
    EXPECT_NE(jget(r.body, "store.backend"), "<missing>") << line << ": " << r.body;
    EXPECT_NE(jget(r.body, "uptime_s"), "<missing>") << r.body;
  }
}

}  // namespace
