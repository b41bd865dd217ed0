// Unit tests for core/src/util/spares.hpp (per-thread spares of per-request buffers) and the
// in-place JSON scan that reuses a context's member list.

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "pipeline/json_body.hpp"
#include "util/spares.hpp"

namespace util = glmp::core::util;
namespace pl = glmp::core::pipeline;

TEST(Spares, AGivenStringComesBackEmptyWithItsBuffer) {
  std::thread([] {  // a thread of its own: spares are per thread
    std::string s(1000, 'x');
    const char* buffer = s.data();
    util::give_string(s);
    EXPECT_TRUE(s.empty());  // moved into the spares
    std::string again = util::spare_string();
    EXPECT_TRUE(again.empty());
    EXPECT_GE(again.capacity(), 1000u);
    EXPECT_EQ(again.data(), buffer);
    EXPECT_EQ(util::spare_string().capacity(), std::string().capacity());  // none left: a new one
  }).join();
}

TEST(Spares, SmallAndHugeStringsAreNotKept) {
  std::thread([] {
    std::string small = "sso";
    util::give_string(small);
    std::string huge(64 * 1024, 'x');  // a big body is freed, never hoarded
    util::give_string(huge);
    EXPECT_EQ(util::spare_string().capacity(), std::string().capacity());
  }).join();
}

TEST(Spares, KeepsAtMostMax) {
  std::thread([] {
    using Two = util::Spares<std::string, 2>;
    for (int i = 0; i < 3; ++i) Two::give(std::string(100, 'a'));
    EXPECT_EQ(Two::take().size(), 100u);
    EXPECT_EQ(Two::take().size(), 100u);
    EXPECT_TRUE(Two::take().empty());  // the third was not kept
  }).join();
}

TEST(Spares, InPlaceScanReusesTheMemberListAndForgetsTheOldScan) {
  pl::TopLevelScan scan;
  pl::scan_top_level(R"({"a":1,"b":2,"c":3})", scan);
  ASSERT_TRUE(scan.ok);
  ASSERT_EQ(scan.members.size(), 3u);
  const auto* list = scan.members.data();
  pl::scan_top_level(R"({"model":"m"})", scan);
  ASSERT_TRUE(scan.ok);
  ASSERT_EQ(scan.members.size(), 1u);
  EXPECT_EQ(scan.members.data(), list);  // same list, no allocation
  EXPECT_NE(scan.find("model"), nullptr);
  EXPECT_EQ(scan.find("a"), nullptr);
  pl::scan_top_level("[1,", scan);  // an error leaves nothing of the previous scan
  EXPECT_FALSE(scan.ok);
  EXPECT_FALSE(scan.is_object);
  EXPECT_TRUE(scan.members.empty());
  EXPECT_FALSE(scan.error.empty());
  const pl::TopLevelScan fresh = pl::scan_top_level("[1,");
  EXPECT_EQ(scan.error, fresh.error);
  EXPECT_EQ(scan.error_offset, fresh.error_offset);
}
