#pragma once
// The pieces of the proxy pipeline that do not depend on where they run (docs/design.md, "Request
// flow"): header mapping, body inspection and edits, the upstream request, and the responders.
// The request itself runs as a pipeline::Exchange on its event loop (exchange.hpp).

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>

#include "config/config.hpp"
#include "pipeline/errors.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/request_context.hpp"
#include "plugins/chain.hpp"
#include "server/connection.hpp"
#include "upstream/h2_session.hpp"
#include "upstream/pool.hpp"

namespace glmp::core::pipeline {

using Pools = std::map<std::string, std::unique_ptr<upstream::Pool>, std::less<>>;

class Proxy {
public:
  Proxy(const config::Config& cfg, Pools& pools);

  // Event streams being relayed right now (for the glmp_active_streams gauge).
  int active_streams() const { return active_streams_.load(std::memory_order_relaxed); }
  void stream_started() { active_streams_.fetch_add(1, std::memory_order_relaxed); }
  void stream_ended() { active_streams_.fetch_sub(1, std::memory_order_relaxed); }

  // Worker side (plugin routes): reads the request body into ctx.body ([server] max_request_body
  // → 413, bad framing → 400; the error is sent and false returned).
  bool read_body(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx);

  // Maps the client's headers for the upstream (forwarding headers describe what this proxy saw).
  void map_headers(const server::Request& req, RequestContext& ctx) const;
  // Validates a JSON body (400 when malformed) and reads "stream"/"model"; ctx.body_scan keeps
  // the scan (for finalize_body and plugins' request_body_member).
  bool inspect_body(const server::Request& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) const;
  // Body edits decided by the core and the chain; returns true when the usage-only stream chunk
  // must be hidden from the client (the proxy asked for it, the client did not).
  bool finalize_body(RequestContext& ctx) const;
  // The upstream request, head and body, as written on the connection, into `out` (replaced;
  // its capacity is reused).
  void upstream_request(const RequestContext& ctx, const upstream::Pool& pool, std::string& out) const;
  // The same request for an HTTP/2 stream: method, path and lowercase fields (the body is sent
  // from ctx.body). Same fields as HTTP/1.1 minus the connection-specific ones and Host
  // (:authority); `out` is replaced, its capacity reused.
  void upstream_request_h2(const RequestContext& ctx, const upstream::Pool& pool, upstream::H2Request& out) const;

  const config::Config& config() const { return cfg_; }

private:
  // The upstream request's target and fields, in order, for both protocols: `target(path)` once,
  // then `field(name, value)` for each (the proxy's own last, the credential among them).
  template <class Target, class Field>
  void upstream_fields(const RequestContext& ctx, const upstream::Pool& pool, Target target, Field field) const;

  const config::Config& cfg_;
  Pools& pools_;
  std::atomic<int> active_streams_{0};
};

// The core's edits of the request body (the model to send upstream, stream_options.include_usage
// for OpenAI streams when ctx.add_stream_usage): true with the edited body in `out`, false when
// the body goes as it is. hide_usage_chunk: the client did not ask for the usage-only chunk.
bool upstream_body_edits(RequestContext& ctx, std::string& out, bool& hide_usage_chunk);

// A plugin stopped the request (either phase): its own stream, its early answer, or a 500.
void answer_refusal(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx);
// The client connection can't carry a valid end any more (a body cut short, a stream that failed):
// end it without the terminating chunk and close it, so the client sees an error instead of a
// silently truncated body.
void abort_client(Poco::Net::HTTPServerResponse& resp);

// Sends a proxy-generated error in the request's flavour (JSON, Content-Length, X-Request-ID kept).
void send_error(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, const ApiError& error);
// Sets any status code, including ones Poco's HTTPStatus enum lacks (e.g. 529): casting those to
// the enum would be undefined behaviour, so the string setters are used. reason "" = standard text.
void set_status(Poco::Net::HTTPServerResponse& resp, int status, std::string reason = {});
// Sends ctx.early_response (a plugin's answer) with the headers plugins added.
void send_early(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx);
// Sends a complete body with a status and content type.
void send_body(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, int status, const std::string& content_type,
               const std::string& body);
// Sends a JSON body with a status.
void send_json(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, int status, const std::string& body);

}  // namespace glmp::core::pipeline
