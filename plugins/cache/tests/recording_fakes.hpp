// Test fakes of the ABI 1.5 host functions (recordings, origin, charge, canonical body), installed
// into a glmp::testing::FakeHost's table. They model the contract of plugin_api.h loosely:
//   - request_record: one recording per request (later calls return it again), NULL once the
//     request follows another one;
//   - request_follow: -1 for a FAILED, not replayable, or COMPLETE non-2xx recording; otherwise
//     the request "follows" it: its origin becomes the one given and the extra headers land in
//     FakeRequest::response_headers (replacing same-named ones);
//   - request_canonical_body: the body parsed with nlohmann::json (object keys sorted) and dumped
//     without whitespace, minus the excluded top-level members; 0 when the body is not JSON.
// Every recording handle counts the references the plugin holds, so a test can check the plugin
// gives back exactly what it took.
#pragma once

#include <glmproxy/fake_host.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace cache_test {

struct FakeRecording {
  std::atomic<int> refs{0};  // references the plugin holds
  glmp_recording_info info{};
  std::size_t max_bytes = 0;  // what request_record asked for (the largest)

  glmp_recording_host_ptr* handle() { return reinterpret_cast<glmp_recording_host_ptr*>(this); }
  static FakeRecording& of(glmp_recording_host_ptr* h) { return *reinterpret_cast<FakeRecording*>(h); }

  // The response arrived whole: a 200 of `body_bytes`, ended normally, every byte kept.
  void complete(std::int64_t body_bytes, int status = 200) {
    info.state = GLMP_RECORDING_COMPLETE;
    info.status = status;
    info.ended_normally = 1;
    info.replayable = 1;
    info.body_bytes = body_bytes;
    info.finished_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  }
};

struct RequestState {
  FakeRecording* recorded = nullptr;
  FakeRecording* followed = nullptr;
  glmp_origin origin = GLMP_ORIGIN_UPSTREAM;
  int charge = 1;
  bool usage_set = false;
  glmp_usage usage{};
};

// The fakes' state: global (the C callbacks get only the request handle), one per test process;
// reset() between tests.
class Recordings {
public:
  static Recordings& instance() {
    static Recordings r;
    return r;
  }

  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    recordings_.clear();
    requests_.clear();
  }

  // A request's state, by its id (give every FakeRequest its own: see next_id()).
  RequestState& state(const glmp::testing::FakeRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_[r.id];
  }
  RequestState& state(glmp_request_host_ptr* r) { return state(*reinterpret_cast<glmp::testing::FakeRequest*>(r)); }
  std::string next_id() { return "req-" + std::to_string(++ids_); }
  FakeRecording* make() {
    std::lock_guard<std::mutex> lock(mutex_);
    recordings_.push_back(std::make_unique<FakeRecording>());
    return recordings_.back().get();
  }
  // The sum of the references the plugin still holds, over every recording.
  int outstanding_refs() {
    std::lock_guard<std::mutex> lock(mutex_);
    int n = 0;
    for (const auto& r : recordings_) n += r->refs.load();
    return n;
  }

  // Installs the fakes into `host`'s table.
  static void install(glmp::testing::FakeHost& host) {
    glmp_host_api& api = host.mutable_api();
    api.request_record = [](glmp_request_host_ptr* r, std::size_t max_bytes) -> glmp_recording_host_ptr* {
      RequestState& s = instance().state(r);
      if (s.followed != nullptr) return nullptr;
      if (s.recorded == nullptr) s.recorded = instance().make();
      s.recorded->max_bytes = std::max(s.recorded->max_bytes, max_bytes);
      ++s.recorded->refs;
      return s.recorded->handle();
    };
    api.recording_retain = [](glmp_recording_host_ptr* h) { ++FakeRecording::of(h).refs; };
    api.recording_release = [](glmp_recording_host_ptr* h) { --FakeRecording::of(h).refs; };
    api.recording_info = [](glmp_recording_host_ptr* h, glmp_recording_info* out) {
      const std::uint32_t size = std::min<std::uint32_t>(out->struct_size, sizeof(glmp_recording_info));
      glmp_recording_info copy = FakeRecording::of(h).info;
      copy.struct_size = size;
      std::memcpy(static_cast<void*>(out), &copy, size);
    };
    api.request_follow = [](glmp_request_host_ptr* r, glmp_recording_host_ptr* h, glmp_origin origin, std::uint32_t,
                            const glmp_header* headers, std::size_t count) -> int {
      const glmp_recording_info& info = FakeRecording::of(h).info;
      if (info.state == GLMP_RECORDING_FAILED || !info.replayable ||
          (info.state == GLMP_RECORDING_COMPLETE && (info.status < 200 || info.status > 299)))
        return -1;
      RequestState& s = instance().state(r);
      s.followed = &FakeRecording::of(h);
      s.origin = origin;
      auto& req = *reinterpret_cast<glmp::testing::FakeRequest*>(r);
      for (std::size_t i = 0; i < count; ++i)
        glmp::testing::set_header(req.response_headers, std::string_view(headers[i].name, headers[i].name_len),
                                  std::string_view(headers[i].value, headers[i].value_len));
      return 0;
    };
    api.response_origin = [](glmp_request_host_ptr* r) { return instance().state(r).origin; };
    api.response_set_usage = [](glmp_request_host_ptr* r, const glmp_usage* u) {
      RequestState& s = instance().state(r);
      s.usage_set = true;
      s.usage = *u;
    };
    api.response_charge = [](glmp_request_host_ptr* r) { return instance().state(r).charge; };
    api.response_set_charge = [](glmp_request_host_ptr* r, int charge) {
      RequestState& s = instance().state(r);
      if (s.origin != GLMP_ORIGIN_UPSTREAM) s.charge = charge;
    };
    api.request_upstream_body = [](glmp_request_host_ptr* r, const char** d, std::size_t* n) {
      const auto& body = reinterpret_cast<glmp::testing::FakeRequest*>(r)->body;
      *d = body.data();
      *n = body.size();
    };
    api.request_canonical_body = [](glmp_request_host_ptr* r, const glmp_string* exclude, std::size_t count,
                                    glmp_bytes_fn out, void* user_data) -> int {
      const auto& body = reinterpret_cast<glmp::testing::FakeRequest*>(r)->body;
      nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
      if (j.is_discarded()) return 0;
      if (j.is_object())
        for (std::size_t i = 0; i < count; ++i) j.erase(std::string(exclude[i].data, exclude[i].len));
      const std::string text = j.dump();
      out(user_data, text.data(), text.size());
      return 1;
    };
    api.request_defer_upstream = [](glmp_request_host_ptr*, std::uint32_t) {};
  }

private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<FakeRecording>> recordings_;
  std::map<std::string, RequestState> requests_;  // by FakeRequest::id
  std::atomic<int> ids_{0};
};

}  // namespace cache_test
