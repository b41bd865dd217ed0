#include "plugins/chain.hpp"

#include <algorithm>
#include <array>

namespace glmp::core::plugins {

bool shadows_core_route(std::string_view path, bool prefix) {
  // Exact core paths, and the core's prefix: "/v1" itself and everything under "/v1/".
  static constexpr std::array<std::string_view, 6> kExact = {"/health", "/metrics", "/api/metrics/prometheus",
                                                             "/admin/reload", "/admin/plugins", "/v1"};
  static constexpr std::string_view kTree = "/v1/";
  if (path.starts_with(kTree)) return true;  // under /v1/, exact or prefix
  for (const std::string_view core : kExact)
    if (prefix ? core.starts_with(path) : core == path) return true;
  return prefix && kTree.starts_with(path);  // "/", "/v", "/v1" as prefixes reach into /v1/
}

HookResult ChainRun::request_headers(pipeline::RequestContext& ctx) {
  if (headers_result_) return *headers_result_;
  headers_result_ = HookResult::Continue;
  for (const auto& plugin : chain_->plugins) {
    ++headers_ran_;
    if (!plugin->has_request_headers_hook()) continue;
    const HookResult r = plugin->on_request_headers(ctx);
    if (r != HookResult::Continue) {
      headers_result_ = r;
      break;
    }
  }
  return *headers_result_;
}

HookResult ChainRun::request(pipeline::RequestContext& ctx) {
  if (const HookResult h = request_headers(ctx); h != HookResult::Continue) return h;
  for (const auto& plugin : chain_->plugins) {
    ++ran_;
    HookResult r = plugin->on_request(ctx);
    if (r != HookResult::Continue) return r;
  }
  return HookResult::Continue;
}

void ChainRun::response_headers(pipeline::RequestContext& ctx) {
  for (size_t i = ran_; i-- > 0;) chain_->plugins[i]->on_response_headers(ctx);
}

void ChainRun::response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream) {
  for (size_t i = ran_; i-- > 0;) chain_->plugins[i]->on_response_body(ctx, chunk, end_of_stream);
}

void ChainRun::complete(pipeline::RequestContext& ctx) {
  if (completed_) return;
  completed_ = true;
  // Every plugin whose on_request ran, and every plugin whose on_request_headers ran (it has one
  // and had its turn) even if its on_request never did (it refused, or one before it refused).
  for (size_t i = std::max(ran_, headers_ran_); i-- > 0;) {
    const auto& plugin = chain_->plugins[i];
    if (i < ran_ || plugin->has_request_headers_hook()) plugin->on_complete(ctx);
  }
}

}  // namespace glmp::core::plugins
