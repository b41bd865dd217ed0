// Memory, slow clients, limits: total header and body deadlines (408 even for a client that keeps
// trickling), idle keep-alive connections closed silently, a client that stops reading is
// disconnected without memory growth, keyless requests refused from their headers, body buffers
// that grow with what arrives (not with Content-Length), slowloris connections that hold no
// thread, and max_connections.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "hostile.hpp"

using namespace glmp::hostile;

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

constexpr long kMiB = 1024;  // in KiB, as rss_kib() reports

// Sends `drip` one byte per `pause` until the server answers or closes, or `limit` passes (from
// `t0`). Returns what arrived (read until close, 1.5 s at most once something came) and when the
// first reaction was seen (ms since t0; -1 if none).
std::pair<Exchange, double> drip_until_answered(RawConn& c, const std::string& drip, Ms pause, Clock::time_point t0, Ms limit) {
  double reacted = -1;
  for (size_t i = 0; i < drip.size() && ms_since(t0) < static_cast<double>(limit.count()); ++i) {
    const bool sent = c.send(drip.substr(i, 1), 1s);
    const Exchange x = c.read_until([](const Exchange& e) { return !e.bytes.empty(); }, pause);
    if (!sent || x.closed || !x.bytes.empty()) {
      reacted = ms_since(t0);
      break;
    }
  }
  return {c.read_until_closed(reacted >= 0 ? 1500ms : 0ms), reacted};
}

// GET /health on a new connection; returns the response (status 0 if none) and the time it took,
// connect included.
std::pair<int, double> timed_request(uint16_t port, const std::string& bytes, Ms limit) {
  const auto t0 = Clock::now();
  try {
    RawConn c(port);
    c.send(bytes);
    const Exchange x = c.read_responses(1, limit);
    const double ms = ms_since(t0);
    return {x.finals().empty() ? 0 : x.finals()[0]->status, ms};
  } catch (const std::exception&) {
    return {0, ms_since(t0)};
  }
}

class Slow : public Hostile {
protected:
  long rss() { return proxy->process().rss_kib(); }
};

TEST_F(Slow, HeaderTimeoutIsATotalDeadline) {
  start({.server_extra = "header_timeout = \"2s\"\n"});
  RawConn trickle(port()), silent(port());
  const auto t0 = Clock::now();
  ASSERT_TRUE(trickle.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
  ASSERT_TRUE(silent.send("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ab"));
  // One header byte every 250 ms: never silent long, but the headers never end.
  const auto [x, reacted] = drip_until_answered(trickle, "X-Trickle: " + std::string(100, 'a'), 250ms, t0, 7s);
  if (reacted < 0) {
    ADD_FAILURE() << "a client trickling header bytes for 7 s was never cut off " << x.describe();
  } else {
    expect_refused_and_closed(x, {408}, Flavour::OpenAI, "trickled headers");
    EXPECT_GE(reacted, 1500) << "cut off before header_timeout";
    EXPECT_LE(reacted, 3500.0 + (kSanitized ? 3000 : 0)) << "not cut off at header_timeout";
  }
  // A client that went silent mid-headers gets the same 408.
  const Exchange s = silent.read_until_closed(Ms(static_cast<long>(std::max(1000.0, 5000 - ms_since(t0)))));
  expect_refused_and_closed(s, {408}, Flavour::OpenAI, "silent mid-headers");
}

TEST_F(Slow, BodyTimeoutIsATotalDeadline) {
  start({.server_extra = "body_timeout = \"2s\"\n"});
  const long before = upstream_requests();
  RawConn trickle(port()), silent(port());
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: 200\r\n\r\n";
  const auto t0 = Clock::now();
  ASSERT_TRUE(trickle.send(head));
  ASSERT_TRUE(silent.send(head + "{\"model\":"));
  const auto [x, reacted] = drip_until_answered(trickle, "{\"pad\":\"" + std::string(150, 'a'), 250ms, t0, 7s);
  if (reacted < 0) {
    ADD_FAILURE() << "a client trickling body bytes for 7 s was never cut off " << x.describe();
  } else {
    expect_refused_and_closed(x, {408}, Flavour::OpenAI, "trickled body");
    EXPECT_GE(reacted, 1500) << "cut off before body_timeout";
    EXPECT_LE(reacted, 3500.0 + (kSanitized ? 3000 : 0)) << "not cut off at body_timeout";
  }
  const Exchange s = silent.read_until_closed(Ms(static_cast<long>(std::max(1000.0, 5000 - ms_since(t0)))));
  expect_refused_and_closed(s, {408}, Flavour::OpenAI, "silent mid-body");
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Slow, IdleKeepAliveConnectionIsClosedSilently) {
  start({.server_extra = "keepalive_timeout = \"1s\"\n"});
  RawConn c(port());
  c.send(request("GET", "/health"));
  const Exchange first = c.read_responses(1, 3s);
  ASSERT_EQ(first.finals().size(), 1u) << first.describe();
  ASSERT_FALSE(first.closed);
  const size_t got = c.received().size();
  const Exchange idle = c.read_until_closed(4s);
  EXPECT_TRUE(idle.closed) << "an idle kept-alive connection stayed open " << idle.describe();
  EXPECT_EQ(idle.bytes.size(), got) << "bytes were sent on an idle connection " << idle.describe();
  EXPECT_GE(idle.elapsed_ms, 500) << "closed long before keepalive_timeout";
}

TEST_F(Slow, ClientThatStopsReadingIsDisconnected) {
  start({.server_extra = "send_timeout = \"2s\"\n"});
  ASSERT_EQ(timed_request(port(), request("GET", "/health"), 3s).first, 200);
  const long base = rss();
  // A small receive window, and never a read: the proxy's writes stall once the buffers are full.
  RawConn reader(port(), 4096);
  ASSERT_TRUE(reader.send(request("POST", "/v1/chat/completions",
                                  {"Content-Type: application/json", "x-mock-large-bytes: 268435456", "X-Request-ID: stalled-reader"},
                                  openai_json(true))));
  long peak = base;
  int health_failures = 0;
  std::string health_report;
  std::string line;
  const auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && line.empty()) {
    peak = std::max(peak, rss());
    // Availability, not latency: the budget leaves room for a loaded CI machine.
    if (const auto [status, ms] = timed_request(port(), request("GET", "/health"), 5s); status != 200) {
      ++health_failures;
      health_report += " [status " + std::to_string(status) + " after " + std::to_string(ms) + " ms]";
    }
    for (const auto& l : proxy->access_log())
      if (l.find("stalled-reader") != std::string::npos) line = l;
    if (line.empty()) std::this_thread::sleep_for(200ms);
  }
  ASSERT_FALSE(line.empty()) << "the stalled request was never logged (never disconnected?)";
  EXPECT_NE(line.find("\"client_gone\":true"), std::string::npos) << line;
  EXPECT_NE(line.find("\"error\""), std::string::npos) << line;
  EXPECT_EQ(health_failures, 0) << "/health was not served while a client stalled:" << health_report;
  if (!kSanitized) {
    EXPECT_LT(peak - base, 20 * kMiB) << "RSS grew from " << base << " to " << peak << " KiB";
  }
  // The client was disconnected: what was buffered, then EOF.
  const Exchange rest = reader.read_until_closed(10s);
  EXPECT_TRUE(rest.closed) << rest.bytes.size() << " bytes, connection still open";
  // The upstream connection was closed too: the mock's request ends.
  long active = -1;
  for (int i = 0; i < 100 && active != 0; ++i) {
    active = mock->stats()["active"];
    if (active != 0) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(active, 0) << "the upstream request is still running";
  EXPECT_EQ(timed_request(port(), request("GET", "/health"), 3s).first, 200);
}

TEST_F(Slow, KeylessRequestIsRefusedFromItsHeadersBeforeTheBody) {
  start_keyed();
  const long before = upstream_requests();
  const auto head = [](const std::string& target, const std::string& credential) {
    std::vector<std::string> lines{"Content-Type: application/json", "Content-Length: 33554432"};
    if (!credential.empty()) lines.push_back(credential);
    return request("POST", target, lines) + "{\"model\":\"x\",";  // a few of the announced 32 MiB
  };
  expect_refusals(port(), {
      {"no key", head("/v1/chat/completions", ""), {401}, Flavour::OpenAI, false, kPrompt},
      {"invalid key", head("/v1/chat/completions", "Authorization: Bearer pk_invalidInvalidInvalidInvalidInvalid12"),
       {401}, Flavour::OpenAI, false, kPrompt},
      {"no key on /v1/messages", head("/v1/messages", ""), {401}, Flavour::Anthropic, false, kPrompt},
  });
  EXPECT_EQ(upstream_requests(), before);
}

TEST_F(Slow, AnnouncedBodiesDoNotReserveMemory) {
  if (kSanitized) GTEST_SKIP() << "RSS under sanitizers measures the sanitizer";
  ASSERT_GE(raise_fd_limit(4096), 1200u);
  start();
  ASSERT_EQ(timed_request(port(), request("GET", "/health"), 3s).first, 200);
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: 33554432\r\n\r\n{\"model\":\"x\",\"messages\":[";
  std::vector<RawConn> conns;
  conns.reserve(500);
  long peak = rss();
  // In batches, stopping early (so a proxy that sizes buffers from Content-Length does not eat the machine).
  while (conns.size() < 500 && peak < 100 * kMiB) {
    for (int i = 0; i < 25; ++i) {
      conns.emplace_back(port());
      conns.back().send(head);
    }
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(50ms);
      peak = std::max(peak, rss());
    }
  }
  for (int i = 0; i < 10 && peak < 100 * kMiB; ++i) {
    std::this_thread::sleep_for(100ms);
    peak = std::max(peak, rss());
  }
  EXPECT_EQ(conns.size(), 500u) << "stopped early: RSS " << peak << " KiB";
  EXPECT_LT(peak, 100 * kMiB) << "proxy RSS " << peak << " KiB with " << conns.size() << " connections announcing 32 MiB";
  conns.clear();
  int status = 0;
  for (int i = 0; i < 30 && status != 200; ++i) status = timed_request(port(), request("GET", "/health"), 1s).first;
  EXPECT_EQ(status, 200);
}

TEST_F(Slow, SlowlorisHoldsNoThread) {
  ASSERT_GE(raise_fd_limit(4096), 1400u);
  start_keyed();
  const std::string keyed = request("POST", "/v1/chat/completions",
                                    {"Content-Type: application/json", "Authorization: Bearer " + key}, openai_json());
  std::vector<RawConn> slow;
  slow.reserve(600);
  const auto t0 = Clock::now();
  for (int i = 0; i < 600; ++i) {
    slow.emplace_back(port());
    slow.back().send("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a");
  }
  const auto probe = [&](const char* round) {
    const auto [h, h_ms] = timed_request(port(), request("GET", "/health"), kPrompt + 500ms);
    EXPECT_EQ(h, 200) << round << ": GET /health during a 600-connection slowloris";
    EXPECT_LE(h_ms, static_cast<double>(kPrompt.count())) << round << ": GET /health took " << h_ms << " ms";
    const auto [k, k_ms] = timed_request(port(), keyed, kPrompt + 500ms);
    EXPECT_EQ(k, 200) << round << ": keyed request during a 600-connection slowloris";
    EXPECT_LE(k_ms, static_cast<double>(kPrompt.count())) << round << ": keyed request took " << k_ms << " ms";
  };
  probe("first round");
  // One more header byte each, 5 s after the first.
  std::this_thread::sleep_for(Ms(static_cast<long>(std::max(0.0, 5000 - ms_since(t0)))));
  int sent = 0;
  for (auto& c : slow) sent += c.send("a", 100ms) ? 1 : 0;
  EXPECT_EQ(sent, 600) << "slowloris connections were cut before header_timeout";
  probe("second round");
}

// Connections waiting in the accept queue of the listening socket on `port` (the rx_queue of its
// LISTEN row in /proc/net/tcp and tcp6); -1 when no such row is found.
long accept_backlog(int port) {
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream row(line);
      std::string slot, local, remote, state, queues;
      row >> slot >> local >> remote >> state >> queues;
      const size_t colon = local.rfind(':');
      if (state != "0A" || colon == std::string::npos || std::stol(local.substr(colon + 1), nullptr, 16) != port) continue;
      return std::stol(queues.substr(queues.find(':') + 1), nullptr, 16);
    }
  }
  return -1;
}

TEST_F(Slow, MaxConnectionsRefusesTheNextWith503) {
  start({.server_extra = "max_connections = 50\n"});
  const int base_fds = proxy->process().fd_count();
  std::vector<RawConn> idle;
  for (int i = 0; i < 50; ++i) idle.emplace_back(port());
  // All 50 accepted: none left in the accept queue, and the proxy holds their descriptors. (The fd
  // count alone can reach the mark early when the proxy opens some other descriptor meanwhile;
  // the 51st then became the 50th under ASan once.)
  int fds = 0;
  long backlog = -1;
  for (int i = 0; i < 100 && (fds < base_fds + 50 || backlog != 0); ++i) {
    fds = proxy->process().fd_count();
    backlog = accept_backlog(port());
    if (fds < base_fds + 50 || backlog != 0) std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(backlog, 0) << "connections still waiting to be accepted";
  ASSERT_GE(fds, base_fds + 50) << "the proxy did not accept the 50 connections";
  RawConn extra(port());
  const Exchange x = extra.read_until_closed(3s);
  expect_refused_and_closed(x, {503}, Flavour::OpenAI, "connection 51 of max_connections = 50");
  EXPECT_LE(x.elapsed_ms, static_cast<double>(kPrompt.count())) << "the 51st connection was not refused at once";
  // The 50 are unharmed.
  idle[0].send(request("GET", "/health"));
  const Exchange y = idle[0].read_responses(1, 3s);
  ASSERT_EQ(y.finals().size(), 1u) << y.describe();
  EXPECT_EQ(y.finals()[0]->status, 200);
  // Once they are gone, new connections are served.
  idle.clear();
  int status = 0;
  for (int i = 0; i < 30 && status != 200; ++i) {
    status = timed_request(port(), request("GET", "/health"), 1s).first;
    if (status != 200) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(status, 200);
}

}  // namespace
