#include "store/store.hpp"

#include <stdexcept>

#include <Poco/JSON/Parser.h>

#include "store/memory_store.hpp"
#include "store/redis_store.hpp"
#include "store/sqlite_store.hpp"
#include "store/store_metrics.hpp"

namespace glmp::core::store {
namespace {

bool valid_name(std::string_view s) { return !s.empty() && s.size() <= kMaxNameBytes && s.find('\0') == std::string_view::npos; }

bool valid_json(std::string_view value) {
  if (value.empty() || value.size() > kMaxValueBytes) return false;
  try {
    Poco::JSON::Parser parser;
    parser.parse(std::string(value));
    return true;
  } catch (const Poco::Exception&) {
    return false;
  }
}

}  // namespace

const char* to_string(Status s) {
  switch (s) {
    case Status::Ok: return "ok";
    case Status::NotFound: return "not_found";
    case Status::Unavailable: return "unavailable";
    case Status::Degraded: return "degraded";
    case Status::Invalid: return "invalid";
  }
  return "?";
}

Store::Store(const config::StoreConfig& cfg, const char* backend, prometheus::Registry* registry)
    : bucket_ms_(cfg.bucket.count()),
      max_window_ms_(cfg.max_window.count()),
      metrics_(std::make_unique<StoreMetrics>(backend, registry)) {}

Store::~Store() = default;

Millis Store::now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Status Store::get(std::string_view ns, std::string_view key, std::string& value) {
  const Status s = valid_name(ns) && valid_name(key) ? do_get(ns, key, value) : Status::Invalid;
  metrics_->op(Op::Get, s);
  return s;
}

Status Store::put(std::string_view ns, std::string_view key, std::string_view value) {
  const Status s = valid_name(ns) && valid_name(key) && valid_json(value) ? do_put(ns, key, value) : Status::Invalid;
  metrics_->op(Op::Put, s);
  return s;
}

Status Store::remove(std::string_view ns, std::string_view key) {
  const Status s = valid_name(ns) && valid_name(key) ? do_remove(ns, key) : Status::Invalid;
  metrics_->op(Op::Delete, s);
  return s;
}

Status Store::list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page) {
  page.records.clear();
  page.more = false;
  const bool ok = valid_name(ns) && prefix.size() <= kMaxNameBytes && after.size() <= kMaxNameBytes && limit >= 1 &&
                  limit <= kMaxListLimit;
  const Status s = ok ? do_list(ns, prefix, after, limit, page) : Status::Invalid;
  metrics_->op(Op::List, s);
  return s;
}

bool Store::valid_window(std::string_view name, Millis window, Millis now) const {
  return valid_name(name) && window > 0 && window <= max_window_ms_ && now >= 0;
}

Status Store::window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) {
  if (sum) *sum = 0;
  const Status s = valid_window(name, window, now) ? do_window_add(name, amount, window, now ? now : now_ms(), sum) : Status::Invalid;
  metrics_->op(Op::WindowAdd, s);
  return s;
}

Status Store::window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) {
  sum = 0;
  const Status s = valid_window(name, window, now) ? do_window_sum(name, window, now ? now : now_ms(), sum) : Status::Invalid;
  metrics_->op(Op::WindowSum, s);
  return s;
}

Status Store::window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) {
  out.clear();
  const Status s = valid_window(name, window, now) ? do_window_buckets(name, window, now ? now : now_ms(), out) : Status::Invalid;
  metrics_->op(Op::WindowBuckets, s);
  return s;
}

Status Store::counter_add(std::string_view name, int64_t amount, int64_t* value) {
  if (value) *value = 0;
  const Status s = valid_name(name) ? do_counter_add(name, amount, value) : Status::Invalid;
  metrics_->op(Op::CounterAdd, s);
  return s;
}

Status Store::counter_get(std::string_view name, int64_t& value) {
  value = 0;
  const Status s = valid_name(name) ? do_counter_get(name, value) : Status::Invalid;
  metrics_->op(Op::CounterGet, s);
  return s;
}

std::unique_ptr<Store> make_store(const config::StoreConfig& cfg, prometheus::Registry* registry) {
  switch (cfg.backend) {
    case config::StoreBackend::Sqlite: return std::make_unique<SqliteStore>(cfg, registry);
    case config::StoreBackend::Redis: return std::make_unique<RedisStore>(cfg, registry);
    case config::StoreBackend::Memory: return std::make_unique<MemoryStore>(cfg, registry);
  }
  throw std::invalid_argument("unknown store backend");
}

}  // namespace glmp::core::store
