#pragma once
// Fuzz targets for the two hand-written hot-path scanners (docs/design.md, "Hot-path scanners").
// Each target feeds arbitrary bytes and checks invariants; a violation aborts. The same functions
// are driven by libFuzzer (tests/fuzz/, clang, -DGLMP_FUZZ=ON) and, with a bounded random corpus,
// by the unit suite (tests/unit/test_fuzz_smoke.cpp) so the harness never rots.

#include <cstddef>
#include <cstdint>

namespace glmp::fuzz {

// scan_top_level / apply_top_level_edits / rewrite_model on arbitrary bytes.
void json_body_target(const uint8_t* data, size_t size);

// UsageExtractor in all four modes on arbitrary bytes, split at data-derived points: the forwarded
// bytes equal the input without suppression, and never exceed it with suppression.
void usage_target(const uint8_t* data, size_t size);

}  // namespace glmp::fuzz
