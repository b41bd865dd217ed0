#pragma once
// The "redis" store backend: state shared by every replica of the proxy through one Redis.
//
// Why it looks like this:
//  - Quotas must hold across replicas, so a window add and the sum it returns are ONE Lua script
//    (EVALSHA, EVAL on NOSCRIPT): no replica can slip between another's add and its check.
//  - Records (keys, settings) are read on every request but rarely written, so get() is served
//    from a local cache (cache_ttl); a put/delete PUBLISHes an invalidation that every instance's
//    subscriber thread applies within milliseconds. The TTL only bounds staleness when messages
//    are lost, and the cache is never trusted while the subscriber is disconnected.
//  - Redis may go away at any time; the proxy must keep serving and must not lose usage. A failed
//    window/counter add is queued in memory with its original bucket and replayed in order once
//    Redis answers again (next call, or the background thread every ~500 ms). Reads answer
//    Unavailable (fail_closed) or Degraded with 0 / a stale cached record (fail_open). While down,
//    calls fail fast (one real attempt per ~250 ms) and the background thread keeps probing, so the
//    store recovers without a restart, also from a Redis restarted empty.
//  - Connections are lazy: constructing the store never fails because Redis is down.
//
// Key layout (everything under [store] prefix, default "glmp:"):
//   <prefix>r:<ns>      hash    record key -> JSON value
//   <prefix>ri:<ns>     zset    record keys, score 0 (key order and prefix paging via ZRANGEBYLEX)
//   <prefix>w:<name>    hash    bucket start (ms, decimal) -> amount; PEXPIRE max_window + bucket
//   <prefix>c:<name>    string  lifetime counter (INCRBY)
//   <prefix>invalidate  channel "<instance>\0<ns>\0<key>", published by the put/delete script
//
// Failure semantics (see store.hpp for the statuses): put/delete failures are always Unavailable;
// with fail_open, window_add and counter_add answer Degraded (sum/value 0) and are queued; with
// fail_closed they answer Unavailable and are queued too. Replay is at-least-once: an add whose
// reply was lost after Redis applied it is applied again (a quota errs on the strict side).
//
// Only Poco::Redis is used for the protocol: commands are Poco::Redis::Array, encoded by
// Array::toString(), and replies are parsed by Poco::Redis::RedisType. The socket is owned here rather
// than by Poco::Redis::Client because Poco 1.11's Client cannot set a send timeout, cannot poll
// (the subscriber must stop promptly) and silently returns a truncated bulk string when the
// connection breaks mid-reply (its stream buffer swallows socket errors); see RedisConnection.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "store/store.hpp"

namespace glmp::core::store {

class RedisConnection;  // one socket to Redis (redis_store.cpp)

class RedisStore final : public Store {
public:
  // Never connects: the first call (or the background thread, right away) does.
  // Throws std::invalid_argument when cfg.url is not redis://[:password@]host[:port][/db].
  RedisStore(const config::StoreConfig& cfg, prometheus::Registry* registry);
  ~RedisStore() override;

  std::string describe() const override;
  bool may_block() const override { return true; }  // every call is a network round trip
  bool healthy() const override { return up_.load(std::memory_order_relaxed); }

  // Where Redis is and how to log in (parsed from the URL).
  struct Endpoint {
    std::string host;
    uint16_t port = 6379;
    std::string user;      // "" = default user
    std::string password;  // "" = no AUTH
    int db = 0;
  };

protected:
  Status do_get(std::string_view ns, std::string_view key, std::string& value) override;
  Status do_put(std::string_view ns, std::string_view key, std::string_view value) override;
  Status do_remove(std::string_view ns, std::string_view key) override;
  Status do_list(std::string_view ns, std::string_view prefix, std::string_view after, size_t limit, Page& page) override;
  Status do_window_add(std::string_view name, int64_t amount, Millis window, Millis now, int64_t* sum) override;
  Status do_window_sum(std::string_view name, Millis window, Millis now, int64_t& sum) override;
  Status do_window_buckets(std::string_view name, Millis window, Millis now, std::vector<Bucket>& out) override;
  Status do_counter_add(std::string_view name, int64_t amount, int64_t* value) override;
  Status do_counter_get(std::string_view name, int64_t& value) override;

private:
  using Clock = std::chrono::steady_clock;
  using ConnectionPtr = std::unique_ptr<RedisConnection>;

  // How one attempt to talk to Redis ended.
  enum class Outcome {
    Ok,
    Down,   // connection/IO error or a transient server error (LOADING, OOM, …): the backend is down
    Busy,   // every pooled connection stayed in use for `timeout`
    Error,  // a permanent server error (WRONGTYPE, …): this call fails, the backend stays up
  };

  // A window/counter add that could not reach Redis, replayed later.
  struct PendingAdd {
    uint64_t id = 0;
    bool window = true;  // else a lifetime counter
    std::string name;
    int64_t amount = 0;
    Millis bucket = 0;  // window: the bucket of the original call, not of the replay
  };

  struct CacheEntry {
    std::optional<std::string> value;  // nullopt: the record does not exist
    Clock::time_point fresh_until;     // a hit before this; kept after it as the fail_open fallback
    size_t bytes = 0;
  };

  class Lease;    // a connection borrowed from the pool
  class Tracked;  // a background thread's connection, aborted by the destructor

  // --- connections ---
  ConnectionPtr connect(std::chrono::milliseconds connect_timeout) const;
  // Borrows a connection (opens one below pool_size); `wait`: for up to `timeout` when all are
  // busy (else PoolBusy at once). Throws IoError when Redis cannot be reached.
  void acquire(Lease& lease, bool wait);
  void release(ConnectionPtr conn, uint64_t epoch, bool reusable);
  // Runs `fn` on a pooled connection (replaying queued adds first) and classifies the result.
  // `probe`: the background thread, which bypasses the fast-failure gate.
  template <typename Fn>
  Outcome run(const char* what, Fn&& fn, bool probe = false);
  bool may_try();
  void mark_down(const std::string& reason, uint64_t epoch);
  void mark_up(uint64_t epoch);
  Status failed(Outcome o) const;  // what a failed read/add answers (failure_mode)

  std::string redis_key(const char* kind, std::string_view name) const;
  int64_t window_script(RedisConnection& conn, std::string_view name, int64_t amount, Millis now, Millis window);

  // --- replay queue ---
  void enqueue(PendingAdd add);
  void replay(RedisConnection& conn, size_t max);

  // --- record cache ---
  bool cache_enabled() const { return cache_ttl_.count() > 0; }
  static std::string cache_key(std::string_view ns, std::string_view key);
  std::string invalidation_message(std::string_view ns, std::string_view key) const;
  uint64_t cache_seq();
  // Stores what Redis said (read, or `write` by this instance) unless an invalidation arrived since
  // `seq` was read (the value may be stale already); fresh for cache_ttl only while the subscriber
  // is connected.
  void cache_install(const std::string& ck, std::optional<std::string> value, bool write, uint64_t seq);
  bool cache_room(size_t bytes, Clock::time_point now);  // under cache_mutex_
  void cache_drop(const std::string& ck);
  void cache_set_subscribed(bool subscribed);  // false: nothing cached can be trusted any more
  void cache_evict(const std::string& ck);     // another instance changed the record

  // --- threads ---
  void subscriber_loop();
  void keeper_loop();
  bool stopping() const;
  bool track(RedisConnection* conn);  // false when stopping
  void untrack(RedisConnection* conn);
  bool wait_stop(std::chrono::milliseconds d);  // true when stopping

  const std::string url_;
  const Endpoint endpoint_;
  const std::string prefix_;
  const std::string channel_;
  const std::chrono::milliseconds timeout_;
  const size_t pool_size_;
  const std::chrono::milliseconds cache_ttl_;
  const bool fail_open_;
  const std::string ttl_ms_;    // window key expiry: max_window + bucket
  const std::string instance_;  // random id, so the subscriber skips this instance's own messages

  // up_ flips once per transition (logged); while down, last_attempt_ gates the real attempts.
  std::atomic<bool> up_{true};
  std::atomic<int64_t> last_attempt_{0};  // steady clock ticks

  // Pool: free connections; total_ counts free + borrowed + being opened. epoch_ changes when the
  // backend goes down, so connections borrowed before are closed instead of returned.
  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::vector<ConnectionPtr> free_;
  size_t total_ = 0;
  uint64_t epoch_ = 0;

  // Replay queue (bounded, oldest dropped first).
  std::mutex queue_mutex_;
  std::deque<PendingAdd> queue_;
  uint64_t next_pending_id_ = 1;
  uint64_t taken_id_ = 0;  // the newest add a replay has read: never merged into after that
  uint64_t dropped_ = 0;
  size_t replayed_ = 0;  // since the queue was last empty
  std::atomic<size_t> queued_{0};
  std::mutex replay_mutex_;  // one replayer at a time, so queued adds land in order

  // Record cache: ns "\0" key -> entry. seq_ changes with every invalidation (see cache_install).
  std::mutex cache_mutex_;
  std::unordered_map<std::string, CacheEntry> cache_;
  size_t cache_bytes_ = 0;
  uint64_t seq_ = 0;
  bool subscribed_ = false;
  Clock::time_point last_purge_{};

  mutable std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::mutex active_mutex_;
  std::vector<RedisConnection*> active_;  // in use by the threads below
  std::thread subscriber_;
  std::thread keeper_;
};

}  // namespace glmp::core::store
