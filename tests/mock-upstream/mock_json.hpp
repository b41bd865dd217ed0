#pragma once
// Small JSON helpers for the mock upstream: string escaping for the responses it writes, and a
// top-level key scanner used only by --fast mode to avoid a full parse of every request body.

#include <cstdint>
#include <string>
#include <string_view>

namespace glmp::mock {

// Appends `s` as a JSON string literal (with the quotes). Control characters, '"' and '\\' are
// escaped; valid UTF-8 passes through; bytes that are not valid UTF-8 become \u00XX (read as
// Latin-1), so the output is always valid JSON.
void append_json_string(std::string& out, std::string_view s);

inline std::string json_string(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

// What --fast mode needs from a request body.
struct FastScan {
  bool model_found = false;
  std::string_view model_raw;  // the model string's raw JSON contents (escapes kept, no quotes)
  bool stream = false;         // top-level "stream": true
  bool include_usage = false;  // top-level "stream_options": {..."include_usage": true...}
};

// Scans the top level of a JSON object without building a document. Returns false when the body
// does not look like a well-formed object at the top level, or when a key of interest has a value
// of an unexpected shape; the caller then falls back to the full parser (which reports the 400).
// Values that are skipped are checked only for balanced brackets and strings, not for full
// JSON validity.
bool fast_scan(std::string_view body, FastScan& out);

}  // namespace glmp::mock
