// GLM Proxy plugin SDK: the identity of a request for response caching and request coalescing.
//
// Two requests with the same key ask the same upstream the same question on behalf of the same
// tenant, so one's response may answer the other. Used by plugins/cache and plugins/batching,
// which must agree exactly (a coalesced follower and a cache hit are keyed alike).
//
// Header-only, but it computes SHA-256 with OpenSSL's libcrypto: a plugin that includes it links
// OpenSSL::Crypto (find_package(OpenSSL REQUIRED) and
// target_link_libraries(<plugin> PRIVATE OpenSSL::Crypto); the proxy itself links libcrypto
// already, so this adds no new dependency to a deployment).
//
// The key is the lowercase hex SHA-256 (64 characters) of these parts, in this order, each
// written as <decimal byte length> ':' <bytes> ',' (a netstring), so no two different part lists
// hash the same text:
//   1. the format version "glmp.request_key.v1" (bump it when anything below changes, so old and
//      new keys never meet);
//   2. the scope: "global" (RequestKeyOptions::global_scope), else "key:" + the request's
//      "auth.key_id" attribute (the prefix keeps a key whose id happens to be "global" apart from
//      the global scope);
//   3. the flavour as a decimal (glmp_flavour: 0 OpenAI, 1 Anthropic);
//   4. the request path (without the query);
//   5. the model sent upstream (Request::model());
//   6. the upstream body as canonical JSON (Request::canonical_body: object members sorted at every
//      level, no insignificant whitespace, numbers as written, one string escaping), minus the
//      top-level members named in exclude_fields. Every other member counts: sampling parameters,
//      tools, "thinking", "stream" and stream_options, so a streamed and a non-streamed request are
//      different keys.
#pragma once

#include <glmproxy/sdk.hpp>

#include <openssl/evp.h>
#include <openssl/opensslv.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace glmp {

// The identity of a request for caching and coalescing (issue 13 "Key"): SHA-256 (lowercase hex, 64 chars) over
// a format version, the scope, the flavour, the path, the model sent upstream and the canonical upstream body
// minus `exclude` top-level fields; each part length-prefixed so parts cannot run into each other.
struct RequestKeyOptions {
  bool global_scope = false;
  std::vector<std::string> exclude_fields;
};

namespace detail {

// Appends one netstring part: "<len>:<bytes>,".
inline void append_key_part(std::string& out, std::string_view part) {
  out += std::to_string(part.size());
  out += ':';
  out.append(part.data(), part.size());
  out += ',';
}

// Lowercase hex SHA-256 of `data`. Throws std::runtime_error if libcrypto fails (it does not).
inline std::string sha256_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  // Fetched once: EVP_sha256() would make every EVP_Digest look the provider's implementation up
  // again. Freed when the plugin is unloaded.
  static const std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)> fetched(EVP_MD_fetch(nullptr, "SHA256", nullptr),
                                                                       &EVP_MD_free);
  const EVP_MD* md = fetched ? fetched.get() : EVP_sha256();
#else
  const EVP_MD* md = EVP_sha256();
#endif
  if (md == nullptr || EVP_Digest(data.data(), data.size(), digest, &len, md, nullptr) != 1 || len != 32)
    throw std::runtime_error("SHA-256 failed (OpenSSL)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (std::size_t i = 0; i < 32; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

}  // namespace detail

// The key of explicit parts (what request_key hashes; see the top of this file). `scope` is
// hashed as given: request_key passes "global" or "key:" + key id. Pure: no host needed.
inline std::string request_key_of(std::string_view scope, int flavour, std::string_view path, std::string_view model,
                                  std::string_view canonical_body) {
  std::string text;
  text.reserve(canonical_body.size() + scope.size() + path.size() + model.size() + 64);
  detail::append_key_part(text, "glmp.request_key.v1");
  detail::append_key_part(text, scope);
  detail::append_key_part(text, std::to_string(flavour));
  detail::append_key_part(text, path);
  detail::append_key_part(text, model);
  detail::append_key_part(text, canonical_body);
  return detail::sha256_hex(text);
}

// scope: "global" when options.global_scope, else the request's "auth.key_id" attribute. nullopt when the body is
// not JSON (canonical_body nullopt) or (per-key scope) the request has no auth.key_id.
// `reason` (may be null) gets "not_json" or "no_key_id" on nullopt.
// on_request only (canonical_body is an on_request host function). A host older than ABI 1.5
// has no canonical body: every request is then "not_json".
inline std::optional<std::string> request_key(const Request& r, const RequestKeyOptions& o,
                                              const char** reason = nullptr) {
  std::string scope;
  if (o.global_scope) {
    scope = "global";
  } else {
    const std::optional<std::string_view> key_id = r.attribute("auth.key_id");
    if (!key_id || key_id->empty()) {
      if (reason != nullptr) *reason = "no_key_id";
      return std::nullopt;
    }
    scope.reserve(4 + key_id->size());
    scope = "key:";
    scope.append(key_id->data(), key_id->size());
  }
  const std::optional<std::string> body = r.canonical_body(o.exclude_fields);
  if (!body) {
    if (reason != nullptr) *reason = "not_json";
    return std::nullopt;
  }
  return request_key_of(scope, static_cast<int>(r.flavour()), r.path(), r.model(), *body);
}

}  // namespace glmp
