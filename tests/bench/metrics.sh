#!/usr/bin/env bash
# What one `GET /metrics` scrape costs with N running sandboxes (default 50; aim: at most 50 ms),
# beside the floor under it: reading the same cgroup and counter files with `cat`, in the same
# run. Prints p50 / p99 over RUNS scrapes (default 100) through the API's Unix socket.
#   tests/bench/metrics.sh ORCHESTRATOR ROOTFS [N] [RUNS]
set -euo pipefail
o=$(realpath "${1:?usage: metrics.sh ORCHESTRATOR ROOTFS [N] [RUNS]}")
rootfs=$(realpath "${2:?usage: metrics.sh ORCHESTRATOR ROOTFS [N] [RUNS]}")
n=${3:-50}
runs=${4:-100}
work=$(mktemp -d /tmp/orch-bench-metrics.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  "$o" delete -f "$work/sandboxes.yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

for i in $(seq 1 "$n"); do
  printf -- '---\napiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: m%s, labels: { team: bench } }\nspec:\n  image: dir:%s\n  isolation: namespace\n  network: { policy: none }\n  memory: 64Mi\n  command: [sleep, infinity]\n' "$i" "$rootfs"
done > "$work/sandboxes.yaml"
"$o" apply -f "$work/sandboxes.yaml" >/dev/null
"$o" serve --secret-refresh 0 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do [ -S "$work/data/api.sock" ] && [ -s "$work/data/api.token" ] && break; sleep 0.1; done
token=$(cat "$work/data/api.token")
series=$(curl -sS --unix-socket "$work/data/api.sock" -H "Authorization: Bearer $token" http://o/metrics | grep -c '^orchestrator_sandbox_memory_bytes{')
[ "$series" = "$n" ] || { echo "metrics bench: $series sandboxes in /metrics, expected $n" >&2; exit 1; }

python3 - "$work/data/api.sock" "$token" "$runs" "$n" <<'PY'
import glob, socket, sys, time
sock, token, runs, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def scrape():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()

# The floor: the files a scrape reads, read by a plain loop (cgroup v2 or v1 layouts).
files = [f for pat in ("/sys/fs/cgroup/orchestrator/*/cpu.stat", "/sys/fs/cgroup/orchestrator/*/memory.current", "/sys/fs/cgroup/orchestrator/*/memory.peak", "/sys/fs/cgroup/orchestrator/*/pids.current",
                      "/sys/fs/cgroup/cpuacct/orchestrator/*/cpuacct.usage", "/sys/fs/cgroup/memory/orchestrator/*/memory.usage_in_bytes", "/sys/fs/cgroup/pids/orchestrator/*/pids.current") for f in glob.glob(pat)]

def floor():
    for f in files:
        with open(f) as h:
            h.read()

def measure(f):
    for _ in range(5):
        f()
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1000)
    t.sort()
    return t[len(t) // 2], t[min(len(t) - 1, int(len(t) * 0.99))]

print(f"| what ({n} running sandboxes, {runs} runs) | p50 ms | p99 ms |")
print("|---|---|---|")
for label, f in ((f"GET /metrics (all series)", scrape), (f"reading the {len(files)} cgroup files alone", floor)):
    p50, p99 = measure(f)
    print(f"| {label} | {p50:.2f} | {p99:.2f} |")
PY
