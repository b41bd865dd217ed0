#pragma once
// Fixed-size byte buffers for relaying response bodies, recycled so a steady stream of requests
// allocates nothing. A request holds one buffer for the life of its relay loop; memory per
// stream is therefore one buffer, whatever the size of the response.

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace glmp::core::pool {

class BufferPool {
public:
  // `buffer_size`: bytes per buffer; `max_free`: buffers kept for reuse (the rest are freed).
  BufferPool(size_t buffer_size, size_t max_free);

  class Buffer {
  public:
    Buffer() = default;
    Buffer(BufferPool* owner, std::unique_ptr<char[]> data) : owner_(owner), data_(std::move(data)) {}
    Buffer(Buffer&&) noexcept = default;
    Buffer& operator=(Buffer&&) noexcept = default;
    ~Buffer() {
      if (data_) owner_->give_back(std::move(data_));
    }
    char* data() const { return data_.get(); }
    size_t size() const { return owner_->buffer_size_; }
  private:
    BufferPool* owner_ = nullptr;
    std::unique_ptr<char[]> data_;
  };

  Buffer acquire();
  size_t buffer_size() const { return buffer_size_; }
  size_t free_count() const;

private:
  void give_back(std::unique_ptr<char[]> data);

  const size_t buffer_size_;
  const size_t max_free_;
  mutable std::mutex mutex_;  // held for a vector push/pop only
  std::vector<std::unique_ptr<char[]>> free_;
};

}  // namespace glmp::core::pool
