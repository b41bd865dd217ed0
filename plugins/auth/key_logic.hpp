#pragma once
// The auth plugin's logic, kept free of the plugin ABI so unit tests and benchmarks link it
// directly: credential extraction, key hashing and generation, the key record (validation and
// JSON), RFC 3339 dates, and the lookup cache. See README.md for the behaviour.
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace glmp::plugins::auth {

using Json = nlohmann::json;
using Millis = int64_t;  // Unix time in ms

// --- credentials ---

enum class CredentialSource { None, Bearer, XApiKey, Query };

struct Credential {
  CredentialSource source = CredentialSource::None;
  std::string key;       // trimmed; empty when the source was present but empty
  bool present() const { return source != CredentialSource::None; }
};

// Picks the credential: Authorization Bearer > x-api-key > ?api_key (already decoded). An
// Authorization header of another scheme is ignored. A present-but-empty source is returned
// only when no other source has a key.
Credential extract_credential(std::optional<std::string_view> authorization, std::optional<std::string_view> x_api_key,
                              std::optional<std::string_view> query_api_key);

// --- keys ---

std::string sha256_hex(std::string_view data);
// "pk_" + base62 of `random_bytes` random bytes (43 characters after the prefix for 32 bytes).
std::string generate_key(size_t random_bytes = 32);
// "key_" + 16 base62 characters.
std::string generate_id();
// "pk_abcd…wxyz" from the stored prefix and suffix.
std::string mask(std::string_view prefix, std::string_view suffix);

// --- dates ---

// Strict RFC 3339 ("2026-12-31T23:59:59Z", fractions and ±hh:mm offsets allowed) → Unix ms.
std::optional<Millis> parse_rfc3339(std::string_view text);
// Unix ms → "2026-12-31T23:59:59.000Z".
std::string format_rfc3339(Millis ms);
Millis now_ms();

// --- the key record ---

// What the hot path needs of one key, parsed once from the stored record.
struct KeyInfo {
  std::string id, name, model, key_masked, created_at, last_used;
  std::optional<int64_t> token_limit;
  std::string expiry_date;        // as stored ("" = never)
  std::optional<Millis> expires;  // parsed expiry_date
  bool enabled = true;
  std::vector<std::string> allowed_models;
};

// Parses a stored record (never fails on a record this plugin wrote; throws std::runtime_error
// on a corrupt one).
KeyInfo key_info(const Json& record);

// Validation of admin input. On error, `field` and `message` say what is wrong.
struct ValidationError {
  std::string field;
  std::string message;
};

// Applies the editable fields of `input` (a JSON object) to `record`: name, model,
// token_limit_per_5h, expiry_date, enabled, allowed_models, metadata; `allow_key` also accepts
// "key" (creation: returned in `custom_key`). null clears an optional field. Unknown fields, wrong
// types and invalid values are errors; on error `record` is unchanged.
std::optional<ValidationError> apply_fields(const Json& input, Json& record, bool allow_key, std::string* custom_key);

// A new record for a plain key (hash, prefix/suffix, id, created_at); editable fields empty.
Json new_record(std::string_view plain_key, Millis now);
// What a record keeps of its plain key: the hash and the short prefix/suffix shown masked
// (creation and rotation).
void set_secret(Json& record, std::string_view plain_key);
// The record as the admin API shows it: without "hash", with "key_masked".
Json public_view(const Json& record);

// --- the lookup cache ---

// An LRU of hash → KeyInfo with a TTL, thread-safe. A cached "unknown key" (null info) is kept
// too, so a flood of bad keys does not hit the store.
class KeyCache {
public:
  KeyCache(size_t capacity, std::chrono::milliseconds ttl) : capacity_(capacity), ttl_(ttl) {}

  struct Hit {
    std::shared_ptr<const KeyInfo> info;  // null = known to be unknown
  };
  std::optional<Hit> get(const std::string& hash, Millis now);
  void put(const std::string& hash, std::shared_ptr<const KeyInfo> info, Millis now);
  void erase(const std::string& hash);
  void clear();
  size_t size() const;

private:
  struct Entry {
    std::string hash;
    std::shared_ptr<const KeyInfo> info;
    Millis expires;
  };
  const size_t capacity_;
  const std::chrono::milliseconds ttl_;
  mutable std::mutex mutex_;
  std::list<Entry> lru_;  // most recent first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

// --- the old proxy's apikeys.json ---

struct ImportedKey {
  std::string plain_key;
  Json record;                // ready to store (hash, id, fields)
  int64_t lifetime_tokens = 0;
  std::vector<std::pair<Millis, int64_t>> usage_windows;  // (window_start, tokens_used)
};
struct ImportResult {
  std::vector<ImportedKey> keys;
  std::vector<std::pair<size_t, ValidationError>> errors;  // (index in "keys", error)
};
// Parses {"keys":[{key, name, model, token_limit_per_5h, expiry_date, created_at, last_used,
// total_lifetime_tokens, usage_windows}]}. Throws std::runtime_error when the document itself is
// not that shape.
ImportResult parse_import(const Json& document, Millis now);

}  // namespace glmp::plugins::auth
