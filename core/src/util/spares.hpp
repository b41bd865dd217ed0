#pragma once
// Per-thread spares of per-request objects (docs/design.md, "The engine": per request the core
// makes about a dozen heap allocations). A request's strings and lists are given back when it
// ends and taken by the next request of the same thread, capacity intact, so a warm loop fills
// them without going to malloc. Each loop thread serves its own requests, so no lock is needed;
// an object given on another thread simply lands in that thread's spares.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace glmp::core::util {

template <class T, size_t Max>
class Spares {
public:
  // A spare (emptied by whoever gave it), or a new T.
  static T take() {
    auto& s = stash();
    if (s.empty()) return T{};
    T t = std::move(s.back());
    s.pop_back();
    return t;
  }
  // Keeps `t` (the caller has emptied it) unless Max are kept already.
  static void give(T&& t) {
    auto& s = stash();
    if (s.size() < Max) s.push_back(std::move(t));
  }

private:
  static std::vector<T>& stash() {
    thread_local std::vector<T> s;
    return s;
  }
};

// Strings of up to 16 KiB capacity are kept (256 per thread: at most 4 MiB); larger ones, a big
// body for instance, are freed.
using SpareStrings = Spares<std::string, 256>;
inline std::string spare_string() { return SpareStrings::take(); }
inline void give_string(std::string& s) {
  if (s.capacity() > 15 && s.capacity() <= 16 * 1024) {
    s.clear();
    SpareStrings::give(std::move(s));
  }
}

}  // namespace glmp::core::util
