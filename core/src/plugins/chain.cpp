#include "plugins/chain.hpp"

namespace glmp::core::plugins {

HookResult ChainRun::request(pipeline::RequestContext& ctx) {
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
  for (size_t i = ran_; i-- > 0;) chain_->plugins[i]->on_complete(ctx);
}

}  // namespace glmp::core::plugins
