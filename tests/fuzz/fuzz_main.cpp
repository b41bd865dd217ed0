// libFuzzer entry points. Built only with -DGLMP_FUZZ=ON and clang (see tests/fuzz/CMakeLists.txt).
#include "fuzz_targets.hpp"

#ifndef GLMP_FUZZ_TARGET
#error "define GLMP_FUZZ_TARGET to json_body_target or usage_target"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  glmp::fuzz::GLMP_FUZZ_TARGET(data, size);
  return 0;
}
