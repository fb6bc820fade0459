#!/usr/bin/env bash
# Sequential write and read throughput in a namespace sandbox: a named volume vs the sandbox's
# writable layer vs the host's own disk (the filesystem under the data directory), side by side
# in one run, alternated ROUNDS times (default 3). Each write is SIZE MiB (default 512) of
# zeros with an fsync at the end; each read follows a drop of the host's page cache, so it
# reaches the disk. The same busybox `dd` does all of them; the cost of one `exec` (measured
# here) is taken off the sandbox figures. Prints MB/s medians.
#   tests/bench/volumes.sh ORCHESTRATOR ROOTFS [SIZE_MIB] [ROUNDS]
set -euo pipefail
o=$(realpath "${1:?usage: volumes.sh ORCHESTRATOR ROOTFS [SIZE_MIB] [ROUNDS]}")
rootfs=$(realpath "${2:?usage: volumes.sh ORCHESTRATOR ROOTFS [SIZE_MIB] [ROUNDS]}")
size=${3:-512}
rounds=${4:-3}
work=$(mktemp -d /tmp/orch-bench-volumes.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
cleanup() {
  "$o" rm --force vbench >/dev/null 2>&1 || true
  "$o" volume rm --force benchvol >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$o" volume create benchvol --size "$((size * 2))Mi" >/dev/null
"$o" run -d --name vbench --isolation namespace --disk "$((size * 2))Mi" -v benchvol:/vol "dir:$rootfs" -- sleep infinity >/dev/null
python3 - "$o" "$rootfs/bin/busybox" "$work" "$size" "$rounds" <<'PY'
import statistics, subprocess, sys, time
o, busybox, work, size, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")

exec_cost = statistics.median(timed([o, "exec", "vbench", "--", "true"]) for _ in range(10))
targets = {
    "named volume": (lambda args: [o, "exec", "vbench", "--", "dd"] + args, "/vol/f", exec_cost),
    "writable layer": (lambda args: [o, "exec", "vbench", "--", "dd"] + args, "/tmp/f", exec_cost),
    "host disk": (lambda args: [busybox, "dd"] + args, f"{work}/host-f", 0.0),
}
results = {k: {"write": [], "read": []} for k in targets}
for _ in range(rounds):
    for name, (cmd, path, cost) in targets.items():
        w = timed(cmd([f"if=/dev/zero", f"of={path}", "bs=1M", f"count={size}", "conv=fsync"])) - cost
        drop_caches()
        r = timed(cmd([f"if={path}", "of=/dev/null", "bs=1M"])) - cost
        results[name]["write"].append(size * 1.048576 / w)
        results[name]["read"].append(size * 1.048576 / r)
        subprocess.run(cmd(["if=/dev/null", f"of={path}"]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"sequential {size} MiB, {rounds} rounds alternated, medians (MB/s); one exec costs {exec_cost * 1000:.1f} ms, taken off")
print(f"{'':16} {'write':>8} {'read':>8}")
for name, r in results.items():
    print(f"{name:16} {statistics.median(r['write']):8.0f} {statistics.median(r['read']):8.0f}")
PY
