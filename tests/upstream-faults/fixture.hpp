#pragma once
// Shared by the broken-upstream tests: the two API flavours (their requests, SSE events and JSON
// answers), a fixture that starts glm-proxy in front of a ScriptedUpstream, and the checks that
// spell out docs/design.md "HTTP/1.1 server and hostile input".

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "../integration/harness.hpp"
#include "fault_kit.hpp"

namespace glmp::upfaults {

using glmp::test::json_get;

struct Flav {
  std::string name;
  bool anthropic = false;
  std::string path;
  std::vector<std::string> relayed;  // complete SSE events the upstream sends before the fault
  std::string next_event;            // the event the fault cuts (sent half, or not at all)
  std::string end_events;            // what completes the stream after next_event
  std::string json;                  // a complete non-streaming answer
  std::string request_body(bool stream) const {
    return anthropic ? glmp::test::anthropic_body(stream) : glmp::test::openai_body(stream);
  }
};

inline Flav openai_flavour() {
  auto ev = [](const std::string& content) {
    return "data: {\"id\":\"chatcmpl-uf\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"glm-4.7\","
           "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + content + "\"},\"finish_reason\":null}]}\n\n";
  };
  Flav f;
  f.name = "openai";
  f.path = "/v1/chat/completions";
  f.relayed = {ev("tok0"), ev("tok1")};
  f.next_event = ev("tok2");
  f.end_events = "data: {\"id\":\"chatcmpl-uf\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"glm-4.7\","
                 "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
  f.json = R"({"id":"chatcmpl-uf","object":"chat.completion","created":1,"model":"glm-4.7","choices":[{"index":0,)"
           R"("message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],)"
           R"("usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}})";
  return f;
}

inline Flav anthropic_flavour() {
  auto delta = [](const std::string& text) {
    return "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
           "\"delta\":{\"type\":\"text_delta\",\"text\":\"" + text + "\"}}\n\n";
  };
  Flav f;
  f.name = "anthropic";
  f.anthropic = true;
  f.path = "/v1/messages";
  f.relayed = {
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_uf\",\"type\":\"message\","
      "\"role\":\"assistant\",\"model\":\"glm-4.7\",\"content\":[],\"stop_reason\":null,"
      "\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
      "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
      "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
      delta("tok0"), delta("tok1")};
  f.next_event = delta("tok2");
  f.end_events = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
                 "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
                 "\"usage\":{\"output_tokens\":3}}\n\n"
                 "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  f.json = R"({"id":"msg_uf","type":"message","role":"assistant","model":"glm-4.7",)"
           R"("content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",)"
           R"("usage":{"input_tokens":3,"output_tokens":1}})";
  return f;
}

inline void PrintTo(const Flav& f, std::ostream* os) { *os << f.name; }

inline std::string flavour_name(const ::testing::TestParamInfo<Flav>& info) { return info.param.name; }

// Each SSE event of `events` as its own chunk (one write each).
inline Script event_chunks(const std::vector<std::string>& events) {
  Script s;
  for (const auto& e : events) s.push_back(send(chunk(e)));
  return s;
}

inline Script concat(std::vector<Script> parts) {
  Script out;
  for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

inline std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += p;
  return out;
}

struct StartOptions {
  std::string read_timeout = "10s";
  std::optional<glmp::test::TestPki> tls;  // the upstream speaks TLS with this PKI
};

class UpstreamFaults : public ::testing::TestWithParam<Flav> {
protected:
  glmp::test::TempDir dir;
  std::unique_ptr<ScriptedUpstream> up;
  std::unique_ptr<glmp::test::Proxy> proxy;
  int requests_sent = 0;

  const Flav& f() const { return GetParam(); }

  // Starts the scripted upstream and a proxy whose two upstreams both point at it. The config is
  // written whole (ProxyOptions::custom_toml): the harness's generated one fixes read_timeout at
  // 10s, and TOML refuses the key twice.
  void start(std::vector<Script> scripts, StartOptions opts = {}) {
    std::optional<TlsFiles> tls;
    if (opts.tls) tls = TlsFiles{opts.tls->server_cert, opts.tls->server_key};
    up = std::make_unique<ScriptedUpstream>(std::move(scripts), tls);
    const std::string base = std::string(opts.tls ? "https://localhost:" : "http://127.0.0.1:") + std::to_string(up->port());
    const std::string ca = opts.tls ? "ca_file = \"" + opts.tls->ca_cert + "\"\n" : "";
    auto upstream = [&](const std::string& name, const std::string& header, const std::string& value) {
      return "\n[upstreams." + name + "]\nbase_url = \"" + base + "\"\nauth_header = \"" + header +
             "\"\nauth_value = \"" + value + "\"\nmin_connections = 0\nmax_connections = 8\nread_timeout = \"" +
             opts.read_timeout + "\"\nhealth_interval = \"0s\"\n" + ca;
    };
    glmp::test::ProxyOptions po;
    po.custom_toml = "[server]\nlisten = \"127.0.0.1:0\"\nmax_threads = 16\ndrain_timeout = \"2s\"\n"
                     "\n[proxy]\nmodel = \"glm-4.7\"\n"
                     "\n[log]\nlevel = \"information\"\naccess_log = \"" + dir.file("access.log") + "\"\n" +
                     upstream("openai", "Authorization", "Bearer test-upstream-key") +
                     upstream("anthropic", "x-api-key", "test-upstream-key") +
                     "\n[[routes]]\nprefix = \"/v1/messages\"\nflavour = \"anthropic\"\nupstream = \"anthropic\"\n"
                     "\n[[routes]]\nprefix = \"/v1/\"\nflavour = \"openai\"\nupstream = \"openai\"\nstrip_prefix = \"/v1\"\n";
    proxy = std::make_unique<glmp::test::Proxy>(dir, nullptr, po);
  }

  std::string next_id() { return "uf-" + f().name + "-" + std::to_string(++requests_sent); }

  // One request in the caller's flavour on a fresh connection. When `release_after` is given, the
  // upstream's AwaitRelease step is released once the client has received that text in the body.
  ClientResult ask(bool stream, std::string& id, const std::string& release_after = "",
                   std::chrono::milliseconds deadline = 8s) {
    id = next_id();
    auto on_data = [&](const ClientResult& r) {
      if (!release_after.empty() && r.body.find(release_after) != std::string::npos) up->release();
    };
    return exchange(proxy->port(), post_request(f().path, f().request_body(stream), id), deadline, on_data);
  }

  // The access-log line of request `id` carries an "error".
  void expect_error_logged(const std::string& id) {
    EXPECT_NO_THROW(proxy->wait_log({"\"id\":\"" + id + "\"", "\"error\":"})) << "request " << id;
  }

  void expect_clean_log(const std::string& id) {
    std::string line;
    EXPECT_NO_THROW(line = proxy->wait_log({"\"id\":\"" + id + "\""}));
    EXPECT_EQ(line.find("\"error\":"), std::string::npos) << line;
  }

  // The final SSE block is the flavour's error event.
  void expect_error_event_last(const std::string& body) {
    ASSERT_GE(body.size(), 2u);
    EXPECT_EQ(body.substr(body.size() - 2), "\n\n") << "the error event must be a complete SSE event:\n" << body;
    const auto blocks = sse_blocks(body);
    ASSERT_FALSE(blocks.empty());
    const std::string& last = blocks.back();
    std::string data;
    if (f().anthropic) {
      const std::string prefix = "event: error\ndata: ";
      ASSERT_EQ(last.rfind(prefix, 0), 0u) << "last event is not an Anthropic error event:\n" << body;
      data = last.substr(prefix.size());
      EXPECT_EQ(json_get(data, "type"), "error") << data;
    } else {
      ASSERT_EQ(last.rfind("data: {\"error\":", 0), 0u) << "last event is not an OpenAI error event:\n" << body;
      data = last.substr(6);
    }
    EXPECT_NE(json_get(data, "error.type"), "<missing>") << data;
    EXPECT_NE(json_get(data, "error.message"), "<missing>") << data;
  }

  // spec "Broken upstreams", SSE: the events relayed so far, the flavour's error event, then the
  // connection closed WITHOUT the terminating 0 chunk.
  void expect_cut_sse(const ClientResult& r, const std::vector<std::string>& relayed) {
    ASSERT_EQ(r.status, 200) << r.describe();
    EXPECT_EQ(r.header("content-type").rfind("text/event-stream", 0), 0u) << r.describe();
    EXPECT_TRUE(r.chunked) << r.describe();
    EXPECT_FALSE(r.framing_error) << r.describe();
    EXPECT_FALSE(r.complete) << "the terminating 0 chunk makes a cut stream look complete\n" << r.describe();
    EXPECT_TRUE(r.eof) << "the client's connection must be closed\n" << r.describe();
    EXPECT_FALSE(r.timed_out) << r.describe();
    size_t pos = 0;
    for (const auto& ev : relayed) {
      const size_t at = r.body.find(ev, pos);
      EXPECT_NE(at, std::string::npos) << "event not relayed (in order):\n" << ev << "\n" << r.describe();
      if (at != std::string::npos) pos = at + ev.size();
    }
    EXPECT_EQ(r.body.find("data: [DONE]"), std::string::npos) << r.describe();
    EXPECT_EQ(r.body.find("message_stop"), std::string::npos) << r.describe();
    expect_error_event_last(r.body);
  }

  // A non-SSE body cut short: the client's connection is closed and its framing never completes
  // (no terminating chunk / fewer bytes than Content-Length). A close-delimited relay would be
  // indistinguishable from a complete answer, so it fails too.
  void expect_cut_plain(const ClientResult& r) {
    ASSERT_TRUE(r.headers_done) << r.describe();
    EXPECT_EQ(r.status, 200) << r.describe();
    EXPECT_TRUE(r.chunked || r.content_length >= 0) << "a close-delimited body cannot signal the cut\n" << r.describe();
    EXPECT_FALSE(r.framing_error) << r.describe();
    EXPECT_FALSE(r.complete) << "the response must not look complete\n" << r.describe();
    EXPECT_TRUE(r.eof) << "the client's connection must be closed\n" << r.describe();
    EXPECT_FALSE(r.timed_out) << r.describe();
  }

  // A proxy-generated error: status, JSON body in the flavour, Content-Length, X-Request-ID.
  void expect_proxy_error(const ClientResult& r, int status, const std::string& openai_code) {
    ASSERT_EQ(r.status, status) << r.describe();
    EXPECT_TRUE(r.complete) << r.describe();
    EXPECT_EQ(r.header("content-type").rfind("application/json", 0), 0u) << r.describe();
    EXPECT_GE(r.content_length, 0) << r.describe();
    EXPECT_FALSE(r.header("x-request-id").empty()) << r.describe();
    if (f().anthropic) {
      EXPECT_EQ(json_get(r.body, "type"), "error") << r.body;
      EXPECT_NE(json_get(r.body, "error.type"), "<missing>") << r.body;
    } else {
      EXPECT_EQ(json_get(r.body, "error.code"), openai_code) << r.body;
      EXPECT_EQ(json_get(r.body, "error.type"), "server_error") << r.body;
    }
    EXPECT_NE(json_get(r.body, "error.message"), "<missing>") << r.body;
  }

  // After every case the proxy still serves.
  void TearDown() override {
    if (!proxy) return;
    glmp::test::Response h = glmp::test::http(proxy->port(), "GET", "/health", "", {}, 5s);
    EXPECT_EQ(h.status, 200) << "the proxy must keep serving after the fault: " << h.error;
    if (h.status == 200) {
      EXPECT_EQ(json_get(h.body, "status"), "ok") << h.body;
    }
  }
};

}  // namespace glmp::upfaults
