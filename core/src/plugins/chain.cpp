#include "plugins/chain.hpp"

#include <algorithm>
#include <array>

#include <prometheus/histogram.h>

namespace glmp::core::plugins {

const char* hook_name(Hook hook) {
  switch (hook) {
    case Hook::RequestHeaders: return "on_request_headers";
    case Hook::Request: return "on_request";
    case Hook::ResponseHeaders: return "on_response_headers";
    case Hook::ResponseBody: return "on_response_body";
    case Hook::Complete: return "on_complete";
  }
  return "?";
}

std::array<const char*, kHooks> implemented_hook_names(const Plugin& plugin) {
  std::array<const char*, kHooks> names{};
  for (size_t h = 0; h < kHooks; ++h)
    if (plugin.has_hook(static_cast<Hook>(h))) names[h] = hook_name(static_cast<Hook>(h));
  return names;
}

ChainRun::ChainRun(std::shared_ptr<const Chain> chain) : chain_(std::move(chain)) {
  timed_ = std::min(chain_->plugins.size(), kTimedPlugins);
  for (size_t i = 0; i < timed_; ++i) times_[i].ran = 0;  // start_ns / dur_ns are set on a hook's first run
}

// A clock read (steady_clock: the vDSO, ~25 ns on a KVM guest) before and after each call of a
// hook the plugin implements; within one phase the read that ends a hook starts the next timed one
// (`last`), so n timed plugins in a phase cost n + 1 reads, not 2n. What runs between them is a
// NULL hook's no-op call, charged to the next plugin.
template <class Call>
auto ChainRun::timed(size_t i, Hook hook, const pipeline::RequestContext& ctx, pipeline::Clock::time_point& last,
                     Call&& call) {
  if (i >= timed_ || !chain_->plugins[i]->has_hook(hook)) return call();
  const auto t0 = last != pipeline::Clock::time_point{} ? last : pipeline::Clock::now();
  struct Record {  // runs when `call` returns (a value or void)
    HookTimes& t;
    size_t h;
    pipeline::Clock::time_point t0, start;
    pipeline::Clock::time_point& last;
    ~Record() {
      last = pipeline::Clock::now();
      const int64_t dur = std::chrono::duration_cast<std::chrono::nanoseconds>(last - t0).count();
      const uint8_t bit = static_cast<uint8_t>(1u << h);
      if (!(t.ran & bit)) {
        t.ran |= bit;
        t.start_ns[h] = std::chrono::duration_cast<std::chrono::nanoseconds>(t0 - start).count();
        t.dur_ns[h] = dur;
      } else {
        t.dur_ns[h] += dur;
      }
    }
  } record{times_[i], static_cast<size_t>(hook), t0, ctx.start, last};
  return call();
}

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
  ctx.chain_run = this;
  if (headers_result_) return *headers_result_;
  headers_result_ = HookResult::Continue;
  pipeline::Clock::time_point last{};
  for (const auto& plugin : chain_->plugins) {
    ++headers_ran_;
    if (!plugin->has_request_headers_hook()) continue;
    const HookResult r = timed(headers_ran_ - 1, Hook::RequestHeaders, ctx, last, [&] { return plugin->on_request_headers(ctx); });
    if (r != HookResult::Continue) {
      headers_result_ = r;
      break;
    }
  }
  return *headers_result_;
}

HookResult ChainRun::request(pipeline::RequestContext& ctx) {
  if (const HookResult h = request_headers(ctx); h != HookResult::Continue) return h;
  pipeline::Clock::time_point last{};
  for (const auto& plugin : chain_->plugins) {
    ++ran_;
    const HookResult r = timed(ran_ - 1, Hook::Request, ctx, last, [&] { return plugin->on_request(ctx); });
    if (r != HookResult::Continue) return r;
  }
  return HookResult::Continue;
}

void ChainRun::response_headers(pipeline::RequestContext& ctx) {
  pipeline::Clock::time_point last{};
  for (size_t i = ran_; i-- > 0;) timed(i, Hook::ResponseHeaders, ctx, last, [&] { chain_->plugins[i]->on_response_headers(ctx); });
}

void ChainRun::response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream) {
  pipeline::Clock::time_point last{};
  for (size_t i = ran_; i-- > 0;)
    timed(i, Hook::ResponseBody, ctx, last, [&] { chain_->plugins[i]->on_response_body(ctx, chunk, end_of_stream); });
}

void ChainRun::complete(pipeline::RequestContext& ctx) {
  if (completed_) return;
  ctx.chain_run = this;
  completed_ = true;
  pipeline::Clock::time_point last{};
  // Every plugin whose on_request ran, and every plugin whose on_request_headers ran (it has one
  // and had its turn) even if its on_request never did (it refused, or one before it refused).
  for (size_t i = std::max(ran_, headers_ran_); i-- > 0;) {
    const auto& plugin = chain_->plugins[i];
    if (i < ran_ || plugin->has_request_headers_hook()) timed(i, Hook::Complete, ctx, last, [&] { plugin->on_complete(ctx); });
  }
  // One observation per hook that ran (on_response_body: its sum over the response).
  if (chain_->hook_histograms.size() < timed_) return;
  for (size_t i = 0; i < timed_; ++i) {
    const HookTimes& t = times_[i];
    for (size_t h = 0; h < kHooks; ++h)
      if ((t.ran & (1u << h)) && chain_->hook_histograms[i][h])
        chain_->hook_histograms[i][h]->Observe(static_cast<double>(t.dur_ns[h]) * 1e-9);
  }
}

}  // namespace glmp::core::plugins
