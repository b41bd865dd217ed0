#pragma once
// OpenSSL's thread-local error queue as text, emptied as it is read: "" when it holds nothing.
// The one reader for the upstream connections and the listener's certificate loading.

#include <string>

#include <openssl/err.h>

namespace glmp::core::util {

inline std::string openssl_error_queue() {
  std::string text;
  while (const unsigned long e = ::ERR_get_error()) {
    char buf[256];
    ::ERR_error_string_n(e, buf, sizeof buf);
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text;
}

}  // namespace glmp::core::util
