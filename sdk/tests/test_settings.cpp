// glmp::Settings: parsing, typed getters, defaults, errors. Compiled directly (no plugin).
#include <glmproxy/fake_host.hpp>  // Checks
#include <glmproxy/sdk.hpp>

#include <chrono>
#include <string>

namespace {

using glmp::Settings;
using glmp::SettingsError;
using glmp::testing::Checks;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const SettingsError& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

int main() {
  Checks c;
  const Settings s(R"({
    "name": "x", "empty": "", "n": -42, "big": 18446744073709551615, "maxi": 9223372036854775807,
    "f": 1.5, "flag": true, "off": false, "nothing": null, "list": ["a", "b"], "mixed": ["a", 1],
    "nested": {"k": [1, 2, 3]}
  })");
  GLMP_EXPECT(c, s.has("name") && s.has("empty") && s.has("list"));
  GLMP_EXPECT(c, !s.has("nothing") && !s.has("absent") && !s.has(""));
  GLMP_EXPECT(c, s.get_string("name") == "x");
  GLMP_EXPECT(c, s.get_string("empty", "fallback").empty());
  GLMP_EXPECT(c, s.get_string("absent", "fallback") == "fallback");
  GLMP_EXPECT(c, s.get_string("nothing", "fallback") == "fallback");
  GLMP_EXPECT(c, s.get_string("absent").empty());
  GLMP_EXPECT(c, s.get_int("n") == -42);
  GLMP_EXPECT(c, s.get_int("maxi") == 9223372036854775807LL);
  GLMP_EXPECT(c, s.get_int("absent", 7) == 7);
  GLMP_EXPECT(c, s.get_double("f") == 1.5);
  GLMP_EXPECT(c, s.get_double("n") == -42.0);
  GLMP_EXPECT(c, s.get_double("absent", 0.25) == 0.25);
  GLMP_EXPECT(c, s.get_bool("flag") && !s.get_bool("off", true));
  GLMP_EXPECT(c, s.get_bool("absent", true));
  GLMP_EXPECT(c, (s.get_string_list("list") == std::vector<std::string>{"a", "b"}));
  GLMP_EXPECT(c, s.get_string_list("absent").empty());
  GLMP_EXPECT(c, s.json().at("nested").at("k").size() == 3);
  GLMP_EXPECT(c, s.raw().find("\"nested\"") != std::string_view::npos);

  GLMP_EXPECT(c, error_of([&] { (void)s.get_string("n"); }) == R"(setting "n" must be a string, not number)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_int("f"); }) == R"(setting "f" must be an integer, not number)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_int("name"); }) == R"(setting "name" must be an integer, not string)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_int("big"); }) == R"(setting "big" is out of range)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_bool("name"); }) == R"(setting "name" must be a boolean, not string)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_double("flag"); }) == R"(setting "flag" must be a number, not boolean)");
  GLMP_EXPECT(c, error_of([&] { (void)s.get_string_list("name"); }).find("must be an array of strings") !=
                     std::string::npos);
  GLMP_EXPECT(c, error_of([&] { (void)s.get_string_list("mixed"); }).find("must be an array of strings") !=
                     std::string::npos);

  GLMP_EXPECT(c, error_of([] { Settings bad("{\"a\":"); }).rfind("settings are not valid JSON: ", 0) == 0);
  GLMP_EXPECT(c, error_of([] { Settings bad("[]"); }) == "settings must be a JSON object, not array");
  GLMP_EXPECT(c, error_of([] { Settings bad("{} x"); }).rfind("settings are not valid JSON", 0) == 0);
  GLMP_EXPECT(c, Settings("").json().is_object() && Settings(" \n\t").json().empty());
  GLMP_EXPECT(c, Settings().json().is_object() && Settings().raw().empty());

  const Settings copy = s;  // copyable
  GLMP_EXPECT(c, copy.get_string("name") == "x");
  // Durations: units, plain milliseconds, the fallback, and errors naming the key.
  {
    using std::chrono::milliseconds;
    const Settings d(R"({"a":"250ms","b":"30s","c":"5m","d":"5h","e":1500,"bad":"5 h","neg":-1,"unit":"5d","txt":true})");
    GLMP_EXPECT(c, d.get_duration("a", milliseconds(1)) == milliseconds(250));
    GLMP_EXPECT(c, d.get_duration("b", milliseconds(1)) == milliseconds(30'000));
    GLMP_EXPECT(c, d.get_duration("c", milliseconds(1)) == milliseconds(300'000));
    GLMP_EXPECT(c, d.get_duration("d", milliseconds(1)) == milliseconds(18'000'000));
    GLMP_EXPECT(c, d.get_duration("e", milliseconds(1)) == milliseconds(1500));
    GLMP_EXPECT(c, d.get_duration("absent", milliseconds(7)) == milliseconds(7));
    for (const char* key : {"bad", "neg", "unit", "txt"})
      GLMP_EXPECT(c, error_of([&] { (void)d.get_duration(key, milliseconds(1)); }).find(std::string("\"") + key + "\"") != std::string::npos);
  }
  {
    // Sizes read like the proxy's own config (glmp::parse_size): binary and decimal units, bytes.
    const Settings z(R"({"a":"512KiB","b":"1 MiB","c":"2GB","d":4096,"e":"100","bad":"1.5MiB","neg":-1,"unit":"1TiB","txt":true,"big":"17179869184GiB"})");
    GLMP_EXPECT(c, z.get_size("a", 1) == 512u * 1024);
    GLMP_EXPECT(c, z.get_size("b", 1) == 1024u * 1024);
    GLMP_EXPECT(c, z.get_size("c", 1) == 2'000'000'000u);
    GLMP_EXPECT(c, z.get_size("d", 1) == 4096u);
    GLMP_EXPECT(c, z.get_size("e", 1) == 100u);
    GLMP_EXPECT(c, z.get_size("absent", 7) == 7u);
    for (const char* key : {"bad", "neg", "unit", "txt", "big"})
      GLMP_EXPECT(c, error_of([&] { (void)z.get_size(key, 1); }).find(std::string("\"") + key + "\"") != std::string::npos);
    // Durations combine units like the core's ("1m30s").
    GLMP_EXPECT(c, Settings(R"({"t":"1m30s"})").get_duration("t", std::chrono::milliseconds(1)) == std::chrono::milliseconds(90'000));
  }
  return c.finish();
}
