#include "pipeline/headers.hpp"

#include <atomic>
#include <cctype>
#include <random>
#include <vector>

#include <Poco/Exception.h>
#include <Poco/URI.h>

namespace glmp::core::pipeline {
namespace {

constexpr std::string_view kHopByHop[] = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                          "transfer-encoding", "upgrade", "proxy-authenticate"};

// Forwarding headers describe what this proxy saw, never what the client claims.
constexpr std::string_view kForwarding[] = {"forwarded", "x-real-ip", "x-forwarded-for"};

// Client credentials for the proxy itself: they must never reach the upstream.
constexpr std::string_view kClientCredentials[] = {"authorization", "x-api-key", "proxy-authorization"};

template <size_t N>
bool in_list(std::string_view name, const std::string_view (&list)[N]) {
  for (auto item : list)
    if (iequals(name, item)) return true;
  return false;
}

// The tokens of every Connection header ("close, x-foo" → {"close", "x-foo"}), read once per message.
// Views into `headers`; a message names a handful at most (and usually none: no allocation).
template <class Fields>
std::vector<std::string_view> connection_tokens(const Fields& headers) {
  std::vector<std::string_view> tokens;
  for (const auto& [name, v] : headers) {
    if (!iequals(name, "Connection")) continue;
    size_t pos = 0;
    while (pos <= v.size()) {
      size_t comma = v.find(',', pos);
      if (comma == std::string_view::npos) comma = v.size();
      std::string_view token = std::string_view(v).substr(pos, comma - pos);
      while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
      while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
      if (!token.empty()) tokens.push_back(token);
      pos = comma + 1;
    }
  }
  return tokens;
}

template <class Token>
bool in_tokens(std::string_view name, const std::vector<Token>& tokens) {
  for (const auto& t : tokens)
    if (iequals(name, t)) return true;
  return false;
}

}  // namespace

bool is_hop_by_hop(std::string_view name) { return in_list(name, kHopByHop); }

void map_request_headers(const Headers& client, Headers& out) {
  const auto named = connection_tokens(client);
  for (const auto& [name, value] : client) {
    if (is_hop_by_hop(name) || in_list(name, kClientCredentials) || in_list(name, kForwarding) ||
        iequals(name, "host") || iequals(name, "content-length") || iequals(name, "accept-encoding") ||
        iequals(name, "expect") || in_tokens(name, named))
      continue;
    out.add(name, value);
  }
}

void map_response_headers(Headers& upstream, Headers& out) {
  out.swap(upstream);
  upstream.clear();
  // Connection's tokens are copied when there are any: erase_if moves the strings they view.
  std::vector<std::string> named;
  for (std::string_view token : connection_tokens(out)) named.emplace_back(token);
  out.erase_if([&named](std::string_view name, std::string_view) {
    return is_hop_by_hop(name) || iequals(name, "content-length") || in_tokens(name, named);
  });
}

std::string remove_query_param(std::string_view query, std::string_view name) {
  std::string out;
  out.reserve(query.size());
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view part = query.substr(pos, amp - pos);
    std::string_view key = part.substr(0, part.find('='));
    if (!part.empty() && key != name) {
      if (!out.empty()) out.push_back('&');
      out.append(part);
    }
    pos = amp + 1;
  }
  return out;
}

std::string query_param(std::string_view query, std::string_view name) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view part = query.substr(pos, amp - pos);
    size_t eq = part.find('=');
    if (part.substr(0, eq) == name) {
      std::string decoded;
      if (eq != std::string_view::npos) {
        std::string raw(part.substr(eq + 1));
        for (auto& c : raw)
          if (c == '+') c = ' ';
        try {
          Poco::URI::decode(raw, decoded);
        } catch (const Poco::SyntaxException&) {
          decoded = raw;  // a malformed %-escape is taken literally, never an exception
        }
      }
      return decoded;
    }
    pos = amp + 1;
  }
  return {};
}

bool is_sane_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-')) return false;
  return true;
}

void generate_request_id(std::string& out) {
  static const uint64_t prefix = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  static constexpr char hex[] = "0123456789abcdef";
  out.assign(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[static_cast<size_t>(15 - i)] = hex[(prefix >> (i * 4)) & 0xf];
    out[static_cast<size_t>(31 - i)] = hex[(n >> (i * 4)) & 0xf];
  }
}

std::string generate_request_id() {
  std::string id;
  generate_request_id(id);
  return id;
}

}  // namespace glmp::core::pipeline
