#pragma once
// Header and query mapping between the client and the upstream.
//
// Request side: everything the client sent goes upstream except hop-by-hop headers (RFC 9110
// §7.6.1, plus any header named in Connection), the client's own credentials (Authorization,
// x-api-key, Proxy-Authorization), Host and Content-Length (recomputed) and Accept-Encoding
// (the proxy must read usage out of the body, so the upstream answers uncompressed).
// Response side: everything passes back except hop-by-hop headers and Content-Length (the
// relay sets framing itself).

#include <string>
#include <string_view>

#include "http/headers.hpp"

namespace glmp::core::pipeline {

using http::Headers;
using http::iequals;

// True for headers that describe one connection and never cross a proxy.
bool is_hop_by_hop(std::string_view name);

// Copies client request headers into `out` for the upstream (see above), and drops the
// forwarding headers the client sent (Forwarded, X-Real-IP, X-Forwarded-For): they describe what
// this proxy saw, and the proxy adds its own X-Forwarded-For. `out` keeps what it had.
void map_request_headers(const Headers& client, Headers& out);

// Moves upstream response headers into `out` (whose slots go to `upstream`, emptied) for the
// client (see above), without copying a string.
void map_response_headers(Headers& upstream, Headers& out);

// Removes every `name=…` parameter (exact name, before percent-decoding) from a raw query string
// (without '?'), keeping the other parameters byte for byte and in order.
std::string remove_query_param(std::string_view query, std::string_view name);

// The value of the first `name=` parameter, percent-decoded ("" when absent; a malformed escape
// leaves the value as it is). Never throws.
std::string query_param(std::string_view query, std::string_view name);

// A client-supplied X-Request-ID is kept when it is 1..128 characters of [A-Za-z0-9._:-].
bool is_sane_request_id(std::string_view id);

// A new unique request id: 32 hex characters (random per-process prefix + counter). Lock-free.
std::string generate_request_id();
// The same, written into `out` (replaced; its capacity is reused).
void generate_request_id(std::string& out);

}  // namespace glmp::core::pipeline
