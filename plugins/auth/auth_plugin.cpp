// auth: proxy keys (pk_…) checked on every proxied request, per-key model, and the key
// management API under /admin/keys. Behaviour: README.md; settings and API: README.md.
//
// Hot path, in two phases. on_request_headers (before the core reads the body): pick the
// credential, SHA-256 it, look the hash up in an LRU cache (hit: no store access at all), else in
// the core store (key_hashes/<hash> → keys/<id>), and refuse a missing/unknown/disabled/expired key
// from the headers alone. on_request (body read): find the same key again through the cache the
// headers phase just filled, check the client's model against allowed_models, and hand the key's
// facts on as request attributes.
#include <glmproxy/sdk.hpp>

#include <fstream>
#include <sstream>

#include "key_logic.hpp"

namespace glmp::plugins::auth {
namespace {

constexpr std::string_view kKeys = "keys";
constexpr std::string_view kHashes = "key_hashes";
// <id> → {"last_used": "<RFC 3339>"}: kept apart from keys/<id> so the write-back never rewrites
// (and so never undoes) what an admin wrote there. See README.md, "Storage and caching".
constexpr std::string_view kLastUsed = "key_last_used";
constexpr Millis kFiveHours = 5 * 3600'000;
constexpr Millis kLastUsedEvery = 60'000;

const char* const kMissingKey = "API key required. Use Authorization: Bearer <key> or x-api-key: <key>";


void respond_json(glmp::Request& r, int status, const Json& body) { r.respond(status, "application/json", body.dump()); }

void respond_invalid(glmp::Request& r, int status, const std::string& message, const std::string& field = "") {
  Json e = {{"message", message}, {"type", status == 404 ? "not_found_error" : status == 503 ? "api_error" : "invalid_request_error"}};
  if (!field.empty()) e["field"] = field;
  respond_json(r, status, Json{{"error", e}});
}

// A 400 for admin input that failed validation, naming the field.
void respond_validation(glmp::Request& r, const ValidationError& err) {
  respond_invalid(r, 400, err.field.empty() ? err.message : err.field + ": " + err.message, err.field);
}

}  // namespace

class Auth final : public glmp::Plugin {
public:
  // Hooks only compute and use the store (short critical sections, no I/O of their own): with a
  // memory or SQLite store they run on the event loop, with Redis on a worker (the core decides).
  static constexpr bool nonblocking = true;

  Auth(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        store_(host.store()),
        cache_(static_cast<size_t>(std::max<int64_t>(0, settings.get_int("cache_size", 10'000))),
               settings.get_duration("cache_ttl", std::chrono::seconds(5))),
        lookups_(host.counter("glmp_auth_lookups_total", "Key lookups by result", {{"result", "cache_hit"}})),
        misses_(host.counter("glmp_auth_lookups_total", "Key lookups by result", {{"result", "store"}})),
        rejected_(host.counter("glmp_auth_rejected_total", "Requests refused by auth", {})) {
    settings.allow_only({"cache_size", "cache_ttl", "import_file"});
    if (settings.get_int("cache_size", 10'000) < 0) throw glmp::SettingsError("setting \"cache_size\" must be >= 0");
    if (!store_.available()) throw glmp::SettingsError("the auth plugin needs a host with the state store (ABI 1.1)");

    host.register_route("", "/admin/keys", glmp::Access::Admin, [this](glmp::Request& r) { keys_root(r); });
    host.register_route("", "/admin/keys/*", glmp::Access::Admin, [this](glmp::Request& r) { keys_item(r); });

    const std::string import_file = settings.get_string("import_file", "");
    if (!import_file.empty()) import_at_start(import_file);
  }

  // Headers phase: everything the credential alone decides (401/403/503), before the body is read.
  glmp::Status on_request_headers(glmp::Request& r) override {
    std::shared_ptr<const KeyInfo> info;
    return check_credential(r, now_ms(), true, info);
  }

  glmp::Status on_request(glmp::Request& r) override {
    // The key again, as the headers phase found it: from the lookup cache it just filled (not
    // counted as a second lookup), from the store only if the entry is gone (cache_size = 0,
    // evicted) — then re-checked, so a key disabled in between is refused here. Also the whole
    // check when the host ran no headers phase.
    const Millis now = now_ms();
    std::shared_ptr<const KeyInfo> info;
    if (const glmp::Status s = check_credential(r, now, false, info); s != glmp::Status::Continue) return s;

    std::string client_model;
    if (!info->model.empty()) {
      r.set_model(info->model);
    } else if (!info->allowed_models.empty()) {
      // The client's own model, the body's top-level "model" (request.model() is already the
      // core's [proxy] model): found by the core's scan of the body, only its value is parsed.
      if (const auto raw = r.body_member("model")) {
        const Json model = Json::parse(*raw, nullptr, false);
        if (model.is_string()) client_model = model.get<std::string>();
      }
      if (std::find(info->allowed_models.begin(), info->allowed_models.end(), client_model) == info->allowed_models.end())
        return reject(r, 403, "Model '" + client_model + "' is not allowed for this API key");
      r.set_model(client_model);  // keeps it: the core's [proxy] model would replace it otherwise
    }

    r.set_attribute("auth.key_id", info->id);
    r.set_attribute("auth.key_name", info->name);
    // The model the request will use: the key's, the allowed one the client chose, or the core's.
    r.set_attribute("auth.model", !info->model.empty() ? info->model : !client_model.empty() ? client_model : std::string(r.model()));
    if (info->token_limit) r.set_attribute("auth.token_limit_per_5h", std::to_string(*info->token_limit));
    r.set_attribute("auth.key_masked", info->key_masked);
    r.set_attribute("auth.expiry_date", info->expiry_date);
    r.set_attribute("auth.created_at", info->created_at);
    r.set_attribute("auth.last_used", info->last_used);
    touch(info->id, now);
    return glmp::Status::Continue;
  }

private:
  // The credential → the key, checked for existence, enabled and expiry. Continue with `info` set,
  // or the refusal (answered). `count` = count the lookup in glmp_auth_lookups_total (the headers
  // phase's; on_request's re-read of a cache entry is not a new lookup).
  glmp::Status check_credential(glmp::Request& r, Millis now, bool count, std::shared_ptr<const KeyInfo>& info) {
    const std::optional<std::string> query_key = glmp::query_param(r.query(), "api_key");
    const Credential cred = extract_credential(r.client_header("authorization"), r.client_header("x-api-key"),
                                               query_key ? std::optional<std::string_view>(*query_key) : std::nullopt);
    if (!cred.present()) return reject(r, 401, kMissingKey);
    if (cred.key.empty()) return reject(r, 401, "API key is empty");

    const std::string hash = sha256_hex(cred.key);
    if (auto hit = cache_.get(hash, now)) {
      if (count) lookups_.inc();
      info = hit->info;
    } else {
      misses_.inc();
      glmp::StoreStatus status = glmp::StoreStatus::Ok;
      info = load(hash, status);
      if (status == glmp::StoreStatus::Unavailable) return reject(r, 503, "API key store unavailable");
      cache_.put(hash, info, now);
    }
    if (!info) return reject(r, 401, "Invalid API key");
    if (!info->enabled) return reject(r, 403, "API key is disabled");
    if (info->expires && *info->expires <= now) return reject(r, 403, "API key expired on " + info->expiry_date);
    return glmp::Status::Continue;
  }

  glmp::Status reject(glmp::Request& r, int status, const std::string& message) {
    rejected_.inc();
    r.respond_error(status, message);
    return glmp::Status::Responded;
  }

  // hash → the key, from the store. null = unknown key. `status` is Unavailable when the store
  // could not answer (not cached then).
  std::shared_ptr<const KeyInfo> load(const std::string& hash, glmp::StoreStatus& status) {
    auto index = store_.get(kHashes, hash);
    status = index.status;
    if (!index.ok() && index.status != glmp::StoreStatus::Degraded) return nullptr;
    const Json idx = Json::parse(index.value, nullptr, false);
    if (!idx.is_object() || !idx.contains("id") || !idx["id"].is_string()) return nullptr;
    auto record = store_.get(kKeys, idx["id"].get<std::string>());
    status = record.status;
    if (!record.ok() && record.status != glmp::StoreStatus::Degraded) return nullptr;
    Json rec = Json::parse(record.value, nullptr, false);
    if (!rec.is_object() || rec.value("hash", std::string()) != hash) return nullptr;  // rotated away meanwhile
    merge_last_used(rec);
    try {
      return std::make_shared<const KeyInfo>(key_info(rec));
    } catch (const std::exception& e) {
      host().log_error(std::string("key ") + idx["id"].get<std::string>() + ": " + e.what());
      return nullptr;
    }
  }

  // last_used, written back at most once a minute per key (a store write per request would turn
  // every request into a write, and on Redis into an invalidation broadcast). It goes to its own
  // record, key_last_used/<id>, written blind: the key record is never read-modified-written here,
  // so an admin change to it (enabled:false, …) landing meanwhile can never be undone.
  void touch(const std::string& id, Millis now) {
    {
      std::lock_guard lock(touch_mutex_);
      Millis& last = last_touch_[id];
      if (now - last < kLastUsedEvery) return;
      last = now;
      if (last_touch_.size() > 100'000) last_touch_.clear();
    }
    store_.put(kLastUsed, id, Json{{"last_used", format_rfc3339(now)}}.dump());
  }

  // The key record's last_used as the last write-back recorded it (when there is one; the record's
  // own field holds only what an import brought along).
  void merge_last_used(Json& rec) {
    if (!rec.contains("id") || !rec["id"].is_string()) return;
    auto got = store_.get(kLastUsed, rec["id"].get<std::string>());
    if (!got.ok() && got.status != glmp::StoreStatus::Degraded) return;
    const Json lu = Json::parse(got.value, nullptr, false);
    if (lu.is_object() && lu.contains("last_used") && lu["last_used"].is_string()) rec["last_used"] = lu["last_used"];
  }

  // A record as the admin API shows it, with the recorded last_used.
  Json view(Json rec) {
    merge_last_used(rec);
    return public_view(rec);
  }

  // --- admin API ---

  std::optional<Json> body_json(glmp::Request& r) {
    Json body = Json::parse(r.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      respond_invalid(r, 400, "the body must be a JSON object");
      return std::nullopt;
    }
    return body;
  }

  // Reads keys/<id>; answers 404/503 itself when it cannot.
  std::optional<Json> read_record(glmp::Request& r, const std::string& id) {
    auto got = store_.get(kKeys, id);
    if (got.status == glmp::StoreStatus::NotFound) {
      respond_invalid(r, 404, "no key with id '" + id + "'");
      return std::nullopt;
    }
    if (!got.ok()) {
      respond_invalid(r, 503, std::string("key store ") + std::string(glmp::store_status_name(got.status)));
      return std::nullopt;
    }
    return Json::parse(got.value, nullptr, false);
  }

  bool write(glmp::Request& r, glmp::StoreStatus s) {
    if (s == glmp::StoreStatus::Ok) return true;
    respond_invalid(r, s == glmp::StoreStatus::Invalid ? 400 : 503, std::string("key store ") + std::string(glmp::store_status_name(s)));
    return false;
  }

  void keys_root(glmp::Request& r) {
    if (r.method() == "POST") return create(r);
    if (r.method() == "GET") return list(r);
    respond_invalid(r, 405, "use GET or POST on /admin/keys");
  }

  void keys_item(glmp::Request& r) {
    std::string rest(r.path().substr(std::string_view("/admin/keys/").size()));
    const std::string method(r.method());
    if (rest == "import") return method == "POST" ? import(r) : respond_invalid(r, 405, "use POST on /admin/keys/import");
    if (rest.size() > 7 && rest.compare(rest.size() - 7, 7, "/rotate") == 0) {
      rest.resize(rest.size() - 7);
      return method == "POST" ? rotate(r, rest) : respond_invalid(r, 405, "use POST on /admin/keys/{id}/rotate");
    }
    if (rest.empty() || rest.find('/') != std::string::npos) return respond_invalid(r, 404, "no such route");
    if (method == "GET") {
      if (auto rec = read_record(r, rest)) respond_json(r, 200, view(*rec));
    } else if (method == "PATCH") {
      patch(r, rest);
    } else if (method == "DELETE") {
      remove(r, rest);
    } else {
      respond_invalid(r, 405, "use GET, PATCH or DELETE on /admin/keys/{id}");
    }
  }

  void create(glmp::Request& r) {
    auto body = body_json(r);
    if (!body) return;
    if (!body->contains("name")) return respond_invalid(r, 400, "name is required", "name");
    std::string custom;
    Json fields = Json::object();  // the editable fields given, validated
    if (auto err = apply_fields(*body, fields, true, &custom)) return respond_validation(r, *err);
    const std::string plain = custom.empty() ? generate_key() : custom;
    Json fresh = new_record(plain, now_ms());
    fresh.update(fields);
    const std::string hash = fresh["hash"];
    auto existing = store_.get(kHashes, hash);
    if (existing.ok()) return respond_invalid(r, 409, "this key already exists", "key");
    if (existing.status != glmp::StoreStatus::NotFound) return respond_invalid(r, 503, "key store unavailable");
    if (!write(r, store_.put(kKeys, fresh["id"].get<std::string>(), fresh.dump()))) return;
    if (!write(r, store_.put(kHashes, hash, Json{{"id", fresh["id"]}}.dump()))) return;
    cache_.erase(hash);
    Json out = public_view(fresh);
    out["key"] = plain;  // shown once
    respond_json(r, 201, out);
  }

  void list(glmp::Request& r) {
    const std::string query(r.query());
    std::string search = glmp::query_param(query, "search").value_or("");
    std::transform(search.begin(), search.end(), search.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string after = glmp::query_param(query, "after").value_or("");
    int64_t limit = 100;
    if (auto l = glmp::query_param(query, "limit")) {
      try {
        size_t pos = 0;
        limit = std::stoll(*l, &pos);
        if (pos != l->size()) limit = -1;
      } catch (...) {
        limit = -1;
      }
      if (limit < 1 || limit > 1000) return respond_invalid(r, 400, "limit must be 1..1000", "limit");
    }
    auto matches = [&](const Json& rec) {
      if (search.empty()) return true;
      for (const char* f : {"name", "id", "key_prefix"}) {
        std::string v = rec.value(f, std::string());
        std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
        if (v.find(search) != std::string::npos) return true;
      }
      return false;
    };
    Json keys = Json::array();
    bool more = false;
    std::string last;
    // Page through the store until `limit` matches are found (search filters while paging).
    for (;;) {
      glmp::StorePage page = store_.list(kKeys, "", after, 200);
      if (!page.ok()) return respond_invalid(r, 503, "key store unavailable");
      for (const auto& rec_text : page.records) {
        if (static_cast<int64_t>(keys.size()) == limit) {
          more = true;
          break;
        }
        after = rec_text.key;
        const Json rec = Json::parse(rec_text.value, nullptr, false);
        if (rec.is_object() && matches(rec)) {
          keys.push_back(view(rec));
          last = rec_text.key;
        }
      }
      if (more || !page.more) break;
    }
    respond_json(r, 200, Json{{"keys", keys}, {"more", more}, {"next_after", more ? last : ""}});
  }

  void patch(glmp::Request& r, const std::string& id) {
    auto body = body_json(r);
    if (!body) return;
    auto rec = read_record(r, id);
    if (!rec) return;
    if (auto err = apply_fields(*body, *rec, false, nullptr)) return respond_validation(r, *err);
    if (!write(r, store_.put(kKeys, id, rec->dump()))) return;
    cache_.erase(rec->value("hash", std::string()));
    respond_json(r, 200, view(*rec));
  }

  void remove(glmp::Request& r, const std::string& id) {
    auto rec = read_record(r, id);
    if (!rec) return;
    const std::string hash = rec->value("hash", std::string());
    // The hash index first: from that moment the key no longer resolves.
    const glmp::StoreStatus s = store_.remove(kHashes, hash);
    if (s != glmp::StoreStatus::Ok && s != glmp::StoreStatus::NotFound) return respond_invalid(r, 503, "key store unavailable");
    cache_.erase(hash);
    const glmp::StoreStatus s2 = store_.remove(kKeys, id);
    if (s2 != glmp::StoreStatus::Ok && s2 != glmp::StoreStatus::NotFound) return respond_invalid(r, 503, "key store unavailable");
    store_.remove(kLastUsed, id);  // best effort: an orphan is never read (ids are not reused)
    respond_json(r, 200, Json{{"deleted", id}});
  }

  void rotate(glmp::Request& r, const std::string& id) {
    auto rec = read_record(r, id);
    if (!rec) return;
    const std::string old_hash = rec->value("hash", std::string());
    const std::string plain = generate_key();
    set_secret(*rec, plain);
    if (!write(r, store_.put(kHashes, (*rec)["hash"].get<std::string>(), Json{{"id", id}}.dump()))) return;
    if (!write(r, store_.put(kKeys, id, rec->dump()))) return;
    store_.remove(kHashes, old_hash);
    cache_.erase(old_hash);
    Json out = view(*rec);
    out["key"] = plain;
    respond_json(r, 200, out);
  }

  void import(glmp::Request& r) {
    const Json doc = Json::parse(r.body(), nullptr, false);
    if (doc.is_discarded()) return respond_invalid(r, 400, "the body is not JSON");
    try {
      Json result = import_document(doc);
      if (result.contains("unavailable")) return respond_invalid(r, 503, "key store unavailable");
      respond_json(r, 200, result);
    } catch (const std::runtime_error& e) {
      respond_invalid(r, 400, e.what(), "keys");
    }
  }

  // Imports the old proxy's apikeys.json; idempotent (a key already present is reported, not
  // duplicated). Its usage moves along: lifetime tokens and the windows of the last 5 hours.
  Json import_document(const Json& doc) {
    const Millis now = now_ms();
    ImportResult parsed = parse_import(doc, now);
    Json imported = Json::array(), skipped = Json::array(), errors = Json::array();
    for (const auto& [index, err] : parsed.errors)
      errors.push_back({{"index", index}, {"field", err.field}, {"message", err.message}});
    for (auto& k : parsed.keys) {
      const std::string hash = k.record["hash"];
      const std::string id = k.record["id"];
      const std::string masked = public_view(k.record)["key_masked"];
      auto existing = store_.get(kHashes, hash);
      if (existing.ok()) {
        skipped.push_back({{"key_masked", masked}, {"reason", "already present"}});
        continue;
      }
      if (existing.status != glmp::StoreStatus::NotFound ||
          store_.put(kKeys, id, k.record.dump()) != glmp::StoreStatus::Ok ||
          store_.put(kHashes, hash, Json{{"id", id}}.dump()) != glmp::StoreStatus::Ok)
        return Json{{"unavailable", true}};
      cache_.erase(hash);
      if (k.lifetime_tokens > 0) store_.counter_add("tokens:lifetime:" + id, k.lifetime_tokens);
      for (const auto& [start, tokens] : k.usage_windows)
        if (start > now - kFiveHours && start <= now) store_.window_add("tokens:" + id, tokens, std::chrono::milliseconds(kFiveHours), start);
      imported.push_back({{"id", id}, {"name", k.record["name"]}, {"key_masked", masked}});
    }
    return Json{{"imported", imported}, {"skipped", skipped}, {"errors", errors}};
  }

  void import_at_start(const std::string& path) {
    glmp::StorePage any = store_.list(kKeys, "", "", 1);
    if (!any.ok()) throw glmp::SettingsError("import_file: the key store is unavailable");
    if (!any.records.empty()) {
      host().log_info("import_file " + path + " not imported: the store already has keys");
      return;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw glmp::SettingsError("import_file: cannot read \"" + path + "\"");
    std::stringstream ss;
    ss << in.rdbuf();
    const Json doc = Json::parse(ss.str(), nullptr, false);
    if (doc.is_discarded()) throw glmp::SettingsError("import_file: \"" + path + "\" is not JSON");
    Json result;
    try {
      result = import_document(doc);
    } catch (const std::runtime_error& e) {
      throw glmp::SettingsError("import_file: \"" + path + "\": " + e.what());
    }
    if (result.contains("unavailable")) throw glmp::SettingsError("import_file: the key store is unavailable");
    host().log_info("imported " + std::to_string(result["imported"].size()) + " key(s) from " + path + " (" +
                    std::to_string(result["skipped"].size()) + " already present, " +
                    std::to_string(result["errors"].size()) + " refused)");
    for (const auto& e : result["errors"]) host().log_warning("import_file: key #" + e["index"].dump() + ": " + e["field"].get<std::string>() + " " + e["message"].get<std::string>());
  }

  glmp::Store store_;
  KeyCache cache_;
  glmp::Counter lookups_, misses_, rejected_;
  std::mutex touch_mutex_;
  std::unordered_map<std::string, Millis> last_touch_;
};

}  // namespace glmp::plugins::auth

GLMP_PLUGIN(glmp::plugins::auth::Auth, "auth", "1.0.0");
