#!/usr/bin/env bash
# How fast a command starts, side by side in one run (hyperfine -N, 500 runs after 20 warm-ups):
#   `--version`, and `exec NAME -- true` on a running namespace sandbox (the command's own start
#   included), for this build and, when given, a baseline binary (e.g. a release build of an
#   earlier commit); then the library's exec round trip from a Rust program on the same machine
#   (tests/bench/library.rs), against the CLI in the same run.
# Usage: tests/bench/commands.sh ORCHESTRATOR ROOTFS [BASELINE_ORCHESTRATOR]   (BENCH_RUNS to tune)
set -euo pipefail
o=$(realpath "${1:?usage: commands.sh ORCHESTRATOR ROOTFS [BASELINE]}")
rootfs=$(realpath "${2:?usage: commands.sh ORCHESTRATOR ROOTFS [BASELINE]}")
base=${3:+$(realpath "$3")}
runs=${BENCH_RUNS:-500}
work=$(mktemp -d /tmp/orch-bench-cmd.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
trap '"$o" delete bench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cat > "$work/bench.yaml" <<YAML
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: bench }
spec: { image: "dir:$rootfs", isolation: namespace }
YAML
"$o" apply -f "$work/bench.yaml" >/dev/null
cmds=(-n "orchestrator --version" "$o --version" -n "orchestrator exec bench -- true" "$o exec bench -- true")
if [ -n "$base" ]; then
  cmds+=(-n "baseline: orchestrator --version" "$base --version" -n "baseline: orchestrator exec bench -- true" "$base exec bench -- true")
fi
echo "== command start ($runs runs each)"
hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/cmd.json" "${cmds[@]}" > "$work/hyperfine.log" || { cat "$work/hyperfine.log"; exit 1; }
python3 "$(dirname "$0")/table.py" "$work/cmd.json"
"$o" delete bench >/dev/null
echo "== the library's exec round trip vs the CLI's"
ORCHESTRATOR_BIN=$o cargo bench -q -p orchestrator --bench library -- "$rootfs" 2000 2>/dev/null | grep '^|'
