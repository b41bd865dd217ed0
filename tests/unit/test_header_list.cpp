// Unit tests for core/src/http/headers: the proxy's header list (order, case-insensitive names,
// erase/set semantics, slot reuse across clear(), the per-thread spares).

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "http/headers.hpp"

using glmp::core::http::Headers;

namespace {

std::vector<std::string> flat(const Headers& h) {
  std::vector<std::string> out;
  for (const auto& [name, value] : h) out.push_back(name + ": " + value);
  return out;
}

const std::string kLong = "a value well beyond the small-string buffer of std::string";

}  // namespace

TEST(HeaderList, AddKeepsArrivalOrderAndFindIsCaseInsensitive) {
  Headers h;
  h.add("Set-Cookie", "a=1");
  h.add("Content-Type", "text/plain");
  h.add("set-cookie", "b=2");
  EXPECT_EQ(flat(h), (std::vector<std::string>{"Set-Cookie: a=1", "Content-Type: text/plain", "set-cookie: b=2"}));
  ASSERT_NE(h.find("SET-COOKIE"), nullptr);
  EXPECT_EQ(*h.find("SET-COOKIE"), "a=1");
  ASSERT_NE(h.find("set-cookie", 1), nullptr);
  EXPECT_EQ(*h.find("set-cookie", 1), "b=2");
  EXPECT_EQ(h.find("set-cookie", 2), nullptr);
  EXPECT_EQ(h.find("X-Missing"), nullptr);
  EXPECT_TRUE(h.has("content-type"));
  EXPECT_EQ(h.get("CONTENT-TYPE"), "text/plain");
  EXPECT_EQ(h.get("X-Missing", "fallback"), "fallback");
  EXPECT_EQ(h.size(), 3u);
}

TEST(HeaderList, EraseRemovesEveryFieldOfTheNameAndKeepsTheOrder) {
  Headers h{{"A", "1"}, {"b", "2"}, {"a", "3"}, {"C", "4"}, {"B", "5"}};
  EXPECT_EQ(h.erase("a"), 2u);
  EXPECT_EQ(flat(h), (std::vector<std::string>{"b: 2", "C: 4", "B: 5"}));
  EXPECT_EQ(h.erase("missing"), 0u);
  EXPECT_EQ(h.erase_if([](std::string_view name, std::string_view value) { return name == "b" || value == "5"; }), 2u);
  EXPECT_EQ(flat(h), (std::vector<std::string>{"C: 4"}));
}

TEST(HeaderList, SetReplacesTheFirstAndDropsTheRest) {
  Headers h{{"X-A", "1"}, {"Other", "o"}, {"x-a", "2"}, {"X-A", "3"}};
  h.set("x-A", "new");
  EXPECT_EQ(flat(h), (std::vector<std::string>{"X-A: new", "Other: o"}));
  h.set("Missing", "m");
  EXPECT_EQ(flat(h), (std::vector<std::string>{"X-A: new", "Other: o", "Missing: m"}));
}

TEST(HeaderList, ClearKeepsSlotsSoRefillingReusesTheirStrings) {
  Headers h;
  h.add("X-Long", kLong);
  const char* buffer = h.begin()->second.data();
  h.clear();
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.begin(), h.end());
  h.add("X-Other", kLong);  // same slot, same string buffer: no allocation
  EXPECT_EQ(h.begin()->second.data(), buffer);
  EXPECT_EQ(flat(h), std::vector<std::string>{"X-Other: " + kLong});
  // An erased field's slot is reused the same way.
  h.add("X-Second", "2");
  h.erase("X-Other");
  h.add("X-Third", kLong);
  EXPECT_EQ(flat(h), (std::vector<std::string>{"X-Second: 2", "X-Third: " + kLong}));
  EXPECT_EQ((h.begin() + 1)->second.data(), buffer);
}

TEST(HeaderList, CopyAndMove) {
  Headers a{{"A", "1"}, {"B", kLong}};
  Headers b = a;
  EXPECT_EQ(flat(b), flat(a));
  Headers c = std::move(a);
  EXPECT_EQ(flat(c), flat(b));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): a moved-from list is empty
  Headers d{{"X", "y"}};
  d = std::move(c);
  EXPECT_EQ(flat(d), flat(b));
  EXPECT_TRUE(c.empty());  // NOLINT(bugprone-use-after-move)
  d = b;
  EXPECT_EQ(flat(d), flat(b));
}

TEST(HeaderList, RecycledListsComeBackEmptyWithTheirSlots) {
  std::thread([] {  // a thread of its own: the spares are per thread
    Headers h;
    h.add("X-Long", kLong);
    const char* buffer = h.begin()->second.data();
    Headers::recycle(h);
    EXPECT_TRUE(h.empty());
    Headers again = Headers::recycled();
    EXPECT_TRUE(again.empty());
    again.add("Y", kLong);
    EXPECT_EQ(again.begin()->second.data(), buffer);  // the recycled slot
    Headers fresh = Headers::recycled();              // no spare left: a new, empty list
    EXPECT_TRUE(fresh.empty());
  }).join();
}
