#include "pipeline/recording.hpp"

#include <algorithm>
#include <cstring>

#include "server/engine.hpp"

namespace glmp::core::pipeline {
namespace {

// What a follower may fall behind beyond the catch-up (everything kept so far, handed over at
// once when it attaches): the exchange's high watermark and some.
constexpr size_t kCatchUpSlack = 256 * 1024;
constexpr size_t kMinBacklog = 2 * 1024 * 1024;

std::atomic<int64_t> g_kept_bytes{0};
std::atomic<int64_t> g_alive{0};

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

const char* origin_name(Origin origin) {
  switch (origin) {
    case Origin::Cache: return "cache";
    case Origin::Coalesced: return "coalesced";
    default: return "upstream";
  }
}

Recording::Recording(size_t max_bytes, Flavour flavour) : flavour_(flavour), max_bytes_(max_bytes), started_ms_(unix_ms()) {
  g_alive.fetch_add(1, std::memory_order_relaxed);
}

Recording::~Recording() {
  g_kept_bytes.fetch_sub(static_cast<int64_t>(kept_bytes_), std::memory_order_relaxed);
  g_alive.fetch_sub(1, std::memory_order_relaxed);
}

int64_t Recording::kept_bytes_total() { return g_kept_bytes.load(std::memory_order_relaxed); }
int64_t Recording::alive_total() { return g_alive.load(std::memory_order_relaxed); }

size_t Recording::backlog() const { return std::max(kMinBacklog, max_bytes_ + kCatchUpSlack); }

void Recording::want(size_t max_bytes) {
  std::lock_guard lock(mu_);
  if (body_bytes_ == 0 && !overflowed_) max_bytes_ = std::max(max_bytes_, max_bytes);
}

void Recording::set_leader(server::Loop* loop, Leader* leader) {
  std::lock_guard lock(mu_);
  if (leader_link_) *leader_link_ = nullptr;  // a notification still queued finds nobody
  leader_loop_ = loop;
  leader_ = leader;
  leader_link_ = leader ? std::make_shared<Leader*>(leader) : nullptr;
}

void Recording::notify_locked() {
  // Few loops (one per core): a linear list of (loop, followers) batches.
  std::vector<std::pair<server::Loop*, std::vector<std::shared_ptr<Follower>>>> batches;
  for (const auto& f : followers_list_) {
    if (f->posted || f->detached) continue;
    f->posted = true;
    auto it = std::find_if(batches.begin(), batches.end(), [&](const auto& b) { return b.first == f->loop; });
    if (it == batches.end()) it = batches.insert(batches.end(), {f->loop, {}});
    it->second.push_back(f);
  }
  for (auto& [loop, followers] : batches) {
    loop->ev().post([followers = std::move(followers)] {
      for (const auto& f : followers)
        if (f->reader) f->reader->recording_ready();
    });
  }
}

void Recording::drop_kept_locked() {
  g_kept_bytes.fetch_sub(static_cast<int64_t>(kept_bytes_), std::memory_order_relaxed);
  std::vector<Chunk>().swap(kept_);
  kept_bytes_ = 0;
}

void Recording::start(RecordedHead head) {
  std::lock_guard lock(mu_);
  if (state_ != State::Waiting) return;
  head_ = std::move(head);
  head_known_ = true;
  state_ = State::Live;
  notify_locked();
}

void Recording::append(std::string_view bytes, std::optional<std::string_view> hidden) {
  const std::vector<std::string_view> one{bytes};
  append(one, hidden);
}

void Recording::append(const std::vector<std::string_view>& pieces, std::optional<std::string_view> hidden) {
  size_t n = 0;
  for (auto p : pieces) n += p.size();
  std::lock_guard lock(mu_);
  if (state_ != State::Live) return;
  // The hidden view may differ in size (an event held back, the usage-only chunk dropped): it is a
  // chunk of its own then, else the raw one stands for it.
  bool same = !head_.hidden_views || !hidden || hidden->size() == n;
  if (head_.hidden_views && hidden && same) {
    size_t at = 0;
    for (auto p : pieces) {
      if (!p.empty() && std::memcmp(p.data(), hidden->data() + at, p.size()) != 0) {
        same = false;
        break;
      }
      at += p.size();
    }
  }
  const size_t extra = same ? 0 : hidden->size();
  if (n == 0 && extra == 0) return;
  body_bytes_ += static_cast<int64_t>(n);
  const bool keep = !overflowed_ && kept_bytes_ + n + extra <= max_bytes_;
  if (!keep && !overflowed_) {
    overflowed_ = true;  // no more attaching or replay; the memory goes now
    drop_kept_locked();
  }
  if (!keep && followers_list_.empty()) return;  // nobody to give it to: no copy
  auto raw = std::make_shared<std::string>();
  raw->reserve(n);
  for (auto p : pieces) raw->append(p);
  Chunk c{std::move(raw), nullptr};
  if (head_.hidden_views) c.hidden = same ? c.raw : std::make_shared<const std::string>(*hidden);
  if (keep) {
    kept_.push_back(c);
    kept_bytes_ += n + extra;
    g_kept_bytes.fetch_add(static_cast<int64_t>(n + extra), std::memory_order_relaxed);
  }
  const size_t limit = backlog();
  for (const auto& f : followers_list_) {
    if (f->cut || f->detached) continue;
    f->inbox.push_back(c);
    f->inbox_bytes += n + extra;
    if (f->inbox_bytes > limit) {
      f->cut = true;  // it cannot slow anyone: its inbox goes, it ends with an error event
      std::vector<Chunk>().swap(f->inbox);
      f->inbox_bytes = 0;
    }
  }
  notify_locked();
}

void Recording::complete(const Usage& usage, bool ended_normally, std::string_view hidden_tail) {
  std::lock_guard lock(mu_);
  if (state_ != State::Live) return;
  state_ = State::Complete;
  usage_ = usage;
  if (head_.hidden_views) hidden_tail_.assign(hidden_tail);
  ended_normally_ = ended_normally;
  finished_ms_ = unix_ms();
  notify_locked();
}

void Recording::fail(const Usage& usage, const ApiError& answer) {
  std::lock_guard lock(mu_);
  if (state_ == State::Complete || state_ == State::Failed) return;
  state_ = State::Failed;
  usage_ = usage;
  failure_ = answer;
  finished_ms_ = unix_ms();
  drop_kept_locked();  // never replayed
  notify_locked();
}

Usage Recording::final_usage() const {
  std::lock_guard lock(mu_);
  return usage_;
}

bool Recording::started() const {
  std::lock_guard lock(mu_);
  return head_known_;
}

bool Recording::followable() const {
  std::lock_guard lock(mu_);
  if (overflowed_ || state_ == State::Failed) return false;
  if (state_ == State::Complete) return head_.status >= 200 && head_.status < 300;
  return true;
}

std::shared_ptr<Recording::Follower> Recording::attach(server::Loop& loop, Reader* reader) {
  std::lock_guard lock(mu_);
  if (overflowed_ || state_ == State::Failed) return nullptr;
  auto f = std::make_shared<Follower>();
  f->loop = &loop;
  f->reader = reader;
  f->inbox = kept_;
  f->inbox_bytes = kept_bytes_;
  followers_list_.push_back(f);
  followers_.store(followers_list_.size(), std::memory_order_relaxed);
  return f;
}

void Recording::detach(const std::shared_ptr<Follower>& f) {
  if (!f) return;
  f->reader = nullptr;
  std::lock_guard lock(mu_);
  if (f->detached) return;
  f->detached = true;
  std::vector<Chunk>().swap(f->inbox);
  f->inbox_bytes = 0;
  std::erase(followers_list_, f);
  followers_.store(followers_list_.size(), std::memory_order_relaxed);
  if (followers_list_.empty() && leader_link_ && leader_loop_ && state_ == State::Live) {
    std::shared_ptr<Leader*> link = leader_link_;
    leader_loop_->ev().post([link] {
      if (*link) (*link)->followers_left();
    });
  }
}

void Recording::take(Follower& f, Take& out) {
  std::lock_guard lock(mu_);
  f.posted = false;
  out.state = state_;
  out.cut = f.cut;
  out.chunks.clear();
  out.chunks.swap(f.inbox);
  f.inbox_bytes = 0;
}

Recording::Info Recording::info() const {
  std::lock_guard lock(mu_);
  Info i;
  i.state = state_;
  i.status = head_known_ ? head_.status : 0;
  i.sse = head_.sse;
  i.ended_normally = state_ == State::Complete && ended_normally_;
  i.replayable = !overflowed_ && state_ != State::Failed;
  i.body_bytes = body_bytes_;
  i.started_ms = started_ms_;
  i.finished_ms = finished_ms_;
  i.followers = static_cast<int64_t>(followers_list_.size());
  i.usage = usage_;
  return i;
}

}  // namespace glmp::core::pipeline
