#!/usr/bin/env bash
# User-space instructions per proxied request, glm-proxy (core, config/bench.toml) against nginx
# proxy_pass (one worker), counted by valgrind's callgrind: a figure that does not move with the
# machine's load, unlike CPU time (README "Performance"). Each target runs twice under callgrind,
# with WARM and WARM+N requests (glmp-load, --concurrency C); the difference of the two totals
# divided by N cancels start-up and shutdown. Kernel time is not counted (system calls per
# request are compared with perf in docs/design.md, "The engine").
#
#   bench/callgrind.sh [--requests N] [--concurrency C] [--top K]
#
# --top K also prints the K functions of glm-proxy with the most instructions per request (self).
# Needs a Release build (scripts/bench builds one) and valgrind (installed here when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"

N=3000 C=10 TOP=0 WARM=500
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N="$2"; shift 2 ;;
    --concurrency) C="$2"; shift 2 ;;
    --top) TOP="$2"; shift 2 ;;
    *) echo "usage: $0 [--requests N] [--concurrency C] [--top K]" >&2; exit 2 ;;
  esac
done

ensure_packages valgrind nginx-light python3 curl
BIN="${GLMP_BENCH_BIN:-$ROOT/build/release/bin}"
for exe in glm-proxy glmp-load; do
  [ -x "$BIN/$exe" ] || { echo "missing $BIN/$exe: run scripts/bench once (it builds Release with the bench tools)" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/glmp-callgrind.XXXXXX)"
MOCK_PID=""
cleanup() {
  [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BIN/glmp-load" upstream --host 127.0.0.1 --port 0 --threads 1 > "$WORK/mock.out" 2> "$WORK/mock.err" &
MOCK_PID=$!
for _ in $(seq 1 100); do grep -q LISTENING "$WORK/mock.out" 2>/dev/null && break; sleep 0.05; done
MOCK_PORT=$(awk '/LISTENING/{print $2}' "$WORK/mock.out")
[ -n "$MOCK_PORT" ] || { echo "the upstream did not start" >&2; exit 1; }

PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 1024; }
  server {
    listen 127.0.0.1:$PORT;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX

# run TARGET REQUESTS OUT: the target under callgrind, REQUESTS requests, then SIGTERM (glm-proxy)
# or SIGQUIT (nginx); prints the total instruction count.
run() {
  local target="$1" requests="$2" out="$3" path
  if [ "$target" = nginx ]; then
    path=/api/coding/paas/v4/chat/completions
    valgrind --tool=callgrind --callgrind-out-file="$out" nginx -c "$WORK/nginx.conf" -p "$WORK" \
      > "$WORK/target.log" 2>&1 &
  else
    path=/v1/chat/completions
    GLMP_BENCH_LISTEN=127.0.0.1:$PORT GLMP_BENCH_UPSTREAM=http://127.0.0.1:$MOCK_PORT GLMP_BENCH_STORE_BACKEND=memory \
      GLMP_BENCH_ACCESS_LOG=off valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$BIN/glm-proxy" --config "$ROOT/config/bench.toml" > "$WORK/target.log" 2>&1 &
  fi
  local pid=$!
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null -X POST -H 'Authorization: Bearer test-upstream-key' -H 'Content-Type: application/json' \
      -d '{"model":"glm-4.7","messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$PORT$path" && break
    sleep 0.2
  done
  "$BIN/glmp-load" run --target "127.0.0.1:$PORT" --path "$path" --header "Authorization: Bearer test-upstream-key" \
    --concurrency "$C" --requests "$requests" --quiet > /dev/null 2> "$WORK/load.err" \
    || { echo "glmp-load failed against $target:" >&2; cat "$WORK/load.err" >&2; exit 1; }
  if [ "$target" = nginx ]; then kill -QUIT "$pid"; else kill "$pid"; fi
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/{print $2; exit}' "$out"
}

declare -A PER=()
for target in nginx glm-proxy; do
  a=$(run "$target" "$WARM" "$WORK/$target-a.out")
  b=$(run "$target" $((WARM + N)) "$WORK/$target-b.out")
  PER[$target]=$(( (b - a) / N ))
  printf '%-10s %7d instructions per request (user space; %d requests at c=%d)\n' "$target" "${PER[$target]}" "$N" "$C"
done
python3 -c "print('ratio glm-proxy / nginx: %.2f' % (${PER[glm-proxy]} / ${PER[nginx]}))"

if [ "$TOP" -gt 0 ]; then
  callgrind_annotate "$WORK/glm-proxy-a.out" > "$WORK/a.txt" 2>/dev/null
  callgrind_annotate "$WORK/glm-proxy-b.out" > "$WORK/b.txt" 2>/dev/null
  python3 - "$WORK/a.txt" "$WORK/b.txt" "$N" "$TOP" <<'PY'
import re, sys
def load(f):
    d = {}
    for line in open(f):
        m = re.match(r'\s*([\d,]+) \([^)]*\)\s+(.*)', line)
        if m and 'PROGRAM TOTALS' not in line:
            d[m.group(2)] = int(m.group(1).replace(',', ''))
    return d
a, b, n, top = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = sorted(((b[k] - a.get(k, 0)) / n, k) for k in b)[::-1][:top]
print('glm-proxy, instructions per request by function (self):')
for v, k in rows:
    k = re.sub(r'std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >', 'std::string', k)
    k = re.sub(r'std::basic_string_view<char, std::char_traits<char> >', 'std::string_view', k)
    print('%8.0f  %s' % (v, k[:150]))
PY
fi
