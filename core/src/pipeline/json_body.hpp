#pragma once
// json_body: validate a JSON request body and edit its top-level members without re-serialising it.
//
// Why a hand-written scanner (one of the two the architecture allows): the proxy rewrites the
// top-level "model" (and a few other top-level fields, e.g. stream_options) of request bodies of up
// to 32 MiB on every request. A DOM parse plus re-serialisation would allocate per node, cost several
// passes and reformat the client's bytes. Instead:
//   - scan_top_level() validates the WHOLE document in one iterative pass (RFC 8259 grammar, strict
//     UTF-8, a nesting limit instead of recursion) and records only the top-level members as offsets
//     into the body. A "model" key inside messages, tools or any nested object is never recorded, so it
//     can never be mistaken for the top-level one.
//   - apply_top_level_edits() splices new values into the original bytes in one pass; every byte it
//     does not replace (formatting, key order, escapes, unicode) is preserved exactly.
//
// Decisions on the corners of the standard:
//   - Invalid UTF-8 anywhere in a string (overlongs, surrogates encoded in UTF-8, > U+10FFFF, stray
//     continuation bytes, truncated sequences) is an error: upstreams reject it anyway.
//   - Escaped lone surrogates ("\ud800") are ACCEPTED: RFC 8259's grammar allows them and the
//     upstream's parser accepts them, so the proxy does not turn such a request into a 400. When such a
//     string is unescaped (json_string_value, member keys) each lone surrogate becomes U+FFFD.
//   - A byte order mark is not skipped (RFC 8259 forbids sending one): it is an unexpected character.
//   - Nesting deeper than kJsonMaxDepth arrays/objects is an error (bounded work, no recursion).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace glmp::core::pipeline {

// Maximum nesting of arrays/objects accepted by scan_top_level (the top-level container is level 1).
inline constexpr size_t kJsonMaxDepth = 512;

// One top-level member of a JSON object, as offsets into the scanned body.
struct JsonMember {
  std::string key;          // unescaped key (\uXXXX incl. surrogate pairs, \n, \" ... resolved)
  size_t member_begin = 0;  // offset of the key's opening quote
  size_t value_begin = 0;   // offset of the first byte of the value
  size_t value_end = 0;     // one past the last byte of the value
};

// Result of scan_top_level().
struct TopLevelScan {
  bool ok = false;         // the whole body is valid JSON (leading/trailing whitespace allowed)
  bool is_object = false;  // the top-level value is an object (set as soon as '{' is seen)
  // When !ok: a human message that ends with " at offset N", for example
  // "unexpected character 'x' at offset 17", "unexpected end of input at offset 42",
  // "invalid escape at offset 9", "invalid UTF-8 at offset 5", "control character in string at
  // offset 3", "invalid number at offset 8", "nesting deeper than 512 levels at offset 512".
  std::string error;
  size_t error_offset = 0;  // offset of the offending byte (body.size() for an unexpected end)
  size_t object_begin = 0;  // offset of the top-level '{' (valid when ok && is_object)
  size_t object_end = 0;    // one past the top-level '}'
  std::vector<JsonMember> members;  // top-level members only, in body order, duplicates kept; empty when !ok

  // The LAST member named `key` (the one most parsers keep), or nullptr.
  const JsonMember* find(std::string_view key) const;
};

// Validates `body` in one pass and records its top-level members (only when it is an object).
TopLevelScan scan_top_level(std::string_view body);
// The same into `out`, whose member list keeps its capacity (a request context's scan).
void scan_top_level(std::string_view body, TopLevelScan& out);

// ---- value helpers; `member` must come from a successful scan of the same `body` ----

// The unescaped string value, or nullopt when the value is not a string.
std::optional<std::string> json_string_value(std::string_view body, const JsonMember& member);
// true/false, or nullopt when the value is not a boolean.
std::optional<bool> json_bool_value(std::string_view body, const JsonMember& member);
// The value when it is written as an integer literal (no fraction, no exponent) that fits in
// int64_t; otherwise nullopt (1.0, 1e3, 2^63, "1" are all nullopt).
std::optional<int64_t> json_int_value(std::string_view body, const JsonMember& member);

// Unescapes the CONTENTS of a JSON string literal (the bytes between the quotes). Lone surrogates
// become U+FFFD. nullopt when `escaped` is not well-formed string content (bad escape, raw quote...).
// Bytes >= 0x80 are copied as they are (validation is scan_top_level's job).
std::optional<std::string> json_unescape(std::string_view escaped);

// A JSON string literal (with the quotes) for `utf8`. Escapes '"', '\\' and control characters
// (\b \f \n \r \t by name, the others as \u00XX); valid UTF-8 is passed through unescaped. Invalid
// UTF-8 bytes are replaced by U+FFFD so the result is always valid JSON.
std::string json_quote(std::string_view utf8);

// ---- canonical form ----

// Canonical JSON of a body that scan_top_level() validated (scan.ok): object members sorted by
// their unescaped key (byte order of the UTF-8), no insignificant whitespace, numbers exactly as
// written, strings unescaped and re-escaped one way (json_quote's rules: only '"', '\\' and
// control characters escaped, so "\u00e9" and "é" are the same string; lone escaped surrogates
// become U+FFFD as json_unescape does). Duplicate keys: only the LAST occurrence is kept (what
// parsers keep), at every level. Top-level members whose key is in `exclude` are left out (top
// level only; a nested member of the same name stays). Appends to `out`. Returns false (out
// unchanged) when the scan is not ok.
//   - `scan` must be scan_top_level(body) (only its `ok` is read). Should a body that does not match
//     its scan be passed anyway, every read still stays in bounds (the result is then unspecified).
//   - `exclude` keys are compared with the unescaped keys; every occurrence of an excluded key goes.
//   - Top-level arrays, strings, numbers and literals are canonicalised too (`exclude` has no effect).
//   - The result is valid JSON, never longer than `body`, and canonical_json of it is itself.
//   - Iterative (explicit heap stacks, no recursion, any depth the scan accepts) and linear in the
//     body size apart from sorting each object's members: a first pass records where each non-empty
//     container that is an object member's value ends, so an object's members are gathered without
//     rescanning nested values. Escape-free strings are copied as they are.
bool canonical_json(std::string_view body, const TopLevelScan& scan, std::span<const std::string_view> exclude,
                    std::string& out);

// ---- edits ----

// One edit of a top-level member. Keys are compared after unescaping.
struct TopLevelEdit {
  enum class Mode {
    Replace,  // replace the value of every existing occurrence; nothing when absent
    Upsert,   // replace every existing occurrence, or insert the member when absent
    Remove,   // delete every occurrence
  };
  std::string key;
  std::string raw_value;  // an already-serialised JSON value: json_quote("glm-4.7"), "true", "{...}"
  Mode mode = Mode::Replace;
};

// Applies `edits` in one pass and returns the new body. Every byte outside the edited members is
// preserved, including formatting.
//   - Replace/Upsert replace the value of EVERY top-level occurrence of the key (duplicates included).
//   - An Upsert of an absent key inserts `"key":raw_value` as the first member, right after '{' (so
//     {} becomes {"model":"x"}), followed by a comma when other members remain. Several insertions
//     keep the order of `edits`.
//   - Remove deletes each occurrence together with exactly one adjacent comma (the following one, or
//     the preceding one for the last member), so the result stays valid JSON.
//   - When several edits name the same key, only the last of them applies.
// Preconditions (std::invalid_argument otherwise, they are programming errors): `scan` is the
// successful scan of this `body` and the body is an object; every raw_value of a Replace/Upsert is a
// valid JSON value.
std::string apply_top_level_edits(std::string_view body, const TopLevelScan& scan,
                                  std::span<const TopLevelEdit> edits);

// ---- the proxy's `model` rewrite ----

enum class ModelRewrite { Unchanged, Replaced, Inserted, NotAnObject, InvalidJson };

struct ModelRewriteResult {
  ModelRewrite outcome = ModelRewrite::Unchanged;
  std::string body;       // the new body for Replaced/Inserted; empty otherwise (keep the original)
  std::string error;      // InvalidJson: the scanner's message
  size_t error_offset = 0;                    // InvalidJson: the scanner's offset
  std::optional<std::string> previous_model;  // the last top-level "model" when it was a string
};

// Sets the top-level "model" of a request body to `model`.
//   - Every top-level occurrence is replaced (a duplicate could be what the upstream reads).
//   - Unchanged (no copy, body empty) when every occurrence already is the string `model`, or when
//     there is none and insert_if_absent is false.
//   - Inserted when absent and insert_if_absent is true.
//   - NotAnObject / InvalidJson (with error and error_offset) leave the body alone.
ModelRewriteResult rewrite_model(std::string_view body, std::string_view model, bool insert_if_absent);

}  // namespace glmp::core::pipeline
