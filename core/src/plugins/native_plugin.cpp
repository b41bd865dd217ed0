#include "plugins/native_plugin.hpp"

#include <cstddef>

#include "pipeline/errors.hpp"

namespace glmp::core::plugins {
namespace {

glmp_request_host_ptr* handle(pipeline::RequestContext& ctx) { return reinterpret_cast<glmp_request_host_ptr*>(&ctx); }

void fail_request(pipeline::RequestContext& ctx, const std::string& plugin) {
  pipeline::EarlyResponse early;
  early.status = 500;
  early.body = pipeline::error_body(ctx.flavour, {500, "plugin '" + plugin + "' failed to handle the request", "", "plugin_error"});
  ctx.early_response = std::move(early);
  if (ctx.error.empty()) ctx.error = "plugin '" + plugin + "' failed";
}

// What a hook's glmp_status means for the chain.
HookResult result_of(glmp_status status, pipeline::RequestContext& ctx, const std::string& plugin) {
  switch (status) {
    case GLMP_CONTINUE: return HookResult::Continue;
    case GLMP_RESPONDED:
      if (ctx.early_response || ctx.plugin_stream || ctx.follow) return HookResult::Responded;
      fail_request(ctx, plugin);  // claimed to respond but did not
      return HookResult::Error;
    default:
      fail_request(ctx, plugin);
      return HookResult::Error;
  }
}

}  // namespace

NativePlugin::NativePlugin(std::shared_ptr<Library> library, const config::PluginConfig& cfg, size_t position,
                           const Services& services)
    : library_(std::move(library)),
      name_(cfg.name),
      position_(position),
      logger_(Poco::Logger::get("plugin." + cfg.name)),
      services_(services) {
  const glmp_plugin_descriptor* d = library_->descriptor;
  // ABI 1.2 member: read only when the plugin's descriptor is long enough to hold it (a 1.0/1.1
  // descriptor ends before it; reading past struct_size reads whatever follows in the library).
  if (d->struct_size >= offsetof(glmp_plugin_descriptor, on_request_headers) + sizeof(d->on_request_headers))
    headers_hook_ = d->on_request_headers;
  if (d->struct_size >= offsetof(glmp_plugin_descriptor, flags) + sizeof(d->flags))
    nonblocking_ = (d->flags & GLMP_PLUGIN_NONBLOCKING) != 0;
  if (!d->on_config_new) return;
  char error[1024] = {0};
  configuring_ = true;
  state_ = d->on_config_new(&host_api(), reinterpret_cast<glmp_instance_host_ptr*>(this), cfg.settings_json.data(),
                            cfg.settings_json.size(), error, sizeof error);
  configuring_ = false;
  if (!state_) {
    error[sizeof error - 1] = '\0';
    throw LoadError("plugin '" + name_ + "' (" + library_->path + ") refused its settings: " +
                    (error[0] ? std::string(error) : std::string("no reason given")));
  }
}

NativePlugin::~NativePlugin() {
  if (state_ && library_->descriptor->on_config_destroy) library_->descriptor->on_config_destroy(state_);
}

HookResult NativePlugin::on_request_headers(pipeline::RequestContext& ctx) {
  if (!headers_hook_) return HookResult::Continue;
  return result_of(headers_hook_(state_, handle(ctx)), ctx, name_);
}

HookResult NativePlugin::on_request(pipeline::RequestContext& ctx) {
  const auto* d = library_->descriptor;
  if (!d->on_request) return HookResult::Continue;
  return result_of(d->on_request(state_, handle(ctx)), ctx, name_);
}

void NativePlugin::on_response_headers(pipeline::RequestContext& ctx) {
  if (library_->descriptor->on_response_headers) library_->descriptor->on_response_headers(state_, handle(ctx));
}

void NativePlugin::on_response_body(pipeline::RequestContext& ctx, std::string_view chunk, bool end_of_stream) {
  if (library_->descriptor->on_response_body)
    library_->descriptor->on_response_body(state_, handle(ctx), chunk.data(), chunk.size(), end_of_stream ? 1 : 0);
}

void NativePlugin::on_complete(pipeline::RequestContext& ctx) {
  if (library_->descriptor->on_complete) library_->descriptor->on_complete(state_, handle(ctx));
}

bool NativePlugin::has_hook(Hook hook) const {
  const auto* d = library_->descriptor;
  switch (hook) {
    case Hook::RequestHeaders: return headers_hook_ != nullptr;
    case Hook::Request: return d->on_request != nullptr;
    case Hook::ResponseHeaders: return d->on_response_headers != nullptr;
    case Hook::ResponseBody: return d->on_response_body != nullptr;
    case Hook::Complete: return d->on_complete != nullptr;
  }
  return false;
}

void NativePlugin::serve_route(const PluginRoute& route, pipeline::RequestContext& ctx) {
  route.handler(state_, handle(ctx), route.user_data);
}

}  // namespace glmp::core::plugins
