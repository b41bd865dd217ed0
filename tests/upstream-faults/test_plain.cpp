// Broken upstreams over plain HTTP (docs/design.md "HTTP/1.1 server and hostile input"): the scripted upstream writes exact
// bytes and ends the connection as scripted; the client checks exactly what the proxy relayed and
// whether it closed the connection. Every case runs for both API flavours.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "fixture.hpp"

namespace glmp::upfaults {
namespace {

using Faults = UpstreamFaults;

// Headers and the first events, then the scripted fault once the client has the last of them.
Script stream_then(const Flav& f, Script fault) {
  return concat({{send(sse_head_chunked())}, event_chunks(f.relayed), {await_release()}, std::move(fault)});
}

TEST_P(Faults, FinBetweenChunksEndsWithErrorEventWithoutTerminator) {
  start({stream_then(f(), {fin()})});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  expect_cut_sse(r, f().relayed);
  expect_error_logged(id);
}

TEST_P(Faults, FinInsideChunkEndsWithErrorEventWithoutTerminator) {
  // The chunk announces the whole next event; half of it arrives, then FIN.
  const std::string& ev = f().next_event;
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", ev.size());
  start({stream_then(f(), {send(size + ev.substr(0, ev.size() / 2)), pause(100ms), fin()})});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  expect_cut_sse(r, f().relayed);
  expect_error_logged(id);
}

TEST_P(Faults, MalformedChunkSizeEndsWithErrorEventWithoutTerminator) {
  // The upstream keeps the connection open afterwards: the proxy must see the bad framing itself,
  // not wait for EOF or for read_timeout (10s, beyond the client's 8s deadline).
  start({stream_then(f(), {send("zz\r\n" + f().next_event + "\r\n"), stall_until_closed()})});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  expect_cut_sse(r, f().relayed);
  EXPECT_EQ(r.body.find("tok2"), std::string::npos) << "bytes after a malformed chunk size must not be relayed";
  expect_error_logged(id);
}

TEST_P(Faults, RstMidStreamEndsWithErrorEventWithoutTerminator) {
  start({stream_then(f(), {rst()})});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  expect_cut_sse(r, f().relayed);
  expect_error_logged(id);
}

TEST_P(Faults, StallAfterHeadersEndsWithErrorEventWithoutTerminator) {
  start({concat({{send(sse_head_chunked())}, event_chunks({f().relayed.front()}), {await_release(), stall_until_closed()}})},
        {.read_timeout = "1s"});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.front());
  expect_cut_sse(r, {f().relayed.front()});
  expect_error_logged(id);
  EXPECT_TRUE(up->wait_stall_closed(5s)) << "the proxy must close the stalled upstream connection";
}

TEST_P(Faults, StallBeforeHeadersIs504UpstreamTimeout) {
  start({{stall_until_closed()}}, {.read_timeout = "1s"});
  std::string id;
  ClientResult r = ask(true, id);
  expect_proxy_error(r, 504, "upstream_timeout");
  expect_error_logged(id);
  EXPECT_TRUE(up->wait_stall_closed(5s)) << "the proxy must close the stalled upstream connection";
}

TEST_P(Faults, InterimResponsesBeforeTheFinalOneAreSkipped) {
  start({{send("HTTP/1.1 100 Continue\r\n\r\n"), pause(50ms),
          send("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"), pause(50ms),
          send(json_response(f().json))},
         {send(json_response(f().json))}});
  std::string id;
  ClientResult r = ask(false, id);
  EXPECT_EQ(r.status_line.rfind("HTTP/1.1 200", 0), 0u) << r.describe();
  EXPECT_TRUE(r.interim.empty()) << "the upstream's 1xx responses are skipped, not relayed\n" << r.describe();
  EXPECT_TRUE(r.complete) << r.describe();
  EXPECT_EQ(r.body, f().json) << r.describe();
  expect_clean_log(id);
  // The upstream connection is not left out of step: the next request's answer is its own.
  std::string id2;
  ClientResult again = ask(false, id2);
  EXPECT_EQ(again.status, 200) << again.describe();
  EXPECT_EQ(again.body, f().json) << again.describe();
}

TEST_P(Faults, GarbageInsteadOfResponseThenFinIs502) {
  start({{send(std::string("\x00\xffnot http\r\n\r\n", 15)), fin()}});
  std::string id;
  ClientResult r = ask(true, id);
  expect_proxy_error(r, 502, "upstream_unavailable");
  expect_error_logged(id);
}

TEST_P(Faults, GarbageInsteadOfResponseOnOpenConnectionIs502) {
  // No FIN: the proxy must reject the status line itself (read_timeout 10s > the client's 8s).
  start({{send(std::string("\x00\xffnot http\r\n\r\n", 15)), stall_until_closed()}});
  std::string id;
  ClientResult r = ask(true, id);
  expect_proxy_error(r, 502, "upstream_unavailable");
  expect_error_logged(id);
}

TEST_P(Faults, ChunkedJsonCutByFinClosesWithoutTerminator) {
  const std::string half = f().json.substr(0, f().json.size() / 2);
  start({{send(json_head_chunked()), send(chunk(half)), await_release(), fin()}});
  std::string id;
  ClientResult r = ask(false, id, half);
  expect_cut_plain(r);
  EXPECT_TRUE(r.chunked) << r.describe();
  EXPECT_EQ(r.body, half) << r.describe();
  expect_error_logged(id);
}

TEST_P(Faults, ChunkedJsonStallAfterHeadersCloses) {
  const std::string half = f().json.substr(0, f().json.size() / 2);
  start({{send(json_head_chunked()), send(chunk(half)), await_release(), stall_until_closed()}}, {.read_timeout = "1s"});
  std::string id;
  ClientResult r = ask(false, id, half);
  expect_cut_plain(r);
  EXPECT_EQ(r.body, half) << r.describe();
  expect_error_logged(id);
  EXPECT_TRUE(up->wait_stall_closed(5s)) << "the proxy must close the stalled upstream connection";
}

TEST_P(Faults, ShortContentLengthClosesBeforeTheAnnouncedLength) {
  const std::string twenty = f().json.substr(0, 20);
  start({{send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + twenty), fin()}});
  std::string id;
  ClientResult r = ask(false, id);
  EXPECT_TRUE(r.eof) << "the client's connection must be closed\n" << r.describe();
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_FALSE(r.complete) << "a short body must not look complete\n" << r.describe();
  if (r.status == 200) {
    EXPECT_EQ(r.content_length, 100) << r.describe();
    EXPECT_EQ(r.body, twenty) << r.describe();
  }
  expect_error_logged(id);
}

TEST_P(Faults, FinMidStreamIsLoggedOnce) {
  // Usage not reported yet when the stream is cut (no usage chunk / message_delta): the request
  // still completes exactly once.
  start({stream_then(f(), {fin()}), {send(json_response(f().json))}});
  std::string id;
  ClientResult r = ask(true, id, f().relayed.back());
  ASSERT_EQ(r.status, 200) << r.describe();
  expect_error_logged(id);
  // A later request's line is written after the cut one's: then count the cut one's lines.
  std::string id2;
  ClientResult next = ask(false, id2);
  EXPECT_EQ(next.status, 200) << next.describe();
  EXPECT_NO_THROW(proxy->wait_log({"\"id\":\"" + id2 + "\""}));
  const auto lines = proxy->access_log();
  const auto count = std::count_if(lines.begin(), lines.end(),
                                   [&](const std::string& l) { return l.find("\"id\":\"" + id + "\"") != std::string::npos; });
  EXPECT_EQ(count, 1) << "the cut request must be logged (on_complete run) exactly once";
}

TEST_P(Faults, EofDelimitedStreamOverPlainHttpEndsCleanlyAtFin) {
  // Control for the TLS truncation cases: without TLS, FIN is the legitimate end of a
  // close-delimited body (RFC 9112 §6.3), so the client gets a complete stream.
  start({{send(sse_head_eof() + join(f().relayed) + f().next_event + f().end_events), fin()}});
  std::string id;
  ClientResult r = ask(true, id);
  ASSERT_EQ(r.status, 200) << r.describe();
  EXPECT_TRUE(r.complete) << r.describe();
  EXPECT_NE(r.body.find(join(f().relayed) + f().next_event), std::string::npos) << r.describe();
  EXPECT_NE(r.body.find(f().anthropic ? "message_stop" : "data: [DONE]"), std::string::npos) << r.describe();
  EXPECT_EQ(r.body.find("error"), std::string::npos) << r.describe();
  expect_clean_log(id);
}

INSTANTIATE_TEST_SUITE_P(Flavours, Faults, ::testing::Values(openai_flavour(), anthropic_flavour()), flavour_name);

}  // namespace
}  // namespace glmp::upfaults
