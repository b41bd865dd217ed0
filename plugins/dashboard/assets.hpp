#pragma once
// The page's files, embedded at build time (CMakeLists.txt, embed_assets.cmake): web/index.html,
// dashboard.js, dashboard.css, and uPlot's dist files from the pinned npm package.
#include <cstddef>
#include <string_view>

namespace glmp::plugins::dashboard {

struct Asset {
  std::string_view path;          // served at this path ("/dashboard", "/dashboard/dashboard.js", ...)
  std::string_view content_type;  // without parameters: every file is UTF-8
  std::string_view body;
};

extern const Asset kAssets[];
extern const std::size_t kAssetCount;

}  // namespace glmp::plugins::dashboard
