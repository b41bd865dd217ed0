#pragma once
// A per-thread read buffer on the heap. Large thread_local arrays would live in the static TLS
// block, which glibc carves out of every thread's stack (worker threads run on 256 KiB stacks):
// only the pointer is thread-local here, the bytes are allocated once per thread that reads.

#include <cstddef>
#include <memory>

namespace glmp::core::util {

inline constexpr size_t kScratchSize = 64 * 1024;

inline char* scratch() {
  thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf = std::make_unique<char[]>(kScratchSize);
  return buf.get();
}

}  // namespace glmp::core::util
