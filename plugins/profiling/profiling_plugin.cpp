// profiling: one record per proxied request — status, sizes, usage, total time, time to first
// byte, the proxy's own overhead and every timed span (the core's phases and each plugin hook),
// from the core's request timings (ABI 1.6) — kept in memory within bounds, summarised and listed
// at /profiling (a key sees its own records, the admin everyone's). Optionally a Server-Timing
// response header. Semantics, bounds and settings: README.md.
//
// Hot path: on_complete only reads what the core already measured (one profile call, one timings
// call into a stack buffer), interns the span names without a lock, and copies the record into the
// store under one short lock, reusing the buffers of evicted records. No JSON is built until an
// endpoint is called.
#include <glmproxy/sdk.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "profile_store.hpp"

namespace glmp::plugins::profiling {
namespace {

constexpr std::string_view kKeyIdAttribute = "auth.key_id";
constexpr std::string_view kMissingKey = "API key required. Use Authorization: Bearer <key> or x-api-key: <key>";
// The same answer for a record that does not exist and one of another key: nobody learns which ids exist.
constexpr std::string_view kNotFound = "no profiling record with this request id";

// Spans read into the stack: a chain of up to ~5 plugins fits (7 core phases + 5 hooks each);
// a longer list is read again into the heap.
constexpr std::size_t kStackSpans = 32;

std::string_view view(const char* data, std::size_t len) noexcept {
  return data != nullptr ? std::string_view(data, len) : std::string_view();
}

// The plugin's own endpoints and the dashboard are never profiled.
bool unprofiled_path(std::string_view path) {
  return path.starts_with("/profiling") || path.starts_with("/dashboard");
}

// JSON text of an answer. Request ids, paths and models come from clients and may hold bytes that
// are not UTF-8: they are replaced (U+FFFD) instead of failing the whole answer.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// Who calls an endpoint, and which records that lets it act on.
struct Scope {
  bool admin = false;
  std::optional<std::string> key_id;  // nullopt: every key's (admin only)
};

}  // namespace

class Profiling final : public glmp::Plugin {
public:
  // Hooks only compute and call the host (a short critical section on the store).
  static constexpr bool nonblocking = true;

  Profiling(const glmp::Settings& settings, glmp::Host host)
      : Plugin(host),
        settings_(read_settings(settings)),
        metrics_(make_metrics(host)),
        store_(StoreLimits{settings_.max_records, settings_.max_age_ms, settings_.per_key_max}, observer(metrics_)) {
    if (host.host_abi_minor() < 6)
      throw glmp::SettingsError("the profiling plugin needs a host with request timings (ABI 1.6)");
    host.register_route("GET", "/profiling", glmp::Access::KeyOrAdmin, [this](glmp::Request& r) { list(r); });
    host.register_route("DELETE", "/profiling", glmp::Access::KeyOrAdmin, [this](glmp::Request& r) { remove(r); });
    host.register_route("GET", "/profiling/*", glmp::Access::KeyOrAdmin, [this](glmp::Request& r) { get_one(r); });
  }

  // Server-Timing: the spans known when the upstream's head is in (the core's phases up to
  // upstream_headers and the request hooks), durations in ms. Overriding this hook makes the core
  // call it for every request, so it returns at once when the header is off.
  void on_response_headers(glmp::Request& r) override {
    if (!settings_.server_timing) return;
    std::array<glmp_timing, kStackSpans> stack;
    std::vector<glmp_timing> heap;
    const std::span<const glmp_timing> spans = r.raw_timings(stack, heap);
    if (spans.empty()) return;
    std::string value;
    value.reserve(spans.size() * 40);
    char dur[32];
    for (const glmp_timing& t : spans) {
      if (!value.empty()) value += ", ";
      value.append(t.name, t.name_len);  // a token: plugin names and hooks are letters, digits, '_', '-'
      if (t.hook != nullptr) value.append(".").append(t.hook, t.hook_len);
      const int n = std::snprintf(dur, sizeof dur, ";dur=%.3f", static_cast<double>(t.dur_ns) / 1e6);
      if (n > 0) value.append(dur, std::min(static_cast<std::size_t>(n), sizeof dur - 1));
    }
    r.set_response_header("Server-Timing", value);
  }

  void on_complete(glmp::Request& r) override {
    const std::optional<glmp::Profile> p = r.profile();
    if (!p || p->route.empty()) return;  // only proxied routes (not plugin routes, not the core's own)
    const std::string_view path = r.path();
    if (unprofiled_path(path)) return;
    const std::string_view request_id = r.id();

    const bool failed = p->status >= 400 || !p->error.empty();
    const bool slow = p->elapsed_ns >= settings_.slow_threshold_ms * 1'000'000;
    if (!failed && !slow && !sampled_in(request_id, settings_.sample_rate)) {
      metrics_.sampled_out.inc();
      return;
    }

    std::array<glmp_timing, kStackSpans> stack;
    std::vector<glmp_timing> heap;
    const std::span<const glmp_timing> spans = r.raw_timings(stack, heap);
    std::array<Phase, kStackSpans> phase_stack;
    std::vector<Phase> phase_heap;
    Phase* phases = phase_stack.data();
    if (spans.size() > phase_stack.size()) {
      phase_heap.resize(spans.size());
      phases = phase_heap.data();
    }
    std::size_t n = 0;
    for (const glmp_timing& t : spans) {
      const std::uint16_t name = names_.intern(view(t.name, t.name_len), view(t.hook, t.hook_len));
      if (name != PhaseNames::kNone) phases[n++] = Phase{name, t.start_ns, t.dur_ns};
    }

    const glmp::Usage u = r.usage();
    const glmp::Origin origin = r.origin();
    RecordView v;
    v.request_id = request_id;
    v.key_id = r.attribute(kKeyIdAttribute).value_or(std::string_view());
    v.method = r.method();
    v.path = path;
    v.route = p->route;
    v.model = r.model();
    v.error = p->error;
    Figures& f = v.figures;
    f.status = p->status;
    f.upstream_status = p->upstream_status;
    f.streamed = r.streaming();
    f.cached = origin == glmp::Origin::Cache;
    f.coalesced = origin == glmp::Origin::Coalesced;
    f.bytes_in = p->bytes_in;
    f.bytes_out = p->bytes_out;
    f.usage = TokenUsage{u.seen, u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens};
    f.started_unix_us = p->started_unix_us;
    f.total_ns = p->elapsed_ns;
    f.ttft_ns = p->ttfb_ns;
    f.upstream_ns = p->upstream_ns;
    v.phases = std::span<const Phase>(phases, n);
    store_.insert(v, glmp::unix_ms());
  }

private:
  struct Metrics {
    glmp::Gauge records;
    glmp::Counter evicted_age, evicted_max_records, evicted_per_key;
    glmp::Counter sampled_out;
  };

  static Metrics make_metrics(const glmp::Host& host) {
    Metrics m;
    m.records = host.gauge("glmp_profiling_records", "Request profiles held in memory");
    constexpr std::string_view evictions_help = "Request profiles dropped by the retention bounds, by reason";
    m.evicted_age = host.counter("glmp_profiling_evictions_total", evictions_help, {{"reason", "age"}});
    m.evicted_max_records = host.counter("glmp_profiling_evictions_total", evictions_help, {{"reason", "max_records"}});
    m.evicted_per_key = host.counter("glmp_profiling_evictions_total", evictions_help, {{"reason", "per_key"}});
    m.sampled_out = host.counter("glmp_profiling_sampled_out_total", "Requests not profiled because of sample_rate");
    return m;
  }

  static StoreObserver observer(const Metrics& m) {
    StoreObserver o;
    o.changed = [records = m.records](std::int64_t delta) { records.add(static_cast<double>(delta)); };
    o.evicted = [age = m.evicted_age, max = m.evicted_max_records, per_key = m.evicted_per_key](Eviction why,
                                                                                                std::size_t n) {
      (why == Eviction::Age ? age : why == Eviction::MaxRecords ? max : per_key).add(static_cast<double>(n));
    };
    return o;
  }

  // Who is calling and which records the query selects; nullopt after answering a refusal. A key
  // acts on its own records only (its id from auth); the admin token on everyone's, or on one key's
  // with ?key_id=. An unknown or empty parameter is refused, so a typo never widens a DELETE.
  std::optional<Scope> scope_of(glmp::Request& r) const {
    Scope s;
    s.admin = r.is_admin();
    if (!s.admin) {
      const auto key_id = r.attribute(kKeyIdAttribute);
      if (!key_id || key_id->empty()) {  // no auth plugin in the chain, and no admin token
        r.respond_error(401, std::string(kMissingKey));
        return std::nullopt;
      }
      s.key_id = std::string(*key_id);
    }
    std::string_view query = r.query();
    while (!query.empty()) {
      const std::size_t amp = query.find('&');
      const std::string_view pair = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (pair.empty()) continue;
      const std::size_t eq = pair.find('=');
      const std::string name = glmp::percent_decode(pair.substr(0, eq));
      const std::string value = eq == std::string_view::npos ? std::string() : glmp::percent_decode(pair.substr(eq + 1));
      if (name != "key_id") {
        r.respond_error(400, "unknown query parameter \"" + name + "\" (allowed: key_id)", "invalid_request_error");
        return std::nullopt;
      }
      if (value.empty()) {
        r.respond_error(400, "query parameter \"key_id\" must not be empty", "invalid_request_error");
        return std::nullopt;
      }
      if (!s.admin && value != *s.key_id) {
        r.respond_error(403, "a key can only see its own profiling records", "permission_error");
        return std::nullopt;
      }
      s.key_id = value;
    }
    return s;
  }

  // GET /profiling[?key_id=]
  void list(glmp::Request& r) {
    const std::optional<Scope> s = scope_of(r);
    if (!s) return;
    const std::vector<Record> records = store_.records(s->key_id, glmp::unix_ms());
    r.respond(200, "application/json", dump(listing_json(records, settings_, names_)));
  }

  // GET /profiling/{request_id}
  void get_one(glmp::Request& r) {
    const std::optional<Scope> s = scope_of(r);
    if (!s) return;
    constexpr std::string_view prefix = "/profiling/";
    const std::string id = glmp::percent_decode(r.path().substr(prefix.size()));
    const std::optional<Record> record = id.empty() ? std::nullopt : store_.find(id, s->key_id, glmp::unix_ms());
    if (!record) {
      r.respond_error(404, std::string(kNotFound), "not_found_error");
      return;
    }
    r.respond(200, "application/json", dump(record_json(*record, names_)));
  }

  // DELETE /profiling[?key_id=]
  void remove(glmp::Request& r) {
    const std::optional<Scope> s = scope_of(r);
    if (!s) return;
    r.respond(200, "application/json", dump(Json{{"deleted", store_.erase(s->key_id)}}));
  }

  const ProfilingSettings settings_;
  const Metrics metrics_;
  PhaseNames names_;
  ProfileStore store_;
};

}  // namespace glmp::plugins::profiling

GLMP_PLUGIN(glmp::plugins::profiling::Profiling, "profiling", "1.0.0");
