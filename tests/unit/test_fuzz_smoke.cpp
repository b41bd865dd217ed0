// Drives the fuzz targets (tests/fuzz/) with a bounded, seeded corpus: random bytes plus mutations
// of realistic request bodies and response streams. Any invariant violation aborts the test.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "../fuzz/fuzz_targets.hpp"

namespace {

const std::vector<std::string> kSeeds = {
    R"({"model":"gpt-4o","messages":[{"role":"user","content":"hi \"there\" \u00e9","model":"x"}],"stream":true})",
    R"({"messages":[],"metadata":{"model":{"model":1}}})",
    R"( { "mo\u0064el" : "a" , "model":"b" } )",
    "{}",
    "[1,2,{\"model\":3}]",
    "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n",
    "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n"
    "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\r\n\r\n",
    R"({"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"choices":[]})",
};

std::vector<std::string> corpus(size_t n) {
  std::mt19937 rng(20261128);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    std::string s = kSeeds[i % kSeeds.size()];
    const int mutations = static_cast<int>(rng() % 6);
    for (int m = 0; m < mutations && !s.empty(); ++m) {
      const size_t pos = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[pos] = static_cast<char>(rng() % 256); break;
        case 1: s.erase(pos, 1 + rng() % 4); break;
        case 2: s.insert(pos, 1, "{}[]\":,\\\n \r0"[rng() % 13]); break;
        default: s.insert(pos, s.substr(rng() % s.size(), rng() % 16)); break;
      }
    }
    if (i % 7 == 0) {  // pure noise too
      s.resize(rng() % 200);
      for (auto& c : s) c = static_cast<char>(rng() % 256);
    }
    out.push_back(std::move(s));
  }
  return out;
}

TEST(FuzzSmoke, JsonBodyInvariantsHold) {
  for (const auto& input : corpus(100000))
    glmp::fuzz::json_body_target(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  SUCCEED() << "every invariant held (a violation aborts)";
}

TEST(FuzzSmoke, UsageInvariantsHold) {
  std::mt19937 rng(7);
  for (auto input : corpus(40000)) {
    input.insert(input.begin(), static_cast<char>(rng() % 256));  // split stride byte
    glmp::fuzz::usage_target(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  SUCCEED() << "every invariant held (a violation aborts)";
}

}  // namespace
