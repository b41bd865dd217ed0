// Header and request-target limits: over server.max_header_bytes (default 32 KiB) or
// server.max_headers (default 100 fields) → 431; a request-target over server.max_uri_bytes
// (default 8 KiB) → 414; each as a JSON error with X-Request-ID, then close. Requests just under
// the limits are served.
#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

// `count` header lines "X-Pad-<i>: <size bytes>".
std::vector<std::string> pad_fields(size_t count, size_t size) {
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) out.push_back("X-Pad-" + std::to_string(i) + ": " + std::string(size, 'a'));
  return out;
}

// A proxied GET that, if it were ever forwarded, the mock would answer.
std::string probe(const std::vector<std::string>& lines, const std::string& target = "/v1/models") {
  std::vector<std::string> all{"x-mock-echo: 1"};
  all.insert(all.end(), lines.begin(), lines.end());
  return request("GET", target, all);
}

void expect_served(uint16_t port, const std::string& bytes, const std::string& what) {
  RawConn c(port);
  c.send(bytes);
  const Exchange x = c.read_responses(1, 5s);
  ASSERT_EQ(x.finals().size(), 1u) << what << " " << x.describe();
  EXPECT_EQ(x.finals()[0]->status, 200) << what << " " << x.describe();
}

class Limits : public Hostile {};

TEST_F(Limits, HeaderBytesOverTheDefaultAre431) {
  start();
  const long before = upstream_requests();
  // 33 fields of ~1 KiB: about 33.4 KiB of head, each field far below any per-field limit.
  expect_refusals(port(), {{"33 KiB of headers", probe(pad_fields(33, 1000)), {431}}});
  EXPECT_EQ(upstream_requests(), before);
  expect_served(port(), probe(pad_fields(30, 1000)), "30 KiB of headers");
}

TEST_F(Limits, HeaderCountOverTheDefaultIs431) {
  start();
  const long before = upstream_requests();
  // Host + x-mock-echo + 99 = 101 fields.
  expect_refusals(port(), {{"101 header fields", probe(pad_fields(99, 1)), {431}}});
  EXPECT_EQ(upstream_requests(), before);
  // Host + x-mock-echo + 98 = 100 fields: accepted (on /health, which the proxy answers itself —
  // forwarded, the proxy's own headers would take the mock past its own limit of 100).
  expect_served(port(), probe(pad_fields(98, 1), "/health"), "100 header fields");
}

TEST_F(Limits, RequestTargetOverTheDefaultIs414) {
  start();
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"9 KiB request-target", probe({}, "/v1/models?pad=" + std::string(9 * 1024, 'a')), {414}},
      {"9 KiB path", probe({}, "/v1/" + std::string(9 * 1024, 'a')), {414}},
  });
  EXPECT_EQ(upstream_requests(), before);
  expect_served(port(), probe({}, "/v1/models?pad=" + std::string(7 * 1024, 'a')), "7 KiB request-target");
}

TEST_F(Limits, ConfiguredLimitsApply) {
  start({.server_extra = "max_header_bytes = 4096\nmax_headers = 20\nmax_uri_bytes = 1024\n"});
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"5 KiB of headers over max_header_bytes = 4096", probe(pad_fields(5, 1000)), {431}},
      {"21 fields over max_headers = 20", probe(pad_fields(19, 1)), {431}},
      {"1.2 KiB request-target over max_uri_bytes = 1024", probe({}, "/v1/models?pad=" + std::string(1200, 'a')), {414}},
  });
  EXPECT_EQ(upstream_requests(), before);
  expect_served(port(), probe(pad_fields(3, 1000)), "3 KiB of headers");
  expect_served(port(), probe(pad_fields(18, 1)), "20 header fields");
  expect_served(port(), probe({}, "/v1/models?pad=" + std::string(900, 'a')), "0.9 KiB request-target");
}

}  // namespace
