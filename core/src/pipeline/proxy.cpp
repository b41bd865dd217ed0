#include "pipeline/proxy.hpp"

#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SSLException.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Timespan.h>

#include <charconv>
#include <sstream>

#include "http/response_parser.hpp"
#include "pipeline/headers.hpp"
#include "pipeline/json_body.hpp"
#include "pipeline/router.hpp"
#include "server/connection.hpp"

namespace glmp::core::pipeline {
namespace {

using Poco::Net::HTTPResponse;

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

}  // namespace

void abort_client(Poco::Net::HTTPServerResponse& resp) {
  resp.setKeepAlive(false);
  if (auto* r = dynamic_cast<server::Response*>(&resp)) r->abort();
}

void answer_refusal(Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) {
  if (ctx.plugin_stream) ctx.status = ctx.status ? ctx.status : 200;  // it streamed the response itself
  else if (ctx.early_response) send_early(resp, ctx);
  else send_error(resp, ctx, {500, "a plugin failed the request without a response"});
}

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

Proxy::Proxy(const config::Config& cfg, Pools& pools) : cfg_(cfg), pools_(pools) {}

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

bool Proxy::inspect_body(const server::Request& req, Poco::Net::HTTPServerResponse& resp, RequestContext& ctx) const {
  ctx.body_scanned = true;  // plugins' request_body_member reads this scan (none: not JSON)
  ctx.add_stream_usage = cfg_.proxy.stream_usage;
  TopLevelScan& scan = ctx.body_scan;
  if (ctx.body.empty()) return true;
  const bool declared_json = is_json_content_type(req.headers().get("Content-Type"));
  // A body that looks like JSON is held to JSON whatever its Content-Type says: a body the scanner
  // cannot read would reach the upstream without the forced model. Other bodies (multipart
  // uploads, form data) pass through untouched unless they claim to be JSON.
  if (!declared_json && !looks_like_json(ctx.body)) return true;
  scan_top_level(ctx.body, scan);
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

bool Proxy::finalize_body(RequestContext& ctx) const {
  if (ctx.upstream_body_ready) {  // a plugin asked for it (request_upstream_body): computed once
    if (ctx.upstream_body_edited) {
      ctx.body.swap(ctx.upstream_body);
      ctx.body_scanned = false;  // the arrival scan described the body before the edits
    }
    ctx.upstream_body_ready = false;
    util::give_string(ctx.upstream_body);
    return ctx.upstream_body_hides_usage;
  }
  bool hide = false;
  if (upstream_body_edits(ctx, ctx.upstream_body, hide)) {
    ctx.body.swap(ctx.upstream_body);
    ctx.body_scanned = false;  // the arrival scan described the body before the edits
  }
  return hide;
}

bool upstream_body_edits(RequestContext& ctx, std::string& out, bool& hide_usage_chunk) {
  hide_usage_chunk = false;
  const bool want_model = ctx.model && *ctx.model != ctx.client_model;
  const bool openai_stream = ctx.flavour == Flavour::OpenAI && ctx.streaming && ctx.add_stream_usage;
  if (!want_model && !openai_stream) return false;

  // The scan made at arrival still describes the body unless a plugin replaced it.
  if (!ctx.body_scanned) {  // a plugin replaced the body: the scan made at arrival is gone
    scan_top_level(ctx.body, ctx.body_scan);
    ctx.body_scanned = true;
  }
  const TopLevelScan& current = ctx.body_scan;
  if (!current.ok || !current.is_object) return false;
  std::vector<TopLevelEdit> edits;
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
  if (edits.empty()) return false;
  out = apply_top_level_edits(ctx.body, current, edits);
  return true;
}

void Proxy::map_headers(const server::Request& req, RequestContext& ctx) const {
  // Before the headers phase: its hooks read them. The client's forwarding headers are dropped
  // there; the proxy says who it saw.
  map_request_headers(req.headers(), ctx.upstream_headers);
  ctx.upstream_headers.add("X-Forwarded-For", req.connection().peer_host());
}

template <class Target, class Field>
void Proxy::upstream_fields(const RequestContext& ctx, const upstream::Pool& pool, Target target, Field field) const {
  const auto& ucfg = pool.config();
  target(remove_query_param(ctx.query, "api_key"));
  // The client's (mapped, plugin-edited) headers, minus the ones the proxy sets itself below;
  // written straight out, so ctx.upstream_headers never holds the upstream credential.
  const bool with_length = !ctx.body.empty() || ctx.method == "POST" || ctx.method == "PUT" || ctx.method == "PATCH";
  for (const auto& [name, value] : ctx.upstream_headers) {
    if (iequals(name, "Host") || iequals(name, "X-Request-ID") || iequals(name, "Accept-Encoding") ||
        iequals(name, "Content-Length") || (!ucfg.auth_header.empty() && iequals(name, ucfg.auth_header)))
      continue;
    field(name, value);
  }
  field("Host", pool.host_header());
  field("X-Request-ID", ctx.request_id);
  field("Accept-Encoding", "identity");
  if (!ucfg.auth_header.empty()) field(ucfg.auth_header, ucfg.auth_value);
  if (with_length) {
    char len[24];
    const auto r = std::to_chars(len, len + sizeof len, ctx.body.size());
    field("Content-Length", std::string_view(len, static_cast<size_t>(r.ptr - len)));
  }
}

void Proxy::upstream_request(const RequestContext& ctx, const upstream::Pool& pool, std::string& out) const {
  out.clear();
  out.reserve(512 + ctx.body.size());
  upstream_fields(
      ctx, pool,
      [&](const std::string& query) {
        out += ctx.method;
        out += ' ';
        out += pool.base_path();
        Router::append_upstream_path(out, *ctx.route, ctx.path);
        if (!query.empty()) out.append(1, '?').append(query);
        out += " HTTP/1.1\r\n";
      },
      [&out](std::string_view name, std::string_view value) {
        out += name;
        out += ": ";
        out += value;
        out += "\r\n";
      });
  out += "\r\n";
  out += ctx.body;
}

void Proxy::upstream_request_h2(const RequestContext& ctx, const upstream::Pool& pool, upstream::H2Request& out) const {
  out.method = ctx.method;
  size_t used = 0;
  upstream_fields(
      ctx, pool,
      [&](const std::string& query) {
        out.path.assign(pool.base_path());
        Router::append_upstream_path(out.path, *ctx.route, ctx.path);
        if (!query.empty()) out.path.append(1, '?').append(query);
      },
      [&](std::string_view name, std::string_view value) {
        // RFC 9113 §8.2.2: no connection-specific fields; Host travels as :authority.
        if (iequals(name, "Host") || iequals(name, "Connection") || iequals(name, "Keep-Alive") ||
            iequals(name, "Proxy-Connection") || iequals(name, "Transfer-Encoding") || iequals(name, "Upgrade") ||
            (iequals(name, "TE") && !iequals(value, "trailers")))
          return;
        if (used == out.fields.size()) out.fields.emplace_back();
        auto& [n, v] = out.fields[used++];
        n.assign(name);
        for (char& c : n) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);  // field names are lowercase in HTTP/2
        v.assign(value);
      });
  out.fields.resize(used);  // slots beyond keep nothing; their capacity is lost only when fewer fields come
}

}  // namespace glmp::core::pipeline
