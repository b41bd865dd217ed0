/*
 * GLM Proxy plugin ABI — THE stable C contract between the core and every plugin.
 *
 * Rules (see README "The ABI rules" and docs/design.md "The plugin ABI"):
 *  - Pure C. No C++ types, exceptions or allocators cross this boundary.
 *  - Versioning: a plugin built for ABI major M, minor N loads on a host whose major is M and whose
 *    minor is >= N. Structs only ever grow at their end; every struct starts with `struct_size`, so
 *    each side can tell which fields the other knows. Changing anything already here is a major bump.
 *    tests/unit/test_abi.cpp hashes this file: the hash changes only together with the version.
 *  - Names: hooks are glmp_on_*-style members of glmp_plugin_descriptor; host functions live in
 *    glmp_host_api; opaque handles end in _host_ptr (owned by the core) or _plugin_ptr (owned by the
 *    plugin).
 *  - Strings and buffers travel as pointer + length and are not NUL-terminated unless stated.
 *    Host-owned data handed to a plugin (hook arguments, getter out-pointers) is valid during the
 *    current hook or route handler, until a host call changes the same item; copy what you keep.
 *  - Threading: hooks run on the connection's thread. Different requests run concurrently on
 *    different threads, so a plugin's state must be thread-safe; a single request's hooks never run
 *    concurrently with each other. Plugins keep no thread_local state (it breaks unloading).
 *  - Errors: hooks never unwind (no exceptions, no longjmp). The C++ SDK catches everything at the
 *    boundary and turns it into GLMP_ERROR.
 */
#ifndef GLMPROXY_PLUGIN_API_H
#define GLMPROXY_PLUGIN_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLMP_ABI_MAJOR 1u
#define GLMP_ABI_MINOR 7u

/* ---------------------------------------------------------------------------------------------
 * Opaque handles
 * ------------------------------------------------------------------------------------------- */

/* One plugin instance as the core sees it (one per chain it is part of). Core-owned; valid from
 * on_config_new until on_config_destroy returns. */
typedef struct glmp_instance_host_ptr glmp_instance_host_ptr;

/* One request in flight. Core-owned; valid during the hook or route handler it is passed to. */
typedef struct glmp_request_host_ptr glmp_request_host_ptr;

/* The plugin's own state for one configuration, returned by on_config_new and passed back to
 * every hook. Plugin-owned; freed by the plugin in on_config_destroy. */
typedef struct glmp_config_plugin_ptr glmp_config_plugin_ptr;

/* ---------------------------------------------------------------------------------------------
 * Plain values
 * ------------------------------------------------------------------------------------------- */

typedef enum glmp_status {
  GLMP_CONTINUE = 0,  /* go on with the next plugin / the upstream */
  GLMP_RESPONDED = 1, /* the plugin answered (respond/respond_error/stream_*); the upstream is skipped */
  GLMP_ERROR = 2      /* the plugin failed: the request gets a 500 naming the plugin */
} glmp_status;

typedef enum glmp_flavour { GLMP_FLAVOUR_OPENAI = 0, GLMP_FLAVOUR_ANTHROPIC = 1 } glmp_flavour;

typedef enum glmp_log_level {
  GLMP_LOG_TRACE = 0,
  GLMP_LOG_DEBUG = 1,
  GLMP_LOG_INFO = 2,
  GLMP_LOG_WARNING = 3,
  GLMP_LOG_ERROR = 4
} glmp_log_level;

typedef enum glmp_route_access {
  GLMP_ACCESS_PUBLIC = 0, /* anyone */
  GLMP_ACCESS_ADMIN = 1,  /* needs the admin token ([admin] token), compared in constant time */
  GLMP_ACCESS_KEY = 2,    /* goes through the chain's on_request_headers and on_request hooks first (so auth has run) */
  GLMP_ACCESS_KEY_OR_ADMIN = 3 /* 1.6: with the admin token, served at once and request_is_admin() is 1; else as
                                  GLMP_ACCESS_KEY. The handler tells the two apart (an older host refuses it) */
} glmp_route_access;

/* Token usage of a response, as extracted by the core (valid in on_complete). */
typedef struct glmp_usage {
  uint32_t struct_size;
  int32_t seen; /* 1 when the upstream reported usage */
  int64_t input_tokens;
  int64_t output_tokens;
  int64_t cache_read_input_tokens;
  int64_t cache_creation_input_tokens;
  int64_t total_tokens; /* OpenAI total_tokens when given, else 0 */
} glmp_usage;

/* --- 1.1: state store and metrics --------------------------------------------------------- */

/* What a store call returns (same values as the core's store::Status). */
typedef enum glmp_store_status {
  GLMP_STORE_OK = 0,
  GLMP_STORE_NOT_FOUND = 1,   /* record absent */
  GLMP_STORE_UNAVAILABLE = 2, /* backend down ([store] failure_mode = "fail_closed"), or a record write failed */
  GLMP_STORE_DEGRADED = 3,    /* backend down and failure_mode = "fail_open": sums/counters read 0, records may be stale */
  GLMP_STORE_INVALID = 4      /* bad arguments: empty or oversized name, value not a JSON object/array, window > [store] max_window */
} glmp_store_status;

/* Callbacks through which the host hands out store data (host-owned bytes, valid during the call). */
typedef void (*glmp_bytes_fn)(void* user_data, const char* data, size_t len);
typedef void (*glmp_record_fn)(void* user_data, const char* key, size_t key_len, const char* value, size_t value_len);
typedef void (*glmp_bucket_fn)(void* user_data, int64_t bucket_start_ms, int64_t amount);

/* A metric child (one label set of one family). Core-owned; lives until the process exits, also
 * across reloads (a plugin that asks again for the same name and labels gets the same one). */
typedef struct glmp_metric_host_ptr glmp_metric_host_ptr;

typedef enum glmp_metric_kind { GLMP_METRIC_COUNTER = 0, GLMP_METRIC_GAUGE = 1, GLMP_METRIC_HISTOGRAM = 2 } glmp_metric_kind;

typedef struct glmp_label {
  const char* name;
  size_t name_len;
  const char* value;
  size_t value_len;
} glmp_label;

/* --- 1.6: request timings (profiling) ------------------------------------------------------- */

/* One timed span of a request (request_timings): a core phase, or one plugin hook. Times are
 * nanoseconds from the request's start (its head parsed). */
typedef struct glmp_timing {
  const char* name; /* a core phase ("receive", "defer", "follow_wait", "upstream_connect",
                       "upstream_headers", "first_byte", "stream") or, for a hook, the plugin's name */
  size_t name_len;
  const char* hook; /* NULL for a core phase; "on_request_headers", "on_request", "on_response_headers",
                       "on_response_body" (summed over the chunks; start = the first), "on_complete" */
  size_t hook_len;
  int64_t start_ns;
  int64_t dur_ns;
} glmp_timing;

/* What the core knows of a request's course so far (request_profile). */
typedef struct glmp_request_profile {
  uint32_t struct_size;    /* set by the caller to sizeof(glmp_request_profile) */
  int32_t status;          /* sent to the client; 0 before the response head */
  int32_t upstream_status; /* 0: no upstream response (yet) */
  int32_t reserved;
  int64_t started_unix_us; /* wall clock at the request's start */
  int64_t elapsed_ns;      /* start → now; in on_complete: → the last byte handed to the client's socket */
  int64_t ttfb_ns;         /* start → the first response byte handed to the client's socket; -1: none yet */
  int64_t upstream_ns;     /* time spent waiting on the upstream (connect, send, response) */
  uint64_t bytes_in;       /* request body bytes read (as the access log counts them) */
  uint64_t bytes_out;      /* response body bytes written (as the access log counts them) */
  const char* route;       /* the matched route's prefix ("/v1/messages", "/v1/"); "" for none */
  size_t route_len;
  const char* error;       /* why the proxy failed the request ("" when it did not); on_complete */
  size_t error_len;
} glmp_request_profile;

/* --- 1.7: reading the metrics (dashboards) ------------------------------------------------- */

/* One sample of GET /metrics as metrics_collect hands it out (host-owned, valid during the call). */
typedef struct glmp_metric_sample {
  const char* family; /* the family's name, e.g. "glmp_upstream_pool" */
  size_t family_len;
  const char* name; /* the sample's name as in the text format: the family's, or for a histogram
                       "<family>_bucket" (labels end with "le"), "<family>_sum" or "<family>_count" */
  size_t name_len;
  glmp_metric_kind kind; /* the family's kind (families of other kinds are not handed out) */
  int32_t reserved;
  const glmp_label* labels;
  size_t label_count;
  double value;
} glmp_metric_sample;

typedef void (*glmp_sample_fn)(void* user_data, const glmp_metric_sample* sample);

/* --- 1.5: recordings (response cache, request coalescing) ----------------------------------- */

/* A recorded response: its status, headers and body bytes in order, captured while it streams to
 * its own client (request_record), which other requests can follow live or replay later
 * (request_follow). Core-owned and reference-counted: every handle a host function returns is one
 * reference, given back with recording_release; recording_retain adds one. Handles are
 * thread-safe: any thread, any time, also after the request that recorded it has ended, and
 * across hot reloads (a reference keeps the recording, never the chain). recording_retain,
 * recording_release and recording_info never call into a plugin and hold only the recording's
 * own short lock, so a plugin may call them under its own locks. */
typedef struct glmp_recording_host_ptr glmp_recording_host_ptr;

typedef enum glmp_recording_state {
  GLMP_RECORDING_WAITING = 0,  /* the recorded request has not had its response head yet */
  GLMP_RECORDING_LIVE = 1,     /* the head is known; the body is still arriving */
  GLMP_RECORDING_COMPLETE = 2, /* the response arrived whole */
  GLMP_RECORDING_FAILED = 3    /* it ended without a response, or was cut (reset, stall, error) */
} glmp_recording_state;

/* Where a response came from (response_origin). */
typedef enum glmp_origin {
  GLMP_ORIGIN_UPSTREAM = 0,  /* its own upstream call (or a plugin's or the core's answer) */
  GLMP_ORIGIN_CACHE = 1,     /* replayed from a finished recording */
  GLMP_ORIGIN_COALESCED = 2  /* followed another request's response while it was relayed */
} glmp_origin;

typedef struct glmp_recording_info {
  uint32_t struct_size; /* set by the caller; the host fills what both sides know */
  int32_t state;        /* glmp_recording_state */
  int32_t status;       /* the response status, 0 before the head */
  int32_t streamed;     /* the response is text/event-stream */
  /* COMPLETE, and nothing went wrong in the body: the whole body (Content-Length, last chunk)
   * arrived and, for a stream, its terminal event was seen (OpenAI "data: [DONE]", Anthropic
   * "message_stop") and no error event was. What a cache may keep. */
  int32_t ended_normally;
  /* Every body byte so far is kept (body_bytes <= the recording's max_bytes): it can be replayed
   * and followed from its start. */
  int32_t replayable;
  int64_t body_bytes;   /* body bytes relayed so far, as the upstream sent them */
  int64_t started_ms;   /* Unix ms: the recording was created */
  int64_t finished_ms;  /* Unix ms: it became COMPLETE or FAILED; 0 before */
  int64_t followers;    /* clients following it right now */
  /* The response's token usage as the core extracted it (final once COMPLETE or FAILED). */
  int64_t input_tokens;
  int64_t output_tokens;
  int64_t cache_read_input_tokens;
  int64_t cache_creation_input_tokens;
  int64_t total_tokens;
  int32_t usage_seen;
  int32_t reserved;
} glmp_recording_info;

/* A header name and value (pointer + length). */
typedef struct glmp_header {
  const char* name;
  size_t name_len;
  const char* value;
  size_t value_len;
} glmp_header;

/* A string (pointer + length). */
typedef struct glmp_string {
  const char* data;
  size_t len;
} glmp_string;

/* request_follow flags */
#define GLMP_FOLLOW_FALLBACK 1u /* when the followed request fails before its response head (a
                                 * connection failure, a timeout, a 429 or any 5xx), this request
                                 * goes upstream on its own instead of getting that answer */

/* A route handler registered with register_route. Runs on the connection's thread; answers with
 * respond / respond_error / stream_* on `request`. */
typedef void (*glmp_route_handler)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request, void* user_data);

/* ---------------------------------------------------------------------------------------------
 * The host function table, passed to on_config_new. Core-owned, valid until on_config_destroy
 * returns. Append-only: check struct_size before using a member added after your ABI minor.
 * Unless stated otherwise a function may be called from any hook of any thread, with the request
 * handle of the hook being run.
 * ------------------------------------------------------------------------------------------- */
typedef struct glmp_host_api {
  uint32_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;

  /* Logs a message under the plugin's name. Any thread, any time. */
  void (*log)(glmp_instance_host_ptr* instance, glmp_log_level level, const char* msg, size_t msg_len);

  /* --- request line and route (any hook) --- */
  /* The request id (X-Request-ID): host-owned bytes, valid during the call. */
  void (*request_id)(glmp_request_host_ptr* request, const char** data, size_t* len);
  void (*request_method)(glmp_request_host_ptr* request, const char** data, size_t* len);
  /* Path without the query, as the client sent it. */
  void (*request_path)(glmp_request_host_ptr* request, const char** data, size_t* len);
  /* Raw query string without '?' ("" if none). */
  void (*request_query)(glmp_request_host_ptr* request, const char** data, size_t* len);
  glmp_flavour (*request_flavour)(glmp_request_host_ptr* request);
  /* 1 when the request body has a top-level "stream": true. */
  int (*request_streaming)(glmp_request_host_ptr* request);
  /* The model that will be sent upstream ("" if the body has none and none was set). */
  void (*request_model)(glmp_request_host_ptr* request, const char** data, size_t* len);
  /* Sets the model sent upstream: the core rewrites (or inserts) the body's top-level "model"
   * once, just before forwarding. on_request only. */
  void (*request_set_model)(glmp_request_host_ptr* request, const char* model, size_t len);

  /* --- request headers (on_request; the headers that will go upstream) --- */
  /* The index-th value (0-based) of header `name` (case-insensitive). Returns 0 when absent. */
  int (*request_header)(glmp_request_host_ptr* request, const char* name, size_t name_len, size_t index,
                        const char** value, size_t* value_len);
  /* Replaces every value of `name` with `value`. */
  void (*request_set_header)(glmp_request_host_ptr* request, const char* name, size_t name_len, const char* value,
                             size_t value_len);
  void (*request_remove_header)(glmp_request_host_ptr* request, const char* name, size_t name_len);

  /* --- request body (on_request) --- */
  void (*request_body)(glmp_request_host_ptr* request, const char** data, size_t* len);
  /* Replaces the body; the core copies it. Content-Length is recomputed. */
  void (*request_set_body)(glmp_request_host_ptr* request, const char* data, size_t len);

  /* --- per-request attributes: how plugins talk to each other ("auth.key_id", …) --- */
  /* Returns 0 when the attribute is not set. */
  int (*get_attribute)(glmp_request_host_ptr* request, const char* name, size_t name_len, const char** value,
                       size_t* value_len);
  void (*set_attribute)(glmp_request_host_ptr* request, const char* name, size_t name_len, const char* value,
                        size_t value_len);

  /* --- response (on_response_headers, on_response_body, on_complete) --- */
  /* The status sent to the client (0 before it is known). */
  int (*response_status)(glmp_request_host_ptr* request);
  int (*response_header)(glmp_request_host_ptr* request, const char* name, size_t name_len, size_t index,
                         const char** value, size_t* value_len);
  /* In on_request these add headers to the response the request will get, whoever produces it;
   * in on_response_headers they edit the upstream's headers before they are sent. */
  void (*response_set_header)(glmp_request_host_ptr* request, const char* name, size_t name_len, const char* value,
                              size_t value_len);
  void (*response_remove_header)(glmp_request_host_ptr* request, const char* name, size_t name_len);
  /* Token usage extracted by the core; meaningful in on_complete. `out->struct_size` must be set
   * by the caller; the host fills what both sides know. */
  void (*response_usage)(glmp_request_host_ptr* request, glmp_usage* out);

  /* --- answering early (on_request, or a route handler) --- */
  /* A complete response; the body is copied. Return GLMP_RESPONDED from on_request afterwards. */
  void (*respond)(glmp_request_host_ptr* request, int status, const char* content_type, size_t content_type_len,
                  const char* body, size_t body_len);
  /* An error in the caller's API flavour: OpenAI {"error":{message,type,code}} or Anthropic
   * {"type":"error","error":{type,message}}. type "" = the flavour's default for the status. */
  void (*respond_error)(glmp_request_host_ptr* request, int status, const char* type, size_t type_len,
                        const char* message, size_t message_len);
  /* A streamed response: begin once, write any number of times (each write is flushed to the
   * client at once), end once. stream_write returns 0, or -1 when the client has gone. */
  void (*stream_begin)(glmp_request_host_ptr* request, int status, const char* content_type, size_t content_type_len);
  int (*stream_write)(glmp_request_host_ptr* request, const char* data, size_t len);
  void (*stream_end)(glmp_request_host_ptr* request);

  /* --- HTTP routes (on_config_new only) --- */
  /* Serves METHOD PATH with `handler` while this plugin's chain is live. `path` ending in '*' is a
   * prefix (e.g. "/admin/keys/" followed by a star). method "" = any. Returns 0, or -1 when called
   * outside on_config_new, when the path does not start with '/', or when the route would match or
   * shadow a core route: /health, /metrics, /api/metrics/prometheus, /admin/reload, /admin/plugins,
   * /v1 and anything under /v1/ (so "/v1/x", a prefix "/v1" + star, "/heal" + star and "/" + star are
   * all refused). Two plugins of one chain registering the same method and path make that chain
   * fail to build (the error names both). */
  int (*register_route)(glmp_instance_host_ptr* instance, const char* method, size_t method_len, const char* path,
                        size_t path_len, glmp_route_access access, glmp_route_handler handler, void* user_data);

  /* ===== ABI 1.1 (check struct_size / abi_minor >= 1 before use) ===== */

  /* --- state store ([store] in the config): shared by all plugins and, with Redis, by all replicas.
   * Any hook or route handler, also on_config_new; any thread. Every call returns a
   * glmp_store_status. Names (namespaces, keys, counter names) are 1..512 bytes. Times are Unix
   * milliseconds; now_ms = 0 means the host's clock. --- */
  /* Records: small JSON documents (an object or array, <= 1 MiB) in namespaces. get hands the
   * value to `out` on GLMP_STORE_OK, and on GLMP_STORE_DEGRADED when a stale cached copy exists
   * (fail_open); list calls `out` only on GLMP_STORE_OK. */
  int (*store_get)(glmp_instance_host_ptr* instance, const char* ns, size_t ns_len, const char* key, size_t key_len,
                   glmp_bytes_fn out, void* user_data);
  int (*store_put)(glmp_instance_host_ptr* instance, const char* ns, size_t ns_len, const char* key, size_t key_len,
                   const char* json, size_t json_len);
  int (*store_delete)(glmp_instance_host_ptr* instance, const char* ns, size_t ns_len, const char* key, size_t key_len);
  /* Records whose key starts with `prefix` and sorts after `after` ("" = from the start), in key
   * order, at most `limit` (1..1000). *more is set to 1 when another page follows. */
  int (*store_list)(glmp_instance_host_ptr* instance, const char* ns, size_t ns_len, const char* prefix,
                    size_t prefix_len, const char* after, size_t after_len, size_t limit, glmp_record_fn out,
                    void* user_data, int* more);
  /* Sliding windows over buckets of store_bucket_ms(). window_add adds `amount` (may be negative)
   * to the bucket holding now_ms and, when `sum` is not NULL, writes the window's sum after the
   * add — atomically with it, across replicas. A bucket counts while start > now - window_ms. */
  int (*window_add)(glmp_instance_host_ptr* instance, const char* name, size_t name_len, int64_t amount,
                    int64_t window_ms, int64_t now_ms, int64_t* sum);
  int (*window_sum)(glmp_instance_host_ptr* instance, const char* name, size_t name_len, int64_t window_ms,
                    int64_t now_ms, int64_t* sum);
  /* The window's non-empty buckets, oldest first (e.g. to compute when usage ages out). */
  int (*window_buckets)(glmp_instance_host_ptr* instance, const char* name, size_t name_len, int64_t window_ms,
                        int64_t now_ms, glmp_bucket_fn out, void* user_data);
  /* Lifetime counters. `value` (may be NULL) receives the value after the add. */
  int (*counter_add)(glmp_instance_host_ptr* instance, const char* name, size_t name_len, int64_t amount,
                     int64_t* value);
  int (*counter_get)(glmp_instance_host_ptr* instance, const char* name, size_t name_len, int64_t* value);
  /* The bucket size of window counters, in milliseconds ([store] bucket). */
  int64_t (*store_bucket_ms)(glmp_instance_host_ptr* instance);

  /* --- metrics, exposed at GET /metrics with the core's. Create in on_config_new only (returns
   * NULL elsewhere, or when the name/labels are not valid Prometheus names, or the name is taken by
   * another kind or help text; the reason is logged). Names should start with "glmp_<plugin>_".
   * `buckets` (histograms only; NULL = defaults from 5 ms to 60 s) must be increasing. The update
   * calls are lock-free and allocation-free, from any thread. --- */
  glmp_metric_host_ptr* (*metric_new)(glmp_instance_host_ptr* instance, glmp_metric_kind kind, const char* name,
                                      size_t name_len, const char* help, size_t help_len, const glmp_label* labels,
                                      size_t label_count, const double* buckets, size_t bucket_count);
  /* Counter: adds value (>= 0; negative values are ignored). Gauge: adds value (may be negative). */
  void (*metric_add)(glmp_metric_host_ptr* metric, double value);
  /* Gauge only. */
  void (*metric_set)(glmp_metric_host_ptr* metric, double value);
  /* Histogram only. */
  void (*metric_observe)(glmp_metric_host_ptr* metric, double value);

  /* --- request headers exactly as the client sent them (any hook, route handlers too): unlike
   * request_header, this includes what the core never forwards — the client's credentials
   * (Authorization, x-api-key), hop-by-hop headers, Host. Read-only. The index-th value (0-based)
   * of `name` (case-insensitive); returns 0 when absent. --- */
  int (*request_client_header)(glmp_request_host_ptr* request, const char* name, size_t name_len, size_t index,
                               const char** value, size_t* value_len);

  /* ===== ABI 1.4 (check struct_size / abi_minor >= 4 before use) ===== */

  /* --- one top-level member of the request body, without parsing the body again: the core scans
   * every JSON body once (validating it) and records where its top-level members are. Sets *value
   * to the member's value exactly as the client wrote it, as raw JSON text (a string keeps its
   * quotes and escapes; 64; true; {...}), and returns 1. Returns 0 when the body is not a JSON
   * object, has no such top-level member, or is not read yet (on_request_headers). Keys are
   * compared after unescaping; a key given twice yields its last value (as JSON parsers keep it).
   * A member nested deeper (a "model" inside "messages") is never returned. After
   * request_set_body it describes the new body. Host-owned, valid during the hook, until
   * request_set_body. on_request, on_response_*, on_complete and route handlers. --- */
  int (*request_body_member)(glmp_request_host_ptr* request, const char* name, size_t name_len, const char** value,
                             size_t* value_len);

  /* ===== ABI 1.5 (check struct_size / abi_minor >= 5 before use): recordings ===== */

  /* --- on_request only. Records this request's response while it is relayed to its client:
   * status, headers (as the client gets them, minus hop-by-hop ones, X-Request-ID and the headers
   * plugins added for this client only) and the body bytes exactly as the upstream sent them (so a
   * stream keeps the usage-only chunk a client may not see; every client gets its own view).
   * Every caller of one request gets the same recording; `max_bytes` is how many body bytes to keep
   * for replay and for followers that attach late (the largest asked wins; past it the bytes are
   * dropped, the recording is no longer replayable and nobody can attach, but followers already
   * attached go on). Returns a new reference, or NULL when the request will not be relayed from
   * an upstream (a route handler; a plugin answered; request_follow was called). --- */
  glmp_recording_host_ptr* (*request_record)(glmp_request_host_ptr* request, size_t max_bytes);
  void (*recording_retain)(glmp_recording_host_ptr* recording);
  void (*recording_release)(glmp_recording_host_ptr* recording);
  /* Fills `out` (its struct_size set by the caller). Any thread. */
  void (*recording_info)(glmp_recording_host_ptr* recording, glmp_recording_info* out);

  /* --- on_request only. Answers this request from `recording` instead of an upstream call: a
   * COMPLETE replayable one is replayed at once (status, headers, body); a WAITING or LIVE
   * replayable one is followed: the bytes so far at once, then live, with a write queue of this
   * client's own (it never slows the recorded request or other followers; one that falls more than
   * a bounded backlog behind is cut off with the flavour's error event). Each client gets its own
   * X-Request-ID, Date and response_set_header headers; `headers` (may be NULL) are added too,
   * replacing same-named ones, only when the answer does come from the recording. A stream's
   * usage-only chunk is hidden from a client that did not ask for usage. The usage reported to
   * on_complete, the access log and metrics is the recording's, and response_origin() says
   * `origin` (GLMP_ORIGIN_CACHE or GLMP_ORIGIN_COALESCED). With GLMP_FOLLOW_FALLBACK, when the
   * recorded request fails before its head (see the flag), this request goes upstream on its own
   * (origin then stays GLMP_ORIGIN_UPSTREAM); without it, it gets that answer. If the recorded
   * request fails mid-body, the follower's response is cut with the flavour's error event.
   * A request that called request_record and then follows (a cache that recorded the miss before
   * a coalescing plugin made it a follower) is never relayed from an upstream: its own recording
   * ends FAILED, unless it falls back, when it records its own upstream response as usual.
   * on_response_headers and on_response_body do not run for an answer from a recording;
   * on_complete does.
   * Returns 0 (then return GLMP_RESPONDED), or -1 when the recording cannot be followed (FAILED,
   * no longer replayable, COMPLETE with a status other than 2xx, recorded for the other API
   * flavour, or this request's own) — the request is unchanged. */
  int (*request_follow)(glmp_request_host_ptr* request, glmp_recording_host_ptr* recording, glmp_origin origin,
                        uint32_t flags, const glmp_header* headers, size_t header_count);
  /* Any hook: where the response comes from (on_complete: where it came from). */
  glmp_origin (*response_origin)(glmp_request_host_ptr* request);
  /* on_request or on_complete: replaces the usage reported to on_complete, the access log and
   * metrics (e.g. a cache that stored it separately). */
  void (*response_set_usage)(glmp_request_host_ptr* request, const glmp_usage* usage);
  /* Whether quota plugins should charge this response's usage: 1 unless a plugin set 0 for a
   * response served from a recording (response_set_charge; it has no effect on a response with
   * origin GLMP_ORIGIN_UPSTREAM, e.g. a follower that fell back to its own upstream call). */
  int (*response_charge)(glmp_request_host_ptr* request);
  void (*response_set_charge)(glmp_request_host_ptr* request, int charge);

  /* --- on_request: the body exactly as it will go upstream if nothing changes it any more: with
   * the core's edits applied (the model set by request_set_model or [proxy] model, and the
   * stream_options.include_usage the core adds to OpenAI streams). Host-owned, valid until
   * request_set_body or request_set_model. --- */
  void (*request_upstream_body)(glmp_request_host_ptr* request, const char** data, size_t* len);
  /* on_request: the upstream body (as above) as canonical JSON — object members sorted by key at
   * every level, no insignificant whitespace, numbers exactly as written, strings unescaped and
   * re-escaped one way ("\u00e9" and "é" are one string), the last of duplicate keys — minus the
   * top-level members named in `exclude`. Handed to `out` (host-owned bytes, valid during the
   * call). Returns 1, or 0 when the body is not JSON (out is not called). --- */
  int (*request_canonical_body)(glmp_request_host_ptr* request, const glmp_string* exclude, size_t exclude_count,
                                glmp_bytes_fn out, void* user_data);
  /* on_request: the upstream call waits `ms` milliseconds (at most 10000) after the request
   * hooks, without holding a thread, e.g. so identical requests can join it. */
  void (*request_defer_upstream)(glmp_request_host_ptr* request, uint32_t ms);

  /* ===== ABI 1.6 (check struct_size / abi_minor >= 6 before use): request timings ===== */

  /* --- Any hook or route handler. Fills `out` (its struct_size set by the caller; host-owned
   * strings valid during the call's hook). Returns 1, or 0 when struct_size is too small. --- */
  int (*request_profile)(glmp_request_host_ptr* request, glmp_request_profile* out);
  /* --- Any hook. The request's timed spans so far, in the order they started: the core's phases
   * and every hook call of every plugin that implements the hook (the core times them whether or
   * not anyone asks; a hook still running is not listed). Writes at most `cap` into `out` and
   * returns how many there are (call again with a larger array when that is more than cap).
   * Strings are host-owned, valid during the hook. In on_complete, the on_complete of plugins
   * that run after this one (earlier in the chain) is not listed yet. --- */
  size_t (*request_timings)(glmp_request_host_ptr* request, glmp_timing* out, size_t cap);
  /* --- A GLMP_ACCESS_KEY_OR_ADMIN route handler: 1 when the request carries the admin token
   * (it was not run through the chain's request hooks), else 0. 0 elsewhere. --- */
  int (*request_is_admin)(glmp_request_host_ptr* request);

  /* ===== ABI 1.7 (check struct_size / abi_minor >= 7 before use): reading the metrics ===== */

  /* --- Any thread, any time while the instance lives, but not from a hook that runs on an event
   * loop (on_response_headers, on_response_body, or any hook of a GLMP_PLUGIN_NONBLOCKING chain):
   * like a GET /metrics it refreshes the scrape-time gauges (pools, streams, process), takes the
   * registry's locks and allocates. For a plugin's own thread or a route handler (those run on
   * worker threads), a few times a second at most. Calls `out` for every sample of every family whose name starts with
   * `prefix` ("" = all) — the core's, the store's and every plugin's — exactly as GET /metrics
   * would show them now, and returns how many it handed out. --- */
  size_t (*metrics_collect)(glmp_instance_host_ptr* instance, const char* prefix, size_t prefix_len,
                            glmp_sample_fn out, void* user_data);
} glmp_host_api;

/* ---------------------------------------------------------------------------------------------
 * The plugin descriptor, returned by glmp_plugin_init. Plugin-owned, static storage: it must stay
 * valid while the library is loaded. A NULL hook means "not implemented".
 * ------------------------------------------------------------------------------------------- */
typedef struct glmp_plugin_descriptor {
  uint32_t struct_size;
  uint32_t abi_major; /* GLMP_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor; /* GLMP_ABI_MINOR the plugin was built with */
  const char* name;    /* NUL-terminated, e.g. "auth" */
  const char* version; /* NUL-terminated, e.g. "1.2.0" */

  /* The plugin's [plugins.settings] table, as JSON (valid during the call). Returns the plugin's
   * state, or NULL to refuse the configuration, with a NUL-terminated reason written to `error`
   * (at most error_cap bytes). `host` stays valid until on_config_destroy. Called once per chain
   * build, on the reload thread, before any request can reach the new chain. */
  glmp_config_plugin_ptr* (*on_config_new)(const glmp_host_api* host, glmp_instance_host_ptr* instance,
                                           const char* config_json, size_t config_len, char* error, size_t error_cap);
  /* Frees what on_config_new returned. Called when the last request using the chain has finished. */
  void (*on_config_destroy)(glmp_config_plugin_ptr* plugin);

  /* In configured order, before the upstream call. */
  glmp_status (*on_request)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request);
  /* In reverse order, when the upstream response headers are known. */
  void (*on_response_headers)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request);
  /* In reverse order, for every chunk relayed to the client (host-owned bytes). */
  void (*on_response_body)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request, const char* chunk,
                           size_t chunk_len, int end_of_stream);
  /* In reverse order, exactly once for every plugin whose on_request ran, or (ABI 1.2) whose
   * on_request_headers ran — also when it refused there, when a plugin after it refused, when
   * the client went away or the upstream failed. Usage is final here. */
  void (*on_complete)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request);

  /* ===== ABI 1.2. A host reads this member only when struct_size covers it: descriptors of ABI
   * 1.0/1.1 plugins end before it, and their plugins simply have no such hook. ===== */

  /* In configured order, once the request line and headers are complete and BEFORE the core reads
   * the request body; every plugin's on_request_headers runs before the first on_request.
   * Available: request_id, request_method, request_path, request_query, request_flavour,
   * request_header (the headers that will go upstream), request_client_header, attributes,
   * response_set_header, respond / respond_error. Not yet known: the body (request_body gives ""),
   * request_streaming (0) and request_model; request_set_body and request_set_model must not be
   * called here (use on_request). GLMP_RESPONDED refuses the request from its headers alone: the
   * body is never read (no "100 Continue" is sent; the connection is closed after the answer) and
   * no on_request runs. GLMP_ERROR fails it with a 500 naming the plugin. A plugin refused here
   * still gets on_complete (see above); on_response_headers/on_response_body run only for plugins
   * whose on_request ran. For a route registered with GLMP_ACCESS_KEY it runs right before the
   * chain's on_request hooks (the body may then already be read). NULL = continue. */
  glmp_status (*on_request_headers)(glmp_config_plugin_ptr* plugin, glmp_request_host_ptr* request);

  /* ===== ABI 1.3 (appended; read only when struct_size covers it). ===== GLMP_PLUGIN_* flags, 0 = none.
   *
   * Where hooks run. The core runs requests on event loops (one thread per core, each carrying
   * thousands of requests), so a hook that blocks stalls every request of its loop:
   * - on_response_headers and on_response_body always run on the loop thread, for every plugin:
   *   they must only compute (they see each chunk as it is relayed).
   * - on_request_headers, on_request and on_complete run on the loop thread only when every
   *   plugin of the chain sets GLMP_PLUGIN_NONBLOCKING and the store never blocks (memory,
   *   sqlite); otherwise the request waits, without holding its loop, while each of these phases
   *   runs on a worker thread. A plugin without the flag (every ABI 1.0/1.1 plugin) may block in
   *   them: sleep, call a remote service, wait on a lock.
   * GLMP_PLUGIN_NONBLOCKING promises that these three hooks only compute and use the host API
   * (store calls included: the core knows when its store may block). */
  uint32_t flags;
} glmp_plugin_descriptor;

#define GLMP_PLUGIN_NONBLOCKING 1u

/* The one symbol a plugin exports (with default visibility). Returns NULL to refuse the host (e.g.
 * a major mismatch). Called once per load, on the reload thread. */
const glmp_plugin_descriptor* glmp_plugin_init(uint32_t host_abi_major, uint32_t host_abi_minor);
typedef const glmp_plugin_descriptor* (*glmp_plugin_init_fn)(uint32_t host_abi_major, uint32_t host_abi_minor);
#define GLMP_PLUGIN_INIT_SYMBOL "glmp_plugin_init"

#ifdef __cplusplus
}
#endif

#endif /* GLMPROXY_PLUGIN_API_H */
