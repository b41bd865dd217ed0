# Shared by scripts/run, scripts/test and scripts/bench. Source it; don't run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${GLMP_JOBS:-2}"

# Debian packages the build, tests and benchmarks need. Installed only when missing.
GLMP_BUILD_PACKAGES=(build-essential cmake ninja-build ccache pkg-config libpoco-dev libboost-dev
  libboost-filesystem-dev libtomlplusplus-dev prometheus-cpp-dev libssl-dev nlohmann-json3-dev node-llhttp libnghttp2-dev)
GLMP_TEST_PACKAGES=(libgtest-dev libgmock-dev libbenchmark-dev openssl nodejs curl wrk nginx-light python3 prometheus
  redis-server sqlite3 chromium nghttp2-client)

ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# npm comes with some nodejs builds (NodeSource) and is a separate Debian package otherwise.
ensure_npm() {
  command -v npm >/dev/null 2>&1 || ensure_packages npm
}

# build PRESET [extra cmake args...] [-- TARGET...]
# The dashboard plugin embeds its chart library (uPlot, pinned in plugins/dashboard/web/package-lock.json):
# its CMakeLists runs `npm ci` into the build tree at configure time, so every build needs npm.

# Configures build/PRESET and builds every target, or only the TARGETs (and what they depend on).
# PRESET: release, test, debug, or any name starting with asan (ASan+UBSan, UBSan fatal) or tsan
# (TSan); e.g. asan-mine configures build/asan-mine with ASan+UBSan. Sanitizer builds are
# RelWithDebInfo at -O1 -g1 (as in CMakePresets.json): half the compile time of -O2 -g (ASan build
# of the integration binaries from scratch at -j2: 355 s against 719 s), and line tables are all a
# sanitizer's stack trace needs.
build() {
  local preset="$1"; shift
  ensure_npm
  local dir="$ROOT/build/$preset"
  local args=() targets=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; targets=(--target "$@"); break; fi
    args+=("$1"); shift
  done
  local type=Release san=""
  case "$preset" in
    debug) type=Debug ;;
    asan*) type=RelWithDebInfo san=address ;;
    tsan*) type=RelWithDebInfo san=thread ;;
  esac
  if [ -n "$san" ]; then
    args=("-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" "${args[@]}")
  fi
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" -DGLMP_SANITIZE="$san" "${launcher[@]}" "${args[@]}" >/dev/null
  cmake --build "$dir" -j "$JOBS" "${targets[@]}"
}
