#include "key_logic.hpp"

#include <glmproxy/sdk.hpp>

#include <algorithm>
#include <memory>
#include <array>
#include <regex>
#include <stdexcept>

#include <openssl/evp.h>

#include <Poco/DateTime.h>
#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeParser.h>
#include <Poco/Exception.h>
#include <Poco/RandomStream.h>

namespace glmp::plugins::auth {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string base62(size_t chars) {
  static constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  // Rejection sampling over random bytes (values < 248 = 4 × 62) keeps every symbol equally likely.
  Poco::RandomInputStream random;
  std::string out;
  out.reserve(chars);
  while (out.size() < chars) {
    char c = 0;
    random.get(c);
    const auto v = static_cast<unsigned char>(c);
    if (v < 248) out.push_back(kAlphabet[v % 62]);
  }
  return out;
}

ValidationError error(std::string field, std::string message) { return {std::move(field), std::move(message)}; }

bool printable_without_spaces(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

}  // namespace

Credential extract_credential(std::optional<std::string_view> authorization, std::optional<std::string_view> x_api_key,
                              std::optional<std::string_view> query_api_key) {
  Credential empty;  // the first present-but-empty source, reported if nothing has a key
  auto consider = [&](CredentialSource source, std::string_view value) -> std::optional<Credential> {
    value = trim(value);
    if (!value.empty()) return Credential{source, std::string(value)};
    if (!empty.present()) empty.source = source;
    return std::nullopt;
  };
  if (authorization) {
    const std::string_view a = trim(*authorization);
    if (a.size() >= 6 && iequals(a.substr(0, 6), "bearer") && (a.size() == 6 || a[6] == ' ' || a[6] == '\t')) {
      if (auto c = consider(CredentialSource::Bearer, a.substr(6))) return *c;
    }
  }
  if (x_api_key)
    if (auto c = consider(CredentialSource::XApiKey, *x_api_key)) return *c;
  if (query_api_key)
    if (auto c = consider(CredentialSource::Query, *query_api_key)) return *c;
  return empty;
}

std::string sha256_hex(std::string_view data) {
  // OpenSSL's SHA-256 (it uses the CPU's SHA extensions where there are some): Poco's portable
  // SHA2Engine cost about 10 000 instructions per key, on every authenticated request. The
  // digest is fetched once (freed when the plugin is unloaded).
  static const std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)> md(EVP_MD_fetch(nullptr, "SHA256", nullptr), &EVP_MD_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!md || EVP_Digest(data.data(), data.size(), digest, &len, md.get(), nullptr) != 1 || len != 32)
    throw std::runtime_error("SHA-256 failed (OpenSSL)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

std::string generate_key(size_t random_bytes) {
  // 32 random bytes carry 256 bits; 43 base62 symbols carry 43 × log2(62) ≈ 256 bits.
  const size_t chars = (random_bytes * 8 * 1000 + 5953) / 5954;  // ceil(bits / log2(62))
  return "pk_" + base62(chars);
}

std::string generate_id() { return "key_" + base62(16); }

std::string mask(std::string_view prefix, std::string_view suffix) {
  return std::string(prefix) + "\xE2\x80\xA6" + std::string(suffix);  // "pk_abcd…wxyz"
}

std::optional<Millis> parse_rfc3339(std::string_view text) {
  static const std::regex kShape(R"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))");
  const std::string s(text);
  if (!std::regex_match(s, kShape)) return std::nullopt;
  Poco::DateTime dt;
  int tzd = 0;
  // Poco checks the ranges (month 13, day 31 of a 30-day month, hour 24…).
  if (!Poco::DateTimeParser::tryParse(Poco::DateTimeFormat::ISO8601_FRAC_FORMAT, s, dt, tzd)) return std::nullopt;
  const int month = std::stoi(s.substr(5, 2)), day = std::stoi(s.substr(8, 2));
  if (dt.month() != month || dt.day() != day) return std::nullopt;  // Poco normalises some overflows
  dt.makeUTC(tzd);
  return dt.timestamp().epochMicroseconds() / 1000;
}

std::string format_rfc3339(Millis ms) { return glmp::format_rfc3339(ms); }

Millis now_ms() { return glmp::unix_ms(); }

KeyInfo key_info(const Json& r) {
  try {
    KeyInfo k;
    k.id = r.at("id").get<std::string>();
    k.name = r.value("name", std::string());
    if (r.contains("model") && r["model"].is_string()) k.model = r["model"].get<std::string>();
    k.key_masked = mask(r.value("key_prefix", std::string()), r.value("key_suffix", std::string()));
    if (r.contains("created_at") && r["created_at"].is_string()) k.created_at = r["created_at"].get<std::string>();
    if (r.contains("last_used") && r["last_used"].is_string()) k.last_used = r["last_used"].get<std::string>();
    if (r.contains("token_limit_per_5h") && r["token_limit_per_5h"].is_number_integer())
      k.token_limit = r["token_limit_per_5h"].get<int64_t>();
    if (r.contains("expiry_date") && r["expiry_date"].is_string()) {
      k.expiry_date = r["expiry_date"].get<std::string>();
      k.expires = parse_rfc3339(k.expiry_date);
      // A stored date that does not parse counts as already expired: never as "never expires".
      if (!k.expires) k.expires = 0;
    }
    k.enabled = r.value("enabled", true);
    if (r.contains("allowed_models") && r["allowed_models"].is_array())
      for (const auto& m : r["allowed_models"])
        if (m.is_string()) k.allowed_models.push_back(m.get<std::string>());
    return k;
  } catch (const Json::exception& e) {
    throw std::runtime_error(std::string("corrupt key record: ") + e.what());
  }
}

std::optional<ValidationError> apply_fields(const Json& input, Json& record, bool allow_key, std::string* custom_key) {
  if (!input.is_object()) return error("", "the body must be a JSON object");
  Json out = record;
  for (const auto& [field, v] : input.items()) {
    if (field == "name") {
      if (!v.is_string() || v.get<std::string>().empty() || v.get<std::string>().size() > 200)
        return error(field, "must be a non-empty string of at most 200 characters");
      out[field] = v;
    } else if (field == "model") {
      if (!v.is_null() && (!v.is_string() || v.get<std::string>().empty() || v.get<std::string>().size() > 200))
        return error(field, "must be a non-empty string or null");
      out[field] = v;
    } else if (field == "token_limit_per_5h") {
      if (!v.is_null() && (!v.is_number_integer() || v.get<int64_t>() < 0))
        return error(field, "must be an integer >= 0 or null");
      out[field] = v;
    } else if (field == "expiry_date") {
      if (!v.is_null() && (!v.is_string() || !parse_rfc3339(v.get<std::string>())))
        return error(field, "must be an RFC 3339 date such as 2026-12-31T23:59:59Z, or null for no expiry");
      out[field] = v;
    } else if (field == "enabled") {
      if (!v.is_boolean()) return error(field, "must be true or false");
      out[field] = v;
    } else if (field == "allowed_models") {
      if (!v.is_null()) {
        if (!v.is_array()) return error(field, "must be an array of model names or null");
        for (const auto& m : v)
          if (!m.is_string() || m.get<std::string>().empty()) return error(field, "must contain only non-empty strings");
      }
      out[field] = v;
    } else if (field == "metadata") {
      if (!v.is_null() && !v.is_object()) return error(field, "must be a JSON object or null");
      out[field] = v;
    } else if (field == "key" && allow_key) {
      if (!v.is_string() || v.get<std::string>().size() < 8 || v.get<std::string>().size() > 256 ||
          !printable_without_spaces(v.get<std::string>()))
        return error(field, "must be 8 to 256 printable characters without spaces");
      if (custom_key) *custom_key = v.get<std::string>();
    } else {
      return error(field, "unknown field (allowed: name, model, token_limit_per_5h, expiry_date, enabled, "
                          "allowed_models, metadata" + std::string(allow_key ? ", key)" : ")"));
    }
  }
  record = std::move(out);
  return std::nullopt;
}

void set_secret(Json& record, std::string_view plain_key) {
  record["hash"] = sha256_hex(plain_key);
  record["key_prefix"] = std::string(plain_key.substr(0, std::min<size_t>(7, plain_key.size() / 3)));
  record["key_suffix"] = std::string(plain_key.substr(plain_key.size() - std::min<size_t>(4, plain_key.size() / 4)));
}

Json new_record(std::string_view plain_key, Millis now) {
  Json r = Json::object();
  r["id"] = generate_id();
  set_secret(r, plain_key);
  r["name"] = "";
  r["model"] = nullptr;
  r["token_limit_per_5h"] = nullptr;
  r["expiry_date"] = nullptr;
  r["enabled"] = true;
  r["allowed_models"] = nullptr;
  r["created_at"] = format_rfc3339(now);
  r["last_used"] = nullptr;
  r["metadata"] = nullptr;
  return r;
}

Json public_view(const Json& record) {
  Json v = record;
  v.erase("hash");
  v["key_masked"] = mask(record.value("key_prefix", std::string()), record.value("key_suffix", std::string()));
  return v;
}

// --- cache ---

std::optional<KeyCache::Hit> KeyCache::get(const std::string& hash, Millis now) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(hash);
  if (it == index_.end()) return std::nullopt;
  if (it->second->expires <= now) {
    lru_.erase(it->second);
    index_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return Hit{it->second->info};
}

void KeyCache::put(const std::string& hash, std::shared_ptr<const KeyInfo> info, Millis now) {
  if (capacity_ == 0) return;
  std::lock_guard lock(mutex_);
  const Millis expires = now + ttl_.count();
  if (auto it = index_.find(hash); it != index_.end()) {
    it->second->info = std::move(info);
    it->second->expires = expires;
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.push_front({hash, std::move(info), expires});
  index_.emplace(hash, lru_.begin());
  while (lru_.size() > capacity_) {
    index_.erase(lru_.back().hash);
    lru_.pop_back();
  }
}

void KeyCache::erase(const std::string& hash) {
  std::lock_guard lock(mutex_);
  if (auto it = index_.find(hash); it != index_.end()) {
    lru_.erase(it->second);
    index_.erase(it);
  }
}

void KeyCache::clear() {
  std::lock_guard lock(mutex_);
  lru_.clear();
  index_.clear();
}

size_t KeyCache::size() const {
  std::lock_guard lock(mutex_);
  return lru_.size();
}

// --- import ---

ImportResult parse_import(const Json& document, Millis now) {
  if (!document.is_object() || !document.contains("keys") || !document["keys"].is_array())
    throw std::runtime_error("expected {\"keys\":[…]} (the old proxy's apikeys.json)");
  ImportResult result;
  const Json& keys = document["keys"];
  for (size_t i = 0; i < keys.size(); ++i) {
    const Json& k = keys[i];
    if (!k.is_object()) {
      result.errors.push_back({i, error("", "each entry must be an object")});
      continue;
    }
    if (!k.contains("key") || !k["key"].is_string() || k["key"].get<std::string>().empty()) {
      result.errors.push_back({i, error("key", "is required")});
      continue;
    }
    ImportedKey imported;
    imported.plain_key = k["key"].get<std::string>();
    imported.record = new_record(imported.plain_key, now);
    Json fields = Json::object();
    fields["name"] = k.contains("name") && k["name"].is_string() && !k["name"].get<std::string>().empty()
                         ? k["name"]
                         : Json(imported.plain_key.substr(0, 7));
    for (const char* f : {"model", "token_limit_per_5h", "expiry_date"})
      if (k.contains(f)) fields[f] = k[f];
    if (auto err = apply_fields(fields, imported.record, false, nullptr)) {
      result.errors.push_back({i, *err});
      continue;
    }
    for (const char* f : {"created_at", "last_used"})
      if (k.contains(f) && k[f].is_string() && parse_rfc3339(k[f].get<std::string>())) imported.record[f] = k[f];
    if (k.contains("total_lifetime_tokens") && k["total_lifetime_tokens"].is_number_integer())
      imported.lifetime_tokens = k["total_lifetime_tokens"].get<int64_t>();
    if (k.contains("usage_windows") && k["usage_windows"].is_array())
      for (const auto& w : k["usage_windows"]) {
        if (!w.is_object() || !w.contains("window_start") || !w["window_start"].is_string()) continue;
        const auto start = parse_rfc3339(w["window_start"].get<std::string>());
        if (start && w.contains("tokens_used") && w["tokens_used"].is_number_integer() && w["tokens_used"].get<int64_t>() > 0)
          imported.usage_windows.emplace_back(*start, w["tokens_used"].get<int64_t>());
      }
    result.keys.push_back(std::move(imported));
  }
  return result;
}

}  // namespace glmp::plugins::auth
