#include "store/redis_store.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <unordered_set>

#include <Poco/DigestEngine.h>
#include <Poco/Exception.h>
#include <Poco/Logger.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/NumberParser.h>
#include <Poco/Redis/Array.h>
#include <Poco/Redis/Error.h>
#include <Poco/Redis/RedisStream.h>
#include <Poco/Redis/Type.h>
#include <Poco/SHA1Engine.h>
#include <Poco/URI.h>

#include "store/store_metrics.hpp"

namespace glmp::core::store {

using Poco::Redis::Array;
using Poco::Redis::BulkString;
using Poco::Redis::RedisType;
using namespace std::chrono_literals;

namespace {

Poco::Logger& log() { return Poco::Logger::get("store"); }

constexpr size_t kMaxQueued = 100'000;         // replay queue bound (oldest dropped beyond)
constexpr size_t kReplayBatch = 512;           // adds pipelined per round trip when replaying
constexpr size_t kMaxCacheEntries = 100'000;   // record cache bounds: beyond them, expired entries
constexpr size_t kMaxCacheBytes = 64u << 20;   // are purged (at most once a second), else not cached
constexpr auto kRetryGap = 250ms;              // while down: one real attempt per gap, the rest fail fast
constexpr auto kKeeperPeriod = 500ms;          // background probe/replay period while down or queued
constexpr auto kUpProbePeriod = 2s;            // background PING while up (keeps healthy() current)
constexpr auto kBackgroundConnectTimeout = 400ms;  // cap for the threads, so the destructor is prompt
constexpr auto kSubscriberPoll = 100ms;        // subscriber wakes this often to notice stop
constexpr auto kSubscriberPing = 1s;           // idle subscriber PINGs this often (dead peer detection)
constexpr auto kMaxBackoff = 1s;               // subscriber reconnect backoff cap

// The transport failed (connect, send, receive, timeout, cut reply): the connection is unusable.
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Redis answered with an error reply (the connection itself is fine).
struct ServerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// No pooled connection became free within `timeout`.
struct PoolBusy : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Error replies meaning "Redis cannot serve right now" (treated like a connection failure: the
// backend is down, adds are queued) rather than "this command is wrong".
bool transient(std::string_view message) {
  static constexpr std::array<std::string_view, 11> kPrefixes{
      "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "OOM", "READONLY", "NOAUTH", "WRONGPASS", "NOPERM", "CLUSTERDOWN",
      "NOREPLICAS"};
  return std::any_of(kPrefixes.begin(), kPrefixes.end(), [&](std::string_view p) { return message.starts_with(p); });
}

Array command(std::initializer_list<std::string_view> args) {
  Array a;
  for (std::string_view s : args) a.add(std::string(s));  // add<std::string> = a bulk string
  return a;
}

std::string error_message(const RedisType::Ptr& reply) {
  return static_cast<const Poco::Redis::Type<Poco::Redis::Error>&>(*reply).value().getMessage();
}

int64_t as_int(const RedisType::Ptr& reply) {
  if (!reply->isInteger()) throw ServerError("unexpected reply type (integer expected)");
  return static_cast<const Poco::Redis::Type<Poco::Int64>&>(*reply).value();
}

const BulkString& as_bulk(const RedisType::Ptr& reply) {
  if (!reply->isBulkString()) throw ServerError("unexpected reply type (bulk string expected)");
  return static_cast<const Poco::Redis::Type<BulkString>&>(*reply).value();
}

// The elements of an array reply (a null array has none).
std::vector<RedisType::Ptr> as_array(const RedisType::Ptr& reply) {
  if (!reply->isArray()) throw ServerError("unexpected reply type (array expected)");
  const Array& a = static_cast<const Poco::Redis::Type<Array>&>(*reply).value();
  if (a.isNull()) return {};
  return {a.begin(), a.end()};
}

// A bulk string element of an array reply ("" for null).
std::string bulk_text(const RedisType::Ptr& element) {
  const BulkString& b = as_bulk(element);
  return b.isNull() ? std::string() : b.value();
}

bool parse_int(const std::string& s, int64_t& out) {
  Poco::Int64 v = 0;
  if (!Poco::NumberParser::tryParse64(s, v)) return false;
  out = v;
  return true;
}

Poco::Timespan span(std::chrono::milliseconds d) { return Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(d.count()) * 1000); }

// --- Lua scripts (EVALSHA by SHA1, EVAL on NOSCRIPT) ---

struct Script {
  const char* name;
  std::string source;
  std::string sha;
};

// KEYS[1] window hash; ARGV: amount, bucket start, now, window, max_window, ttl (ms).
// Adds `amount` to the bucket (amount 0: read only), sums the buckets with now - window < start <=
// now, and (when adding) drops the buckets no window can see any more (start <= now - max_window)
// and pushes the key's expiry out. One script = atomic for every replica.
constexpr const char* kWindowLua = R"lua(
local key = KEYS[1]
local adding = ARGV[1] ~= '0'
local now = tonumber(ARGV[3])
local from = now - tonumber(ARGV[4])
local cutoff = now - tonumber(ARGV[5])
if adding and redis.call('HINCRBY', key, ARGV[2], ARGV[1]) == 0 then
  redis.call('HDEL', key, ARGV[2])
end
local sum = 0
local dead = {}
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local start = tonumber(fields[i])
  if start ~= nil then
    if start > from and start <= now then
      sum = sum + tonumber(fields[i + 1])
    elseif start <= cutoff then
      dead[#dead + 1] = fields[i]
    end
  end
end
if adding then
  for i = 1, #dead, 500 do
    redis.call('HDEL', key, unpack(dead, i, math.min(i + 499, #dead)))
  end
  redis.call('PEXPIRE', key, ARGV[6])
end
return sum
)lua";

// KEYS[1] records hash, KEYS[2] key index; ARGV: key, value, channel, invalidation message.
constexpr const char* kPutLua = R"lua(
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
)lua";

// KEYS[1] records hash, KEYS[2] key index; ARGV: key, channel, invalidation message. 0 = absent.
constexpr const char* kRemoveLua = R"lua(
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n == 0 then return 0 end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
)lua";

// KEYS[1] records hash, KEYS[2] key index; ARGV: ZRANGEBYLEX min, max, count.
// Returns key1, value1, key2, value2, … in key order (index and values read atomically).
constexpr const char* kListLua = R"lua(
local keys = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #keys == 0 then return {} end
local values = redis.call('HMGET', KEYS[1], unpack(keys))
local out = {}
for i = 1, #keys do
  if values[i] then
    out[#out + 1] = keys[i]
    out[#out + 1] = values[i]
  end
end
return out
)lua";

Script make_script(const char* name, const char* source) {
  Poco::SHA1Engine sha1;
  sha1.update(std::string(source));
  return {name, source, Poco::DigestEngine::digestToHex(sha1.digest())};
}

const Script& window_lua() {
  static const Script s = make_script("window", kWindowLua);
  return s;
}
const Script& put_lua() {
  static const Script s = make_script("put", kPutLua);
  return s;
}
const Script& remove_lua() {
  static const Script s = make_script("remove", kRemoveLua);
  return s;
}
const Script& list_lua() {
  static const Script s = make_script("list", kListLua);
  return s;
}

RedisStore::Endpoint parse_url(const std::string& url) {
  const std::string shown = "\"" + config::redact_url(url) + "\"";
  Poco::URI uri;
  try {
    uri = Poco::URI(url);
  } catch (const Poco::Exception&) {
    throw std::invalid_argument("store: url is not a valid URL: " + shown);
  }
  if (uri.getScheme() != "redis" || uri.getHost().empty())
    throw std::invalid_argument("store: url must look like redis://[:password@]host[:port][/db], got " + shown);
  RedisStore::Endpoint ep;
  ep.host = uri.getHost();
  ep.port = uri.getPort() ? uri.getPort() : 6379;
  const std::string& info = uri.getUserInfo();
  if (!info.empty()) {
    const auto colon = info.find(':');
    std::string user = colon == std::string::npos ? std::string() : info.substr(0, colon);
    std::string password = colon == std::string::npos ? info : info.substr(colon + 1);
    Poco::URI::decode(user, ep.user);
    Poco::URI::decode(password, ep.password);
  }
  std::string path = uri.getPath();
  if (!path.empty() && path.front() == '/') path.erase(0, 1);
  if (!path.empty()) {
    int db = 0;
    if (!Poco::NumberParser::tryParse(path, db) || db < 0)
      throw std::invalid_argument("store: url database must be a number (redis://host:port/0), got " + shown);
    ep.db = db;
  }
  return ep;
}

std::string random_instance_id() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

// One socket to Redis. Commands are Poco::Redis arrays encoded by Array::toString(); replies are
// parsed by Poco::Redis::RedisType. Unlike Poco::Redis::Client (1.11) it sets a send timeout, can
// poll for a reply, and checks the stream after every reply: Poco's stream buffer turns socket
// errors and timeouts into EOF, which Client would hand back as a silently truncated bulk string.
// Not thread-safe: one thread at a time (the pool guarantees it).
class RedisConnection {
public:
  RedisConnection(const RedisStore::Endpoint& ep, std::chrono::milliseconds connect_timeout,
                  std::chrono::milliseconds io_timeout)
      : in_(socket_), out_(socket_) {
    try {
      socket_.connect(Poco::Net::SocketAddress(ep.host, ep.port), span(connect_timeout));
      socket_.setNoDelay(true);
      socket_.setKeepAlive(true);
      socket_.setSendTimeout(span(io_timeout));
      socket_.setReceiveTimeout(span(io_timeout));
    } catch (const Poco::Exception& e) {
      throw IoError("connect: " + e.displayText());
    }
    try {
      if (!ep.password.empty()) {
        if (ep.user.empty()) call(command({"AUTH", ep.password}));
        else call(command({"AUTH", ep.user, ep.password}));
      }
      if (ep.db != 0) call(command({"SELECT", std::to_string(ep.db)}));
    } catch (const ServerError& e) {
      throw IoError(std::string("login: ") + e.what());  // unusable connection: the backend is down for us
    }
  }
  ~RedisConnection() {
    try {
      socket_.close();
    } catch (...) {
    }
  }
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Queues a command (pipelining); flush() sends what is queued.
  void send(const Array& cmd) {
    const std::string wire = cmd.toString();
    out_.write(wire.data(), static_cast<std::streamsize>(wire.size()));
    if (!out_) throw IoError("connection lost while sending");
  }
  void flush() {
    out_.flush();
    if (!out_) throw IoError("connection lost while sending");
  }

  // Reads one reply (an error reply is returned as such).
  RedisType::Ptr read() {
    const int marker = in_.get();
    if (marker == std::char_traits<char>::eof() || !in_) throw IoError("connection closed or timed out");
    RedisType::Ptr reply = RedisType::createRedisType(static_cast<char>(marker));
    if (reply.isNull()) throw IoError("unexpected data from Redis");
    try {
      reply->read(in_);
    } catch (const Poco::Exception& e) {
      throw IoError("bad reply: " + e.displayText());
    }
    if (!in_) throw IoError("connection closed or timed out in a reply");
    return reply;
  }

  // Sends one command and returns its reply; an error reply throws ServerError.
  RedisType::Ptr call(const Array& cmd) {
    send(cmd);
    flush();
    RedisType::Ptr reply = read();
    if (reply->isError()) throw ServerError(error_message(reply));
    return reply;
  }

  // EVALSHA, or EVAL (which also caches the script) when Redis does not know it (e.g. restarted).
  RedisType::Ptr eval(const Script& script, const std::vector<std::string>& keys, const std::vector<std::string>& args) {
    auto build = [&](const char* verb, const std::string& body) {
      Array a;
      a.add(std::string(verb)).add(body).add(std::to_string(keys.size()));
      for (const auto& k : keys) a.add(k);
      for (const auto& v : args) a.add(v);
      return a;
    };
    try {
      return call(build("EVALSHA", script.sha));
    } catch (const ServerError& e) {
      if (!std::string_view(e.what()).starts_with("NOSCRIPT")) throw;
    }
    return call(build("EVAL", script.source));
  }

  // Makes a read blocked in another thread return at once (the destructor stops the threads).
  void abort() {
    try {
      socket_.shutdown();
    } catch (...) {
    }
  }

  // True when a reply can be read without blocking (buffered, or the socket is readable/closed).
  bool readable(std::chrono::milliseconds wait) {
    if (in_.rdbuf()->in_avail() > 0) return true;
    try {
      return socket_.poll(span(wait), Poco::Net::Socket::SELECT_READ | Poco::Net::Socket::SELECT_ERROR);
    } catch (const Poco::Exception& e) {
      throw IoError("poll: " + e.displayText());
    }
  }

private:
  Poco::Net::StreamSocket socket_;
  Poco::Redis::RedisInputStream in_;
  Poco::Redis::RedisOutputStream out_;
};

// A connection borrowed from the pool; returned on destruction unless it broke.
class RedisStore::Lease {
public:
  explicit Lease(RedisStore& store) : store_(store) {}
  ~Lease() {
    if (conn_) store_.release(std::move(conn_), epoch_, !broken_);
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  RedisConnection& conn() { return *conn_; }

  RedisStore& store_;
  ConnectionPtr conn_;
  uint64_t epoch_ = 0;
  bool broken_ = false;
};

RedisStore::RedisStore(const config::StoreConfig& cfg, prometheus::Registry* registry)
    : Store(cfg, "redis", registry),
      url_(cfg.url),
      endpoint_(parse_url(cfg.url)),
      prefix_(cfg.prefix),
      channel_(cfg.prefix + "invalidate"),
      timeout_(cfg.timeout.count() > 0 ? cfg.timeout : std::chrono::milliseconds(1000)),
      pool_size_(static_cast<size_t>(std::max(cfg.pool_size, 1))),
      cache_ttl_(std::max(cfg.cache_ttl, std::chrono::milliseconds(0))),
      fail_open_(cfg.failure_mode == config::FailureMode::FailOpen),
      ttl_ms_(std::to_string(cfg.max_window.count() + cfg.bucket.count())),
      instance_(random_instance_id()) {
  (void)window_lua();  // compute the SHA1s now rather than on the first call
  (void)put_lua();
  (void)remove_lua();
  (void)list_lua();
  keeper_ = std::thread([this] { keeper_loop(); });
  if (cache_enabled()) subscriber_ = std::thread([this] { subscriber_loop(); });
}

RedisStore::~RedisStore() {
  {
    std::lock_guard lock(stop_mutex_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  pool_cv_.notify_all();
  {
    std::lock_guard lock(active_mutex_);
    for (RedisConnection* c : active_) c->abort();
  }
  if (subscriber_.joinable()) subscriber_.join();
  if (keeper_.joinable()) keeper_.join();
}

std::string RedisStore::describe() const { return "redis " + config::redact_url(url_); }

std::string RedisStore::redis_key(const char* kind, std::string_view name) const {
  std::string k;
  k.reserve(prefix_.size() + 3 + name.size());
  k.append(prefix_).append(kind).append(name);
  return k;
}

bool RedisStore::stopping() const {
  std::lock_guard lock(stop_mutex_);
  return stop_;
}

bool RedisStore::track(RedisConnection* conn) {
  std::lock_guard lock(active_mutex_);
  if (stopping()) return false;
  active_.push_back(conn);
  return true;
}

void RedisStore::untrack(RedisConnection* conn) {
  std::lock_guard lock(active_mutex_);
  active_.erase(std::remove(active_.begin(), active_.end(), conn), active_.end());
}

// Registers a background thread's connection for the destructor to abort, for its lifetime.
class RedisStore::Tracked {
public:
  Tracked(RedisStore& store, RedisConnection* conn) : store_(store), conn_(store.track(conn) ? conn : nullptr) {}
  ~Tracked() {
    if (conn_) store_.untrack(conn_);
  }
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;
  bool ok() const { return conn_ != nullptr; }

private:
  RedisStore& store_;
  RedisConnection* conn_;
};

bool RedisStore::wait_stop(std::chrono::milliseconds d) {
  std::unique_lock lock(stop_mutex_);
  return stop_cv_.wait_for(lock, d, [this] { return stop_; });
}

// --- connections ---

RedisStore::ConnectionPtr RedisStore::connect(std::chrono::milliseconds connect_timeout) const {
  return std::make_unique<RedisConnection>(endpoint_, std::min(connect_timeout, timeout_), timeout_);
}

void RedisStore::acquire(Lease& lease, bool wait) {
  const auto deadline = Clock::now() + timeout_;
  std::unique_lock lock(pool_mutex_);
  lease.epoch_ = epoch_;
  while (free_.empty() && total_ >= pool_size_) {
    if (!wait || pool_cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      if (!free_.empty() || total_ < pool_size_) break;
      throw PoolBusy("all " + std::to_string(pool_size_) + " connections stayed busy");
    }
  }
  lease.epoch_ = epoch_;
  if (!free_.empty()) {
    lease.conn_ = std::move(free_.back());
    free_.pop_back();
    return;
  }
  ++total_;
  lock.unlock();
  try {
    lease.conn_ = connect(wait ? timeout_ : kBackgroundConnectTimeout);
  } catch (...) {
    lock.lock();
    --total_;
    lock.unlock();
    pool_cv_.notify_one();
    throw;
  }
}

void RedisStore::release(ConnectionPtr conn, uint64_t epoch, bool reusable) {
  {
    std::lock_guard lock(pool_mutex_);
    if (reusable && epoch == epoch_) {
      free_.push_back(std::move(conn));
    } else {
      --total_;
    }
  }
  pool_cv_.notify_one();
  conn.reset();  // closes a discarded connection outside the lock
}

bool RedisStore::may_try() {
  if (up_.load()) return true;
  const int64_t now = Clock::now().time_since_epoch().count();
  int64_t last = last_attempt_.load();
  if (now - last < std::chrono::duration_cast<Clock::duration>(kRetryGap).count()) return false;
  return last_attempt_.compare_exchange_strong(last, now);
}

void RedisStore::mark_down(const std::string& reason, uint64_t epoch) {
  std::vector<ConnectionPtr> dropped;
  {
    std::lock_guard lock(pool_mutex_);
    // A connection borrowed before the last down/up transition failing says nothing new.
    if (epoch != epoch_) return;
    ++epoch_;  // connections borrowed now are closed when returned: they point at a dead server
    dropped.swap(free_);
    total_ -= dropped.size();
  }
  pool_cv_.notify_all();
  last_attempt_.store(Clock::now().time_since_epoch().count());
  if (up_.exchange(false)) {
    metrics().up(false);
    log().warning("redis %s is down (%s); %s, window/counter adds are queued for replay",
                  config::redact_url(url_), reason,
                  std::string(fail_open_ ? "answering degraded (fail_open)" : "failing closed"));
  }
}

void RedisStore::mark_up(uint64_t epoch) {
  if (up_.load()) return;
  {
    // An answer on a connection borrowed before the backend went down proves nothing.
    std::lock_guard lock(pool_mutex_);
    if (epoch != epoch_) return;
  }
  if (!up_.exchange(true)) {
    metrics().up(true);
    log().information("redis %s is reachable again", config::redact_url(url_));
  }
}

template <typename Fn>
RedisStore::Outcome RedisStore::run(const char* what, Fn&& fn, bool probe) {
  if (!probe && !may_try()) return Outcome::Down;
  Lease lease(*this);
  std::optional<Tracked> tracked;  // destroyed before the lease
  try {
    acquire(lease, !probe);
    if (probe && !tracked.emplace(*this, &lease.conn()).ok()) return Outcome::Busy;  // stopping
    if (queued_.load() > 0) replay(lease.conn(), probe ? kMaxQueued : kReplayBatch);
    fn(lease.conn());
    mark_up(lease.epoch_);
    return Outcome::Ok;
  } catch (const PoolBusy&) {
    return Outcome::Busy;
  } catch (const IoError& e) {
    lease.broken_ = true;
    if (!(probe && stopping())) mark_down(std::string(what) + ": " + e.what(), lease.epoch_);  // else aborted
    return Outcome::Down;
  } catch (const ServerError& e) {
    if (transient(e.what())) {
      mark_down(std::string(what) + ": " + e.what(), lease.epoch_);
      return Outcome::Down;
    }
    log().error("redis %s failed: %s", std::string(what), std::string(e.what()));
    return Outcome::Error;
  } catch (const std::exception& e) {
    lease.broken_ = true;  // unknown state
    log().error("redis %s failed: %s", std::string(what), std::string(e.what()));
    return Outcome::Error;
  }
}

Status RedisStore::failed(Outcome o) const {
  return fail_open_ && o != Outcome::Error ? Status::Degraded : Status::Unavailable;
}

// --- replay queue ---

void RedisStore::enqueue(PendingAdd add) {
  size_t size = 0;
  uint64_t dropped = 0;
  {
    std::lock_guard lock(queue_mutex_);
    PendingAdd* last = queue_.empty() ? nullptr : &queue_.back();
    int64_t merged = 0;
    if (last && last->id > taken_id_ && last->window == add.window && last->bucket == add.bucket &&
        last->name == add.name && !__builtin_add_overflow(last->amount, add.amount, &merged)) {
      // Same counter and bucket as the add just before (and not being replayed right now): one
      // HINCRBY for both, order unchanged. Keeps the queue short while every request hits one key.
      last->amount = merged;
    } else {
      add.id = next_pending_id_++;
      queue_.push_back(std::move(add));
    }
    if (queue_.size() > kMaxQueued) {
      queue_.pop_front();
      dropped = ++dropped_;
    }
    size = queue_.size();
    queued_.store(size);
  }
  metrics().pending(static_cast<double>(size));
  if (dropped == 1 || (dropped > 0 && dropped % 10'000 == 0))
    log().warning("redis replay queue is full (%z adds); dropped the oldest (%s dropped so far)", kMaxQueued,
                  std::to_string(dropped));
}

// Replays up to `max` queued adds in order, pipelined by kReplayBatch: HINCRBY on the add's own
// bucket (not the current one; the next live add ages out what is too old), or INCRBY; then one
// PEXPIRE per window key of the batch. An add Redis rejects for good (WRONGTYPE …) is dropped; a
// transient error or a broken connection stops the replay (IoError propagates), keeping the adds
// whose replies were not read (at-least-once: a reply lost after Redis applied it is replayed).
void RedisStore::replay(RedisConnection& conn, size_t max) {
  std::unique_lock replaying(replay_mutex_, std::try_to_lock);
  if (!replaying.owns_lock()) return;  // another thread is at it, in order
  size_t done = 0;
  while (done < max && !stopping()) {
    std::vector<PendingAdd> batch;
    {
      std::lock_guard lock(queue_mutex_);
      const size_t n = std::min({queue_.size(), kReplayBatch, max - done});
      batch.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      if (!batch.empty()) taken_id_ = std::max(taken_id_, batch.back().id);
    }
    if (batch.empty()) break;
    std::unordered_set<std::string> windows;  // each window key once per batch: PEXPIRE after its adds
    for (const PendingAdd& a : batch) {
      if (a.window) {
        std::string k = redis_key("w:", a.name);
        conn.send(command({"HINCRBY", k, std::to_string(a.bucket), std::to_string(a.amount)}));
        windows.insert(std::move(k));
      } else {
        conn.send(command({"INCRBY", redis_key("c:", a.name), std::to_string(a.amount)}));
      }
    }
    for (const std::string& k : windows) conn.send(command({"PEXPIRE", k, ttl_ms_}));
    std::unordered_set<uint64_t> finished;  // applied, or rejected for good
    std::string stop_error;
    // The batch was the front of the queue; since then only appends and drops of the oldest
    // happened, so what is left of it is still at the front, in order.
    auto forget_finished = [&] {
      size_t size = 0;
      {
        std::lock_guard lock(queue_mutex_);
        std::vector<PendingAdd> keep;
        while (!queue_.empty() && queue_.front().id <= batch.back().id) {
          if (!finished.count(queue_.front().id)) keep.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        for (auto it = keep.rbegin(); it != keep.rend(); ++it) queue_.push_front(std::move(*it));
        size = queue_.size();
        queued_.store(size);
      }
      metrics().pending(static_cast<double>(size));
      done += finished.size();
    };
    try {
      conn.flush();
      for (const PendingAdd& a : batch) {
        RedisType::Ptr reply = conn.read();
        const std::string error = reply->isError() ? error_message(reply) : std::string();
        if (!error.empty() && transient(error)) {
          if (stop_error.empty()) stop_error = error;
          continue;
        }
        if (!error.empty())
          log().error("dropping a queued add to \"%s\" that redis rejects: %s", a.name, error);
        finished.insert(a.id);
      }
      for (size_t i = 0; i < windows.size(); ++i) conn.read();  // an expiry that failed is renewed by the next add
    } catch (const IoError&) {
      forget_finished();
      throw;
    }
    forget_finished();
    if (!stop_error.empty()) throw ServerError(stop_error);
  }
  size_t drained = 0;  // log once per drained queue, not per batch
  {
    std::lock_guard lock(queue_mutex_);
    replayed_ += done;
    if (queue_.empty()) std::swap(drained, replayed_);
  }
  if (drained > 0) log().information("replayed %z queued window/counter adds to redis", drained);
}

// --- records ---

std::string RedisStore::cache_key(std::string_view ns, std::string_view key) {
  std::string k;
  k.reserve(ns.size() + 1 + key.size());
  k.append(ns).push_back('\0');  // names never contain NUL
  k.append(key);
  return k;
}

std::string RedisStore::invalidation_message(std::string_view ns, std::string_view key) const {
  std::string m = instance_;
  m.push_back('\0');
  m.append(ns).push_back('\0');
  m.append(key);
  return m;
}

uint64_t RedisStore::cache_seq() {
  std::lock_guard lock(cache_mutex_);
  return seq_;
}

// Why `seq` makes this safe: a value read from Redis (or written to it) before a change that some
// invalidation reports is only installed when that invalidation has not been processed yet, and
// then the invalidation removes it when it comes. Local writes count as invalidations (they bump
// seq_ too), which also orders concurrent local writes and reads without their own messages.
void RedisStore::cache_install(const std::string& ck, std::optional<std::string> value, bool write, uint64_t seq) {
  const size_t bytes = ck.size() + (value ? value->size() : 0) + 64;
  const auto now = Clock::now();
  std::lock_guard lock(cache_mutex_);
  auto it = cache_.find(ck);
  if (seq != seq_ || (it == cache_.end() && !cache_room(bytes, now))) {
    // Not cacheable: after a write, the entry it replaced must not survive either.
    if (write && it != cache_.end()) {
      cache_bytes_ -= it->second.bytes;
      cache_.erase(it);
    }
    if (write) ++seq_;
    return;
  }
  if (it == cache_.end()) {
    it = cache_.emplace(ck, CacheEntry{}).first;
  } else {
    cache_bytes_ -= it->second.bytes;
  }
  // Without a live subscription nobody would tell us about changes: keep it only as a fallback.
  it->second = CacheEntry{std::move(value), subscribed_ ? now + cache_ttl_ : now, bytes};
  cache_bytes_ += bytes;
  if (write) ++seq_;
}

bool RedisStore::cache_room(size_t bytes, Clock::time_point now) {
  if (cache_.size() < kMaxCacheEntries && cache_bytes_ + bytes <= kMaxCacheBytes) return true;
  if (now - last_purge_ < 1s) return false;  // full of fresh entries: don't scan on every miss
  last_purge_ = now;
  for (auto e = cache_.begin(); e != cache_.end();) {
    if (e->second.fresh_until <= now) {
      cache_bytes_ -= e->second.bytes;
      e = cache_.erase(e);
    } else {
      ++e;
    }
  }
  return cache_.size() < kMaxCacheEntries && cache_bytes_ + bytes <= kMaxCacheBytes;
}

void RedisStore::cache_drop(const std::string& ck) {
  std::lock_guard lock(cache_mutex_);
  ++seq_;
  auto it = cache_.find(ck);
  if (it != cache_.end()) {
    cache_bytes_ -= it->second.bytes;
    cache_.erase(it);
  }
}

void RedisStore::cache_set_subscribed(bool subscribed) {
  std::lock_guard lock(cache_mutex_);
  ++seq_;  // reads in flight may predate the subscription (or missed messages): don't cache them
  if (!subscribed) {
    for (auto& [k, e] : cache_) e.fresh_until = Clock::time_point{};
  }
  subscribed_ = subscribed;
}

void RedisStore::cache_evict(const std::string& ck) {
  cache_drop(ck);
  metrics().invalidation();
}

Status RedisStore::do_get(std::string_view ns, std::string_view key, std::string& value) {
  std::string ck;
  uint64_t seq = 0;
  if (cache_enabled()) {
    ck = cache_key(ns, key);
    std::lock_guard lock(cache_mutex_);
    auto it = cache_.find(ck);
    const bool hit = it != cache_.end() && Clock::now() < it->second.fresh_until;
    metrics().cache(hit);
    if (hit) {
      if (!it->second.value) return Status::NotFound;
      value = *it->second.value;
      return Status::Ok;
    }
    seq = seq_;
  }
  BulkString got;
  const Outcome o = run("get", [&](RedisConnection& c) { got = as_bulk(c.call(command({"HGET", redis_key("r:", ns), key}))); });
  if (o == Outcome::Ok) {
    if (cache_enabled()) cache_install(ck, got.isNull() ? std::nullopt : std::optional<std::string>(got.value()), false, seq);
    if (got.isNull()) return Status::NotFound;
    value = got.value();
    return Status::Ok;
  }
  if (fail_open_ && o != Outcome::Error && cache_enabled()) {
    std::lock_guard lock(cache_mutex_);
    auto it = cache_.find(ck);
    if (it != cache_.end() && it->second.value) {
      value = *it->second.value;
      return Status::Degraded;
    }
  }
  return Status::Unavailable;
}

// The writer's own cache follows its writes at once (its subscriber skips its own messages). A
// failed write may still have reached Redis (reply lost): forget the entry then.
Status RedisStore::do_put(std::string_view ns, std::string_view key, std::string_view value) {
  const uint64_t seq = cache_enabled() ? cache_seq() : 0;
  const Outcome o = run("put", [&](RedisConnection& c) {
    c.eval(put_lua(), {redis_key("r:", ns), redis_key("ri:", ns)},
           {std::string(key), std::string(value), channel_, invalidation_message(ns, key)});
  });
  if (!cache_enabled()) return o == Outcome::Ok ? Status::Ok : Status::Unavailable;
  if (o != Outcome::Ok) {
    cache_drop(cache_key(ns, key));
    return Status::Unavailable;
  }
  cache_install(cache_key(ns, key), std::string(value), true, seq);
  return Status::Ok;
}

Status RedisStore::do_remove(std::string_view ns, std::string_view key) {
  const uint64_t seq = cache_enabled() ? cache_seq() : 0;
  int64_t removed = 0;
  const Outcome o = run("delete", [&](RedisConnection& c) {
    removed = as_int(c.eval(remove_lua(), {redis_key("r:", ns), redis_key("ri:", ns)},
                            {std::string(key), channel_, invalidation_message(ns, key)}));
  });
  if (cache_enabled()) {
    if (o == Outcome::Ok) cache_install(cache_key(ns, key), std::nullopt, true, seq);
    else cache_drop(cache_key(ns, key));
  }
  if (o != Outcome::Ok) return Status::Unavailable;
  return removed ? Status::Ok : Status::NotFound;
}

Status RedisStore::do_list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit,
                           Page& page) {
  // Keys k with k >= prefix (or k > after when that is later) and k < the first string after all
  // keys starting with prefix; byte order, as ZRANGEBYLEX compares (all scores are 0).
  std::string min = prefix.empty() ? "-" : "[" + std::string(prefix);
  if (!after.empty() && after >= prefix) min = "(" + std::string(after);
  std::string max = "+";
  if (!prefix.empty()) {
    std::string next(prefix);
    while (!next.empty() && static_cast<unsigned char>(next.back()) == 0xFF) next.pop_back();
    if (!next.empty()) {
      next.back() = static_cast<char>(static_cast<unsigned char>(next.back()) + 1);
      max = "(" + next;
    }
  }
  std::vector<RedisType::Ptr> flat;
  const Outcome o = run("list", [&](RedisConnection& c) {
    flat = as_array(c.eval(list_lua(), {redis_key("r:", ns), redis_key("ri:", ns)}, {min, max, std::to_string(limit + 1)}));
  });
  if (o != Outcome::Ok) return Status::Unavailable;
  for (size_t i = 0; i + 1 < flat.size(); i += 2) {
    if (page.records.size() == limit) {
      page.more = true;
      break;
    }
    page.records.push_back({bulk_text(flat[i]), bulk_text(flat[i + 1])});
  }
  return Status::Ok;
}

// --- windows ---

int64_t RedisStore::window_script(RedisConnection& conn, std::string_view name, int64_t amount, Millis now,
                                  Millis window) {
  return as_int(conn.eval(window_lua(), {redis_key("w:", name)},
                          {std::to_string(amount), std::to_string(bucket_of(now)), std::to_string(now),
                           std::to_string(window), std::to_string(max_window_ms_), ttl_ms_}));
}

Status RedisStore::do_window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) {
  int64_t result = 0;
  const Outcome o =
      run("window_add", [&](RedisConnection& c) { result = window_script(c, name, amount, now, window); });
  if (o == Outcome::Ok) {
    if (sum) *sum = result;
    return Status::Ok;
  }
  if (o != Outcome::Error && amount != 0) enqueue({0, true, std::string(name), amount, bucket_of(now)});
  return failed(o);
}

Status RedisStore::do_window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) {
  int64_t result = 0;
  const Outcome o = run("window_sum", [&](RedisConnection& c) { result = window_script(c, name, 0, now, window); });
  if (o != Outcome::Ok) return failed(o);
  sum = result;
  return Status::Ok;
}

Status RedisStore::do_window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) {
  std::vector<RedisType::Ptr> flat;
  const Outcome o =
      run("window_buckets", [&](RedisConnection& c) { flat = as_array(c.call(command({"HGETALL", redis_key("w:", name)}))); });
  if (o != Outcome::Ok) return failed(o);
  for (size_t i = 0; i + 1 < flat.size(); i += 2) {
    Bucket b;
    if (!parse_int(bulk_text(flat[i]), b.start) || !parse_int(bulk_text(flat[i + 1]), b.amount)) continue;
    if (b.start > now - window && b.start <= now && b.amount != 0) out.push_back(b);
  }
  std::sort(out.begin(), out.end(), [](const Bucket& a, const Bucket& b) { return a.start < b.start; });
  return Status::Ok;
}

// --- counters ---

Status RedisStore::do_counter_add(std::string_view name, int64_t amount, int64_t* value) {
  int64_t result = 0;
  const Outcome o = run("counter_add", [&](RedisConnection& c) {
    result = as_int(c.call(command({"INCRBY", redis_key("c:", name), std::to_string(amount)})));
  });
  if (o == Outcome::Ok) {
    if (value) *value = result;
    return Status::Ok;
  }
  if (o != Outcome::Error && amount != 0) enqueue({0, false, std::string(name), amount, 0});
  return failed(o);
}

Status RedisStore::do_counter_get(std::string_view name, int64_t& value) {
  BulkString got;
  const Outcome o = run("counter_get", [&](RedisConnection& c) { got = as_bulk(c.call(command({"GET", redis_key("c:", name)}))); });
  if (o != Outcome::Ok) return failed(o);
  if (got.isNull()) return Status::Ok;
  int64_t v = 0;
  if (!parse_int(got.value(), v)) {
    log().error("redis counter \"%s\" does not hold an integer", std::string(name));
    return Status::Unavailable;
  }
  value = v;
  return Status::Ok;
}

// --- threads ---

// Probes Redis while it is down (and every couple of seconds while up, so healthy() follows it
// without traffic) and replays queued adds; a probe that works brings the store back up.
void RedisStore::keeper_loop() {
  auto last_probe = Clock::time_point{};
  auto period = std::chrono::milliseconds(0);  // first probe right away: report a dead Redis at start
  while (!wait_stop(period)) {
    period = std::chrono::duration_cast<std::chrono::milliseconds>(kKeeperPeriod);
    if (up_.load() && queued_.load() == 0 && Clock::now() - last_probe < kUpProbePeriod) continue;
    last_probe = Clock::now();
    run("ping", [](RedisConnection& c) { c.call(command({"PING"})); }, true);
  }
}

// SUBSCRIBE to the invalidation channel and evict what other writers changed. Any break (or a
// subscription not yet made) makes every cached entry untrusted (messages may have been missed)
// until subscribed again; reconnects back off from 100 ms to 1 s.
void RedisStore::subscriber_loop() {
  auto backoff = std::chrono::milliseconds(100);
  bool logged = false;
  while (!stopping()) {
    try {
      auto conn = connect(kBackgroundConnectTimeout);
      Tracked tracked(*this, conn.get());
      if (!tracked.ok()) break;
      conn->send(command({"SUBSCRIBE", channel_}));
      conn->flush();
      auto confirm = as_array(conn->read());
      if (confirm.empty() || bulk_text(confirm[0]) != "subscribe") throw IoError("SUBSCRIBE was not confirmed");
      cache_set_subscribed(true);
      backoff = std::chrono::milliseconds(100);
      logged = false;
      auto last_rx = Clock::now();
      auto last_ping = Clock::time_point{};
      while (!stopping()) {
        if (!conn->readable(std::chrono::duration_cast<std::chrono::milliseconds>(kSubscriberPoll))) {
          const auto now = Clock::now();
          if (last_ping > last_rx && now - last_ping > timeout_) throw IoError("no answer to PING");
          if (now - last_rx >= kSubscriberPing && now - last_ping >= kSubscriberPing) {
            conn->send(command({"PING"}));
            conn->flush();
            last_ping = now;
          }
          continue;
        }
        RedisType::Ptr reply = conn->read();
        last_rx = Clock::now();
        if (!reply->isArray()) continue;
        auto parts = as_array(reply);
        if (parts.size() != 3 || bulk_text(parts[0]) != "message") continue;  // pong, subscribe, …
        const std::string payload = bulk_text(parts[2]);
        // "<instance>\0<ns>\0<key>"; this instance's own writes are already in its cache.
        const auto a = payload.find('\0');
        if (a == std::string::npos || payload.compare(0, a, instance_) == 0) continue;
        cache_evict(payload.substr(a + 1));
      }
    } catch (const std::exception& e) {
      if (!logged) log().debug("redis invalidation subscriber disconnected: %s", std::string(e.what()));
      logged = true;
    }
    cache_set_subscribed(false);
    if (wait_stop(backoff)) break;
    backoff = std::min(backoff * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxBackoff));
  }
}

}  // namespace glmp::core::store
