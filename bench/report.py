#!/usr/bin/env python3
"""Turns the raw results of scripts/bench into the tables it prints and one JSON file.

Per concurrency: RPS and p50/p99 latency per target (median over rounds), the latency each proxy
adds over the direct upstream, and glm-proxy's RPS as a ratio of nginx's.
"""
import argparse
import json
import platform
import statistics
import subprocess
from collections import defaultdict


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def machine():
    info = {"kernel": platform.release(), "cpus": 0, "cpu_model": "", "mem_gib": 0}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not info["cpu_model"]:
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                if line.startswith("processor"):
                    info["cpus"] += 1
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wrk", required=True)
    ap.add_argument("--streams")
    ap.add_argument("--large")
    ap.add_argument("--micro")
    ap.add_argument("--idle-rss-kb", type=int, default=0)
    ap.add_argument("--config", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-on-errors", action="store_true", help="exit 1 if any request failed (CI smoke)")
    a = ap.parse_args()

    runs = []
    with open(a.wrk) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))

    grouped = defaultdict(list)
    for r in runs:
        grouped[(r["conns"], r["target"])].append(r["wrk"])

    tables = {}
    for conns in sorted({c for c, _ in grouped}):
        rows = {}
        for target in ("direct", "nginx", "glm-proxy", "glm-proxy+auth", "glm-proxy+auth+rl"):
            samples = grouped.get((conns, target), [])
            if not samples:
                continue
            rps = [s["requests"] / (s["duration_us"] / 1e6) for s in samples]
            rows[target] = {
                "rps": statistics.median(rps),
                "p50_us": statistics.median(s["p50_us"] for s in samples),
                "p99_us": statistics.median(s["p99_us"] for s in samples),
                "errors": sum(s["socket_errors"] + s["non2xx"] for s in samples),
                "rounds": len(samples),
            }
        direct = rows.get("direct")
        for target, row in rows.items():
            if direct and target != "direct":
                row["added_p50_us"] = row["p50_us"] - direct["p50_us"]
                row["added_p99_us"] = row["p99_us"] - direct["p99_us"]
        proxies = ("glm-proxy", "glm-proxy+auth", "glm-proxy+auth+rl")
        for proxy in proxies:
            if "nginx" in rows and proxy in rows and rows["nginx"]["rps"] > 0:
                rows[proxy]["rps_vs_nginx"] = rows[proxy]["rps"] / rows["nginx"]["rps"]
            if proxy != "glm-proxy" and proxy in rows and "glm-proxy" in rows and rows["glm-proxy"]["rps"] > 0:
                core = rows["glm-proxy"]
                rows[proxy]["rps_vs_core"] = rows[proxy]["rps"] / core["rps"]
                rows[proxy]["cost_p50_us"] = rows[proxy]["p50_us"] - core["p50_us"]
        tables[conns] = rows

    for conns, rows in tables.items():
        print(f"\nconcurrency {conns}")
        print(f"  {'target':<17} {'RPS':>10} {'p50 µs':>9} {'p99 µs':>9} {'+p50 µs':>9} {'+p99 µs':>9} {'errors':>7}")
        for target, row in rows.items():
            added50 = f"{row['added_p50_us']:>9.0f}" if "added_p50_us" in row else f"{'-':>9}"
            added99 = f"{row['added_p99_us']:>9.0f}" if "added_p99_us" in row else f"{'-':>9}"
            print(f"  {target:<17} {row['rps']:>10.0f} {row['p50_us']:>9.0f} {row['p99_us']:>9.0f} {added50} {added99} {row['errors']:>7}")
        for proxy in ("glm-proxy", "glm-proxy+auth", "glm-proxy+auth+rl"):
            if "rps_vs_nginx" in rows.get(proxy, {}):
                print(f"  {proxy} RPS / nginx RPS = {rows[proxy]['rps_vs_nginx']:.2f}")
            if "rps_vs_core" in rows.get(proxy, {}):
                print(f"  {proxy}: RPS x{rows[proxy]['rps_vs_core']:.2f} of the core alone, p50 {rows[proxy]['cost_p50_us']:+.0f} µs")

    streams = load_json(a.streams) if a.streams else {}
    large = load_json(a.large) if a.large else {}
    micro = load_json(a.micro) if a.micro else {}
    print(f"\nidle RSS after start-up: {a.idle_rss_kb / 1024:.1f} MB")
    if streams:
        print("streams:", json.dumps(streams.get("summary", streams)))
    if large:
        print("large:", json.dumps(large.get("summary", large)))

    result = {
        "machine": machine(),
        "config": a.config,
        "wrk_runs": runs,
        "tables": {str(k): v for k, v in tables.items()},
        "idle_rss_mb": a.idle_rss_kb / 1024,
        "streams": streams,
        "large": large,
        "micro": micro.get("benchmarks", []),
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)

    failed = sum(row["errors"] for rows in tables.values() for row in rows.values())
    failed += int(streams.get("summary", streams).get("errors", 0) or 0)
    if a.fail_on_errors and (failed or not tables):
        print(f"FAILED: {failed} request(s) failed" if tables else "FAILED: no wrk results")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
