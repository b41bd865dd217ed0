// Micro-benchmarks of the core's per-request hot paths. Run: build/release/bin/glmp-micro-bench
#include <benchmark/benchmark.h>


#include <string>

#include "pipeline/headers.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/usage.hpp"

namespace {

using namespace glmp::core::pipeline;

// A chat request of about `bytes` bytes: many messages, nested "model" keys, escapes.
std::string chat_body(size_t bytes) {
  std::string body = R"({"model":"gpt-4o","stream":false,"messages":[)";
  int i = 0;
  while (body.size() < bytes) {
    if (i++) body += ',';
    body += R"({"role":"user","content":"Line \"quoted\" \u00e9 with some text to pad the message out a bit more.","name":"u","metadata":{"model":"nested"}})";
  }
  body += R"(],"max_tokens":1024})";
  return body;
}

void BM_ModelRewrite(benchmark::State& state) {
  const std::string body = chat_body(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    ModelRewriteResult r = rewrite_model(body, "glm-4.7", false);
    benchmark::DoNotOptimize(r.body.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_ModelRewrite)->Arg(1 << 10)->Arg(100 << 10)->Arg(1 << 20);

void BM_TopLevelScanOnly(benchmark::State& state) {
  const std::string body = chat_body(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    TopLevelScan s = scan_top_level(body);
    benchmark::DoNotOptimize(s.members.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_TopLevelScanOnly)->Arg(1 << 10)->Arg(100 << 10)->Arg(1 << 20);

std::string openai_stream(int events) {
  std::string s;
  for (int i = 0; i < events; ++i)
    s += R"(data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"glm-4.7","choices":[{"index":0,"delta":{"content":"token )" +
         std::to_string(i) + R"( "},"finish_reason":null}]})" + "\n\n";
  s += R"(data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"glm-4.7","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1000,"total_tokens":1010}})"
       "\n\ndata: [DONE]\n\n";
  return s;
}

std::string anthropic_stream(int events) {
  std::string s = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"glm-4.7\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
  for (int i = 0; i < events; ++i)
    s += "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"token " +
         std::to_string(i) + " \"}}\n\n";
  s += "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1000}}\n\n"
       "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
  return s;
}

// Feeds a whole stream in 32 KiB chunks (the relay buffer size).
void run_usage(benchmark::State& state, Flavour flavour, const std::string& stream, bool sse, bool suppress) {
  for (auto _ : state) {
    UsageExtractor x(flavour, sse, suppress);
    for (size_t off = 0; off < stream.size(); off += 32768) {
      std::string_view out = x.feed(std::string_view(stream).substr(off, 32768));
      benchmark::DoNotOptimize(out.data());
    }
    benchmark::DoNotOptimize(x.finish().data());
    if (x.usage().output_tokens != 1000) state.SkipWithError("usage not extracted");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(stream.size()));
}

void BM_UsageOpenAISse(benchmark::State& state) { run_usage(state, Flavour::OpenAI, openai_stream(1000), true, false); }
void BM_UsageOpenAISseSuppress(benchmark::State& state) { run_usage(state, Flavour::OpenAI, openai_stream(1000), true, true); }
void BM_UsageAnthropicSse(benchmark::State& state) { run_usage(state, Flavour::Anthropic, anthropic_stream(1000), true, false); }
void BM_UsageOpenAIJson(benchmark::State& state) {
  std::string body = R"({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":")" + std::string(1 << 20, 'a') +
                     R"("}}],"usage":{"prompt_tokens":10,"completion_tokens":1000,"total_tokens":1010}})";
  run_usage(state, Flavour::OpenAI, body, false, false);
}
BENCHMARK(BM_UsageOpenAISse);
BENCHMARK(BM_UsageOpenAISseSuppress);
BENCHMARK(BM_UsageAnthropicSse);
BENCHMARK(BM_UsageOpenAIJson);

void BM_MapRequestHeaders(benchmark::State& state) {
  glmp::core::http::Headers client;  // as the request parser fills it
  client.add("Host", "127.0.0.1:3000");
  client.add("Authorization", "Bearer pk_secret");
  client.add("Content-Type", "application/json");
  client.add("Content-Length", "1234");
  client.add("Accept", "application/json");
  client.add("Accept-Encoding", "gzip, deflate, br");
  client.add("User-Agent", "OpenAI/JS 4.77.0");
  client.add("X-Stainless-Lang", "js");
  client.add("X-Stainless-Package-Version", "4.77.0");
  client.add("X-Stainless-OS", "Linux");
  client.add("X-Stainless-Arch", "x64");
  client.add("X-Stainless-Runtime", "node");
  client.add("Connection", "keep-alive");
  glmp::core::http::Headers out;  // one per request context, its slots reused (Headers::recycled)
  for (auto _ : state) {
    out.clear();
    map_request_headers(client, out);
    benchmark::DoNotOptimize(&out);
  }
}
BENCHMARK(BM_MapRequestHeaders);


void BM_GenerateRequestId(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(generate_request_id());
}
BENCHMARK(BM_GenerateRequestId);

}  // namespace

// The per-request metrics update (counter + histograms), as the server does after each request.
#include "metrics/metrics.hpp"

namespace {

void BM_MetricsRequestFinished(benchmark::State& state) {
  static glmp::core::metrics::Metrics metrics({"/v1/messages", "/v1/"});
  static const glmp::core::config::RouteConfig route{"/v1/", Flavour::OpenAI, "openai", "/v1"};
  RequestContext ctx;
  ctx.route = &route;
  ctx.status = 200;
  ctx.upstream_status = 200;
  ctx.upstream_time = std::chrono::microseconds(800);
  ctx.ttfb = std::chrono::microseconds(900);
  ctx.usage.seen = true;
  ctx.usage.input_tokens = 12;
  ctx.usage.output_tokens = 34;
  ctx.model = "glm-4.7";
  for (auto _ : state) {
    metrics.request_started();
    metrics.request_finished(ctx);
  }
}
BENCHMARK(BM_MetricsRequestFinished)->Threads(1)->Threads(2);

}  // namespace
