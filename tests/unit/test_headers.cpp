// Unit tests for core/src/pipeline/headers: request/response header mapping, query parameter
// handling and request ids.

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "pipeline/headers.hpp"

namespace pl = glmp::core::pipeline;
using Headers = glmp::core::http::Headers;
using Client = Headers;  // the client request's fields, as the parser fills them

namespace {

// Every value of `name` (case-insensitive), in collection order.
template <class Fields>
std::vector<std::string> values_of(const Fields& h, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& [k, v] : h)
    if (pl::iequals(k, name)) out.push_back(v);
  return out;
}

template <class Fields>
bool has(const Fields& h, const std::string& name) { return !values_of(h, name).empty(); }

const std::vector<std::string> kHopByHop = {"Connection", "Keep-Alive", "Transfer-Encoding", "TE",
                                            "Trailer",    "Upgrade",    "Proxy-Connection"};

}  // namespace

TEST(Headers, Iequals) {
  EXPECT_TRUE(pl::iequals("Content-Type", "content-type"));
  EXPECT_TRUE(pl::iequals("", ""));
  EXPECT_FALSE(pl::iequals("Content-Type", "Content-Typ"));
  EXPECT_FALSE(pl::iequals("a", "b"));
}

TEST(Headers, IsHopByHop) {
  for (const auto& name : kHopByHop) {
    EXPECT_TRUE(pl::is_hop_by_hop(name)) << name;
    std::string lower = name;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_TRUE(pl::is_hop_by_hop(lower)) << lower;
  }
  EXPECT_TRUE(pl::is_hop_by_hop("KEEP-ALIVE"));
  EXPECT_TRUE(pl::is_hop_by_hop("Proxy-Authenticate"));
  for (const char* name : {"Content-Type", "Accept", "X-Request-ID", "Set-Cookie", "Authorization", "Connectionx", ""})
    EXPECT_FALSE(pl::is_hop_by_hop(name)) << name;
}

TEST(Headers, RequestDropsHopByHop) {
  Client client;
  for (const auto& name : kHopByHop) client.add(name, "v");
  client.set("Connection", "keep-alive");
  client.add("Content-Type", "application/json");
  Headers out;
  pl::map_request_headers(client, out);
  for (const auto& name : kHopByHop) EXPECT_FALSE(has(out, name)) << name;
  EXPECT_EQ(values_of(out, "Content-Type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(out.size(), 1u);
}

TEST(Headers, RequestDropsHeadersNamedInConnection) {
  Client client;
  client.add("Connection", "close, X-Hop-A ,x-hop-b");
  client.add("Connection", "X-Hop-C");  // a second Connection header counts too
  client.add("X-Hop-A", "1");
  client.add("X-HOP-B", "2");
  client.add("x-hop-c", "3");
  client.add("X-Hop-D", "4");
  Headers out;
  pl::map_request_headers(client, out);
  EXPECT_FALSE(has(out, "X-Hop-A"));
  EXPECT_FALSE(has(out, "X-Hop-B"));
  EXPECT_FALSE(has(out, "X-Hop-C"));
  EXPECT_FALSE(has(out, "Connection"));
  EXPECT_EQ(values_of(out, "X-Hop-D"), std::vector<std::string>{"4"});
}

TEST(Headers, RequestNeverForwardsCredentialsHostLengthEncoding) {
  Client client;
  client.add("Authorization", "Bearer pk_client");
  client.add("x-api-key", "pk_client2");
  client.add("X-API-KEY", "pk_client3");
  client.add("Proxy-Authorization", "Basic abc");
  client.add("Host", "proxy.local:3000");
  client.add("Content-Length", "42");
  client.add("Accept-Encoding", "gzip, br");
  client.add("authorization", "Bearer again");
  client.add("Accept", "text/event-stream");
  Headers out;
  pl::map_request_headers(client, out);
  for (const char* name : {"Authorization", "x-api-key", "Proxy-Authorization", "Host", "Content-Length", "Accept-Encoding"})
    EXPECT_FALSE(has(out, name)) << name;
  for (const auto& [k, v] : out) {
    EXPECT_EQ(v.find("pk_client"), std::string::npos) << k;
  }
  EXPECT_EQ(values_of(out, "Accept"), std::vector<std::string>{"text/event-stream"});
}

TEST(Headers, RequestDropsTheClientsForwardingHeaders) {
  Client client;
  client.add("Forwarded", "for=10.0.0.1");
  client.add("X-Real-IP", "10.0.0.2");
  client.add("X-Forwarded-For", "10.0.0.3");
  client.add("x-forwarded-for", "10.0.0.4");
  client.add("X-Forwarded-Proto", "https");
  Headers out;
  pl::map_request_headers(client, out);
  for (const char* name : {"Forwarded", "X-Real-IP", "X-Forwarded-For"}) EXPECT_FALSE(has(out, name)) << name;
  EXPECT_EQ(values_of(out, "X-Forwarded-Proto"), std::vector<std::string>{"https"});
}

TEST(Headers, RequestForwardsEverythingElseWithDuplicates) {
  Client client;
  client.add("X-Custom", "one");
  client.add("Content-Type", "application/json");
  client.add("anthropic-version", "2023-06-01");
  client.add("x-custom", "two");
  client.add("User-Agent", "sdk/1.0");
  client.add("X-Request-ID", "abc-123");
  client.add("OpenAI-Beta", "assistants=v2");
  Headers out;
  pl::map_request_headers(client, out);
  EXPECT_EQ(values_of(out, "X-Custom"), (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(values_of(out, "content-type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(values_of(out, "Anthropic-Version"), std::vector<std::string>{"2023-06-01"});
  EXPECT_EQ(values_of(out, "user-agent"), std::vector<std::string>{"sdk/1.0"});
  EXPECT_EQ(values_of(out, "x-request-id"), std::vector<std::string>{"abc-123"});
  EXPECT_EQ(values_of(out, "openai-beta"), std::vector<std::string>{"assistants=v2"});
  EXPECT_EQ(out.size(), client.size());
}

TEST(Headers, RequestKeepsWhatOutHad) {
  Client client;
  client.add("X-A", "1");
  client.add("Authorization", "Bearer pk_1");
  Headers out;
  out.add("Authorization", "Bearer upstream-key");
  out.add("Host", "api.z.ai");
  pl::map_request_headers(client, out);
  EXPECT_EQ(values_of(out, "Authorization"), std::vector<std::string>{"Bearer upstream-key"});
  EXPECT_EQ(values_of(out, "Host"), std::vector<std::string>{"api.z.ai"});
  EXPECT_EQ(values_of(out, "X-A"), std::vector<std::string>{"1"});
}

TEST(Headers, ResponseKeepsSetCookieDuplicatesDropsLengthAndHopByHop) {
  Headers upstream;
  upstream.add("Set-Cookie", "a=1; Path=/");
  upstream.add("Content-Type", "text/event-stream");
  upstream.add("set-cookie", "b=2; HttpOnly");
  upstream.add("Content-Length", "1234");
  for (const auto& name : kHopByHop) upstream.add(name, "x");
  upstream.set("Connection", "keep-alive, X-Upstream-Private");
  upstream.add("X-Upstream-Private", "secret-ish");
  upstream.add("Proxy-Authenticate", "Basic");
  upstream.add("x-ratelimit-remaining", "99");
  upstream.add("Cache-Control", "no-cache");
  Headers out;
  pl::map_response_headers(upstream, out);
  EXPECT_EQ(values_of(out, "Set-Cookie"), (std::vector<std::string>{"a=1; Path=/", "b=2; HttpOnly"}));
  EXPECT_FALSE(has(out, "Content-Length"));
  for (const auto& name : kHopByHop) EXPECT_FALSE(has(out, name)) << name;
  EXPECT_FALSE(has(out, "X-Upstream-Private"));
  EXPECT_FALSE(has(out, "Proxy-Authenticate"));
  EXPECT_EQ(values_of(out, "X-RateLimit-Remaining"), std::vector<std::string>{"99"});
  EXPECT_EQ(values_of(out, "Content-Type"), std::vector<std::string>{"text/event-stream"});
  EXPECT_EQ(values_of(out, "Cache-Control"), std::vector<std::string>{"no-cache"});
  EXPECT_EQ(out.size(), 5u);
}

// ---------------------------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------------------------

TEST(Query, RemoveParamKeepsOthersByteForByte) {
  EXPECT_EQ(pl::remove_query_param("a=1&api_key=x&b=%20", "api_key"), "a=1&b=%20");
  EXPECT_EQ(pl::remove_query_param("api_key=x", "api_key"), "");
  EXPECT_EQ(pl::remove_query_param("api_key=x&a=1", "api_key"), "a=1");
  EXPECT_EQ(pl::remove_query_param("a=1&api_key=x", "api_key"), "a=1");
  EXPECT_EQ(pl::remove_query_param("a=1&api_key&b=2", "api_key"), "a=1&b=2");
  EXPECT_EQ(pl::remove_query_param("api_key", "api_key"), "");
  EXPECT_EQ(pl::remove_query_param("api_key=", "api_key"), "");
  EXPECT_EQ(pl::remove_query_param("api_keyx=1&xapi_key=2", "api_key"), "api_keyx=1&xapi_key=2");
  EXPECT_EQ(pl::remove_query_param("api_key=1&a=%2B+b&api_key=2&z=%zz", "api_key"), "a=%2B+b&z=%zz");
  EXPECT_EQ(pl::remove_query_param("b=2&a=1&c=3", "api_key"), "b=2&a=1&c=3");  // order kept
  EXPECT_EQ(pl::remove_query_param("", "api_key"), "");
  EXPECT_EQ(pl::remove_query_param("a=x=y&api_key=k", "api_key"), "a=x=y");
  // Exact name before decoding: an encoded name is a different parameter.
  EXPECT_EQ(pl::remove_query_param("api%5Fkey=1", "api_key"), "api%5Fkey=1");
  // Names are case-sensitive.
  EXPECT_EQ(pl::remove_query_param("API_KEY=1", "api_key"), "API_KEY=1");
}

TEST(Query, ParamDecodes) {
  EXPECT_EQ(pl::query_param("a=1&api_key=sk%2Dx%20y&b=2", "api_key"), "sk-x y");
  EXPECT_EQ(pl::query_param("api_key=a+b", "api_key"), "a b");
  EXPECT_EQ(pl::query_param("api_key=a%2Bb", "api_key"), "a+b");
  EXPECT_EQ(pl::query_param("api_key=%E2%9C%93", "api_key"), "\xE2\x9C\x93");
  EXPECT_EQ(pl::query_param("api_key=first&api_key=second", "api_key"), "first");
  EXPECT_EQ(pl::query_param("api_keyx=1", "api_key"), "");
  EXPECT_EQ(pl::query_param("a=1", "api_key"), "");
  EXPECT_EQ(pl::query_param("", "api_key"), "");
  EXPECT_EQ(pl::query_param("api_key", "api_key"), "");
  EXPECT_EQ(pl::query_param("api_key=", "api_key"), "");
  EXPECT_EQ(pl::query_param("k=a=b", "k"), "a=b");
}

TEST(Query, ParamMalformedEscapeIsTakenLiterally) {
  // Client-supplied garbage never throws: the malformed value is returned as it is.
  EXPECT_EQ(pl::query_param("api_key=%zz", "api_key"), "%zz");
  EXPECT_EQ(pl::query_param("api_key=abc%", "api_key"), "abc%");
  EXPECT_EQ(pl::query_param("api_key=%4", "api_key"), "%4");
  EXPECT_EQ(pl::query_param("x=1&api_key=a+b%G1", "api_key"), "a b%G1");
  // Other parameters' bad escapes never matter: only the requested one is decoded.
  EXPECT_EQ(pl::query_param("a=%zz&api_key=ok", "api_key"), "ok");
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

TEST(RequestId, Sanity) {
  EXPECT_TRUE(pl::is_sane_request_id("a"));
  EXPECT_TRUE(pl::is_sane_request_id("req_01HZX-abc.def:42"));
  EXPECT_TRUE(pl::is_sane_request_id("550e8400-e29b-41d4-a716-446655440000"));
  EXPECT_TRUE(pl::is_sane_request_id(std::string(128, 'x')));
  EXPECT_FALSE(pl::is_sane_request_id(std::string(129, 'x')));
  EXPECT_FALSE(pl::is_sane_request_id(""));
  for (const char* bad : {"a b", "a\nb", "a\rb", "a\"b", "a'b", "a\tb", "a/b", "a;b", "a,b", "a=b", "<script>",
                          "caf\xC3\xA9", "\xE2\x9C\x93", "a\\b", "a%20b", "a+b"})
    EXPECT_FALSE(pl::is_sane_request_id(bad)) << bad;
  EXPECT_FALSE(pl::is_sane_request_id(std::string_view("a\0b", 3)));
}

TEST(RequestId, GeneratedFormat) {
  const std::string id = pl::generate_request_id();
  ASSERT_EQ(id.size(), 32u);
  for (char c : id) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << id;
  EXPECT_TRUE(pl::is_sane_request_id(id));
}

TEST(RequestId, TenThousandDistinct) {
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) {
    std::string id = pl::generate_request_id();
    ASSERT_EQ(id.size(), 32u);
    ids.insert(std::move(id));
  }
  EXPECT_EQ(ids.size(), 10000u);
}

TEST(RequestId, DistinctAcrossThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 10000;
  std::vector<std::vector<std::string>> per(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&per, t] {
      per[static_cast<size_t>(t)].reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) per[static_cast<size_t>(t)].push_back(pl::generate_request_id());
    });
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (const auto& v : per)
    for (const auto& id : v) {
      EXPECT_EQ(id.size(), 32u);
      all.insert(id);
    }
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
}
