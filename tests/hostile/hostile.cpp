#include "hostile.hpp"

#include <cctype>
#include <filesystem>
#include <stdexcept>
#include <thread>

namespace glmp::hostile {
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const fs::path kPluginDir = fs::path(GLMP_PROXY_BIN).parent_path().parent_path() / "plugins";

}  // namespace

std::string jget(const std::string& json, const std::string& path) {
  try {
    return test::json_get(json, path);
  } catch (...) {
    return "<unparsable>";
  }
}

void expect_proxy_error(const RawResponse& r, int status, Flavour flavour, const std::string& what) {
  // One failure per response, listing every way it misses the contract.
  std::vector<std::string> problems;
  const auto check = [&](bool ok, const std::string& problem) {
    if (!ok) problems.push_back(problem);
  };
  check(r.status == status, "status " + std::to_string(r.status) + ", expected " + std::to_string(status));
  if (r.status == status) {
    check(r.complete, "incomplete response");
    check(r.version == "HTTP/1.1" && !r.reason.empty(), "status line '" + r.version + " " + std::to_string(r.status) + " " + r.reason + "'");
    check(lower(r.header("Content-Type")).rfind("application/json", 0) == 0, "Content-Type '" + r.header("Content-Type") + "'");
    check(r.count("Content-Length") == 1 && r.header("Content-Length") == std::to_string(r.body.size()),
          "Content-Length '" + r.header("Content-Length") + "' for " + std::to_string(r.body.size()) + " body bytes");
    check(!r.header("X-Request-ID").empty(), "no X-Request-ID");
    const std::string message = jget(r.body, "error.message");
    check(message != "<missing>" && message != "<unparsable>", "no error.message");
    check(jget(r.body, "error.type") != "<missing>", "no error.type");
    if (flavour == Flavour::Anthropic) {
      check(jget(r.body, "type") == "error", "not the Anthropic flavour");
    } else {
      check(jget(r.body, "type") == "<missing>" && jget(r.body, "error.code") != "<missing>", "not the OpenAI flavour");
    }
  }
  if (problems.empty()) return;
  std::string list;
  for (const auto& p : problems) list += (list.empty() ? "" : "; ") + p;
  ADD_FAILURE() << what << ": " << list << "\n  got: HTTP " << r.status << " " << escape(r.body, 240);
}

void expect_refused_and_closed(const Exchange& x, const std::vector<int>& statuses, Flavour flavour,
                               const std::string& what) {
  const std::string where = what + " " + x.describe();
  if (x.responses.size() != 1 || !x.garbage.empty()) {
    ADD_FAILURE() << what << ": expected exactly one response, got " << where;
    return;
  }
  const RawResponse& r = x.responses.front();
  int expected = statuses.front();
  for (int s : statuses)
    if (s == r.status) expected = s;
  expect_proxy_error(r, expected, flavour, what);
  if (r.status != expected) return;
  EXPECT_TRUE(r.connection_close()) << what << ": no Connection: close " << where;
  EXPECT_TRUE(x.closed) << what << ": the server kept the connection open " << where;
}

void expect_refusals(uint16_t port, const std::vector<RefusalCase>& cases, Ms timeout) {
  std::vector<Exchange> results(cases.size());
  std::vector<std::string> errors(cases.size());
  std::vector<std::thread> threads;
  threads.reserve(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        results[i] = exchange(port, cases[i].bytes + (cases[i].follow_up ? kFollowUp : std::string()), timeout);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].what + " | sent: " + escape(cases[i].bytes, 300));
    ASSERT_TRUE(errors[i].empty()) << errors[i];
    expect_refused_and_closed(results[i], cases[i].statuses, cases[i].flavour, cases[i].what);
    if (cases[i].within.count() > 0) {
      EXPECT_LE(results[i].elapsed_ms, static_cast<double>(cases[i].within.count())) << "answered and closed too late";
    }
  }
}

std::string openai_json(bool stream) { return test::openai_body(stream); }
std::string anthropic_json(bool stream) { return test::anthropic_body(stream); }

void Hostile::start(ProxyOptions opts) {
  if (!mock) mock = std::make_unique<Mock>(dir);
  proxy = std::make_unique<Proxy>(dir, mock.get(), std::move(opts));
}

void Hostile::start_keyed(ProxyOptions opts) {
  const std::string auth = (kPluginDir / "auth.so").string();
  const std::string ratelimit = (kPluginDir / "ratelimit.so").string();
  if (!fs::exists(auth) || !fs::exists(ratelimit)) throw std::runtime_error("plugins not built in " + kPluginDir.string());
  opts.extra_toml += "\n[admin]\ntoken = \"" + kAdminToken + "\"\n\n[[plugins]]\nname = \"auth\"\npath = \"" + auth +
                     "\"\n\n[[plugins]]\nname = \"ratelimit\"\npath = \"" + ratelimit + "\"\n";
  start(std::move(opts));
  const test::Response r = test::http(port(), "POST", "/admin/keys", R"({"name":"hostile"})",
                                      {{"Authorization", "Bearer " + kAdminToken}});
  if (r.status != 201) throw std::runtime_error("cannot create a key: " + std::to_string(r.status) + " " + r.body + r.error);
  key = jget(r.body, "key");
  if (key.empty() || key[0] == '<') throw std::runtime_error("no key in " + r.body);
}

long Hostile::upstream_requests() const {
  const auto s = mock->stats();
  const auto it = s.find("requests");
  return it == s.end() ? -1 : it->second;
}

}  // namespace glmp::hostile
