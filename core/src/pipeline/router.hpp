#pragma once
// Maps a request path to a configured route. The longest matching prefix wins, whatever the
// order in the config, and a prefix only matches on a path-segment boundary: "/v1/messages"
// matches "/v1/messages" and "/v1/messages/count_tokens", never "/v1/messagesX".

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace glmp::core::pipeline {

class Router {
public:
  explicit Router(std::vector<config::RouteConfig> routes);

  // nullptr when no route matches.
  const config::RouteConfig* match(std::string_view path) const;

  // The path to request from the upstream (before the upstream's base path is prepended).
  static std::string upstream_path(const config::RouteConfig& route, std::string_view path);
  // The same, appended to `out` (the request line being written).
  static void append_upstream_path(std::string& out, const config::RouteConfig& route, std::string_view path);

  // The flavour errors should use for a path no route matched: Anthropic for /v1/messages*, else OpenAI.
  static Flavour guess_flavour(std::string_view path);

private:
  std::vector<config::RouteConfig> routes_;  // sorted by prefix length, longest first
};

}  // namespace glmp::core::pipeline
