// Tests for pipeline/json_body's canonical_json: key order, whitespace and escape independence,
// duplicates, exclusion, non-object documents, deep nesting on a small stack, idempotence.
#include "pipeline/json_body.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>

#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace glmp::core::pipeline;

bool poco_accepts(const std::string& json) {
  try {
    Poco::JSON::Parser parser;
    parser.parse(json);
    return true;
  } catch (const Poco::Exception&) {
    return false;
  }
}

// canonical_json of `body`, which must scan; checks the result is valid JSON, no longer than the body,
// and its own canonical form.
std::string canon(std::string_view body, std::vector<std::string_view> exclude = {}) {
  const TopLevelScan scan = scan_top_level(body);
  EXPECT_TRUE(scan.ok) << scan.error << " in " << body;
  std::string out;
  EXPECT_TRUE(canonical_json(body, scan, exclude, out)) << body;
  EXPECT_LE(out.size(), body.size()) << body;
  const TopLevelScan again = scan_top_level(out);
  EXPECT_TRUE(again.ok) << again.error << " in " << out;
  std::string twice;
  EXPECT_TRUE(canonical_json(out, again, {}, twice)) << out;
  EXPECT_EQ(twice, out) << "not idempotent for " << body;
  return out;
}

TEST(CanonicalJson, KeyOrderDoesNotMatter) {
  EXPECT_EQ(canon(R"({"b":1,"a":2,"c":3})"), R"({"a":2,"b":1,"c":3})");
  EXPECT_EQ(canon(R"({"z":{"y":1,"x":[{"q":1,"p":2}]},"a":0})"), R"({"a":0,"z":{"x":[{"p":2,"q":1}],"y":1}})");
  EXPECT_EQ(canon(R"({"a":0,"z":{"x":[{"p":2,"q":1}],"y":1}})"), canon(R"({"z":{"y":1,"x":[{"q":1,"p":2}]},"a":0})"));
  // Byte order of the UTF-8: uppercase before lowercase, a prefix first, non-ASCII last.
  EXPECT_EQ(canon("{\"\xC3\xA9\":1,\"b\":2,\"ab\":3,\"a\":4,\"B\":5,\"\":6}"),
            "{\"\":6,\"B\":5,\"a\":4,\"ab\":3,\"b\":2,\"\xC3\xA9\":1}");
  // Keys are sorted by their unescaped value, not by how they are written.
  EXPECT_EQ(canon(R"({"\u0062":1,"a":2})"), R"({"a":2,"b":1})");
}

TEST(CanonicalJson, WhitespaceDoesNotMatter) {
  const std::string compact = R"({"a":[1,2,{"b":null}],"c":{"d":true,"e":"x y"}})";
  const std::string spaced = " \n\t{ \"a\" :\r\n [ 1 , 2 ,{ \"b\" : null } ] ,\n \"c\":{\"d\" : true , \"e\" : \"x y\" } }\n ";
  EXPECT_EQ(canon(compact), compact);
  EXPECT_EQ(canon(spaced), compact);
  EXPECT_EQ(canon(" [ ] "), "[]");
  EXPECT_EQ(canon(" { } "), "{}");
  EXPECT_EQ(canon(R"({"a":{ },"b":[ ],"c":[{ }, [ ]]})"), R"({"a":{},"b":[],"c":[{},[]]})");
}

TEST(CanonicalJson, UnicodeEscapesEqualRawUtf8) {
  EXPECT_EQ(canon(R"({"s":"caf\u00e9"})"), "{\"s\":\"caf\xC3\xA9\"}");
  EXPECT_EQ(canon(R"({"s":"caf\u00E9"})"), canon("{\"s\":\"caf\xC3\xA9\"}"));
  EXPECT_EQ(canon(R"(["\ud83d\ude00"])"), "[\"\xF0\x9F\x98\x80\"]");
  EXPECT_EQ(canon(R"(["\ud83d\ude00"])"), canon("[\"\xF0\x9F\x98\x80\"]"));
  EXPECT_EQ(canon(R"({"caf\u00e9":1})"), canon("{\"caf\xC3\xA9\":1}"));
  // The same key written two ways is a duplicate.
  EXPECT_EQ(canon("{\"caf\xC3\xA9\":1,\"caf\\u00e9\":2}"), "{\"caf\xC3\xA9\":2}");
  // CJK and other raw UTF-8 passes through.
  EXPECT_EQ(canon("[\"\xE4\xBD\xA0\xE5\xA5\xBD\",\"\\u4f60\\u597d\"]"), "[\"\xE4\xBD\xA0\xE5\xA5\xBD\",\"\xE4\xBD\xA0\xE5\xA5\xBD\"]");
  // Lone surrogates become U+FFFD, as json_unescape does.
  EXPECT_EQ(canon(R"(["a\ud800b","\udc00"])"), "[\"a\xEF\xBF\xBD" "b\",\"\xEF\xBF\xBD\"]");
}

TEST(CanonicalJson, EscapedSlashEqualsSlash) {
  EXPECT_EQ(canon(R"({"u":"http:\/\/x\/y"})"), R"({"u":"http://x/y"})");
  EXPECT_EQ(canon(R"({"\/":1})"), R"({"/":1})");
}

TEST(CanonicalJson, ControlCharactersAndQuotesStayEscaped) {
  EXPECT_EQ(canon(R"(["\u0001"])"), R"(["\u0001"])");
  EXPECT_EQ(canon(R"(["\u001F","\u001f"])"), R"(["\u001f","\u001f"])");
  EXPECT_EQ(canon(R"(["\n","\u000a","\u000A"])"), R"(["\n","\n","\n"])");
  EXPECT_EQ(canon(R"(["\t\r\b\f","\u0009\u000d\u0008\u000c"])"), R"(["\t\r\b\f","\t\r\b\f"])");
  EXPECT_EQ(canon(R"(["\"\\","\u0022\u005c"])"), R"(["\"\\","\"\\"])");
  EXPECT_EQ(canon(R"(["\u0000"])"), R"(["\u0000"])");
  EXPECT_EQ(canon(R"(["\u007f"])"), "[\"\x7F\"]");  // DEL is not a control character in JSON
  EXPECT_EQ(canon(R"({"a\nb":"\u0041"})"), R"({"a\nb":"A"})");
}

TEST(CanonicalJson, NumbersAreKeptAsWritten) {
  EXPECT_EQ(canon(R"([1,1.0,1e3,1E3,1000,-0,0,-0.0,1e+3,1e-3,12345678901234567890123])"),
            R"([1,1.0,1e3,1E3,1000,-0,0,-0.0,1e+3,1e-3,12345678901234567890123])");
  EXPECT_NE(canon(R"({"n":1})"), canon(R"({"n":1.0})"));
  EXPECT_NE(canon(R"({"n":1e3})"), canon(R"({"n":1000})"));
  EXPECT_EQ(canon(" 1.0 "), "1.0");
  EXPECT_EQ(canon("-0"), "-0");
}

TEST(CanonicalJson, DuplicateKeysKeepTheLast) {
  EXPECT_EQ(canon(R"({"a":1,"b":2,"a":3})"), R"({"a":3,"b":2})");
  EXPECT_EQ(canon(R"({"a":{"x":1},"a":[2]})"), R"({"a":[2]})");
  EXPECT_EQ(canon(R"({"a":1,"a":2,"a":3,"a":4})"), R"({"a":4})");
  // Nested objects too, and the value kept is canonicalised.
  EXPECT_EQ(canon(R"({"o":{"k":"first","k":{"z":1,"y":2,"z":3}}})"), R"({"o":{"k":{"y":2,"z":3}}})");
  EXPECT_EQ(canon(R"([{"k":1,"k":2},{"k":3}])"), R"([{"k":2},{"k":3}])");
}

TEST(CanonicalJson, TopLevelExclusion) {
  const std::string body = R"({"model":"glm","stream":true,"messages":[{"model":"inner","role":"user"}],"x":{"stream":1}})";
  std::vector<std::string_view> exclude{"model", "stream"};
  EXPECT_EQ(canon(body, exclude), R"({"messages":[{"model":"inner","role":"user"}],"x":{"stream":1}})");
  // Every occurrence of an excluded key, compared unescaped.
  EXPECT_EQ(canon(R"({"model":1,"mo\u0064el":2,"a":3,"model":4})", {"model"}), R"({"a":3})");
  EXPECT_EQ(canon(R"({"model":1})", {"model"}), "{}");
  // No effect on a document that is not an object.
  EXPECT_EQ(canon(R"([{"model":1}])", {"model"}), R"([{"model":1}])");
  EXPECT_EQ(canon(R"("model")", {"model"}), R"("model")");
  // Bodies that differ only in an excluded member have the same canonical form.
  EXPECT_EQ(canon(R"({"model":"a","n":1})", {"model"}), canon(R"({"n":1,"model":"b"})", {"model"}));
}

TEST(CanonicalJson, ArraysKeepTheirOrder) {
  EXPECT_EQ(canon("[3,1,2]"), "[3,1,2]");
  EXPECT_NE(canon("[1,2]"), canon("[2,1]"));
  EXPECT_EQ(canon(R"([{"b":1,"a":2},[3,[2,1]],"s",null])"), R"([{"a":2,"b":1},[3,[2,1]],"s",null])");
}

TEST(CanonicalJson, NonObjectTopLevel) {
  EXPECT_EQ(canon(" \"a\\/b\" "), "\"a/b\"");
  EXPECT_EQ(canon("\"\""), "\"\"");
  EXPECT_EQ(canon(" 42 "), "42");
  EXPECT_EQ(canon("true"), "true");
  EXPECT_EQ(canon(" false\n"), "false");
  EXPECT_EQ(canon("null"), "null");
  EXPECT_EQ(canon(R"([ "x" , {"b":[],"a":{}} ])"), R"(["x",{"a":{},"b":[]}])");
}

TEST(CanonicalJson, AppendsToOut) {
  const std::string body = R"({"b":1,"a":2})";
  std::string out = "prefix:";
  ASSERT_TRUE(canonical_json(body, scan_top_level(body), {}, out));
  EXPECT_EQ(out, R"(prefix:{"a":2,"b":1})");
}

TEST(CanonicalJson, ScanNotOkReturnsFalseAndLeavesOutAlone) {
  for (const std::string body : {"", "{", R"({"a":1,})", "[1,2", "nul", "{\"a\":\"\x01\"}", "{\"a\":1} x"}) {
    const TopLevelScan scan = scan_top_level(body);
    ASSERT_FALSE(scan.ok) << body;
    std::string out = "kept";
    EXPECT_FALSE(canonical_json(body, scan, {}, out)) << body;
    EXPECT_EQ(out, "kept");
  }
  // A default (never run) scan is not ok either.
  std::string out = "kept";
  EXPECT_FALSE(canonical_json("{}", TopLevelScan{}, {}, out));
  EXPECT_EQ(out, "kept");
}

TEST(CanonicalJson, MismatchedScanStaysInBounds) {
  // A programming error, but it must not read out of bounds (run under ASan to see it matter).
  const TopLevelScan scan = scan_top_level("{}");
  for (const std::string body : {"", "{", "[1,", "{\"a\"", "{\"a\":", "{\"a\":1,", "\"abc", "[{\"a\":[}", "}", "[\"\\"}) {
    std::string out = "kept";
    EXPECT_FALSE(canonical_json(body, scan, {}, out)) << body;
    EXPECT_EQ(out, "kept") << body;
  }
}

TEST(CanonicalJson, Idempotent) {
  const std::string body =
      R"( {"z":[{"y":"\u00e9\n\/","x":1e3},-0.0,"\ud83d\ude00"],"a":{"c":{"e":[],"d":{}},"b":"\u0001"},"a":{"k":"v"},)"
      R"("m\u00e9":"\"q\"","":null} )";
  const std::string once = canon(body);
  EXPECT_EQ(once, "{\"\":null,\"a\":{\"k\":\"v\"},\"m\xC3\xA9\":\"\\\"q\\\"\",\"z\":[{\"x\":1e3,\"y\":\"\xC3\xA9\\n/\"},-0.0,"
                  "\"\xF0\x9F\x98\x80\"]}");
  std::string twice;
  ASSERT_TRUE(canonical_json(once, scan_top_level(once), {}, twice));
  EXPECT_EQ(twice, once);
  EXPECT_TRUE(poco_accepts(once)) << once;
}

// ---- deep nesting on a small stack ----

struct DeepRun {
  std::vector<std::string> bodies;
  std::vector<std::string> outputs;
  std::vector<bool> results;
};

void* run_deep(void* arg) {
  auto* run = static_cast<DeepRun*>(arg);
  for (const std::string& body : run->bodies) {
    const TopLevelScan scan = scan_top_level(body);
    std::string out;
    run->results.push_back(scan.ok && canonical_json(body, scan, {}, out));
    run->outputs.push_back(std::move(out));
  }
  return nullptr;
}

TEST(CanonicalJson, MaxDepthOnA256KiBStackThread) {
  const size_t d = kJsonMaxDepth;
  DeepRun run;
  run.bodies.push_back(std::string(d, '[') + std::string(d, ']'));
  std::string objects;
  for (size_t k = 0; k < d; ++k) objects += R"({"b":1,"a":)";
  objects += "0";
  for (size_t k = 0; k < d; ++k) objects += "}";
  run.bodies.push_back(objects);
  std::string mixed;  // alternating object/array levels with whitespace and a member after each level
  for (size_t k = 0; k < d; ++k) mixed += k % 2 == 0 ? "{ \"z\" : " : "[ 1 , ";
  mixed += "\"\\u00e9\"";
  for (size_t k = d; k-- > 0;) mixed += k % 2 == 0 ? " , \"a\" : 2 }" : " ]";
  run.bodies.push_back(mixed);

  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 256 * 1024), 0);
  pthread_t thread;
  ASSERT_EQ(pthread_create(&thread, &attr, run_deep, &run), 0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);

  ASSERT_EQ(run.results.size(), 3u);
  for (size_t k = 0; k < 3; ++k) EXPECT_TRUE(run.results[k]) << k;
  EXPECT_EQ(run.outputs[0], run.bodies[0]);
  std::string expected_objects;
  for (size_t k = 0; k < d; ++k) expected_objects += R"({"a":)";
  expected_objects += "0";
  for (size_t k = 0; k < d; ++k) expected_objects += R"(,"b":1})";
  EXPECT_EQ(run.outputs[1], expected_objects);
  std::string expected_mixed;
  for (size_t k = 0; k < d; ++k) expected_mixed += k % 2 == 0 ? "{\"a\":2,\"z\":" : "[1,";
  expected_mixed += "\"\xC3\xA9\"";
  for (size_t k = d; k-- > 0;) expected_mixed += k % 2 == 0 ? "}" : "]";
  EXPECT_EQ(run.outputs[2], expected_mixed);
}

// ---- property: random documents written in random ways ----

// A JSON value as a tree, and two ways to write it: randomly (shuffled keys, whitespace, random escapes)
// and canonically (the expected output, built independently of the implementation).
struct Value {
  enum class Kind { Null, True, False, Number, String, Array, Object } kind = Kind::Null;
  std::string text;                                       // Number: as written; String: the UTF-8 value
  std::vector<std::unique_ptr<Value>> items;              // Array
  std::map<std::string, std::unique_ptr<Value>> members;  // Object (unique keys, byte order)
};

class Gen {
 public:
  explicit Gen(uint32_t seed) : rng_(seed) {}

  std::unique_ptr<Value> value(int depth) {
    auto v = std::make_unique<Value>();
    const int pick = pick_int(0, depth > 4 ? 4 : 6);
    switch (pick) {
      case 0: v->kind = Value::Kind::Null; break;
      case 1: v->kind = pick_int(0, 1) ? Value::Kind::True : Value::Kind::False; break;
      case 2: {
        static const char* const kNumbers[] = {"0", "-0", "1", "1.0", "1e3", "1000", "-12.5E-7", "3.14159", "1E+2"};
        v->kind = Value::Kind::Number;
        v->text = kNumbers[pick_int(0, 8)];
        break;
      }
      case 3:
      case 4:
        v->kind = Value::Kind::String;
        v->text = utf8_string();
        break;
      case 5: {
        v->kind = Value::Kind::Array;
        const int n = pick_int(0, 4);
        for (int k = 0; k < n; ++k) v->items.push_back(value(depth + 1));
        break;
      }
      default: {
        v->kind = Value::Kind::Object;
        const int n = pick_int(0, 5);
        for (int k = 0; k < n; ++k) v->members[utf8_string()] = value(depth + 1);
        break;
      }
    }
    return v;
  }

  // Writes `v` randomly. With `decoys`, objects also get earlier duplicate members (which the last
  // occurrence overrides).
  void write(const Value& v, std::string& out, bool decoys) {
    ws(out);
    switch (v.kind) {
      case Value::Kind::Null: out += "null"; break;
      case Value::Kind::True: out += "true"; break;
      case Value::Kind::False: out += "false"; break;
      case Value::Kind::Number: out += v.text; break;
      case Value::Kind::String: write_string(v.text, out); break;
      case Value::Kind::Array:
        out += '[';
        for (size_t k = 0; k < v.items.size(); ++k) {
          if (k > 0) out += ',';
          write(*v.items[k], out, decoys);
        }
        ws(out);
        out += ']';
        break;
      case Value::Kind::Object: {
        std::vector<const std::pair<const std::string, std::unique_ptr<Value>>*> order;
        for (const auto& m : v.members) order.push_back(&m);
        std::shuffle(order.begin(), order.end(), rng_);
        out += '{';
        bool first = true;
        for (const auto* m : order) {
          if (decoys && pick_int(0, 3) == 0) {
            if (!first) out += ',';
            first = false;
            ws(out);
            write_string(m->first, out);
            ws(out);
            out += ':';
            out += "\"decoy\"";
          }
          if (!first) out += ',';
          first = false;
          ws(out);
          write_string(m->first, out);
          ws(out);
          out += ':';
          write(*m->second, out, decoys);
        }
        ws(out);
        out += '}';
        break;
      }
    }
    ws(out);
  }

  static void write_canonical(const Value& v, std::string& out) {
    switch (v.kind) {
      case Value::Kind::Null: out += "null"; break;
      case Value::Kind::True: out += "true"; break;
      case Value::Kind::False: out += "false"; break;
      case Value::Kind::Number: out += v.text; break;
      case Value::Kind::String: out += json_quote(v.text); break;
      case Value::Kind::Array:
        out += '[';
        for (size_t k = 0; k < v.items.size(); ++k) {
          if (k > 0) out += ',';
          write_canonical(*v.items[k], out);
        }
        out += ']';
        break;
      case Value::Kind::Object: {
        out += '{';
        bool first = true;
        for (const auto& [key, value] : v.members) {  // std::map<std::string>: unsigned byte order
          if (!first) out += ',';
          first = false;
          out += json_quote(key);
          out += ':';
          write_canonical(*value, out);
        }
        out += '}';
        break;
      }
    }
  }

 private:
  int pick_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  void ws(std::string& out) {
    static const char kWs[] = {' ', '\t', '\n', '\r'};
    while (pick_int(0, 3) == 0) out += kWs[pick_int(0, 3)];
  }

  std::string utf8_string() {
    static const char* const kPieces[] = {"a", "b", "A", "z", "0", " ", "/", "\"", "\\", "\n", "\t", "\x01", "\x1f",
                                          "\x7f", "\xC3\xA9", "\xE4\xBD\xA0", "\xF0\x9F\x98\x80", "\xEF\xBF\xBD",
                                          "model", "plain ascii text that is long enough for the fast path"};
    std::string s;
    const int n = pick_int(0, 5);
    for (int k = 0; k < n; ++k) s += kPieces[pick_int(0, static_cast<int>(std::size(kPieces)) - 1)];
    return s;
  }

  // Writes a string literal for the UTF-8 `s`, escaping each code point in one of its legal ways.
  void write_string(const std::string& s, std::string& out) {
    static constexpr char kHex[] = "0123456789abcdef0123456789ABCDEF";
    auto u4 = [&](uint32_t unit) {
      const int upper = pick_int(0, 1) * 16;
      out += "\\u";
      for (int shift = 12; shift >= 0; shift -= 4) out += kHex[upper + ((unit >> shift) & 0xF)];
    };
    out += '"';
    size_t i = 0;
    while (i < s.size()) {
      const auto c = static_cast<unsigned char>(s[i]);
      size_t len = 1;
      uint32_t cp = c;
      if (c >= 0xF0) {
        len = 4;
        cp = c & 0x07;
      } else if (c >= 0xE0) {
        len = 3;
        cp = c & 0x0F;
      } else if (c >= 0xC0) {
        len = 2;
        cp = c & 0x1F;
      }
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
      const bool escape = pick_int(0, 2) == 0;
      if (cp < 0x20) {
        if (cp == '\n' && pick_int(0, 1)) {
          out += "\\n";
        } else if (cp == '\t' && pick_int(0, 1)) {
          out += "\\t";
        } else {
          u4(cp);
        }
      } else if (cp == '"' || cp == '\\') {
        if (escape) {
          u4(cp);
        } else {
          out += '\\';
          out += static_cast<char>(cp);
        }
      } else if (cp == '/' && escape) {
        out += pick_int(0, 1) ? std::string("\\/") : std::string("\\u002f");
      } else if (!escape) {
        out.append(s, i, len);
      } else if (cp >= 0x10000) {
        u4(0xD800 + ((cp - 0x10000) >> 10));
        u4(0xDC00 + ((cp - 0x10000) & 0x3FF));
      } else {
        u4(cp);
      }
      i += len;
    }
    out += '"';
  }

  std::mt19937 rng_;
};

TEST(CanonicalJson, RandomDocumentsWrittenDifferentlyHaveOneCanonicalForm) {
  Gen gen(20240611);
  for (int round = 0; round < 400; ++round) {
    const std::unique_ptr<Value> doc = gen.value(0);
    std::string expected;
    Gen::write_canonical(*doc, expected);
    for (int variant = 0; variant < 3; ++variant) {
      std::string body;
      gen.write(*doc, body, variant > 0);
      const std::string got = canon(body);
      EXPECT_EQ(got, expected) << body;
      if (doc->kind == Value::Kind::Object || doc->kind == Value::Kind::Array) {
        EXPECT_TRUE(poco_accepts(body)) << body;  // Poco takes only containers at the top level
        EXPECT_TRUE(poco_accepts(got)) << got;
      }
    }
  }
}

TEST(CanonicalJson, LongStringsAcrossTheFastPath) {
  // Escape-free strings (ASCII and multi-byte UTF-8) of every length around the 8-byte word size are
  // copied as they are; one escape anywhere in them gives the same string.
  for (size_t len = 0; len < 40; ++len) {
    for (size_t at = 0; at <= len; ++at) {
      std::string raw(len, 'x');
      raw.insert(at, "\xE4\xBD\xA0");
      std::string escaped(len, 'x');
      escaped.insert(at, "\\u4f60");
      EXPECT_EQ(canon("[\"" + raw + "\"]"), "[\"" + raw + "\"]");
      EXPECT_EQ(canon("[\"" + escaped + "\"]"), "[\"" + raw + "\"]");
      EXPECT_EQ(canon("{\"" + escaped + "\":\"" + escaped + "\"}"), "{\"" + raw + "\":\"" + raw + "\"}");
    }
  }
}

}  // namespace
