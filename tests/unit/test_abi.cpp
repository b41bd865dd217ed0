// Keeps the plugin ABI header honest: its hash may change only together with the ABI version.
// When you change plugin_api.h: bump GLMP_ABI_MINOR (append-only change) or GLMP_ABI_MAJOR
// (anything else), then add the new version's hash below. Never edit an existing line.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include <Poco/DigestEngine.h>
#include <Poco/SHA2Engine.h>

#include "glmproxy/plugin_api.h"

namespace {

const std::map<std::string, std::string> kHeaderHashes = {
    {"1.0", "b6805f7c6a8e40c4f1cfe2cc2e807ccd1b4c1bd6bd410391242b3f6031956504"},
    {"1.1", "014edf4726c570c2365ffb1794bf7bd86e4a4da465b32bd9f0c8d3b16e2b6be8"},
    {"1.2", "5c612bccbce8086b29233c4a7b8460b2d54380e9dc1e54c2deca4a1a759b2008"},
    {"1.3", "dfb1013660120410905f3e577acfd1ca57cc37c740bf9ac443382693fc6fa228"},
    {"1.4", "4c118f556850ffa5f16b36eb836b00761f28c5945b969806eee5d49bde590cbd"},
    {"1.5", "5d60e1f1373f4faedc3356b85526fcde2c6ca6b428b078f2288f9e16d69c9275"},
    {"1.6", "992b2b12c7fd9bc31965a1e924e9a9dd60add62781dbd03937d833c3e7f27bda"},
    {"1.7", "15bc9094e1010f5bc7c4d1ec2014662c797631c26826f0141676096564de86bb"},
};

// Minor versions only append: what a 1.0 plugin sees of the host table and of the descriptor is
// byte for byte where it was (x86-64 layout).
TEST(Abi, MinorVersionsOnlyAppend) {
  static_assert(sizeof(void*) == 8, "offsets recorded for LP64");
  EXPECT_EQ(offsetof(glmp_host_api, register_route), 224u) << "a 1.0 member moved";
  EXPECT_EQ(offsetof(glmp_plugin_descriptor, on_complete), 72u) << "a 1.0 descriptor member moved";
  EXPECT_EQ(sizeof(glmp_usage), 48u);
  // 1.1 starts right after 1.0's last member.
  EXPECT_EQ(offsetof(glmp_host_api, store_get), 232u);
  // 1.4 appends request_body_member to the host table, right after 1.1's last member.
  EXPECT_EQ(offsetof(glmp_host_api, request_body_member), offsetof(glmp_host_api, request_client_header) + sizeof(void*));
  // 1.5 appends the recording functions right after it.
  EXPECT_EQ(offsetof(glmp_host_api, request_record), offsetof(glmp_host_api, request_body_member) + sizeof(void*));
  EXPECT_EQ(offsetof(glmp_host_api, request_defer_upstream), offsetof(glmp_host_api, request_record) + 11 * sizeof(void*));
  // 1.6 appends the timing functions.
  EXPECT_EQ(offsetof(glmp_host_api, request_profile), offsetof(glmp_host_api, request_defer_upstream) + sizeof(void*));
  EXPECT_EQ(offsetof(glmp_host_api, request_is_admin), offsetof(glmp_host_api, request_profile) + 2 * sizeof(void*));
  // 1.7 appends metrics_collect.
  EXPECT_EQ(offsetof(glmp_host_api, metrics_collect), offsetof(glmp_host_api, request_is_admin) + sizeof(void*));
  EXPECT_EQ(offsetof(glmp_host_api, metrics_collect) + sizeof(void*), sizeof(glmp_host_api));
  EXPECT_EQ(sizeof(glmp_metric_sample), 64u);
  EXPECT_EQ(sizeof(glmp_recording_info), 104u);
  EXPECT_EQ(offsetof(glmp_recording_info, struct_size), 0u);
  // 1.2 appends on_request_headers to the descriptor, right after 1.0/1.1's last member (a 1.1
  // descriptor's struct_size, 80, ends exactly where it begins).
  EXPECT_EQ(offsetof(glmp_plugin_descriptor, on_request_headers), 80u);
  // 1.3 appends the flags (GLMP_PLUGIN_NONBLOCKING) right after it.
  EXPECT_EQ(offsetof(glmp_plugin_descriptor, flags), 88u);
  EXPECT_EQ(sizeof(glmp_plugin_descriptor), 96u);
}

TEST(Abi, HeaderHashMatchesItsVersion) {
  std::ifstream in(std::string(GLMP_SOURCE_DIR) + "/plugin-api/include/glmproxy/plugin_api.h", std::ios::binary);
  ASSERT_TRUE(in) << "cannot read plugin_api.h";
  std::stringstream ss;
  ss << in.rdbuf();
  Poco::SHA2Engine engine(Poco::SHA2Engine::SHA_256);
  engine.update(ss.str());
  const std::string hash = Poco::DigestEngine::digestToHex(engine.digest());
  const std::string version = std::to_string(GLMP_ABI_MAJOR) + "." + std::to_string(GLMP_ABI_MINOR);
  auto it = kHeaderHashes.find(version);
  ASSERT_NE(it, kHeaderHashes.end()) << "ABI " << version << " has no recorded hash; add {\"" << version << "\", \"" << hash << "\"}";
  EXPECT_EQ(hash, it->second) << "plugin_api.h changed but GLMP_ABI_MAJOR/MINOR did not: bump the version "
                                 "(minor for appended members, major otherwise) and record the new hash";
}

TEST(Abi, StructsStartWithTheirSize) {
  // struct_size first, so each side can tell which members the other knows.
  EXPECT_EQ(offsetof(glmp_host_api, struct_size), 0u);
  EXPECT_EQ(offsetof(glmp_plugin_descriptor, struct_size), 0u);
  EXPECT_EQ(offsetof(glmp_usage, struct_size), 0u);
  EXPECT_EQ(offsetof(glmp_request_profile, struct_size), 0u);
}

}  // namespace
