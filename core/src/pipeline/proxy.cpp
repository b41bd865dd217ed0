#include "pipeline/proxy.hpp"

#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SSLException.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Timespan.h>

#include <sstream>

#include "http/response_parser.hpp"
#include "pipeline/headers.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/router.hpp"
#include "server/connection.hpp"

namespace glmp::core::pipeline {
namespace {

using Poco::Net::HTTPResponse;

struct Stopwatch {
  Clock::duration& sink;
  Clock::time_point t0 = Clock::now();
  ~Stopwatch() { sink += Clock::now() - t0; }
};

// "application/json", "Application/JSON; charset=utf-8", "application/vnd.x+json": names JSON.
bool is_json_content_type(std::string_view ct) {
  for (size_t i = 0; i + 4 <= ct.size(); ++i)
    if (iequals(ct.substr(i, 4), "json")) return true;
  return false;
}

// The first non-blank byte opens a JSON object or array (curl -d sends JSON as form data).
bool looks_like_json(std::string_view body) {
  size_t i = body.find_first_not_of(" \t\r\n");
  return i != std::string_view::npos && (body[i] == '{' || body[i] == '[');
}

bool is_event_stream(const std::string& ct) { return ct.rfind("text/event-stream", 0) == 0; }

// The client connection can't carry a valid end any more (a body cut short, a stream that failed):
// end it without the terminating chunk and close it, so the client sees an error instead of a
// silently truncated body.
void abort_client(Poco::Net::HTTPServerResponse& resp) {
  resp.setKeepAlive(false);
  if (auto* r = dynamic_cast<server::Response*>(&resp)) r->abort();
}

enum class Phase { Connect, Wait };

// A plugin stopped the request (either phase): its own stream, its early answer, or a 500.
void answer_refusal(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) {
  if (ctx.plugin_stream) ctx.status = ctx.status ? ctx.status : 200;  // it streamed the response itself
  else if (ctx.early_response) send_early(resp, ctx);
  else send_error(resp, ctx, {500, "a plugin failed the request without a response"});
}

}  // namespace

void set_status(Poco::Net::HTTPServerResponse& resp, int status, std::string reason) {
  if (reason.empty()) reason = reason_phrase(status);
  resp.setStatus(std::to_string(status));
  resp.setReason(reason);
}

void send_body(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, int status, const std::string& content_type,
               const std::string& body) {
  ctx.status = status;
  set_status(resp, status);
  resp.setContentType(content_type);
  resp.setContentLength64(static_cast<Poco::Int64>(body.size()));
  try {
    resp.sendBuffer(body.data(), body.size());
    ctx.bytes_out += body.size();
    if (!ctx.ttfb) ctx.ttfb = Clock::now() - ctx.start;
  } catch (const Poco::Exception&) {
    ctx.client_gone = true;
  }
}

void send_json(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, int status, const std::string& body) {
  send_body(resp, ctx, status, "application/json", body);
}

void send_early(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) {
  const EarlyResponse& early = *ctx.early_response;
  for (const auto& [k, v] : ctx.extra_response_headers) resp.add(k, v);
  for (const auto& [k, v] : early.headers) resp.add(k, v);
  send_body(resp, ctx, early.status, early.content_type, early.body);
}

void send_error(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx, const ApiError& error) {
  if (ctx.error.empty()) ctx.error = error.message;
  send_json(resp, ctx, error.status, error_body(ctx.flavour, error));
}

Proxy::Proxy(const config::Config& cfg, Pools& pools, plugins::ChainHolder& chain, pool::BufferPool& buffers)
    : cfg_(cfg), pools_(pools), chain_(chain), buffers_(buffers) {}

bool Proxy::read_body(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) {
  auto& conn = static_cast<server::Request&>(req).connection();
  const uint64_t limit = cfg_.server.max_request_body;
  const auto fail = [&](ApiError error) {
    resp.setKeepAlive(false);  // the unread rest of the body must never be parsed as a request
    send_error(resp, ctx, error);
    return false;
  };
  if (conn.parser().content_length() > limit)  // refused before a byte of it is read
    return fail({413, "request body of " + std::to_string(conn.parser().content_length()) +
                          " bytes exceeds the limit of " + std::to_string(limit) + " bytes"});
  switch (conn.read_body(ctx.body)) {  // grows with the bytes that arrive, never from the header
    case server::ClientConnection::BodyResult::Ok:
      ctx.bytes_in = ctx.body.size();
      return true;
    case server::ClientConnection::BodyResult::TooLarge:
      return fail({413, "request body exceeds the limit of " + std::to_string(limit) + " bytes"});
    case server::ClientConnection::BodyResult::Malformed:
      return fail({400, "malformed request body: " + conn.parser().error_message()});
    case server::ClientConnection::BodyResult::Timeout:
      return fail({408, "request body not received within " + std::to_string(cfg_.server.body_timeout.count()) + " ms"});
    case server::ClientConnection::BodyResult::ClientGone:
      ctx.client_gone = true;
      return fail({400, "the client closed the connection before sending the whole body"});
  }
  return false;
}

bool Proxy::inspect_body(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx,
                         TopLevelScan& scan) {
  if (ctx.body.empty()) return true;
  const bool declared_json = is_json_content_type(req.getContentType());
  // A body that looks like JSON is held to JSON whatever its Content-Type says: a body the scanner
  // cannot read would reach the upstream without the forced model. Other bodies (multipart
  // uploads, form data) pass through untouched unless they claim to be JSON.
  if (!declared_json && !looks_like_json(ctx.body)) return true;
  scan = scan_top_level(ctx.body);
  if (!scan.ok) {
    send_error(resp, ctx, {400, "malformed JSON in request body: " + scan.error});
    return false;
  }
  if (!scan.is_object) return true;
  if (const JsonMember* m = scan.find("stream")) ctx.streaming = json_bool_value(ctx.body, *m).value_or(false);
  if (const JsonMember* m = scan.find("model")) {
    ctx.client_model = json_string_value(ctx.body, *m).value_or("");
    if (!cfg_.proxy.model.empty()) ctx.model = cfg_.proxy.model;
  }
  return true;
}

bool Proxy::finalize_body(RequestContext& ctx, const TopLevelScan& inspected) {
  const bool want_model = ctx.model && *ctx.model != ctx.client_model;
  const bool openai_stream = ctx.flavour == Flavour::OpenAI && ctx.streaming && cfg_.proxy.stream_usage;
  if (!want_model && !openai_stream) return false;

  // The scan made at arrival still describes the body unless a plugin replaced it.
  const TopLevelScan scan = ctx.body_replaced ? scan_top_level(ctx.body) : TopLevelScan{};
  const TopLevelScan& current = ctx.body_replaced ? scan : inspected;
  if (!current.ok || !current.is_object) return false;
  std::vector<TopLevelEdit> edits;
  bool hide_usage_chunk = false;
  if (want_model) edits.push_back({"model", json_quote(*ctx.model), TopLevelEdit::Mode::Upsert});
  if (openai_stream) {
    // Ask for usage in the stream so streamed tokens are counted; hide the extra usage-only chunk
    // from clients that did not ask for it (the other chunks may then carry "usage":null, as
    // OpenAI's own API sends them with include_usage; SDKs ignore it).
    const JsonMember* so = current.find("stream_options");
    Poco::JSON::Object::Ptr options = new Poco::JSON::Object;
    bool client_asked = false;
    if (so) {
      try {
        Poco::Dynamic::Var parsed = Poco::JSON::Parser().parse(ctx.body.substr(so->value_begin, so->value_end - so->value_begin));
        if (auto obj = parsed.extract<Poco::JSON::Object::Ptr>()) {
          options = obj;
          client_asked = options->optValue<bool>("include_usage", false);
        }
      } catch (const Poco::Exception&) {
      } catch (const std::exception&) {  // not an object (e.g. null): replaced below
      }
    }
    if (!client_asked) {
      options->set("include_usage", true);
      std::ostringstream os;
      Poco::JSON::Stringifier::stringify(options, os);
      edits.push_back({"stream_options", os.str(), TopLevelEdit::Mode::Upsert});
      hide_usage_chunk = true;
    }
  }
  if (!edits.empty()) ctx.body = apply_top_level_edits(ctx.body, current, edits);
  return hide_usage_chunk;
}

void Proxy::handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) {
  const config::RouteConfig& route = *ctx.route;
  ctx.flavour = route.flavour;
  map_request_headers(req, ctx.upstream_headers);  // before the headers phase: its hooks read them
  // Forwarding headers describe what this proxy saw, never what the client claims.
  ctx.upstream_headers.erase("Forwarded");
  ctx.upstream_headers.erase("X-Real-IP");
  ctx.upstream_headers.erase("X-Forwarded-For");  // every copy the client sent
  ctx.upstream_headers.add("X-Forwarded-For", req.clientAddress().host().toString());
  plugins::ChainRun run(chain_.snapshot());
  // on_complete for every plugin whose hook ran, however this function is left (idempotent).
  struct Complete {
    plugins::ChainRun& run;
    RequestContext& ctx;
    ~Complete() { run.complete(ctx); }
  } complete{run, ctx};
  // Headers phase (auth …) before any body byte is read: a refusal leaves the body unread.
  if (const plugins::HookResult h = run.request_headers(ctx); h != plugins::HookResult::Continue) {
    resp.setKeepAlive(false);  // the unread body must not be parsed as the next request
    answer_refusal(resp, ctx);
    return;
  }
  if (!read_body(req, resp, ctx)) return;
  TopLevelScan scan;
  if (!inspect_body(req, resp, ctx, scan)) return;

  auto pool_it = pools_.find(route.upstream);
  upstream::Pool& pool = *pool_it->second;

  try {
    const plugins::HookResult r = run.request(ctx);
    if (r == plugins::HookResult::Continue && !pool.config().auth_error.empty()) {
      // After the chain: a client without a valid key learns nothing about the configuration.
      send_error(resp, ctx, {503, "proxy configuration error: " + pool.config().auth_error, "", "upstream_not_configured"});
    } else if (r == plugins::HookResult::Continue) {
      const bool hide_usage_chunk = finalize_body(ctx, scan);
      forward(resp, ctx, run, pool, hide_usage_chunk);
    } else {
      answer_refusal(resp, ctx);
    }
  } catch (const std::exception& e) {
    if (!resp.sent()) send_error(resp, ctx, {500, std::string("internal error: ") + e.what()});
    else abort_client(resp);
    if (ctx.error.empty()) ctx.error = e.what();
  }
}

void Proxy::forward(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx,
                    plugins::ChainRun& run, upstream::Pool& pool, bool hide_usage_chunk) {
  const config::RouteConfig& route = *ctx.route;
  const auto& ucfg = pool.config();

  // Upstream request line and headers.
  std::string query = remove_query_param(ctx.query, "api_key");
  std::string uri = pool.base_path() + Router::upstream_path(route, ctx.path);
  if (!query.empty()) uri += "?" + query;
  Poco::Net::HTTPRequest up(ctx.method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
  up.swap(ctx.upstream_headers);  // O(1): the mapped headers become the upstream request's
  up.setHost(pool.host_header());
  up.set("X-Request-ID", ctx.request_id);
  up.set("Accept-Encoding", "identity");
  if (!ucfg.auth_header.empty()) up.set(ucfg.auth_header, ucfg.auth_value);
  if (!ctx.body.empty() || ctx.method == "POST" || ctx.method == "PUT" || ctx.method == "PATCH")
    up.setContentLength64(static_cast<Poco::Int64>(ctx.body.size()));

  upstream::Pool::Lease lease;
  try {
    Stopwatch sw{ctx.upstream_time};
    lease = pool.acquire();
  } catch (const upstream::PoolExhausted& e) {
    send_error(resp, ctx, {503, std::string("upstream busy: ") + e.what(), "", "upstream_pool_exhausted"});
    return;
  }

  // Send, then wait for the first response byte. A kept-alive socket that turns out to be closed
  // before any byte arrived is retried once on a fresh connection; nothing else is ever retried
  // (a byte seen means the upstream may have started working on the request).
  pool::BufferPool::Buffer buffer = buffers_.acquire();  // raw upstream reads; body bytes are views into it
  Poco::Net::HTTPResponse uresp;
  http::ResponseParser parser(uresp, ctx.method == "HEAD");
  size_t filled = 0, used = 0;  // buffer[used, filled) holds bytes after the response headers
  for (int attempt = 0;; ++attempt) {
    Phase phase = Phase::Connect;
    bool retry = false;
    bool first_byte = false;
    std::string failure;
    int status = 502;
    try {
      Stopwatch sw{ctx.upstream_time};
      auto& http = lease->http();
      std::ostream& os = http.sendRequest(up);
      os.write(ctx.body.data(), static_cast<std::streamsize>(ctx.body.size()));
      os.flush();
      if (!os) throw Poco::Net::NetException("write to upstream failed");
      phase = Phase::Wait;
      if (!lease->wait_first_byte()) {
        retry = lease->reused && attempt == 0;
        failure = "upstream closed the connection without responding";
      } else {
        first_byte = true;
        // Read until the final response's headers are complete (1xx interim responses skipped).
        for (;;) {
          filled = lease->read_some(buffer.data(), buffer.size());
          if (filled == 0) {
            parser.finish();
            throw Poco::Net::MessageException(parser.error());
          }
          const auto ev = parser.feed(buffer.data(), filled, used);
          if (ev == http::ResponseParser::Event::Error) throw Poco::Net::MessageException(parser.error());
          if (ev == http::ResponseParser::Event::HeadersDone) break;
        }
      }
    } catch (const Poco::TimeoutException&) {
      status = phase == Phase::Connect ? 502 : 504;
      failure = phase == Phase::Connect
                    ? "could not connect to upstream '" + ucfg.name + "': timed out after " + std::to_string(ucfg.connect_timeout.count()) + " ms"
                    : "upstream '" + ucfg.name + "' did not respond within " + std::to_string(ucfg.read_timeout.count()) + " ms";
    } catch (const Poco::Net::ConnectionRefusedException&) {
      failure = "upstream '" + ucfg.name + "' refused the connection";
    } catch (const Poco::Net::HostNotFoundException&) {
      failure = "upstream '" + ucfg.name + "' host not found";
    } catch (const Poco::Net::NoAddressFoundException&) {
      failure = "upstream '" + ucfg.name + "' host has no address";
    } catch (const Poco::Net::SSLException& e) {
      failure = "TLS error with upstream '" + ucfg.name + "': " + e.displayText();
    } catch (const Poco::Net::MessageException& e) {
      failure = "invalid response from upstream '" + ucfg.name + "': " + e.message();
    } catch (const Poco::Exception& e) {
      // Reset/abort/EPIPE on a reused socket before any byte was read: the stale-socket race.
      retry = lease->reused && attempt == 0 && !first_byte;
      failure = "upstream '" + ucfg.name + "' connection failed: " + e.displayText();
    }
    if (failure.empty()) break;
    if (retry) {
      lease->http().reset();  // fresh connection on the same session object
      lease->reused = false;
      continue;
    }
    lease.discard(true);
    ctx.upstream_status = 0;
    send_error(resp, ctx, {status, failure, "", status == 504 ? "upstream_timeout" : "upstream_unavailable"});
    return;
  }

  ctx.upstream_status = uresp.getStatus();
  map_response_headers(uresp, ctx.response_headers);
  run.response_headers(ctx);

  const bool success = ctx.upstream_status >= 200 && ctx.upstream_status < 300;
  const bool sse = is_event_stream(uresp.getContentType());
  hide_usage_chunk = hide_usage_chunk && sse && success;
  UsageExtractor usage(ctx.flavour, sse, hide_usage_chunk);
  // Counted from the first byte relayed until the stream ends, however it ends.
  struct ActiveStream {
    std::atomic<int>* n;
    ~ActiveStream() {
      if (n) n->fetch_sub(1, std::memory_order_relaxed);
    }
  } active_stream{sse ? &active_streams_ : nullptr};
  if (sse) active_streams_.fetch_add(1, std::memory_order_relaxed);

  set_status(resp, ctx.upstream_status, uresp.getReason());
  // The server already stamped Date (and the upstream's is the one to keep): never send it twice.
  if (ctx.response_headers.has("Date")) resp.erase("Date");
  for (const auto& [k, v] : ctx.response_headers) resp.add(k, v);
  for (const auto& [k, v] : ctx.extra_response_headers) resp.add(k, v);
  resp.set("X-Request-ID", ctx.request_id);
  // Responses that never carry a body (RFC 9110 §6.4.1): nothing to relay.
  const bool no_body = ctx.method == "HEAD" || ctx.upstream_status == 204 || ctx.upstream_status == 304;
  const bool known_length = uresp.hasContentLength() && !hide_usage_chunk;
  if (no_body) {
    if (uresp.hasContentLength()) resp.setContentLength64(uresp.getContentLength64());
    else resp.setContentLength64(0);
  } else if (known_length) {
    resp.setContentLength64(uresp.getContentLength64());
  } else {
    resp.setChunkedTransferEncoding(true);
  }
  ctx.status = ctx.upstream_status;

  std::ostream& out = resp.send();
  if (!known_length) {
    // Streams: the client sees the status at once, before the first event. (With a known length,
    // the headers wait for the body, so headers and first bytes leave in one write.)
    out.flush();
    ctx.ttfb = Clock::now() - ctx.start;
    if (!out) ctx.client_gone = true;
  }

  // Relay: the parser hands out the body de-chunked, as views into the read buffer; each read from
  // the upstream is written and flushed at once (SSE events reach the client as they are
  // produced). One pooled buffer per request, so memory stays flat.
  char tail[2] = {'\n', '\n'};  // the last two bytes relayed: is the client at an event boundary?
  auto emit = [&](std::string_view bytes, bool end) {
    if (!bytes.empty() || end) run.response_body(ctx, bytes, end);
    if (bytes.empty() || ctx.client_gone) return;
    if (bytes.size() >= 2) {
      tail[0] = bytes[bytes.size() - 2];
      tail[1] = bytes.back();
    } else {
      tail[0] = tail[1];
      tail[1] = bytes.back();
    }
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!ctx.ttfb) ctx.ttfb = Clock::now() - ctx.start;
    if (!out) ctx.client_gone = true;
    else ctx.bytes_out += bytes.size();
  };
  // The parser's body pieces of one read (views into `buffer`) are collected and relayed after the
  // read is parsed, so the upstream connection is released before the client sees the last byte.
  std::vector<std::string_view> pieces;
  pieces.reserve(8);
  parser.set_body_sink([](void* list, std::string_view bytes) { static_cast<std::vector<std::string_view>*>(list)->push_back(bytes); },
                       &pieces);
  auto relay = [&] {
    for (std::string_view piece : pieces) emit(usage.feed(piece), false);
    pieces.clear();
  };

  // The upstream connection goes back to the pool the moment its response is fully read — before
  // the last bytes reach the client — so a client's next request finds it idle.
  bool upstream_done = false;
  std::string upstream_error;
  auto on_event = [&](http::ResponseParser::Event ev) {
    if (ev == http::ResponseParser::Event::Error) {
      upstream_error = "upstream '" + ucfg.name + "' sent a broken response: " + parser.error();
    } else if (ev == http::ResponseParser::Event::MessageDone) {
      upstream_done = true;
      // Bytes after the response, or a response that ends with the connection: never reused.
      if (parser.keep_alive() && used == filled) lease.release();
      else lease.discard(false);
    }
  };
  // Each round parses what is in the buffer (first the body bytes that came with the headers),
  // relays it, then reads more.
  for (size_t start = used;; start = 0) {
    size_t consumed = 0;
    const auto ev = parser.feed(buffer.data() + start, filled - start, consumed);
    used = start + consumed;
    on_event(ev);
    relay();
    if (ctx.client_gone || upstream_done || !upstream_error.empty()) break;
    try {
      Stopwatch sw{ctx.upstream_time};
      filled = lease->read_some(buffer.data(), buffer.size());
    } catch (const Poco::TimeoutException&) {
      upstream_error = "upstream '" + ucfg.name + "' stalled for more than " + std::to_string(ucfg.read_timeout.count()) + " ms mid-response";
      break;
    } catch (const Poco::Exception& e) {
      upstream_error = "upstream '" + ucfg.name + "' failed mid-response: " + e.displayText();
      break;
    }
    if (filled == 0) {
      const auto end = parser.finish();  // a body delimited by the close ends here; anything else was cut
      if (end != http::ResponseParser::Event::Error) on_event(end);  // (a close-delimited end adds no body bytes)
      else if (uresp.hasContentLength())
        upstream_error = "upstream '" + ucfg.name + "' closed the response after " + std::to_string(parser.body_bytes()) +
                         " of " + std::to_string(uresp.getContentLength64()) + " bytes";
      else upstream_error = "upstream '" + ucfg.name + "' " + parser.error();
      break;
    }
  }

  // After a failure, what the extractor still holds is an unfinished event: counted, not relayed.
  const std::string_view rest = usage.finish();
  if (!ctx.client_gone && upstream_error.empty()) emit(rest, true);
  ctx.usage = usage.usage();

  if (ctx.client_gone) {
    if (!upstream_done) lease.discard(false);  // the upstream may still be sending: never reuse that socket
    if (ctx.error.empty()) ctx.error = "client disconnected";
    return;
  }
  if (!upstream_error.empty()) {
    lease.discard(true);
    ctx.error = upstream_error;
    // A stream gets the flavour's error event so SDKs raise instead of hanging; either way the
    // response ends without its terminating chunk (or short of its length) and the connection
    // closes, so no client can take it for complete.
    if (sse && !known_length) {
      // A half-relayed event is ended first, so the error arrives as an event of its own.
      std::string event = sse_error_event(ctx.flavour, {502, upstream_error});
      if (tail[1] != '\n') event.insert(0, "\n\n");
      else if (tail[0] != '\n') event.insert(0, "\n");
      emit(event, true);
    }
    abort_client(resp);
    return;
  }
}

}  // namespace glmp::core::pipeline
