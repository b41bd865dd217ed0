#include "pool/buffer_pool.hpp"

namespace glmp::core::pool {

BufferPool::BufferPool(size_t buffer_size, size_t max_free) : buffer_size_(buffer_size), max_free_(max_free) {
  free_.reserve(max_free);
}

BufferPool::Buffer BufferPool::acquire() {
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      auto data = std::move(free_.back());
      free_.pop_back();
      return Buffer(this, std::move(data));
    }
  }
  return Buffer(this, std::unique_ptr<char[]>(new char[buffer_size_]));
}

void BufferPool::give_back(std::unique_ptr<char[]> data) {
  std::lock_guard lock(mutex_);
  if (free_.size() < max_free_) free_.push_back(std::move(data));
}

size_t BufferPool::free_count() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

}  // namespace glmp::core::pool
