#!/usr/bin/env bash
# `run --rm` while `serve` reconciles a directory of sandboxes (resync every second), against
# runc on the same rootfs, for this build and, when given, a baseline binary, one after the
# other in one run (hyperfine, 60 runs after 5 warm-ups each).
# Usage: tests/bench/contention.sh ORCHESTRATOR ROOTFS [BASELINE_ORCHESTRATOR]
set -euo pipefail
o=$(realpath "${1:?usage: contention.sh ORCHESTRATOR ROOTFS [BASELINE]}")
rootfs=$(realpath "${2:?usage: contention.sh ORCHESTRATOR ROOTFS [BASELINE]}")
base=${3:+$(realpath "$3")}
runs=${BENCH_RUNS:-60}
work=$(mktemp -d /tmp/orch-bench-serve.XXXXXX)
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  for b in "$o" ${base:+"$base"}; do
    for d in "$work"/data-*; do [ -d "$d" ] && ORCHESTRATOR_DATA_DIR=$d "$b" delete -f "$work/config" >/dev/null 2>&1 || true; done
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/config"
for n in 1 2 3 4; do
  cat > "$work/config/s$n.yaml" <<YAML
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: s$n }
spec: { image: "dir:$rootfs", isolation: namespace, command: [sleep, "3600"] }
YAML
done
bash "$(dirname "$0")/runc-bundle.sh" "$work/bundle" "$rootfs"
measure() {  # NAME BINARY
  local data=$work/data-$1
  ORCHESTRATOR_DATA_DIR=$data "$2" serve --config "$work/config" --resync 1 2>/dev/null &
  serve_pid=$!
  for _ in $(seq 100); do [ "$(ORCHESTRATOR_DATA_DIR=$data "$2" ps 2>/dev/null | grep -c Running)" = 4 ] && break; sleep 0.2; done
  hyperfine --warmup 5 --runs "$runs" --export-json "$work/$1.json" -n "$1: run --rm with serve running" \
    "ORCHESTRATOR_DATA_DIR=$data $2 run --rm dir:$rootfs -- /bin/true" >/dev/null
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=
  ORCHESTRATOR_DATA_DIR=$data "$2" delete -f "$work/config" >/dev/null
}
hyperfine --warmup 5 --runs "$runs" --export-json "$work/alone.json" -n "this: run --rm, no serve" \
  "ORCHESTRATOR_DATA_DIR=$work/data-alone $o run --rm dir:$rootfs -- /bin/true" >/dev/null
measure this "$o"
[ -n "$base" ] && measure baseline "$base"
hyperfine --warmup 5 --runs "$runs" --export-json "$work/runc.json" -n "runc run" "runc run -b $work/bundle bench-\$\$" >/dev/null
python3 "$(dirname "$0")/table.py" --vs "runc run" "$work"/*.json
