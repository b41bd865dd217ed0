#pragma once
// A recorded response (docs/design.md, "Recordings"): the status, headers and body bytes of one
// upstream response, captured by the exchange that relays it (the leader), which other requests
// follow live or replay later, on any loop. The response cache keeps finished recordings; request
// coalescing lets identical requests follow one in progress.
//
//   leader (its loop)                       recording (one mutex)            follower (its loop)
//   start(head) / append(pieces) ─────────► chunks kept (≤ max_bytes) ──────► inbox (chunk refs)
//   complete(usage) / fail(...)             followers' inboxes               ready() posted once per
//                                                                            batch, take() under lock
//
// Body bytes travel as immutable, reference-counted chunks (one per upstream read): the recording
// keeps them for replay up to max_bytes, and every follower has an inbox of references to the
// chunks it has not taken yet. When the leader hides the usage-only chunk from its own client
// (OpenAI streams whose client did not ask for usage), each chunk also carries that hidden view,
// computed once by the leader: followers that hide it too just relay the view (no parsing per
// follower), others the raw bytes. Nobody waits for anybody: the leader never slows down for a
// follower (past `backlog` bytes in its inbox a follower is cut off), a follower takes its inbox
// when its own client can take more. A follower is told through its loop's post queue; one
// notification is pending per follower at most. No thread per follower, no lock held across I/O.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http/headers.hpp"
#include "pipeline/errors.hpp"
#include "pipeline/usage.hpp"

namespace glmp::core::server {
class Loop;
}

namespace glmp::core::pipeline {

// Where a response came from (glmp_origin).
enum class Origin { Upstream = 0, Cache = 1, Coalesced = 2 };
const char* origin_name(Origin origin);  // "upstream", "cache", "coalesced"

// The response head as every client of a recording gets it (plus each client's own X-Request-ID,
// Date and extra headers).
struct RecordedHead {
  int status = 0;
  std::string reason;
  http::Headers headers;  // the upstream's, mapped and edited by on_response_headers
  bool sse = false;
  bool no_body = false;         // HEAD, 204, 304
  int64_t content_length = -1;  // the upstream's Content-Length, -1 without one
  // Every chunk carries the leader's view without the usage-only chunk (Recording::Chunk::hidden).
  bool hidden_views = false;
};

class Recording {
public:
  enum class State { Waiting, Live, Complete, Failed };
  using Bytes = std::shared_ptr<const std::string>;
  // One upstream read: its bytes as the upstream sent them, and (when the head says hidden_views)
  // the same bytes as a client that hides the usage-only chunk gets them: the same pointer when
  // nothing was hidden or held back.
  struct Chunk {
    Bytes raw;
    Bytes hidden;
  };

  // Told (on its own loop, through a post) that its inbox or the recording's state changed.
  class Reader {
  public:
    virtual void recording_ready() = 0;

  protected:
    ~Reader() = default;
  };

  // One follower's place in the recording. Shared by the recording (leader's thread) and the
  // follower (its loop); `reader` is touched on the follower's loop only.
  struct Follower {
    server::Loop* loop = nullptr;
    Reader* reader = nullptr;  // null once the follower detached (a post still queued finds it so)
    // Guarded by the recording's mutex:
    std::vector<Chunk> inbox;
    size_t inbox_bytes = 0;
    bool posted = false;   // a notification is queued
    bool cut = false;      // fell more than `backlog` behind: the inbox was dropped
    bool detached = false;
  };

  // What a follower takes from the recording (take()).
  struct Take {
    State state = State::Waiting;
    bool cut = false;
    std::vector<Chunk> chunks;
  };

  // What the leader learns when the last follower leaves.
  class Leader {
  public:
    virtual void followers_left() = 0;

  protected:
    ~Leader() = default;
  };

  Recording(size_t max_bytes, Flavour flavour);
  ~Recording();
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

  // ---- The leader (its loop thread) ----
  // Keeps at least `max_bytes` of body (before the body starts).
  void want(size_t max_bytes);
  // Who is told (on `loop`) when the last follower leaves; null to stop (the exchange ends).
  void set_leader(server::Loop* loop, Leader* leader);
  void start(RecordedHead head);
  // The body pieces of one upstream read, exactly as the upstream sent them (one chunk), and what
  // the leader's client got of them with the usage-only chunk hidden (head.hidden_views; without
  // one the raw bytes stand for it).
  void append(const std::vector<std::string_view>& pieces, std::optional<std::string_view> hidden = std::nullopt);
  void append(std::string_view bytes, std::optional<std::string_view> hidden = std::nullopt);
  // The response arrived whole; `ended_normally`: a stream's terminal event was seen and no error
  // event was. `hidden_tail`: what the hiding view still had held back at the end.
  void complete(const Usage& usage, bool ended_normally, std::string_view hidden_tail = {});
  // It ended otherwise: before its head (`answer` is what the leader's client got: a 5xx of the
  // proxy, or a cancellation) or cut mid-body (`answer.message` says why).
  void fail(const Usage& usage, const ApiError& answer);

  // ---- Followers (their loop thread) ----
  // A follower on `loop`: null when the recording cannot be followed (failed, or it outgrew
  // max_bytes). Its inbox starts with every chunk so far; `reader` is told of the rest.
  std::shared_ptr<Follower> attach(server::Loop& loop, Reader* reader);
  // The follower leaves (its reader is never called again).
  void detach(const std::shared_ptr<Follower>& f);
  // Empties the follower's inbox into `out` (clears the pending notification).
  void take(Follower& f, Take& out);
  // The follower's head, valid once the state is past Waiting (immutable from then on).
  const RecordedHead& head() const { return head_; }
  // The usage the leader reported at the end (zero before).
  Usage final_usage() const;
  // The hidden view's last bytes (complete(…, hidden_tail)); valid once the state is Complete.
  const std::string& hidden_tail() const { return hidden_tail_; }
  const ApiError& failure() const { return failure_; }
  bool started() const;  // the head is known (it went past Waiting, or failed after its head)

  // ---- Anyone ----
  struct Info {
    State state = State::Waiting;
    int status = 0;
    bool sse = false;
    bool ended_normally = false;
    bool replayable = false;
    int64_t body_bytes = 0;
    int64_t started_ms = 0, finished_ms = 0;
    int64_t followers = 0;
    Usage usage;
  };
  Info info() const;
  // Can be followed (or replayed) from its start now.
  bool followable() const;
  size_t followers() const { return followers_.load(std::memory_order_relaxed); }
  Flavour flavour() const { return flavour_; }
  size_t backlog() const;

  // Body bytes kept by every recording of the process, and recordings alive (for /metrics).
  static int64_t kept_bytes_total();
  static int64_t alive_total();

private:
  // Under the lock: tells the followers that have news and no notification pending, with one post
  // per loop (not one per follower).
  void notify_locked();
  void drop_kept_locked();

  mutable std::mutex mu_;
  Flavour flavour_;
  size_t max_bytes_;
  State state_ = State::Waiting;
  bool head_known_ = false;
  RecordedHead head_;
  std::vector<Chunk> kept_;  // the body so far, while it fits in max_bytes
  size_t kept_bytes_ = 0;
  bool overflowed_ = false;  // outgrew max_bytes: kept_ dropped, nobody can attach any more
  int64_t body_bytes_ = 0;
  bool ended_normally_ = false;
  Usage usage_;
  std::string hidden_tail_;
  ApiError failure_;
  int64_t started_ms_ = 0, finished_ms_ = 0;
  std::vector<std::shared_ptr<Follower>> followers_list_;
  std::atomic<size_t> followers_{0};
  server::Loop* leader_loop_ = nullptr;
  Leader* leader_ = nullptr;
  std::shared_ptr<Leader*> leader_link_;  // posted to the leader's loop; nulled by set_leader(null)
};

}  // namespace glmp::core::pipeline
