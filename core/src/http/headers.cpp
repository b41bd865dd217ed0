#include "http/headers.hpp"

#include "util/spares.hpp"

namespace glmp::core::http {
namespace {

// Spare header lists of this thread: enough for a loop with ~300 requests in flight (three lists each).
using SpareHeaders = util::Spares<Headers, 1024>;

}  // namespace

void Headers::add(std::string_view name, std::string_view value) {
  if (size_ == fields_.size()) fields_.emplace_back();
  Field& f = fields_[size_++];
  f.first.assign(name);
  f.second.assign(value);
}

void Headers::set(std::string_view name, std::string_view value) {
  for (size_t i = 0; i < size_; ++i) {
    if (!iequals(fields_[i].first, name)) continue;
    fields_[i].second.assign(value);
    // Later fields of the name go (the first one's own slot stays where it is).
    size_t out = i + 1;
    for (size_t j = i + 1; j < size_; ++j)
      if (!iequals(fields_[j].first, name)) fields_[out++].swap(fields_[j]);
    size_ = out;
    return;
  }
  add(name, value);
}

size_t Headers::erase(std::string_view name) {
  return erase_if([name](std::string_view n, std::string_view) { return iequals(n, name); });
}

const std::string* Headers::find(std::string_view name, size_t index) const {
  for (size_t i = 0; i < size_; ++i)
    if (iequals(fields_[i].first, name) && index-- == 0) return &fields_[i].second;
  return nullptr;
}

Headers Headers::recycled() { return SpareHeaders::take(); }

void Headers::recycle(Headers& h) {
  h.clear();
  if (h.fields_.empty()) return;
  if (h.fields_.size() <= 64) SpareHeaders::give(std::move(h));  // leaves h empty (Headers' move)
  else std::vector<Field>().swap(h.fields_);
}

}  // namespace glmp::core::http
