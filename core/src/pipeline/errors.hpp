#pragma once
// Error bodies in the caller's API flavour. Every error the proxy itself produces goes through
// here, so an OpenAI client always sees {"error":{...}} and an Anthropic client always sees
// {"type":"error","error":{...}}: never HTML, never a stack trace, never a secret.

#include <string>
#include <string_view>

#include "pipeline/usage.hpp"  // Flavour

namespace glmp::core::pipeline {

struct ApiError {
  int status = 500;
  std::string message;
  std::string type;  // "" = the flavour's default type for `status`
  std::string code;  // OpenAI "code"; "" = null
};

// Default error type for a status, per flavour (Anthropic: invalid_request_error, authentication_error,
// permission_error, not_found_error, request_too_large, rate_limit_error, api_error, overloaded_error;
// OpenAI: invalid_request_error, authentication_error, permission_error, not_found_error,
// rate_limit_exceeded, server_error).
std::string default_error_type(Flavour flavour, int status);

// The standard reason phrase for a status ("Unknown" outside 100..511). Never casts a code Poco's
// HTTPStatus enum lacks into it blindly: the status-line writers all go through here.
std::string reason_phrase(int status);

// A complete JSON error body.
std::string error_body(Flavour flavour, const ApiError& error);

// One SSE event carrying the error, for failures after a stream has started:
// Anthropic: "event: error\ndata: {...}\n\n"; OpenAI: "data: {\"error\":{...}}\n\n".
std::string sse_error_event(Flavour flavour, const ApiError& error);

}  // namespace glmp::core::pipeline
