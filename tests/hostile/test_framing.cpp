// Framing (request smuggling): every ambiguous or malformed message framing is refused with the
// spec's status, a JSON error in the caller's flavour, Connection: close, and the connection closed
// right after — so nothing after the bad request (here a valid proxied request, kFollowUp, in the
// same write) is ever served, and nothing reaches the upstream.
#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

const std::string kChat = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
const std::string kMessages = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";

class Framing : public Hostile {
protected:
  void SetUp() override { start(); }
};

TEST_F(Framing, ContentLengthWithTransferEncodingIsRefused) {
  const long before = upstream_requests();
  // CL.TE: the Content-Length covers the follow-up; a parser that goes by the chunked framing
  // would end the body at "0" and serve the follow-up as a second request.
  const std::string cl_te = kChat + "Content-Length: " + std::to_string(5 + kFollowUp.size()) +
                            "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + kFollowUp;
  // TE.CL: the chunk carries the follow-up; a parser that goes by Content-Length: 4 would read
  // the follow-up as the next request.
  const std::string size_line = hex(kFollowUp.size()) + "\r\n";
  const std::string te_cl = kChat + "Transfer-Encoding: chunked\r\nContent-Length: " + std::to_string(size_line.size()) +
                            "\r\n\r\n" + size_line + kFollowUp + "\r\n0\r\n\r\n";
  expect_refusals(port(), {
      {"CL.TE", cl_te, {400}, Flavour::OpenAI, false},
      {"TE.CL", te_cl, {400}, Flavour::OpenAI, false},
      {"CL.TE, then a follow-up", kChat + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}},
      {"Content-Length: 0 with chunked", kChat + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}},
      {"CL.TE on /v1/messages", kMessages + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400},
       Flavour::Anthropic},
  });
  EXPECT_EQ(upstream_requests(), before) << "a smuggled request reached the upstream";
}

TEST_F(Framing, DuplicateOrListContentLengthIsRefused) {
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"two equal Content-Length", kChat + "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", {400}},
      {"two different Content-Length", kChat + "Content-Length: 2\r\nContent-Length: 30\r\n\r\n{}", {400}},
      {"Content-Length: 2, 30", kChat + "Content-Length: 2, 30\r\n\r\n{}", {400}},
      {"Content-Length: 2, 2", kChat + "Content-Length: 2, 2\r\n\r\n{}", {400}},
      {"two Content-Length on /v1/messages", kMessages + "Content-Length: 30\r\nContent-Length: 2\r\n\r\n{}", {400},
       Flavour::Anthropic},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Framing, NonDecimalContentLengthIsRefused) {
  const long before = upstream_requests();
  std::vector<RefusalCase> cases;
  for (const std::string v : {"abc", "+5", "-1", "0x10", "5 5", " 5 5", "", "5.0", "1e3"})
    cases.push_back({"Content-Length: '" + v + "'", kChat + "Content-Length: " + v + "\r\n\r\nhello", {400}});
  cases.push_back({"Content-Length with no value", kChat + "Content-Length:\r\n\r\nhello", {400}});
  expect_refusals(port(), cases);
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Framing, InvalidChunkIsRefusedAndNothingGoesUpstream) {
  const long before = upstream_requests();
  const std::string head = kChat + "Transfer-Encoding: chunked\r\nx-mock-echo: 1\r\n\r\n";
  expect_refusals(port(), {
      {"chunk size g", head + "g\r\n{}{}{}{}{}{}{}{}\r\n0\r\n\r\n", {400}},
      {"chunk size zz", head + "zz\r\n{}\r\n0\r\n\r\n", {400}},
      {"chunk size -2", head + "-2\r\n{}\r\n0\r\n\r\n", {400}},
      {"chunk size 0x2", head + "0x2\r\n{}\r\n0\r\n\r\n", {400}},
      {"chunk size of 20 hex digits", head + "FFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n", {400}},
      {"no CRLF after the chunk data", head + "2\r\n{}XX0\r\n\r\n", {400}},
      {"chunk data longer than its size", head + "1\r\n{}\r\n0\r\n\r\n", {400}},
      {"no CRLF after the last chunk data, body valid so far", head + "2\r\n{}0\r\n\r\n", {400}},
  });
  EXPECT_EQ(upstream_requests(), before) << "part of a malformed chunked body went upstream";
}

TEST_F(Framing, TransferEncodingNotEndingInChunkedIs400) {
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"Transfer-Encoding: gzip", kChat + "Transfer-Encoding: gzip\r\n\r\n{}", {400}},
      {"Transfer-Encoding: chunked, gzip", kChat + "Transfer-Encoding: chunked, gzip\r\n\r\n2\r\n{}\r\n0\r\n\r\n", {400}},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Framing, UnimplementedTransferCodingIs501) {
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"Transfer-Encoding: gzip, chunked", kChat + "Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", {501}},
      {"Transfer-Encoding: foo", kChat + "Transfer-Encoding: foo\r\n\r\n{}", {501}},
      {"Transfer-Encoding: foo on /v1/messages", kMessages + "Transfer-Encoding: foo\r\n\r\n{}", {501}, Flavour::Anthropic},
  });
  EXPECT_EQ(upstream_requests(), before);
}

// TE.TE: a Transfer-Encoding obfuscated so that one parser would see chunked and another not.
TEST_F(Framing, ObfuscatedTransferEncodingIsRefused) {
  const long before = upstream_requests();
  const std::string body = "0\r\n\r\n";  // the follow-up is smuggled behind it
  expect_refusals(port(), {
      {"Transfer-Encoding : chunked", kChat + "Transfer-Encoding : chunked\r\n\r\n" + body, {400}},
      {"Transfer-Encoding : chunked with Content-Length", kChat + "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n" + body, {400}},
      {"Transfer-Encoding: xchunked", kChat + "Transfer-Encoding: xchunked\r\n\r\n" + body, {400, 501}},
      {"Transfer-Encoding: xchunked with Content-Length", kChat + "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n" + body, {400, 501}},
      {"chunked in two Transfer-Encoding headers", kChat + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + body, {400, 501}},
      {"chunked, then x in a second header", kChat + "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n" + body, {400, 501}},
      {"x, then chunked in a second header, with Content-Length",
       kChat + "Content-Length: 5\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body, {400, 501}},
      {"Transfer-Encoding folded onto the previous line", kChat + "X-Pad: 1\r\n Transfer-Encoding: chunked\r\n\r\n" + body, {400}},
      {"Transfer-Encoding with a NUL", kChat + lit("Transfer-Encoding: chunked\0x\r\n\r\n") + body, {400}},
  });
  EXPECT_EQ(upstream_requests(), before) << "a smuggled request reached the upstream";
}

TEST_F(Framing, TransferEncodingInHttp10Is400) {
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"HTTP/1.0 with chunked",
       "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
       {400}},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Framing, UnsupportedVersionIs505) {
  expect_refusals(port(), {
      {"HTTP/2.0", "GET /health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", {505}},
      {"HTTP/9.9", "GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", {505}},
      {"HTTP/2.0 proxied", "GET /v1/models HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", {505}},
  });
}

TEST_F(Framing, MissingOrDuplicateHostIs400) {
  expect_refusals(port(), {
      {"HTTP/1.1 without Host", "GET /health HTTP/1.1\r\n\r\n", {400}},
      {"two different Host", "GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", {400}},
      {"two equal Host", "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"proxied, without Host", "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", {400}},
  });
  // HTTP/1.0 needs no Host; the answer's status line is HTTP/1.1 anyway.
  const Exchange x = exchange(port(), "GET /health HTTP/1.0\r\n\r\n", 3s);
  ASSERT_EQ(x.finals().size(), 1u) << x.describe();
  EXPECT_EQ(x.finals()[0]->status, 200) << x.describe();
  EXPECT_EQ(x.bytes.rfind("HTTP/1.1 200 ", 0), 0u) << x.describe();
}

TEST_F(Framing, WhitespaceBeforeColonIs400) {
  const long before = upstream_requests();
  expect_refusals(port(), {
      {"Authorization : …", kChat + "Authorization : Bearer x\r\nContent-Length: 2\r\n\r\n{}", {400}},
      {"X-Api-Key<TAB>: …", kChat + "X-Api-Key\t: x\r\nContent-Length: 2\r\n\r\n{}", {400}},
      {"Content-Length : 2", kChat + "Content-Length : 2\r\n\r\n{}", {400}},
      {"Host : …", "GET /health HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", {400}},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Framing, ControlCharactersInHeadersAre400) {
  const std::string get = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  std::vector<RefusalCase> cases{
      {"NUL in a value", get + lit("X-Foo: a\0b\r\n\r\n"), {400}},
      {"NUL in a name", get + lit("X-F\0oo: b\r\n\r\n"), {400}},
      {"SOH in a value", get + "X-Foo: a\x01" "b\r\n\r\n", {400}},
      {"ESC in a value", get + "X-Foo: a\x1b[31mb\r\n\r\n", {400}},
      {"DEL in a value", get + "X-Foo: a\x7f" "b\r\n\r\n", {400}},
      {"VT in a value", get + "X-Foo: a\x0b" "b\r\n\r\n", {400}},
      {"SOH in a name", get + "X-\x01" "Foo: b\r\n\r\n", {400}},
      {"TAB in a name", get + "X-\tFoo: b\r\n\r\n", {400}},
      {"NUL in the request-target", lit("GET /hea\0lth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), {400}},
  };
  expect_refusals(port(), cases);
  // HTAB inside a value is allowed.
  RawConn c(port());
  c.send(get + "X-Foo: a\tb\r\n\r\n");
  const Exchange x = c.read_responses(1, 3s);
  ASSERT_EQ(x.finals().size(), 1u) << x.describe();
  EXPECT_EQ(x.finals()[0]->status, 200) << x.describe();
}

TEST_F(Framing, ObsFoldBareCrAndBadRequestLinesAre400) {
  const std::string get = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  expect_refusals(port(), {
      {"obs-fold with SP", get + "X-Foo: a\r\n b\r\n\r\n", {400}},
      {"obs-fold with HTAB", get + "X-Foo: a\r\n\tb\r\n\r\n", {400}},
      {"bare CR in a value", get + "X-Foo: a\rb\r\n\r\n", {400}},
      {"bare CR ending a header line", get + "X-Foo: a\rX-Bar: b\r\n\r\n", {400}},
      {"bare CR in the request line", "GET /health\rHTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"two spaces after the method", "GET  /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"two spaces before the version", "GET /health  HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"a fourth request-line token", "GET /health HTTP/1.1 x\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"a space inside the target", "GET /hea lth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"TAB as the separator", "GET\t/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"no version", "GET /health\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"no method", "/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"a method with a non-token byte", "GE@T /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400}},
      {"a lower-case protocol name", "GET /health http/1.1\r\nHost: 127.0.0.1\r\n\r\n", {400, 505}},
      {"a header line without a colon", get + "NoColonHere\r\n\r\n", {400}},
  });
}

TEST_F(Framing, ConnectionCloseAmongOtherTokensCloses) {
  const std::vector<std::string> values{"close, X-Foo", "X-Foo, CLOSE", "keep-alive, Close", "cLoSe"};
  for (const auto& v : values) {
    SCOPED_TRACE("Connection: " + v);
    const Exchange x = exchange(port(), "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Foo: 1\r\nConnection: " + v +
                                            "\r\n\r\n" + kFollowUp, 3s);
    ASSERT_EQ(x.responses.size(), 1u) << x.describe();
    EXPECT_EQ(x.responses[0].status, 200) << x.describe();
    EXPECT_TRUE(x.responses[0].connection_close()) << x.describe();
    EXPECT_TRUE(x.closed) << x.describe();
    EXPECT_EQ(x.bytes.find("follow-up-never-served"), std::string::npos) << x.describe();
  }
}

// The positive control: well-formed chunked bodies (any case of "chunked", chunk extensions)
// are forwarded whole and the connection stays usable.
TEST_F(Framing, ValidChunkedBodyIsForwarded) {
  const std::string body = openai_json();
  const std::string a = body.substr(0, 10), b = body.substr(10, 20), rest = body.substr(30);
  RawConn c(port());
  c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: CHUNKED\r\nx-mock-echo: 1\r\n\r\n" +
         hex(a.size()) + "\r\n" + a + "\r\n" + hex(b.size()) + ";ext=1\r\n" + b + "\r\n" + hex(rest.size()) + "\r\n" +
         rest + "\r\n0\r\n\r\n" + request("GET", "/health"));
  const Exchange x = c.read_responses(2, 5s);
  ASSERT_EQ(x.finals().size(), 2u) << x.describe();
  const RawResponse& echo = *x.finals()[0];
  EXPECT_EQ(echo.status, 200) << x.describe();
  EXPECT_EQ(jget(jget(echo.body, "body"), "messages.0.content"), "Hello there") << echo.body;
  EXPECT_EQ(jget(jget(echo.body, "body"), "model"), "glm-4.7") << echo.body;
  EXPECT_EQ(x.finals()[1]->status, 200) << x.describe();
  EXPECT_FALSE(x.closed);
}

// A trailer section after the last chunk is part of the message (RFC 9112 7.1.2), not the start
// of the next request.
TEST_F(Framing, ChunkedTrailerIsPartOfTheMessage) {
  const std::string body = openai_json();
  RawConn c(port());
  c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\nx-mock-echo: 1\r\n\r\n" +
         hex(body.size()) + "\r\n" + body + "\r\n0\r\nX-Trailer: t\r\n\r\n" + request("GET", "/health", {"X-Request-ID: after-trailer"}));
  const Exchange x = c.read_responses(2, 5s);
  ASSERT_EQ(x.finals().size(), 2u) << x.describe();
  EXPECT_EQ(x.finals()[0]->status, 200) << x.describe();
  EXPECT_EQ(x.finals()[1]->status, 200) << x.describe();
  EXPECT_EQ(x.finals()[1]->header("X-Request-ID"), "after-trailer") << x.describe();
}

}  // namespace
