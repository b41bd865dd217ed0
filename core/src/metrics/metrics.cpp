#include "metrics/metrics.hpp"

#include <algorithm>

#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <prometheus/text_serializer.h>

namespace glmp::core::metrics {
namespace {

using prometheus::Histogram;

const char* flavour_name(const pipeline::RequestContext& ctx) {
  if (!ctx.route) return "none";
  return ctx.flavour == pipeline::Flavour::Anthropic ? "anthropic" : "openai";
}

double seconds(pipeline::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Seconds: 1 ms … 5 min for whole requests.
const Histogram::BucketBoundaries kRequestBuckets{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
// Seconds, fine-grained in microseconds: the proxy's own cost.
const Histogram::BucketBoundaries kOverheadBuckets{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05};

// What the scrape reads from /proc/self/status, in one pass.
struct ProcStatus {
  long rss_kb = 0, peak_rss_kb = 0, threads = 0;
};
ProcStatus proc_status() {
  ProcStatus s;
  std::ifstream in("/proc/self/status");
  std::string line;
  auto value = [&](const char* key, long& out) {
    const size_t n = std::strlen(key);
    if (line.compare(0, n, key) != 0) return false;
    out = std::strtol(line.c_str() + n, nullptr, 10);
    return true;
  };
  while (std::getline(in, line))
    if (!value("VmRSS:", s.rss_kb) && !value("VmHWM:", s.peak_rss_kb)) value("Threads:", s.threads);
  return s;
}

// The process's CPU time (user + system, all threads), in seconds.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

Metrics::Metrics(const std::vector<std::string>& route_prefixes)
    : registry_(std::make_shared<prometheus::Registry>()), plugin_metrics_(*registry_) {
  requests_ = &prometheus::BuildCounter().Name("glmp_requests_total").Help("Requests answered, by route, flavour and status").Register(*registry_);
  duration_ = &prometheus::BuildHistogram().Name("glmp_request_duration_seconds").Help("Total time per request").Register(*registry_);
  upstream_ = &prometheus::BuildHistogram().Name("glmp_upstream_duration_seconds").Help("Time spent waiting on the upstream per request").Register(*registry_);
  overhead_ = &prometheus::BuildHistogram().Name("glmp_proxy_overhead_seconds").Help("Total time minus upstream time per request").Register(*registry_);
  ttfb_ = &prometheus::BuildHistogram().Name("glmp_time_to_first_byte_seconds").Help("Time until the first response byte was flushed").Register(*registry_);
  tokens_ = &prometheus::BuildCounter().Name("glmp_tokens_total").Help("Tokens reported by upstreams, by direction, flavour and model").Register(*registry_);
  pool_ = &prometheus::BuildGauge().Name("glmp_upstream_pool").Help("Upstream connection pool figures at scrape time").Register(*registry_);
  h2_connection_streams_ = &prometheus::BuildGauge()
                                .Name("glmp_upstream_h2_connection_streams")
                                .Help("HTTP/2 streams open now on each upstream connection (connection = its serial number)")
                                .Register(*registry_);
  in_flight_ = &prometheus::BuildGauge().Name("glmp_requests_in_flight").Help("Requests being served (streams included)").Register(*registry_).Add({});
  active_streams_ = &prometheus::BuildGauge().Name("glmp_active_streams").Help("Event streams (SSE) being relayed to clients").Register(*registry_).Add({});
  auto& reloads = prometheus::BuildCounter().Name("glmp_plugin_reloads_total").Help("Plugin chain reloads by result").Register(*registry_);
  reload_ok_ = &reloads.Add({{"result", "success"}});
  reload_failed_ = &reloads.Add({{"result", "failure"}});
  auto& handshakes = prometheus::BuildCounter().Name("glmp_tls_handshakes_total").Help("TLS listener: connection starts by result (ok; failed: handshake error, or not finished within header_timeout; plain_http: a plain HTTP request on the TLS port, answered 400)").Register(*registry_);
  tls_ok_ = &handshakes.Add({{"result", "ok"}});
  tls_failed_ = &handshakes.Add({{"result", "failed"}});
  tls_plain_ = &handshakes.Add({{"result", "plain_http"}});
  tls_not_after_ = &prometheus::BuildGauge().Name("glmp_tls_certificate_not_after_seconds").Help("TLS listener: expiry of the certificate new connections get (unix seconds)").Register(*registry_);
  rss_ = &prometheus::BuildGauge().Name("glmp_process_resident_memory_bytes").Help("Resident set size").Register(*registry_).Add({});
  fds_ = &prometheus::BuildGauge().Name("glmp_process_open_fds").Help("Open file descriptors").Register(*registry_).Add({});
  threads_ = &prometheus::BuildGauge().Name("glmp_process_threads").Help("Threads").Register(*registry_).Add({});
  peak_rss_ = &prometheus::BuildGauge().Name("glmp_process_peak_resident_memory_bytes").Help("Peak resident set size (VmHWM)").Register(*registry_).Add({});
  cpu_seconds_ = &prometheus::BuildCounter().Name("glmp_process_cpu_seconds_total").Help("CPU time the process used, user and system, in seconds").Register(*registry_).Add({});
  auto& recorded = prometheus::BuildCounter().Name("glmp_recorded_responses_total").Help("Responses served from another request's recording, by origin (cache: replayed; coalesced: followed live)").Register(*registry_);
  recorded_cache_ = &recorded.Add({{"origin", "cache"}});
  recorded_coalesced_ = &recorded.Add({{"origin", "coalesced"}});
  recordings_ = &prometheus::BuildGauge().Name("glmp_recordings").Help("Recorded responses alive (being recorded, followed, or kept by a cache)").Register(*registry_).Add({});
  recording_bytes_ = &prometheus::BuildGauge().Name("glmp_recording_bytes").Help("Body bytes kept by recordings for replay and late followers").Register(*registry_).Add({});

  const char* names[3] = {"none", "openai", "anthropic"};
  for (size_t i = 0; i < 3; ++i) {
    const std::map<std::string, std::string> l{{"flavour", names[i]}};
    by_flavour_[i] = {&duration_->Add(l, kRequestBuckets), &upstream_->Add(l, kRequestBuckets),
                      &overhead_->Add(l, kOverheadBuckets), &ttfb_->Add(l, kRequestBuckets)};
  }

  route_index_[""] = 0;
  for (const auto& p : route_prefixes) route_index_.emplace(p, route_index_.size());
  for (size_t i = 0; i < route_index_.size(); ++i) {
    auto slots = std::make_unique<std::array<std::atomic<prometheus::Counter*>, kStatuses>>();
    for (auto& s : *slots) s.store(nullptr, std::memory_order_relaxed);
    slots_.push_back(std::move(slots));
  }
}

void Metrics::set_tls_certificate(int64_t not_after_unix) {
  tls_not_after_->Add({}).Set(static_cast<double>(not_after_unix));
}

Metrics::~Metrics() {
  for (auto& slot : token_slots_) delete slot.load();
}

prometheus::Counter& Metrics::request_counter(const pipeline::RequestContext& ctx) {
  const std::string& route = ctx.route ? ctx.route->prefix : std::string();
  auto labels = [&] {
    return std::map<std::string, std::string>{{"route", route}, {"flavour", flavour_name(ctx)}, {"status", std::to_string(ctx.status)}};
  };
  auto it = route_index_.find(route);
  if (it == route_index_.end() || ctx.status < 0 || ctx.status >= kStatuses) return requests_->Add(labels());
  auto& slot = (*slots_[it->second])[static_cast<size_t>(ctx.status)];
  prometheus::Counter* c = slot.load(std::memory_order_acquire);
  if (!c) {
    c = &requests_->Add(labels());  // Add returns the same counter for the same labels
    slot.store(c, std::memory_order_release);
  }
  return *c;
}

const Metrics::TokenSlot* Metrics::token_slot(size_t flavour, const std::string& model) {
  const size_t h = std::hash<std::string>{}(model) ^ (flavour * 0x9e3779b97f4a7c15ull);
  for (size_t i = 0; i < kTokenSlots; ++i) {
    auto& cell = token_slots_[(h + i) % kTokenSlots];
    TokenSlot* slot = cell.load(std::memory_order_acquire);
    if (slot) {
      if (slot->flavour == flavour && slot->model == model) return slot;
      continue;
    }
    std::lock_guard lock(add_mutex_);
    slot = cell.load(std::memory_order_acquire);
    if (slot) {  // filled meanwhile
      if (slot->flavour == flavour && slot->model == model) return slot;
      continue;
    }
    const char* names[3] = {"none", "openai", "anthropic"};
    auto* fresh = new TokenSlot{model, flavour,
                                &tokens_->Add({{"direction", "in"}, {"flavour", names[flavour]}, {"model", model}}),
                                &tokens_->Add({{"direction", "out"}, {"flavour", names[flavour]}, {"model", model}})};
    cell.store(fresh, std::memory_order_release);
    return fresh;
  }
  return nullptr;  // table full: the caller falls back to a family lookup
}

void Metrics::request_finished(const pipeline::RequestContext& ctx) {
  in_flight_->Decrement();
  request_counter(ctx).Increment();
  if (ctx.origin == pipeline::Origin::Cache) recorded_cache_->Increment();
  else if (ctx.origin == pipeline::Origin::Coalesced) recorded_coalesced_->Increment();
  const ByFlavour& h = by_flavour_[!ctx.route ? 0 : ctx.flavour == pipeline::Flavour::Anthropic ? 2 : 1];
  const auto total = pipeline::Clock::now() - ctx.start;
  h.duration->Observe(seconds(total));
  if (ctx.upstream_status != 0 || ctx.upstream_time.count() > 0) {
    h.upstream->Observe(seconds(ctx.upstream_time));
    h.overhead->Observe(seconds(total - ctx.upstream_time));
  }
  if (ctx.ttfb) h.ttfb->Observe(seconds(*ctx.ttfb));
  if (ctx.usage.seen) {
    const size_t f = !ctx.route ? 0 : ctx.flavour == pipeline::Flavour::Anthropic ? 2 : 1;
    const std::string& model = ctx.model ? *ctx.model : ctx.client_model;
    if (const TokenSlot* t = token_slot(f, model)) {
      t->in->Increment(static_cast<double>(ctx.usage.input_tokens));
      t->out->Increment(static_cast<double>(ctx.usage.output_tokens));
    } else {
      tokens_->Add({{"direction", "in"}, {"flavour", flavour_name(ctx)}, {"model", model}}).Increment(static_cast<double>(ctx.usage.input_tokens));
      tokens_->Add({{"direction", "out"}, {"flavour", flavour_name(ctx)}, {"model", model}}).Increment(static_cast<double>(ctx.usage.output_tokens));
    }
  }
}

void Metrics::refresh(const pipeline::Pools& pools, int active_streams) {
  std::lock_guard lock(refresh_mutex_);
  active_streams_->Set(active_streams);
  std::vector<prometheus::Gauge*> h2_gauges;
  for (const auto& [name, pool] : pools) {
    const upstream::PoolStats s = pool->stats();
    auto set = [&](const char* figure, double v) { pool_->Add({{"upstream", name}, {"figure", figure}}).Set(v); };
    for (const auto& [figure, value] : s.figures()) set(figure, static_cast<double>(value));
    set("healthy", s.healthy ? 1 : 0);
    for (const auto& [serial, streams] : s.h2_per_connection) {
      prometheus::Gauge& g = h2_connection_streams_->Add({{"upstream", name}, {"connection", std::to_string(serial)}});
      g.Set(static_cast<double>(streams));
      h2_gauges.push_back(&g);
    }
  }
  for (prometheus::Gauge* g : h2_connection_gauges_)
    if (std::find(h2_gauges.begin(), h2_gauges.end(), g) == h2_gauges.end()) h2_connection_streams_->Remove(g);
  h2_connection_gauges_ = std::move(h2_gauges);
  const ProcStatus status = proc_status();
  rss_->Set(static_cast<double>(status.rss_kb) * 1024);
  peak_rss_->Set(static_cast<double>(status.peak_rss_kb) * 1024);
  const double cpu = process_cpu_seconds();
  cpu_seconds_->Increment(cpu - cpu_counted_);
  cpu_counted_ = cpu;
  recordings_->Set(static_cast<double>(pipeline::Recording::alive_total()));
  recording_bytes_->Set(static_cast<double>(pipeline::Recording::kept_bytes_total()));
  threads_->Set(static_cast<double>(status.threads));
  int fds = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (auto* e = readdir(d))
      if (e->d_name[0] != '.') ++fds;
    closedir(d);
  }
  fds_->Set(fds - 1);  // minus the directory stream itself
}

std::vector<prometheus::MetricFamily> Metrics::collect() {
  if (refresher_) refresher_();
  return registry_->Collect();
}

std::string Metrics::scrape() {
  std::ostringstream os;
  prometheus::TextSerializer().Serialize(os, collect());
  return os.str();
}

}  // namespace glmp::core::metrics
