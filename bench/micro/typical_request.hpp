#pragma once
// The request the plugin micro-benchmarks feed their on_complete: a proxied, streamed OpenAI
// request through auth, ratelimit and profiling, as the core reports it to the SDK's fake host.
#include <glmproxy/fake_host.hpp>

#include <string>

namespace glmp::bench {

using glmp::testing::FakeRequest;

// Request number i (its id and key vary with i; 50 keys).
inline FakeRequest typical_request(int i) {
  FakeRequest r;
  r.id = "req-" + std::to_string(i);
  r.streaming = true;
  r.model = "glm-4.7";
  r.attributes["auth.key_id"] = "key_" + std::to_string(i % 50);
  r.response_status = 200;
  r.usage.seen = 1;
  r.usage.input_tokens = 120;
  r.usage.output_tokens = 380;
  r.profile.status = 200;
  r.profile.upstream_status = 200;
  r.profile.started_unix_us = 1'780'000'000'000'000 + i;
  r.profile.elapsed_ns = 1'250'000'000;
  r.profile.ttfb_ns = 180'000'000;
  r.profile.upstream_ns = 1'249'000'000;
  r.profile.bytes_in = 900;
  r.profile.bytes_out = 24'000;
  r.route = "/v1/";
  r.timings = {{"receive", "", 0, 12'000},
               {"auth", "on_request_headers", 14'000, 2'000},
               {"auth", "on_request", 30'000, 1'500},
               {"ratelimit", "on_request", 32'000, 3'000},
               {"upstream_connect", "", 40'000, 9'000},
               {"upstream_headers", "", 49'000, 179'000'000},
               {"first_byte", "", 179'049'000, 900'000},
               {"stream", "", 180'000'000, 1'070'000'000},
               {"ratelimit", "on_complete", 1'250'001'000, 4'000}};
  return r;
}

}  // namespace glmp::bench
