/* A plugin written against the raw C ABI (no SDK), one build per failure mode, selected with
 * -DMODE=...: used by the integration tests of the loader, the chain and reload.
 *   MODE_OK            stamps "X-C-Plugin: <STAMP>" on responses, answers GET /c-plugin/ping,
 *                      refuses settings that have a "refuse" key, answers 418 when the request has x-c-teapot
 *   MODE_MAJOR         reports ABI major + 1
 *   MODE_NEWER_MINOR   reports the host's minor + 1
 *   MODE_NULL          glmp_plugin_init returns NULL
 *   MODE_NO_SYMBOL     exports no glmp_plugin_init
 */
#include <string.h>

#include "glmproxy/plugin_api.h"

#ifndef STAMP
#define STAMP "c1"
#endif

#define EXPORT __attribute__((visibility("default")))

#ifndef MODE_NO_SYMBOL

struct glmp_config_plugin_ptr {
  const glmp_host_api* host;
};
static struct glmp_config_plugin_ptr g_state; /* one instance at a time is enough for tests */

static glmp_config_plugin_ptr* config_new(const glmp_host_api* host, glmp_instance_host_ptr* instance,
                                          const char* json, size_t len, char* error, size_t cap) {
  (void)instance;
  if (len && memmem(json, len, "\"refuse\"", 8)) { /* {"refuse": true} in any formatting */
    strncpy(error, "settings say refuse", cap - 1);
    return NULL;
  }
  g_state.host = host;
  return &g_state;
}

static void config_destroy(glmp_config_plugin_ptr* p) { (void)p; }

static glmp_status on_request(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  const char* v;
  size_t n;
  if (p->host->request_header(r, "x-c-teapot", 10, 0, &v, &n)) {
    p->host->respond_error(r, 418, "", 0, "teapot", 6);
    return GLMP_RESPONDED;
  }
  if (p->host->request_header(r, "x-c-fail", 8, 0, &v, &n)) return GLMP_ERROR;
  p->host->set_attribute(r, "c.seen", 6, "1", 1);
  return GLMP_CONTINUE;
}

static void on_response_headers(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  p->host->response_set_header(r, "X-C-Plugin", 10, STAMP, strlen(STAMP));
}

static __attribute__((unused)) glmp_plugin_descriptor g_descriptor = {
    sizeof(glmp_plugin_descriptor), GLMP_ABI_MAJOR, GLMP_ABI_MINOR, "c_plugin", STAMP,
    config_new, config_destroy, on_request, on_response_headers, NULL, NULL,
};

EXPORT const glmp_plugin_descriptor* glmp_plugin_init(uint32_t major, uint32_t minor) {
  (void)minor;
#if defined(MODE_NULL)
  (void)major;
  return NULL;
#else
  if (major != GLMP_ABI_MAJOR) return NULL;
#if defined(MODE_MAJOR)
  g_descriptor.abi_major = GLMP_ABI_MAJOR + 1;
#elif defined(MODE_NEWER_MINOR)
  g_descriptor.abi_minor = minor + 1;
#endif
  return &g_descriptor;
#endif
}

#else
EXPORT int not_a_plugin(void) { return 0; }
#endif
