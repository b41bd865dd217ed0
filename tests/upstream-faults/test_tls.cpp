// Broken upstreams over TLS (docs/design.md "HTTP/1.1 server and hostile input"): a TLS upstream (OpenSSL, cert from the
// harness PKI) that closes the TCP connection without close_notify. In an EOF-delimited body that is
// truncation (an error for the client); after a body whose own framing was complete it is harmless.
#include <gtest/gtest.h>

#include "fixture.hpp"

namespace glmp::upfaults {
namespace {

class TlsFaults : public UpstreamFaults {
protected:
  void start_tls(std::vector<Script> scripts) {
    start(std::move(scripts), {.tls = glmp::test::make_pki(dir)});
  }
};

TEST_P(TlsFaults, EofDelimitedStreamWithoutCloseNotifyIsAnError) {
  start_tls({{send(sse_head_eof() + join(f().relayed)), await_release(), fin()}});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  expect_cut_sse(r, f().relayed);
  expect_error_logged(id);
}

TEST_P(TlsFaults, EofDelimitedJsonWithoutCloseNotifyIsAnError) {
  // Even a body that parses as complete JSON: without close_notify its end is not authenticated.
  start_tls({{send(json_head_eof() + f().json), await_release(), fin()}});
  std::string id;
  ClientResult r = ask(false, id, f().json.substr(0, 10));
  expect_cut_plain(r);
  expect_error_logged(id);
}

TEST_P(TlsFaults, EofDelimitedStreamWithCloseNotifyEndsCleanly) {
  // Control: the same close-delimited stream ended properly (close_notify, then FIN).
  start_tls({{send(sse_head_eof() + join(f().relayed) + f().next_event + f().end_events), tls_close_notify()}});
  std::string id;
  ClientResult r = ask(true, id);
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_TRUE(r.complete) << r.describe();
  EXPECT_NE(r.body.find(join(f().relayed) + f().next_event), std::string::npos) << r.describe();
  EXPECT_NE(r.body.find(f().anthropic ? "message_stop" : "data: [DONE]"), std::string::npos) << r.describe();
  EXPECT_EQ(r.body.find("error"), std::string::npos) << r.describe();
  expect_clean_log(id);
}

TEST_P(TlsFaults, CompleteContentLengthThenAbruptCloseIsFine) {
  start_tls({{send(json_response(f().json)), fin()}});
  std::string id;
  ClientResult r = ask(false, id);
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_TRUE(r.complete) << r.describe();
  EXPECT_EQ(r.body, f().json) << r.describe();
  expect_clean_log(id);
}

TEST_P(TlsFaults, CompleteChunkedStreamThenAbruptCloseIsFine) {
  std::string stream = sse_head_chunked();
  for (const auto& ev : f().relayed) stream += chunk(ev);
  stream += chunk(f().next_event) + chunk(f().end_events) + kLastChunk;
  start_tls({{send(stream), fin()}});
  std::string id;
  ClientResult r = ask(true, id);
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_TRUE(r.complete) << r.describe();
  EXPECT_FALSE(r.framing_error) << r.describe();
  EXPECT_NE(r.body.find(join(f().relayed) + f().next_event), std::string::npos) << r.describe();
  EXPECT_NE(r.body.find(f().anthropic ? "message_stop" : "data: [DONE]"), std::string::npos) << r.describe();
  EXPECT_EQ(r.body.find("error"), std::string::npos) << r.describe();
  expect_clean_log(id);
}

INSTANTIATE_TEST_SUITE_P(Flavours, TlsFaults, ::testing::Values(openai_flavour(), anthropic_flavour()), flavour_name);

}  // namespace
}  // namespace glmp::upfaults
