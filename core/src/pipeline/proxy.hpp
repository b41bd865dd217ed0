#pragma once
// The per-request proxy pipeline (docs/design.md, "Request flow"):
// read body → inspect JSON (stream flag, model) → on_request hooks → body edits (model rewrite,
// stream usage) → upstream pool (stale retry) → on_response_headers → relay chunks with usage
// extraction (on_response_body, write + flush each) → on_complete, exactly once.

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
#include "pool/buffer_pool.hpp"
#include "upstream/pool.hpp"

namespace glmp::core::pipeline {

using Pools = std::map<std::string, std::unique_ptr<upstream::Pool>, std::less<>>;

class Proxy {
public:
  Proxy(const config::Config& cfg, Pools& pools, plugins::ChainHolder& chain, pool::BufferPool& buffers);

  // Proxies a request whose route is ctx.route. Never throws; fills ctx for the access log.
  void handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx);

  // Event streams being relayed right now (for the glmp_active_streams gauge).
  int active_streams() const { return active_streams_.load(std::memory_order_relaxed); }

  // Reads the request body into ctx.body ([server] max_request_body → 413, bad framing → 400; the
  // error is sent and false returned). Also used for plugin routes.
  bool read_body(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx);

private:
  // Validates a JSON body (400 when malformed) and reads "stream"/"model"; `scan` keeps the result.
  bool inspect_body(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx,
                    TopLevelScan& scan);
  // Body edits decided by the core and the chain; returns true when the usage-only stream chunk
  // must be hidden from the client (the proxy asked for it, the client did not).
  bool finalize_body(RequestContext& ctx, const TopLevelScan& inspected);
  void forward(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx,
               plugins::ChainRun& run, upstream::Pool& pool, bool hide_usage_chunk);

  const config::Config& cfg_;
  Pools& pools_;
  plugins::ChainHolder& chain_;
  pool::BufferPool& buffers_;
  std::atomic<int> active_streams_{0};
};

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
