#include "http/headers.hpp"

#include <algorithm>

namespace glmp::core::http {
namespace {

// Spare header lists of this thread (each loop thread serves its own requests).
constexpr size_t kSpares = 64;
thread_local std::vector<Headers> spares;

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

Headers Headers::recycled() {
  if (spares.empty()) return {};
  Headers h;
  h.swap(spares.back());
  spares.pop_back();
  return h;
}

void Headers::recycle(Headers& h) {
  h.clear();
  if (h.fields_.empty()) return;
  if (spares.size() < kSpares && h.fields_.size() <= 64) {
    spares.emplace_back();
    spares.back().swap(h);
  } else {
    std::vector<Field>().swap(h.fields_);
  }
}

}  // namespace glmp::core::http
