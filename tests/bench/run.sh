#!/usr/bin/env bash
# Benchmarks, side by side in one run on the same busybox rootfs (hyperfine):
#   1. a one-shot sandbox that runs /bin/true: `orchestrator run --rm` vs `runc run` vs
#      `bwrap --unshare-all` (all as root, all on this rootfs);
#   2. `orchestrator exec NAME -- true` on a running sandbox, the CLI's own start included
#      (p50 / p95 / p99 from every run).
# Usage: tests/bench/run.sh ORCHESTRATOR_BINARY ROOTFS   (BENCH_RUNS, BENCH_EXEC_RUNS to tune)
set -euo pipefail
o=$(realpath "${1:?usage: run.sh ORCHESTRATOR ROOTFS}")
rootfs=$(realpath "${2:?usage: run.sh ORCHESTRATOR ROOTFS}")
runs=${BENCH_RUNS:-60}
exec_runs=${BENCH_EXEC_RUNS:-300}
work=$(mktemp -d /tmp/orch-bench.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
trap '"$o" delete bench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

bash "$(dirname "$0")/runc-bundle.sh" "$work/bundle" "$rootfs"

echo "== one-shot sandbox running /bin/true ($runs runs each)"
hyperfine --warmup 5 --runs "$runs" --export-json "$work/start.json" \
  -n "orchestrator run --rm" "$o run --rm dir:$rootfs -- /bin/true" \
  -n "runc run" "runc run -b $work/bundle bench-\$\$" \
  -n "bwrap --unshare-all" "bwrap --unshare-all --bind $rootfs / --proc /proc --dev /dev /bin/true"

cat > "$work/bench.yaml" <<YAML
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: bench }
spec: { image: "dir:$rootfs", isolation: namespace }
YAML
"$o" apply -f "$work/bench.yaml" >/dev/null
echo "== exec into a running sandbox ($exec_runs runs)"
hyperfine -N --warmup 20 --runs "$exec_runs" --export-json "$work/exec.json" -n "orchestrator exec bench -- true" "$o exec bench -- true"

python3 "$(dirname "$0")/table.py" --vs "runc run" "$work/start.json" "$work/exec.json"
