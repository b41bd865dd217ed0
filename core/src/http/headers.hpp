#pragma once
// A message's header fields, in the order they arrived, names compared case-insensitively
// (docs/design.md, "Headers"). The proxy's own container for the headers it relays: the
// upstream's response headers as parsed, the headers sent upstream, the headers forwarded to the
// client.
//
// Why not Poco::Net::NameValueCollection: its add() copies each field twice and searches the
// whole list (a case-insensitive compare per field) to group same-name fields; clear() frees every
// string. Here add() appends (fields of one name keep their relative order, as RFC 9110 §5.3
// requires, and different names keep the order they came in), and clear() keeps the slots: a
// slot's strings keep their capacity, so a Headers reused across requests fills without a heap
// allocation. Headers::recycled() / recycle() keep a few emptied ones per thread for the next
// request's context.

#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace glmp::core::http {

// ASCII case-insensitive equality (header names, tokens). Inline: most calls end at the size.
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

class Headers {
public:
  using Field = std::pair<std::string, std::string>;
  using const_iterator = std::vector<Field>::const_iterator;

  Headers() = default;
  Headers(std::initializer_list<std::pair<std::string_view, std::string_view>> fields) {
    for (const auto& [name, value] : fields) add(name, value);
  }
  Headers(Headers&& other) noexcept { swap(other); }
  Headers& operator=(Headers&& other) noexcept {
    swap(other);
    other.clear();
    return *this;
  }
  Headers(const Headers& other) { *this = other; }
  Headers& operator=(const Headers& other) {
    if (this != &other) {
      clear();
      for (const auto& [name, value] : other) add(name, value);
    }
    return *this;
  }

  const_iterator begin() const { return fields_.begin(); }
  const_iterator end() const { return fields_.begin() + static_cast<std::ptrdiff_t>(size_); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Appends a field (reusing a free slot's strings).
  void add(std::string_view name, std::string_view value);
  // The first field of `name` gets `value`, later ones of that name go; appended when absent.
  void set(std::string_view name, std::string_view value);
  // Removes every field of `name`; returns how many went.
  size_t erase(std::string_view name);
  // Removes every field for which pred(name, value) is true, keeping the others' order. A field
  // is judged before any later one moves (views into later fields stay valid while pred runs;
  // views into earlier ones may not).
  template <class Pred>
  size_t erase_if(Pred pred) {
    size_t out = 0;
    for (size_t i = 0; i < size_; ++i) {
      if (pred(std::string_view(fields_[i].first), std::string_view(fields_[i].second))) continue;
      if (out != i) fields_[out].swap(fields_[i]);
      ++out;
    }
    const size_t removed = size_ - out;
    size_ = out;
    return removed;
  }
  // Empties the list, keeping its slots (and their strings' capacity).
  void clear() { size_ = 0; }
  void swap(Headers& other) noexcept {
    fields_.swap(other.fields_);
    std::swap(size_, other.size_);
  }

  // The value of the index-th field named `name` (0 = the first); null when there is none.
  const std::string* find(std::string_view name, size_t index = 0) const;
  bool has(std::string_view name) const { return find(name) != nullptr; }
  // The first value of `name`, or `fallback`.
  std::string_view get(std::string_view name, std::string_view fallback = {}) const {
    const std::string* v = find(name);
    return v ? std::string_view(*v) : fallback;
  }

  // A cleared Headers from this thread's spares (its slots keep capacity), or a new one.
  static Headers recycled();
  // Gives `h`'s slots to this thread's spares (a few are kept; the rest are freed). `h` is left empty.
  static void recycle(Headers& h);

private:
  std::vector<Field> fields_;  // [0, size_) in use; the rest are spare slots
  size_t size_ = 0;
};

}  // namespace glmp::core::http
