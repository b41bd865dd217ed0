// usage_meter: an example GLM Proxy plugin for the state store and plugin metrics (ABI 1.1).
//
//   - on_request reads the caller's meter key from X-Meter-Key ("anonymous" when absent) and
//     keeps it in the request attribute usage_meter.key;
//   - on_complete takes the response's usage (input + output tokens), updates three metrics, and
//     records the request in the store: a sliding window "<ns>:<key>", lifetime counters
//     "<ns>:total:<key>" (tokens) and "<ns>:requests:<key>" (requests), and the record <ns>/<key>
//     {"last_request_id":..., "last_tokens":N, "requests":N};
//   - GET /meter/<key> (public) shows one key, GET /meter?after=&limit= lists the records.
//
// Settings: {"window_ms": 18000000, "namespace": "usage_meter"} (both optional; these are the
// defaults). Store failures never fail a request: on_complete logs them at warning level; the
// routes answer 503 when the store is unavailable and flag a degraded store with "degraded":true.
#include <glmproxy/sdk.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace glmp::plugins::usage_meter {

namespace {

using Json = nlohmann::ordered_json;  // keeps keys in the order written

constexpr std::string_view kKeyHeader = "x-meter-key";
constexpr std::string_view kKeyAttribute = "usage_meter.key";
constexpr std::string_view kAnonymous = "anonymous";
constexpr std::string_view kKeyRoutePrefix = "/meter/";
constexpr std::size_t kDefaultLimit = 100;
constexpr std::size_t kMaxLimit = 1000;

// The stored JSON text as a JSON value (a string if it somehow is not JSON).
Json stored_value(const std::string& text) {
  Json value = Json::parse(text, nullptr, false);
  return value.is_discarded() ? Json(text) : value;
}

// Serializes without throwing on invalid UTF-8 (a key comes from a client).
std::string dump(const Json& body) { return body.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool any(std::initializer_list<StoreStatus> statuses, StoreStatus wanted) {
  for (const StoreStatus s : statuses) {
    if (s == wanted) return true;
  }
  return false;
}

}  // namespace

class UsageMeter final : public glmp::Plugin {
 public:
  // Runs in on_config_new (reload thread): the one place to create metrics and register routes.
  UsageMeter(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        window_(settings.get_int("window_ms", 18'000'000)),
        namespace_(settings.get_string("namespace", "usage_meter")),
        // The same name and labels give the same metric after a reload: the values carry on.
        requests_(host.counter("glmp_usage_meter_requests_total", "Requests completed through the usage_meter plugin",
                               {{"plugin", "usage_meter"}})),
        tokens_(host.histogram("glmp_usage_meter_request_tokens", "Input + output tokens per request",
                               {{"plugin", "usage_meter"}}, {10, 100, 1000, 10000, 100000})),
        last_tokens_(host.gauge("glmp_usage_meter_last_tokens", "Input + output tokens of the last completed request",
                                {{"plugin", "usage_meter"}})) {
    if (window_.count() <= 0) throw glmp::SettingsError("setting \"window_ms\" must be > 0");
    if (namespace_.empty()) throw glmp::SettingsError("setting \"namespace\" must not be empty");
    // The handlers capture `this`: the SDK keeps them until this object is destroyed.
    host.register_route("GET", "/meter/*", glmp::Access::Public, [this](glmp::Request& r) { show_key(r); });
    host.register_route("GET", "/meter", glmp::Access::Public, [this](glmp::Request& r) { list_keys(r); });
    host.log_info("metering into namespace \"" + namespace_ + "\", window " + std::to_string(window_.count()) + " ms" +
                  (host.store().available() ? "" : " (this host has no state store: nothing will be recorded)"));
  }

  glmp::Status on_request(glmp::Request& request) override {
    const std::optional<std::string_view> key = request.header(kKeyHeader);
    request.set_attribute(kKeyAttribute, key && !key->empty() ? *key : kAnonymous);
    return glmp::Status::Continue;
  }

  // Runs once per request, also when the upstream failed (then usage is usually not seen).
  void on_complete(glmp::Request& request) override {
    const std::optional<std::string_view> attribute = request.attribute(kKeyAttribute);
    const std::string key(attribute ? *attribute : kAnonymous);
    const glmp::Usage usage = request.usage();
    const std::int64_t tokens = usage.input_tokens + usage.output_tokens;

    // Metrics: lock-free, allocation-free; safe even if the host refused them (null handles).
    requests_.inc();
    tokens_.observe(static_cast<double>(tokens));
    last_tokens_.set(static_cast<double>(tokens));

    if (tokens <= 0 && !usage.seen) return;  // nothing to meter (e.g. the upstream failed)

    const glmp::Store store = host().store();
    const std::string window_name = namespace_ + ":" + key;
    check("window_add", window_name, store.window_add(window_name, tokens, window_).status);
    const std::string total_name = namespace_ + ":total:" + key;
    check("counter_add", total_name, store.counter_add(total_name, tokens).status);
    const std::string requests_name = namespace_ + ":requests:" + key;
    const glmp::StoreResult<std::int64_t> requests = store.counter_add(requests_name, 1);
    if (!check("counter_add", requests_name, requests.status)) {
      // The count is unknown (a degraded store reads 0): keep the record as it was rather than
      // overwrite it with a wrong "requests".
      return;
    }
    Json record;
    record["last_request_id"] = std::string(request.id());
    record["last_tokens"] = tokens;
    record["requests"] = requests.value;
    check("put", namespace_ + "/" + key, store.put(namespace_, key, dump(record)));
  }

 private:
  // Logs a store call that did not succeed (warning level). Returns true on Ok.
  bool check(std::string_view call, std::string_view name, glmp::StoreStatus status) const {
    if (status == glmp::StoreStatus::Ok) return true;
    host().log_warning("store " + std::string(call) + " \"" + std::string(name) +
                       "\": " + std::string(glmp::store_status_name(status)));
    return false;
  }

  static void respond_json(glmp::Request& request, int status, const Json& body) {
    request.respond(status, "application/json", dump(body));
  }

  static void respond_unavailable(glmp::Request& request) {
    respond_json(request, 503, Json{{"error", "store unavailable"}, {"status", "unavailable"}});
  }

  static void respond_invalid(glmp::Request& request, std::string_view message) {
    respond_json(request, 400, Json{{"error", std::string(message)}, {"status", "invalid"}});
  }

  // GET /meter/<key>: {"key","window_tokens","lifetime_tokens","record"[,"degraded"]}.
  void show_key(glmp::Request& request) const {
    const std::string_view path = request.path();
    const std::string key =
        glmp::percent_decode(path.substr(0, kKeyRoutePrefix.size()) == kKeyRoutePrefix ? path.substr(kKeyRoutePrefix.size()) : "");
    if (key.empty()) return respond_invalid(request, "missing key: GET /meter/<key>");

    const glmp::Store store = host().store();
    const glmp::StoreResult<std::int64_t> window = store.window_sum(namespace_ + ":" + key, window_);
    const glmp::StoreResult<std::int64_t> lifetime = store.counter_get(namespace_ + ":total:" + key);
    std::string record;
    const glmp::StoreStatus got = store.get(namespace_, key, record);

    const std::initializer_list<glmp::StoreStatus> statuses = {window.status, lifetime.status, got};
    if (any(statuses, glmp::StoreStatus::Unavailable)) return respond_unavailable(request);
    if (any(statuses, glmp::StoreStatus::Invalid)) {
      return respond_invalid(request, "the store refused the request (key too long, or window_ms above [store] max_window)");
    }
    Json body;
    body["key"] = key;
    body["window_tokens"] = window.value;
    body["lifetime_tokens"] = lifetime.value;
    body["record"] = (got == glmp::StoreStatus::Ok || got == glmp::StoreStatus::Degraded) && !record.empty()
                         ? stored_value(record)
                         : Json(nullptr);
    if (any(statuses, glmp::StoreStatus::Degraded)) body["degraded"] = true;
    respond_json(request, 200, body);
  }

  // GET /meter?after=<key>&limit=<n>: {"records":[{"key","value"}...],"more":bool[,"degraded"]}.
  void list_keys(glmp::Request& request) const {
    const std::string_view query = request.query();
    const std::string after = glmp::query_param(query, "after").value_or("");
    std::size_t limit = kDefaultLimit;
    if (const std::optional<std::string> raw = glmp::query_param(query, "limit")) {
      std::size_t parsed = 0;
      bool digits = !raw->empty() && raw->size() <= 4;
      for (const char c : *raw) {
        digits = digits && c >= '0' && c <= '9';
        if (digits) parsed = parsed * 10 + static_cast<std::size_t>(c - '0');
      }
      if (!digits || parsed < 1 || parsed > kMaxLimit) return respond_invalid(request, "limit must be an integer from 1 to 1000");
      limit = parsed;
    }

    const glmp::StorePage page = host().store().list(namespace_, "", after, limit);
    if (page.status == glmp::StoreStatus::Unavailable) return respond_unavailable(request);
    if (page.status == glmp::StoreStatus::Invalid) return respond_invalid(request, "the store refused the request (after too long)");
    Json records = Json::array();
    for (const glmp::StoreRecord& r : page.records) {
      Json item;
      item["key"] = r.key;
      item["value"] = stored_value(r.value);
      records.push_back(std::move(item));
    }
    Json body;
    body["records"] = std::move(records);
    body["more"] = page.more;
    if (page.status == glmp::StoreStatus::Degraded) body["degraded"] = true;
    respond_json(request, 200, body);
  }

  const std::chrono::milliseconds window_;
  const std::string namespace_;
  const glmp::Counter requests_;
  const glmp::Histogram tokens_;
  const glmp::Gauge last_tokens_;
};

}  // namespace glmp::plugins::usage_meter

GLMP_PLUGIN(glmp::plugins::usage_meter::UsageMeter, "usage_meter", "1.0.0");
