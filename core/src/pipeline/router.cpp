#include "pipeline/router.hpp"

#include <algorithm>

namespace glmp::core::pipeline {
namespace {

bool prefix_matches(std::string_view prefix, std::string_view path) {
  if (path.substr(0, prefix.size()) != prefix) return false;
  if (path.size() == prefix.size() || prefix.back() == '/') return true;
  return path[prefix.size()] == '/';
}

}  // namespace

Router::Router(std::vector<config::RouteConfig> routes) : routes_(std::move(routes)) {
  std::stable_sort(routes_.begin(), routes_.end(),
                   [](const auto& a, const auto& b) { return a.prefix.size() > b.prefix.size(); });
}

const config::RouteConfig* Router::match(std::string_view path) const {
  for (const auto& r : routes_)
    if (prefix_matches(r.prefix, path)) return &r;
  return nullptr;
}

void Router::append_upstream_path(std::string& out, const config::RouteConfig& route, std::string_view path) {
  if (!route.strip_prefix.empty() && path.substr(0, route.strip_prefix.size()) == route.strip_prefix)
    path.remove_prefix(route.strip_prefix.size());
  if (path.empty() || path.front() != '/') out += '/';
  out += path;
}

std::string Router::upstream_path(const config::RouteConfig& route, std::string_view path) {
  std::string out;
  append_upstream_path(out, route, path);
  return out;
}

Flavour Router::guess_flavour(std::string_view path) {
  return prefix_matches("/v1/messages", path) ? Flavour::Anthropic : Flavour::OpenAI;
}

}  // namespace glmp::core::pipeline
