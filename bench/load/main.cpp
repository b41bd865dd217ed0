// glmp-load: the benchmarks' load tool (see README.md next to this file).
//
//   glmp-load run --target HOST:PORT [--scenario constant|ramp|spike|soak|idle|large] ...
//   glmp-load upstream [--port 0] [--threads 1] ...   event-driven stand-in for the mock upstream

#include <csignal>
#include <cstdio>
#include <exception>
#include <string>

#include "common.hpp"

namespace glmp::load {
int run_main(int argc, char** argv);
int upstream_main(int argc, char** argv);
}  // namespace glmp::load

namespace {
constexpr const char* kUsage =
    "usage: glmp-load run --target HOST:PORT [--scenario constant|ramp|spike|soak|idle|large] ...\n"
    "       glmp-load upstream [--host 127.0.0.1] [--port 0] [--threads 1] [--api-key KEY]\n"
    "       glmp-load run --help | glmp-load upstream --help\n";
}

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "run") return glmp::load::run_main(argc, argv);
    if (mode == "upstream") return glmp::load::upstream_main(argc, argv);
    if (mode == "-h" || mode == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "glmp-load: unknown mode '%s'\n%s", mode.c_str(), kUsage);
    return 2;
  } catch (const glmp::load::UsageError& e) {
    std::fprintf(stderr, "glmp-load %s: %s\n%s", mode.c_str(), e.message.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "glmp-load %s: %s\n", mode.c_str(), e.what());
    return 1;
  }
}
