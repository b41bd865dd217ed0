#pragma once
// Everything the core and the plugin chain know about one request, from arrival to on_complete.
// Owned by the connection's thread for the request's whole life; never shared between threads.

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>

#include "config/config.hpp"
#include "http/headers.hpp"
#include "server/connection.hpp"
#include "util/spares.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/recording.hpp"
#include "pipeline/usage.hpp"

namespace glmp::core::plugins {
class ChainRun;
}

namespace glmp::core::pipeline {

using Clock = std::chrono::steady_clock;

struct EarlyResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct RequestContext {
  RequestContext() = default;
  RequestContext(const RequestContext&) = default;
  RequestContext(RequestContext&&) = default;
  RequestContext& operator=(const RequestContext&) = default;
  RequestContext& operator=(RequestContext&&) = default;
  using SpareMembers = util::Spares<std::vector<JsonMember>, 256>;
  // The header lists' slots and the request's strings go back to this thread's spares, for the
  // next request's context.
  ~RequestContext() {
    http::Headers::recycle(upstream_headers);
    http::Headers::recycle(response_headers);
    util::give_string(request_id);
    util::give_string(path);
    util::give_string(body);
    util::give_string(upstream_body);
    if (body_scan.members.capacity() <= 64) {
      body_scan.members.clear();
      SpareMembers::give(std::move(body_scan.members));
    }
  }

  // Request
  std::string request_id = util::spare_string();
  std::string method;
  std::string path = util::spare_string();   // raw path, no query
  std::string query;  // raw query, no '?'
  const config::RouteConfig* route = nullptr;
  Flavour flavour = Flavour::OpenAI;
  bool streaming = false;       // top-level "stream": true
  std::string body = util::spare_string();  // whole request body (<= server.max_request_body)
  // The top-level members of `body` (valid while body_scanned): the core's arrival scan
  // (Proxy::inspect_body), reused by finalize_body and by plugins' request_body_member;
  // request_set_body clears body_scanned, and the next reader scans the new body.
  TopLevelScan body_scan{.members = SpareMembers::take()};
  bool body_scanned = false;
  http::Headers upstream_headers = http::Headers::recycled();  // what goes upstream (after mapping); plugins may edit; Host, X-Request-ID, Accept-Encoding, Content-Length and the upstream credential are the proxy's, added when the request is written
  std::string client_model;     // the model the client asked for ("" if none)
  std::optional<std::string> model;  // the model to send upstream; set by [proxy] model, then plugins
  std::vector<std::pair<std::string, std::string>> attributes;  // "auth.key_id" → …

  // Plugins
  const server::Request* request = nullptr;  // the client request as received (read-only)
  Poco::Net::HTTPServerResponse* response = nullptr;  // the client response, for plugins that stream one
  std::ostream* plugin_stream = nullptr;              // set by stream_begin
  std::vector<std::pair<std::string, std::string>> extra_response_headers;  // added in on_request, sent on any response

  // The body as it will go upstream (request_upstream_body), computed once when a plugin asks:
  // upstream_body_ready; upstream_body_edited: it differs from `body` (else upstream_body is
  // unused). Cleared by request_set_body / request_set_model; finalize_body takes it.
  bool add_stream_usage = false;  // [proxy] stream_usage: OpenAI streams get include_usage
  bool upstream_body_ready = false, upstream_body_edited = false, upstream_body_hides_usage = false;
  std::string upstream_body;

  // Recordings (recording.hpp). `recording`: this request's response is recorded
  // (request_record). `follow`: the request is answered from another's recording
  // (request_follow) instead of an upstream call.
  struct Follow {
    std::shared_ptr<Recording> recording;
    Origin origin = Origin::Cache;
    bool fallback = false;
    std::vector<std::pair<std::string, std::string>> headers;
  };
  std::shared_ptr<Recording> recording;
  std::optional<Follow> follow;
  Origin origin = Origin::Upstream;  // where the response came from
  bool charge = true;                // response_set_charge (only for a recorded answer)
  bool usage_set = false;            // a plugin set the usage (response_set_usage)
  uint32_t defer_upstream_ms = 0;    // request_defer_upstream

  // Outcome
  std::optional<EarlyResponse> early_response;  // a plugin answered; no upstream call
  int status = 0;              // status sent to the client
  int upstream_status = 0;     // 0 = no upstream response
  http::Headers response_headers = http::Headers::recycled();  // upstream response headers as sent to the client
  Usage usage;
  bool client_gone = false;
  std::string error;           // why the proxy failed the request, for the log ("" = no error)
  uint64_t bytes_in = 0, bytes_out = 0;

  // Timing
  Clock::time_point start = Clock::now();
  Clock::duration upstream_time{};    // time blocked on the upstream (connect, send, waits for bytes)
  std::optional<Clock::duration> ttfb;  // start → first response byte flushed to the client
  // Where the request's course got to, in ns from `start` (-1: not reached), for request_timings
  // (host API 1.6): mostly clock reads the exchange takes anyway.
  struct Marks {
    int64_t received = -1;        // the whole body read
    int64_t deferred = -1;        // the upstream call parked (request_defer_upstream)
    int64_t upstream_start = -1;  // going upstream (pool wait or connect from here)
    int64_t upstream_ready = -1;  // a connection in hand, the request being written
    int64_t upstream_head = -1;   // the response head parsed
    int64_t follow_start = -1;    // following a recording (request_follow)
    int64_t follow_head = -1;     // the followed response's head arrived
    int64_t ended = -1;           // the response's last body byte handed to the socket
  } marks;
  int64_t since_start(Clock::time_point t) const { return std::chrono::duration_cast<std::chrono::nanoseconds>(t - start).count(); }
  int64_t since_start() const { return since_start(Clock::now()); }
  int64_t ttfb_ns() const { return ttfb ? std::chrono::duration_cast<std::chrono::nanoseconds>(*ttfb).count() : -1; }
  const plugins::ChainRun* chain_run = nullptr;  // set by the ChainRun running its hooks (request_timings)
  bool is_admin = false;  // a GLMP_ACCESS_KEY_OR_ADMIN route called with the admin token

  const std::string* attribute(std::string_view name) const {
    for (const auto& [k, v] : attributes)
      if (k == name) return &v;
    return nullptr;
  }
  void set_attribute(std::string_view name, std::string value) {
    for (auto& [k, v] : attributes)
      if (k == name) { v = std::move(value); return; }
    attributes.emplace_back(std::string(name), std::move(value));
  }
};

}  // namespace glmp::core::pipeline
