#include "pipeline/errors.hpp"

#include <Poco/Net/HTTPResponse.h>

#include "pipeline/json_body.hpp"  // json_quote

namespace glmp::core::pipeline {

std::string reason_phrase(int status) {
  using Poco::Net::HTTPResponse;
  return status >= 100 && status <= 511 ? HTTPResponse::getReasonForStatus(static_cast<HTTPResponse::HTTPStatus>(status))
                                        : std::string("Unknown");
}

std::string default_error_type(Flavour flavour, int status) {
  const bool anthropic = flavour == Flavour::Anthropic;
  switch (status) {
    case 400: case 405: case 411: case 415: case 422: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return anthropic ? "request_too_large" : "invalid_request_error";
    case 429: return anthropic ? "rate_limit_error" : "rate_limit_exceeded";
    case 529: return anthropic ? "overloaded_error" : "server_error";
    default: return status >= 500 ? (anthropic ? "api_error" : "server_error") : "invalid_request_error";
  }
}

std::string error_body(Flavour flavour, const ApiError& error) {
  const std::string type = error.type.empty() ? default_error_type(flavour, error.status) : error.type;
  std::string out;
  out.reserve(96 + error.message.size());
  if (flavour == Flavour::Anthropic) {
    out += R"({"type":"error","error":{"type":)";
    out += json_quote(type);
    out += R"(,"message":)";
    out += json_quote(error.message);
    out += "}}";
  } else {
    out += R"({"error":{"message":)";
    out += json_quote(error.message);
    out += R"(,"type":)";
    out += json_quote(type);
    out += R"(,"code":)";
    out += error.code.empty() ? std::string("null") : json_quote(error.code);
    out += "}}";
  }
  return out;
}

std::string sse_error_event(Flavour flavour, const ApiError& error) {
  std::string body = error_body(flavour, error);
  if (flavour == Flavour::Anthropic) return "event: error\ndata: " + body + "\n\n";
  return "data: " + body + "\n\n";
}

}  // namespace glmp::core::pipeline
