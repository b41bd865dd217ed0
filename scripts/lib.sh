# Shared by scripts/run, scripts/test and scripts/bench. Source it; don't run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${GLMP_JOBS:-2}"

# Debian packages the build, tests and benchmarks need. Installed only when missing.
GLMP_BUILD_PACKAGES=(build-essential cmake ninja-build ccache pkg-config libpoco-dev libboost-dev
  libboost-filesystem-dev libtomlplusplus-dev prometheus-cpp-dev libssl-dev nlohmann-json3-dev node-llhttp)
GLMP_TEST_PACKAGES=(libgtest-dev libgmock-dev libbenchmark-dev openssl nodejs curl wrk nginx-light python3 prometheus
  redis-server sqlite3)

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

# build PRESET [extra cmake args...]
build() {
  local preset="$1"; shift
  local dir="$ROOT/build/$preset"
  local type=Release
  case "$preset" in debug) type=Debug ;; asan|tsan) type=RelWithDebInfo ;; esac
  local san=""
  case "$preset" in asan) san=address ;; tsan) san=thread ;; esac
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" -DGLMP_SANITIZE="$san" "${launcher[@]}" "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS"
}
