/* A plugin written against the raw C ABI (no SDK), one build per failure mode, selected with
 * -DMODE=...: used by the integration tests of the loader, the chain and reload.
 *   MODE_OK            stamps "X-C-Plugin: <STAMP>" on responses, answers GET /c-plugin/counts,
 *                      refuses settings that have a "refuse" key, answers 418 when the request has x-c-teapot;
 *                      ABI 1.2 on_request_headers answers 401 when the request has x-c-deny (before the
 *                      body is read); settings {"route": "/path"} register that extra route too and
 *                      refuse the settings with "route refused: /path" when the host refuses it
 *   MODE_MAJOR         reports ABI major + 1
 *   MODE_NEWER_MINOR   reports the host's minor + 1
 *   PLUGIN_ABI_MINOR=0 (with MODE_OK) an ABI 1.0 plugin: declares minor 0 and uses only 1.0 members;
 *                      its struct_size ends before on_request_headers, and the bytes after it hold a
 *                      hook that answers 500 "host read past struct_size" if a host ever calls it
 *   MODE_NULL          glmp_plugin_init returns NULL
 *   MODE_NO_SYMBOL     exports no glmp_plugin_init
 */
#include <stddef.h>
#include <string.h>

#include "glmproxy/plugin_api.h"

#ifndef STAMP
#define STAMP "c1"
#endif

#define EXPORT __attribute__((visibility("default")))

#ifndef PLUGIN_ABI_MINOR
#define PLUGIN_ABI_MINOR GLMP_ABI_MINOR
#endif

#ifndef MODE_NO_SYMBOL

#include <stdatomic.h>
#include <stdio.h>

struct glmp_config_plugin_ptr {
  const glmp_host_api* host;
  atomic_long requests;  /* on_request calls */
  atomic_long headers;   /* on_request_headers calls */
  atomic_long body_in_headers; /* on_request_headers calls that saw a body (must stay 0) */
  atomic_long completes; /* on_complete calls: must equal headers once traffic stops */
};
static struct glmp_config_plugin_ptr g_state; /* one instance at a time is enough for tests */

/* GET /c-plugin/counts -> {"requests":N,"headers":H,"body_in_headers":B,"completes":M} */
static void counts_route(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r, void* user) {
  (void)user;
  char body[160];
  int n = snprintf(body, sizeof body, "{\"requests\":%ld,\"headers\":%ld,\"body_in_headers\":%ld,\"completes\":%ld}",
                   atomic_load(&p->requests), atomic_load(&p->headers), atomic_load(&p->body_in_headers),
                   atomic_load(&p->completes));
  p->host->respond(r, 200, "application/json", 16, body, (size_t)n);
}

static void extra_route(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r, void* user) {
  (void)user;
  p->host->respond(r, 200, "text/plain", 10, "extra", 5);
}

/* The string value of "route" in the settings JSON (no escapes), or 0. */
static size_t route_setting(const char* json, size_t len, const char** value) {
  const char* key = len ? memmem(json, len, "\"route\"", 7) : NULL;
  if (!key) return 0;
  const char* end = json + len;
  const char* p = key + 7;
  while (p < end && *p != '"') ++p; /* past the colon and blanks */
  if (p >= end) return 0;
  const char* start = ++p;
  while (p < end && *p != '"') ++p;
  *value = start;
  return (size_t)(p - start);
}

static glmp_config_plugin_ptr* config_new(const glmp_host_api* host, glmp_instance_host_ptr* instance,
                                          const char* json, size_t len, char* error, size_t cap) {
  if (len && memmem(json, len, "\"refuse\"", 8)) { /* {"refuse": true} in any formatting */
    strncpy(error, "settings say refuse", cap - 1);
    return NULL;
  }
  g_state.host = host;
  atomic_store(&g_state.requests, 0);
  atomic_store(&g_state.headers, 0);
  atomic_store(&g_state.body_in_headers, 0);
  atomic_store(&g_state.completes, 0);
  host->register_route(instance, "GET", 3, "/c-plugin/counts", 16, GLMP_ACCESS_PUBLIC, counts_route, NULL);
  const char* route = NULL;
  size_t route_len = route_setting(json, len, &route);
  if (route_len && host->register_route(instance, "", 0, route, route_len, GLMP_ACCESS_PUBLIC, extra_route, NULL) != 0) {
    snprintf(error, cap, "route refused: %.*s", (int)route_len, route);
    return NULL;
  }
  return &g_state;
}

static void config_destroy(glmp_config_plugin_ptr* p) { (void)p; }

static glmp_status on_request(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  const char* v;
  size_t n;
  atomic_fetch_add(&p->requests, 1);
  if (p->host->request_header(r, "x-c-teapot", 10, 0, &v, &n)) {
    p->host->respond_error(r, 418, "", 0, "teapot", 6);
    return GLMP_RESPONDED;
  }
  if (p->host->request_header(r, "x-c-fail", 8, 0, &v, &n)) return GLMP_ERROR;
  if (p->host->request_header(r, "x-c-body", 8, 0, &v, &n)) { /* replace the body, then force a model */
    static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"from plugin\"}]}";
    p->host->request_set_body(r, body, sizeof body - 1);
    p->host->request_set_model(r, "c-model", 7);
  }
  p->host->set_attribute(r, "c.seen", 6, "1", 1);
  return GLMP_CONTINUE;
}

/* ABI 1.2: runs before the core reads the body. x-c-deny is read from the headers that go upstream
 * (request_header), so it also checks they are there already. */
static __attribute__((unused)) glmp_status on_request_headers(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  const char* v;
  size_t n;
  atomic_fetch_add(&p->headers, 1);
  p->host->request_body(r, &v, &n);
  if (n) atomic_fetch_add(&p->body_in_headers, 1);
  if (p->host->request_header(r, "x-c-deny", 8, 0, &v, &n)) {
    p->host->respond_error(r, 401, "", 0, "denied from the headers", 23);
    return GLMP_RESPONDED;
  }
  return GLMP_CONTINUE;
}

/* What an ABI 1.0 build leaves past its struct_size: a host that calls it read too far. */
static __attribute__((unused)) glmp_status past_struct_size(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  p->host->respond_error(r, 500, "", 0, "host read past struct_size", 26);
  return GLMP_RESPONDED;
}

static void on_response_headers(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  p->host->response_set_header(r, "X-C-Plugin", 10, STAMP, strlen(STAMP));
}

static void on_complete(glmp_config_plugin_ptr* p, glmp_request_host_ptr* r) {
  (void)r;
  atomic_fetch_add(&p->completes, 1);
}

#if PLUGIN_ABI_MINOR >= 2
static __attribute__((unused)) glmp_plugin_descriptor g_descriptor = {
    sizeof(glmp_plugin_descriptor), GLMP_ABI_MAJOR, PLUGIN_ABI_MINOR, "c_plugin", STAMP,
    config_new, config_destroy, on_request, on_response_headers, NULL, on_complete, on_request_headers,
    0, /* flags (ABI 1.3): its hooks may block */
};
#else
/* An older plugin's descriptor ends at on_complete: struct_size says so. */
static __attribute__((unused)) glmp_plugin_descriptor g_descriptor = {
    offsetof(glmp_plugin_descriptor, on_request_headers), GLMP_ABI_MAJOR, PLUGIN_ABI_MINOR, "c_plugin", STAMP,
    config_new, config_destroy, on_request, on_response_headers, NULL, on_complete, past_struct_size,
    0,
};
#endif

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
