// The smallest plugin: no hook overridden, so the descriptor has only on_config_new/destroy.
#include <glmproxy/sdk.hpp>

namespace {

class Minimal : public glmp::Plugin {
 public:
  Minimal(const glmp::Settings& /*settings*/, glmp::Host host) : Plugin(host) {}
};

// Overrides only on_complete (through an intermediate class): exactly that hook is set.
class Base : public glmp::Plugin {
 public:
  using Plugin::Plugin;
  void on_complete(glmp::Request& r) override { r.set_attribute("base.complete", "1"); }
};

}  // namespace

GLMP_PLUGIN(Minimal, "minimal", "1");

// A second, never-exported check of the override detection (compile-time only).
static_assert(glmp::detail::overrides_on_complete<Base>());
static_assert(!glmp::detail::overrides_on_request<Base>());
static_assert(!glmp::detail::overrides_on_complete<Minimal>());
static_assert(!glmp::detail::overrides_on_request_headers<Minimal>());
static_assert(!glmp::detail::overrides_on_request_headers<Base>());
