#include "fuzz_targets.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "pipeline/json_body.hpp"
#include "pipeline/usage.hpp"

namespace glmp::fuzz {
namespace {

using namespace glmp::core::pipeline;

[[noreturn]] void violated(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  std::abort();
}
#define GLMP_FUZZ_CHECK(cond) \
  do {                        \
    if (!(cond)) violated(#cond); \
  } while (0)

}  // namespace

void json_body_target(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const TopLevelScan scan = scan_top_level(body);
  if (!scan.ok) {
    GLMP_FUZZ_CHECK(scan.members.empty());
    GLMP_FUZZ_CHECK(scan.error_offset <= size);
    GLMP_FUZZ_CHECK(rewrite_model(body, "glm-4.7", true).outcome == ModelRewrite::InvalidJson);
    return;
  }
  for (const auto& m : scan.members) {
    GLMP_FUZZ_CHECK(m.member_begin < m.value_begin && m.value_begin < m.value_end && m.value_end <= size);
  }
  const ModelRewriteResult r = rewrite_model(body, "glm-4.7", true);
  if (!scan.is_object) {
    GLMP_FUZZ_CHECK(r.outcome == ModelRewrite::NotAnObject);
    return;
  }
  const std::string_view rewritten = r.outcome == ModelRewrite::Unchanged ? body : std::string_view(r.body);
  const TopLevelScan after = scan_top_level(rewritten);
  GLMP_FUZZ_CHECK(after.ok && after.is_object);
  const JsonMember* model = after.find("model");
  GLMP_FUZZ_CHECK(model != nullptr);
  GLMP_FUZZ_CHECK(json_string_value(rewritten, *model).value_or("") == "glm-4.7");
  const size_t expected_members = scan.members.size() + (r.outcome == ModelRewrite::Inserted ? 1 : 0);
  GLMP_FUZZ_CHECK(after.members.size() == expected_members);
  // Idempotent: a second rewrite changes nothing.
  GLMP_FUZZ_CHECK(rewrite_model(rewritten, "glm-4.7", true).outcome == ModelRewrite::Unchanged);
  // Removing the model keeps valid JSON.
  const TopLevelEdit remove{"model", "", TopLevelEdit::Mode::Remove};
  const std::string removed = apply_top_level_edits(rewritten, after, std::span<const TopLevelEdit>(&remove, 1));
  const TopLevelScan gone = scan_top_level(removed);
  GLMP_FUZZ_CHECK(gone.ok && gone.is_object && gone.find("model") == nullptr);
}

void usage_target(const uint8_t* data, size_t size) {
  if (size == 0) return;
  // The first byte picks the split stride; the rest is the body.
  const size_t stride = 1 + data[0] % 61;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int mode = 0; mode < 5; ++mode) {
    const Flavour flavour = mode % 2 ? Flavour::Anthropic : Flavour::OpenAI;
    const bool sse = mode < 4 ? mode < 2 : true;
    const bool suppress = mode == 4;
    UsageExtractor x(flavour, sse, suppress);
    std::string forwarded;
    for (size_t off = 0; off < body.size(); off += stride) {
      std::string_view out = x.feed(body.substr(off, stride));
      forwarded.append(out.data(), out.size());
    }
    std::string_view rest = x.finish();
    forwarded.append(rest.data(), rest.size());
    if (suppress) GLMP_FUZZ_CHECK(forwarded.size() <= body.size());
    else GLMP_FUZZ_CHECK(forwarded == body);
    const Usage& u = x.usage();
    // Without a usage object, the only figure is the lower bound from the content deltas seen.
    GLMP_FUZZ_CHECK(u.seen || (u.input_tokens == 0 && u.output_tokens == u.content_deltas));
    GLMP_FUZZ_CHECK(u.complete || u.output_tokens >= u.content_deltas);
    GLMP_FUZZ_CHECK(sse || u.content_deltas == 0);
  }
}

}  // namespace glmp::fuzz
