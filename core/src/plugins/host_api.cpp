// The glmp_host_api table: every host function a plugin can call, implemented over the request's
// RequestContext. Request handles are RequestContext pointers; instance handles NativePlugin pointers.
#include <charconv>
#include <cmath>
#include <cstring>

#include <Poco/Message.h>

#include "metrics/metrics.hpp"
#include "metrics/plugin_metrics.hpp"
#include "pipeline/errors.hpp"
#include "pipeline/headers.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/proxy.hpp"
#include "plugins/native_plugin.hpp"
#include "store/store.hpp"

namespace glmp::core::plugins {
namespace {

using pipeline::RequestContext;

RequestContext& C(glmp_request_host_ptr* r) { return *reinterpret_cast<RequestContext*>(r); }
NativePlugin& P(glmp_instance_host_ptr* i) { return *reinterpret_cast<NativePlugin*>(i); }
std::string S(const char* p, size_t n) { return p ? std::string(p, n) : std::string(); }
void out(const std::string& s, const char** data, size_t* len) {
  *data = s.data();
  *len = s.size();
}

// The index-th value of `name` in a header list.
int header_at(const http::Headers& headers, const char* name, size_t name_len, size_t index, const char** value,
              size_t* value_len) {
  const std::string* v = headers.find(std::string_view(name, name_len), index);
  if (!v) return 0;
  out(*v, value, value_len);
  return 1;
}

void log(glmp_instance_host_ptr* instance, glmp_log_level level, const char* msg, size_t len) {
  auto& logger = P(instance).logger();
  const std::string text = S(msg, len);
  switch (level) {
    case GLMP_LOG_TRACE: logger.trace(text); break;
    case GLMP_LOG_DEBUG: logger.debug(text); break;
    case GLMP_LOG_INFO: logger.information(text); break;
    case GLMP_LOG_WARNING: logger.warning(text); break;
    default: logger.error(text); break;
  }
}

void request_id(glmp_request_host_ptr* r, const char** d, size_t* n) { out(C(r).request_id, d, n); }
void request_method(glmp_request_host_ptr* r, const char** d, size_t* n) { out(C(r).method, d, n); }
void request_path(glmp_request_host_ptr* r, const char** d, size_t* n) { out(C(r).path, d, n); }
void request_query(glmp_request_host_ptr* r, const char** d, size_t* n) { out(C(r).query, d, n); }
glmp_flavour request_flavour(glmp_request_host_ptr* r) {
  return C(r).flavour == pipeline::Flavour::Anthropic ? GLMP_FLAVOUR_ANTHROPIC : GLMP_FLAVOUR_OPENAI;
}
int request_streaming(glmp_request_host_ptr* r) { return C(r).streaming ? 1 : 0; }
void request_model(glmp_request_host_ptr* r, const char** d, size_t* n) {
  auto& ctx = C(r);
  out(ctx.model ? *ctx.model : ctx.client_model, d, n);
}
void request_set_model(glmp_request_host_ptr* r, const char* m, size_t n) {
  auto& ctx = C(r);
  ctx.model = S(m, n);
  ctx.upstream_body_ready = false;
  // A body without "model" gets one inserted when a plugin sets it (the core's rewrite upserts).
}

int request_header(glmp_request_host_ptr* r, const char* name, size_t nl, size_t index, const char** v, size_t* vl) {
  return header_at(C(r).upstream_headers, name, nl, index, v, vl);
}
void request_remove_header(glmp_request_host_ptr* r, const char* name, size_t nl) {
  C(r).upstream_headers.erase(std::string_view(name, nl));
}
void request_set_header(glmp_request_host_ptr* r, const char* name, size_t nl, const char* v, size_t vl) {
  auto& h = C(r).upstream_headers;
  h.erase(std::string_view(name, nl));
  h.add(std::string_view(name, nl), std::string_view(v ? v : "", vl));
}

void request_body(glmp_request_host_ptr* r, const char** d, size_t* n) { out(C(r).body, d, n); }
void request_set_body(glmp_request_host_ptr* r, const char* d, size_t n) {
  C(r).body.assign(d ? d : "", n);
  C(r).body_scanned = false;  // request_body_member describes the new body
  C(r).upstream_body_ready = false;
}

int get_attribute(glmp_request_host_ptr* r, const char* name, size_t nl, const char** v, size_t* vl) {
  const std::string* value = C(r).attribute(std::string_view(name, nl));
  if (!value) return 0;
  out(*value, v, vl);
  return 1;
}
void set_attribute(glmp_request_host_ptr* r, const char* name, size_t nl, const char* v, size_t vl) {
  auto& attributes = C(r).attributes;
  if (attributes.capacity() == 0) attributes.reserve(16);  // auth + ratelimit set 12: no regrowth per request
  C(r).set_attribute(std::string_view(name, nl), S(v, vl));
}

int response_status(glmp_request_host_ptr* r) {
  auto& ctx = C(r);
  return ctx.status ? ctx.status : ctx.upstream_status;
}
int response_header(glmp_request_host_ptr* r, const char* name, size_t nl, size_t index, const char** v, size_t* vl) {
  return header_at(C(r).response_headers, name, nl, index, v, vl);
}
// Before the upstream answered (on_request) headers go to whatever response the request gets;
// afterwards (on_response_headers) they edit the upstream's headers before they are sent.
void response_set_header(glmp_request_host_ptr* r, const char* name, size_t nl, const char* v, size_t vl) {
  auto& ctx = C(r);
  std::string key = S(name, nl);
  if (ctx.upstream_status == 0) {
    if (ctx.extra_response_headers.capacity() == 0) ctx.extra_response_headers.reserve(4);  // ratelimit adds 3
    std::erase_if(ctx.extra_response_headers, [&](const auto& kv) { return pipeline::iequals(kv.first, key); });
    ctx.extra_response_headers.emplace_back(std::move(key), S(v, vl));
  } else {
    ctx.response_headers.erase(key);
    ctx.response_headers.add(key, std::string_view(v ? v : "", vl));
  }
}
void response_remove_header(glmp_request_host_ptr* r, const char* name, size_t nl) {
  auto& ctx = C(r);
  const std::string key = S(name, nl);
  std::erase_if(ctx.extra_response_headers, [&](const auto& kv) { return pipeline::iequals(kv.first, key); });
  ctx.response_headers.erase(key);
}
void response_usage(glmp_request_host_ptr* r, glmp_usage* u) {
  if (!u || u->struct_size < sizeof(uint32_t)) return;
  const auto& src = C(r).usage;
  glmp_usage full{};
  full.struct_size = sizeof(glmp_usage);
  full.seen = src.seen ? 1 : 0;
  full.input_tokens = src.input_tokens;
  full.output_tokens = src.output_tokens;
  full.cache_read_input_tokens = src.cache_read_input_tokens;
  full.cache_creation_input_tokens = src.cache_creation_input_tokens;
  full.total_tokens = src.total_tokens;
  const uint32_t n = std::min<uint32_t>(u->struct_size, sizeof(glmp_usage));
  std::memcpy(reinterpret_cast<char*>(u) + sizeof(uint32_t), reinterpret_cast<const char*>(&full) + sizeof(uint32_t),
              n - sizeof(uint32_t));
}

void respond(glmp_request_host_ptr* r, int status, const char* ct, size_t ctl, const char* body, size_t bl) {
  pipeline::EarlyResponse early;
  early.status = status;
  if (ct && ctl) early.content_type = S(ct, ctl);
  early.body = S(body, bl);
  C(r).early_response = std::move(early);
}
void respond_error(glmp_request_host_ptr* r, int status, const char* type, size_t tl, const char* msg, size_t ml) {
  auto& ctx = C(r);
  pipeline::EarlyResponse early;
  early.status = status;
  early.body = pipeline::error_body(ctx.flavour, {status, S(msg, ml), S(type, tl), ""});
  ctx.early_response = std::move(early);
}

void stream_begin(glmp_request_host_ptr* r, int status, const char* ct, size_t ctl) {
  auto& ctx = C(r);
  if (!ctx.response || ctx.plugin_stream || ctx.response->sent()) return;
  auto& resp = *ctx.response;
  pipeline::set_status(resp, status);
  resp.setContentType(ct && ctl ? S(ct, ctl) : std::string("text/event-stream"));
  resp.setChunkedTransferEncoding(true);
  for (const auto& [k, v] : ctx.extra_response_headers) resp.add(k, v);
  ctx.status = status;
  try {
    ctx.plugin_stream = &resp.send();
    ctx.plugin_stream->flush();
    ctx.ttfb = pipeline::Clock::now() - ctx.start;
  } catch (const Poco::Exception&) {
    ctx.client_gone = true;
  }
}
int stream_write(glmp_request_host_ptr* r, const char* d, size_t n) {
  auto& ctx = C(r);
  if (!ctx.plugin_stream || ctx.client_gone) return -1;
  ctx.plugin_stream->write(d, static_cast<std::streamsize>(n));
  ctx.plugin_stream->flush();
  if (!*ctx.plugin_stream) {
    ctx.client_gone = true;
    return -1;
  }
  ctx.bytes_out += n;
  return 0;
}
void stream_end(glmp_request_host_ptr* r) {
  auto& ctx = C(r);
  if (ctx.plugin_stream) ctx.plugin_stream->flush();
}

int register_route(glmp_instance_host_ptr* instance, const char* method, size_t ml, const char* path, size_t pl,
                   glmp_route_access access, glmp_route_handler handler, void* user_data) {
  auto& plugin = P(instance);
  if (!plugin.configuring() || !handler || !path || pl == 0 || path[0] != '/') return -1;
  if (access < GLMP_ACCESS_PUBLIC || access > GLMP_ACCESS_KEY_OR_ADMIN) {
    plugin.logger().error("register_route(\"" + S(path, pl) + "\") refused: unknown access " + std::to_string(static_cast<int>(access)));
    return -1;
  }
  PluginRoute route;
  route.method = S(method, ml);
  route.path = S(path, pl);
  if (route.path.back() == '*') {
    route.prefix = true;
    route.path.pop_back();
  }
  // Core routes stay the core's: nothing that would match or shadow one (plugin routes are looked
  // up before /health and /metrics, so a prefix "/heal*" would otherwise take /health over).
  if (shadows_core_route(route.path, route.prefix)) {
    plugin.logger().error("register_route(\"" + S(path, pl) + "\") refused: it would match or shadow a core route");
    return -1;
  }
  route.access = access;
  route.handler = handler;
  route.user_data = user_data;
  route.plugin = &plugin;
  plugin.add_route(std::move(route));
  return 0;
}


// --- 1.1: state store ---

std::string_view V(const char* p, size_t n) { return p ? std::string_view(p, n) : std::string_view(); }
store::Store* store_of(glmp_instance_host_ptr* instance) { return instance ? P(instance).services().store : nullptr; }
int code(store::Status s) { return static_cast<int>(s); }

int store_get(glmp_instance_host_ptr* i, const char* ns, size_t nl, const char* key, size_t kl, glmp_bytes_fn fn,
              void* user) {
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  std::string value;
  const store::Status s = st->get(V(ns, nl), V(key, kl), value);
  if ((s == store::Status::Ok || s == store::Status::Degraded) && fn) fn(user, value.data(), value.size());
  return code(s);
}
int store_put(glmp_instance_host_ptr* i, const char* ns, size_t nl, const char* key, size_t kl, const char* v, size_t vl) {
  auto* st = store_of(i);
  return st ? code(st->put(V(ns, nl), V(key, kl), V(v, vl))) : GLMP_STORE_UNAVAILABLE;
}
int store_delete(glmp_instance_host_ptr* i, const char* ns, size_t nl, const char* key, size_t kl) {
  auto* st = store_of(i);
  return st ? code(st->remove(V(ns, nl), V(key, kl))) : GLMP_STORE_UNAVAILABLE;
}
int store_list(glmp_instance_host_ptr* i, const char* ns, size_t nl, const char* prefix, size_t pl, const char* after,
               size_t al, size_t limit, glmp_record_fn fn, void* user, int* more) {
  if (more) *more = 0;
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  store::Page page;
  const store::Status s = st->list(V(ns, nl), V(prefix, pl), V(after, al), limit, page);
  if (s == store::Status::Ok && fn)
    for (const auto& r : page.records) fn(user, r.key.data(), r.key.size(), r.value.data(), r.value.size());
  if (more) *more = page.more ? 1 : 0;
  return code(s);
}
int window_add(glmp_instance_host_ptr* i, const char* name, size_t nl, int64_t amount, int64_t window, int64_t now,
               int64_t* sum) {
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  return code(st->window_add(V(name, nl), amount, window, now, sum));
}
int window_sum(glmp_instance_host_ptr* i, const char* name, size_t nl, int64_t window, int64_t now, int64_t* sum) {
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  int64_t value = 0;
  const store::Status s = st->window_sum(V(name, nl), window, now, value);
  if (sum) *sum = value;
  return code(s);
}
int window_buckets(glmp_instance_host_ptr* i, const char* name, size_t nl, int64_t window, int64_t now,
                   glmp_bucket_fn fn, void* user) {
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  std::vector<store::Bucket> buckets;
  const store::Status s = st->window_buckets(V(name, nl), window, now, buckets);
  if (fn)
    for (const auto& b : buckets) fn(user, b.start, b.amount);
  return code(s);
}
int counter_add(glmp_instance_host_ptr* i, const char* name, size_t nl, int64_t amount, int64_t* value) {
  auto* st = store_of(i);
  return st ? code(st->counter_add(V(name, nl), amount, value)) : GLMP_STORE_UNAVAILABLE;
}
int counter_get(glmp_instance_host_ptr* i, const char* name, size_t nl, int64_t* value) {
  auto* st = store_of(i);
  if (!st) return GLMP_STORE_UNAVAILABLE;
  int64_t v = 0;
  const store::Status s = st->counter_get(V(name, nl), v);
  if (value) *value = v;
  return code(s);
}
int64_t store_bucket_ms(glmp_instance_host_ptr* i) {
  auto* st = store_of(i);
  return st ? st->bucket_ms() : 60'000;
}

// --- 1.1: metrics ---

glmp_metric_host_ptr* metric_new(glmp_instance_host_ptr* instance, glmp_metric_kind kind, const char* name, size_t nl,
                                 const char* help, size_t hl, const glmp_label* labels, size_t label_count,
                                 const double* buckets, size_t bucket_count) {
  auto& plugin = P(instance);
  const std::string metric_name = S(name, nl);
  if (!plugin.configuring()) {
    plugin.logger().error("metric_new(\"" + metric_name + "\") refused: metrics are created in on_config_new");
    return nullptr;
  }
  auto* registry = plugin.services().metrics;
  if (!registry) return nullptr;
  std::vector<std::pair<std::string, std::string>> label_list;
  for (size_t k = 0; labels && k < label_count; ++k)
    label_list.emplace_back(S(labels[k].name, labels[k].name_len), S(labels[k].value, labels[k].value_len));
  std::vector<double> bounds;
  if (buckets) bounds.assign(buckets, buckets + bucket_count);
  std::string error;
  metrics::PluginMetric* m = registry->create(kind, metric_name, S(help, hl), label_list, bounds, error);
  if (!m) plugin.logger().error("metric_new refused: " + error);
  return reinterpret_cast<glmp_metric_host_ptr*>(m);
}
metrics::PluginMetric* M(glmp_metric_host_ptr* m) { return reinterpret_cast<metrics::PluginMetric*>(m); }
void metric_add(glmp_metric_host_ptr* handle, double value) {
  auto* m = M(handle);
  if (!m) return;
  if (m->counter && value >= 0) m->counter->Increment(value);
  else if (m->gauge) m->gauge->Increment(value);
}
void metric_set(glmp_metric_host_ptr* handle, double value) {
  auto* m = M(handle);
  if (m && m->gauge) m->gauge->Set(value);
}
void metric_observe(glmp_metric_host_ptr* handle, double value) {
  auto* m = M(handle);
  if (m && m->histogram) m->histogram->Observe(value);
}

int request_client_header(glmp_request_host_ptr* r, const char* name, size_t nl, size_t index, const char** v,
                          size_t* vl) {
  const auto* req = C(r).request;
  return req ? header_at(req->headers(), name, nl, index, v, vl) : 0;
}

// --- 1.4 ---

int request_body_member(glmp_request_host_ptr* r, const char* name, size_t nl, const char** v, size_t* vl) {
  auto& ctx = C(r);
  if (ctx.body.empty()) return 0;  // no body, or not read yet (headers phase): nothing to remember
  if (!ctx.body_scanned) {
    pipeline::scan_top_level(ctx.body, ctx.body_scan);
    ctx.body_scanned = true;
  }
  if (!ctx.body_scan.ok || !ctx.body_scan.is_object) return 0;
  const pipeline::JsonMember* m = ctx.body_scan.find(V(name, nl));
  if (!m) return 0;
  *v = ctx.body.data() + m->value_begin;
  *vl = m->value_end - m->value_begin;
  return 1;
}

// --- 1.5: recordings ---

// A plugin's reference to a recording: one box per reference handed out, counted.
struct RecordingBox {
  std::shared_ptr<pipeline::Recording> rec;
  std::atomic<int> refs{1};
};
RecordingBox* B(glmp_recording_host_ptr* h) { return reinterpret_cast<RecordingBox*>(h); }

// Only a proxied request that has not been answered can record or follow.
bool may_answer_from_recording(const RequestContext& ctx) {
  return ctx.route != nullptr && !ctx.follow && !ctx.early_response && !ctx.plugin_stream && ctx.status == 0;
}

glmp_recording_host_ptr* request_record(glmp_request_host_ptr* r, size_t max_bytes) {
  auto& ctx = C(r);
  if (!may_answer_from_recording(ctx)) return nullptr;
  if (!ctx.recording) ctx.recording = std::make_shared<pipeline::Recording>(max_bytes, ctx.flavour);
  else ctx.recording->want(max_bytes);
  return reinterpret_cast<glmp_recording_host_ptr*>(new RecordingBox{ctx.recording});
}
void recording_retain(glmp_recording_host_ptr* h) {
  if (h) B(h)->refs.fetch_add(1, std::memory_order_relaxed);
}
void recording_release(glmp_recording_host_ptr* h) {
  if (h && B(h)->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete B(h);
}
void recording_info(glmp_recording_host_ptr* h, glmp_recording_info* o) {
  if (!h || !o || o->struct_size < sizeof(uint32_t)) return;
  const auto i = B(h)->rec->info();
  glmp_recording_info full{};
  full.struct_size = sizeof(glmp_recording_info);
  full.state = static_cast<int32_t>(i.state);
  full.status = i.status;
  full.streamed = i.sse ? 1 : 0;
  full.ended_normally = i.ended_normally ? 1 : 0;
  full.replayable = i.replayable ? 1 : 0;
  full.body_bytes = i.body_bytes;
  full.started_ms = i.started_ms;
  full.finished_ms = i.finished_ms;
  full.followers = i.followers;
  full.input_tokens = i.usage.input_tokens;
  full.output_tokens = i.usage.output_tokens;
  full.cache_read_input_tokens = i.usage.cache_read_input_tokens;
  full.cache_creation_input_tokens = i.usage.cache_creation_input_tokens;
  full.total_tokens = i.usage.total_tokens;
  full.usage_seen = i.usage.seen ? 1 : 0;
  const uint32_t n = std::min<uint32_t>(o->struct_size, sizeof(glmp_recording_info));
  std::memcpy(reinterpret_cast<char*>(o) + sizeof(uint32_t), reinterpret_cast<const char*>(&full) + sizeof(uint32_t),
              n - sizeof(uint32_t));
}

int request_follow(glmp_request_host_ptr* r, glmp_recording_host_ptr* h, glmp_origin origin, uint32_t flags,
                   const glmp_header* headers, size_t count) {
  auto& ctx = C(r);
  if (!h || !may_answer_from_recording(ctx)) return -1;
  const auto& rec = B(h)->rec;
  // Its own recording, one of the other API flavour (its error events would be the wrong shape),
  // a failed one or one that outgrew its limit: not followable.
  if (rec == ctx.recording || rec->flavour() != ctx.flavour || !rec->followable()) return -1;
  RequestContext::Follow f;
  f.recording = rec;
  f.origin = origin == GLMP_ORIGIN_COALESCED ? pipeline::Origin::Coalesced : pipeline::Origin::Cache;
  f.fallback = (flags & GLMP_FOLLOW_FALLBACK) != 0;
  for (size_t i = 0; headers && i < count; ++i)
    f.headers.emplace_back(S(headers[i].name, headers[i].name_len), S(headers[i].value, headers[i].value_len));
  ctx.follow = std::move(f);
  // Its own recording (another plugin asked for one) will never be relayed: it fails at the end.
  return 0;
}
glmp_origin response_origin(glmp_request_host_ptr* r) { return static_cast<glmp_origin>(C(r).origin); }
void response_set_usage(glmp_request_host_ptr* r, const glmp_usage* u) {
  if (!u || u->struct_size < offsetof(glmp_usage, total_tokens) + sizeof(int64_t)) return;
  auto& ctx = C(r);
  pipeline::Usage usage;
  usage.seen = u->seen != 0;
  usage.input_tokens = std::max<int64_t>(0, u->input_tokens);
  usage.output_tokens = std::max<int64_t>(0, u->output_tokens);
  usage.cache_read_input_tokens = std::max<int64_t>(0, u->cache_read_input_tokens);
  usage.cache_creation_input_tokens = std::max<int64_t>(0, u->cache_creation_input_tokens);
  usage.total_tokens = std::max<int64_t>(0, u->total_tokens);
  usage.complete = true;
  ctx.usage = usage;
  ctx.usage_set = true;
}
int response_charge(glmp_request_host_ptr* r) {
  const auto& ctx = C(r);
  return ctx.origin == pipeline::Origin::Upstream || ctx.charge ? 1 : 0;
}
void response_set_charge(glmp_request_host_ptr* r, int charge) { C(r).charge = charge != 0; }

// The body as it will go upstream, computed once per body and model.
const std::string& upstream_body(RequestContext& ctx) {
  if (!ctx.upstream_body_ready) {
    bool hide = false;
    ctx.upstream_body_edited = pipeline::upstream_body_edits(ctx, ctx.upstream_body, hide);
    ctx.upstream_body_hides_usage = hide;
    ctx.upstream_body_ready = true;
  }
  return ctx.upstream_body_edited ? ctx.upstream_body : ctx.body;
}
void request_upstream_body(glmp_request_host_ptr* r, const char** d, size_t* n) { out(upstream_body(C(r)), d, n); }

int request_canonical_body(glmp_request_host_ptr* r, const glmp_string* exclude, size_t count, glmp_bytes_fn fn,
                           void* user_data) {
  auto& ctx = C(r);
  const std::string& body = upstream_body(ctx);
  if (body.empty()) return 0;
  thread_local pipeline::TopLevelScan edited_scan;
  const pipeline::TopLevelScan* scan = &ctx.body_scan;
  if (ctx.upstream_body_edited || !ctx.body_scanned) {
    pipeline::scan_top_level(body, edited_scan);
    scan = &edited_scan;
    if (!ctx.upstream_body_edited) {  // the body itself: keep the scan for request_body_member
      ctx.body_scan = edited_scan;
      ctx.body_scanned = true;
    }
  }
  if (!scan->ok) return 0;
  std::vector<std::string_view> names;
  names.reserve(count);
  for (size_t i = 0; exclude && i < count; ++i) names.push_back(V(exclude[i].data, exclude[i].len));
  thread_local std::string canonical;
  canonical.clear();
  if (!pipeline::canonical_json(body, *scan, names, canonical)) return 0;
  if (fn) fn(user_data, canonical.data(), canonical.size());
  if (canonical.capacity() > (1u << 20)) std::string().swap(canonical);
  return 1;
}
void request_defer_upstream(glmp_request_host_ptr* r, uint32_t ms) { C(r).defer_upstream_ms = std::min<uint32_t>(ms, 10000); }

// --- 1.6: request timings ---

int request_profile(glmp_request_host_ptr* r, glmp_request_profile* out) {
  if (!out || out->struct_size < sizeof(glmp_request_profile)) return 0;
  const auto& ctx = C(r);
  const int64_t now = ctx.since_start();
  out->status = ctx.status;
  out->upstream_status = ctx.upstream_status;
  out->reserved = 0;
  const int64_t unix_now_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  out->started_unix_us = unix_now_us - now / 1000;
  out->elapsed_ns = ctx.marks.ended >= 0 ? ctx.marks.ended : now;
  out->ttfb_ns = ctx.ttfb_ns();
  out->upstream_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(ctx.upstream_time).count();
  out->bytes_in = ctx.bytes_in;
  out->bytes_out = ctx.bytes_out;
  out->route = ctx.route ? ctx.route->prefix.data() : "";
  out->route_len = ctx.route ? ctx.route->prefix.size() : 0;
  out->error = ctx.error.data();
  out->error_len = ctx.error.size();
  return 1;
}

// The core's phases (from the exchange's marks) and every timed plugin hook, by start.
size_t request_timings(glmp_request_host_ptr* r, glmp_timing* out, size_t cap) {
  const auto& ctx = C(r);
  const auto& m = ctx.marks;
  thread_local std::vector<glmp_timing> spans;
  spans.clear();
  const int64_t now = ctx.since_start();
  const int64_t ttfb = ctx.ttfb_ns();
  auto phase = [&](const char* name, int64_t from, int64_t to) {
    if (from < 0 || to < from) return;
    spans.push_back(glmp_timing{name, std::strlen(name), nullptr, 0, from, to - from});
  };
  auto first = [](std::initializer_list<int64_t> marks) {
    for (int64_t v : marks)
      if (v >= 0) return v;
    return int64_t{-1};
  };
  const int64_t end = m.ended >= 0 ? m.ended : now;
  phase("receive", 0, m.received);
  if (m.deferred >= 0) phase("defer", m.deferred, first({m.upstream_start, end}));
  if (m.follow_start >= 0) phase("follow_wait", m.follow_start, first({m.follow_head, m.upstream_start, end}));
  if (m.upstream_start >= 0) phase("upstream_connect", m.upstream_start, first({m.upstream_ready, end}));
  if (m.upstream_ready >= 0) phase("upstream_headers", m.upstream_ready, first({m.upstream_head, end}));
  const int64_t head = m.upstream_head >= 0 ? m.upstream_head : m.follow_head;
  if (head >= 0 && ttfb >= head) phase("first_byte", head, ttfb);
  if (ttfb >= 0 && m.ended >= 0) phase("stream", ttfb, m.ended);
  if (const ChainRun* run = ctx.chain_run) {
    const auto& plugins = run->chain().plugins;
    for (size_t i = 0; i < plugins.size(); ++i) {
      const ChainRun::HookTimes* t = run->hook_times(i);
      if (!t) break;
      for (size_t h = 0; h < kHooks; ++h) {
        if (!(t->ran & (1u << h))) continue;
        const char* hook = hook_name(static_cast<Hook>(h));
        spans.push_back(glmp_timing{plugins[i]->name().data(), plugins[i]->name().size(), hook, std::strlen(hook),
                                    t->start_ns[h], t->dur_ns[h]});
      }
    }
  }
  std::stable_sort(spans.begin(), spans.end(), [](const glmp_timing& a, const glmp_timing& b) { return a.start_ns < b.start_ns; });
  if (out)
    for (size_t i = 0; i < std::min(cap, spans.size()); ++i) out[i] = spans[i];
  return spans.size();
}

int request_is_admin(glmp_request_host_ptr* r) { return C(r).is_admin ? 1 : 0; }

// --- 1.7: reading the metrics ---

// A bucket bound as the text format writes it: the shortest form that reads back the same.
std::string prometheus_number(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

size_t metrics_collect(glmp_instance_host_ptr* instance, const char* prefix, size_t prefix_len, glmp_sample_fn out,
                       void* user_data) {
  if (!instance || !out) return 0;
  metrics::Metrics* all = P(instance).services().all_metrics;
  if (!all) return 0;
  const std::string_view want(prefix ? prefix : "", prefix ? prefix_len : 0);
  size_t count = 0;
  std::vector<glmp_label> labels;
  std::string sample_name;
  for (const prometheus::MetricFamily& family : all->collect()) {
    if (!std::string_view(family.name).starts_with(want)) continue;
    glmp_metric_kind kind;
    switch (family.type) {
      case prometheus::MetricType::Counter: kind = GLMP_METRIC_COUNTER; break;
      case prometheus::MetricType::Gauge: kind = GLMP_METRIC_GAUGE; break;
      case prometheus::MetricType::Histogram: kind = GLMP_METRIC_HISTOGRAM; break;
      default: continue;  // no summaries or untyped families are registered
    }
    auto emit = [&](std::string_view name, double value) {
      glmp_metric_sample s{family.name.data(), family.name.size(), name.data(), name.size(), kind, 0,
                           labels.data(), labels.size(), value};
      out(user_data, &s);
      ++count;
    };
    for (const prometheus::ClientMetric& m : family.metric) {
      labels.clear();
      for (const auto& l : m.label) labels.push_back({l.name.data(), l.name.size(), l.value.data(), l.value.size()});
      if (kind == GLMP_METRIC_COUNTER) emit(family.name, m.counter.value);
      else if (kind == GLMP_METRIC_GAUGE) emit(family.name, m.gauge.value);
      else {
        sample_name = family.name + "_bucket";
        for (const auto& b : m.histogram.bucket) {
          const std::string le = std::isinf(b.upper_bound) ? std::string("+Inf") : prometheus_number(b.upper_bound);
          labels.push_back({"le", 2, le.data(), le.size()});
          emit(sample_name, static_cast<double>(b.cumulative_count));
          labels.pop_back();
        }
        emit(family.name + "_sum", m.histogram.sample_sum);
        emit(family.name + "_count", static_cast<double>(m.histogram.sample_count));
      }
    }
  }
  return count;
}

const glmp_host_api kHostApi = {
    sizeof(glmp_host_api), GLMP_ABI_MAJOR, GLMP_ABI_MINOR, log,
    request_id, request_method, request_path, request_query, request_flavour, request_streaming, request_model,
    request_set_model, request_header, request_set_header, request_remove_header, request_body, request_set_body,
    get_attribute, set_attribute, response_status, response_header, response_set_header, response_remove_header,
    response_usage, respond, respond_error, stream_begin, stream_write, stream_end, register_route,
    // 1.1
    store_get, store_put, store_delete, store_list, window_add, window_sum, window_buckets, counter_add, counter_get,
    store_bucket_ms, metric_new, metric_add, metric_set, metric_observe, request_client_header,
    // 1.4
    request_body_member,
    // 1.5
    request_record, recording_retain, recording_release, recording_info, request_follow, response_origin,
    response_set_usage, response_charge, response_set_charge, request_upstream_body, request_canonical_body,
    request_defer_upstream,
    // 1.6
    request_profile, request_timings, request_is_admin,
    // 1.7
    metrics_collect,
};

}  // namespace

const glmp_host_api& host_api() { return kHostApi; }

}  // namespace glmp::core::plugins
