#!/usr/bin/env bash
# The measurement of tests/vm/volbench.sh, run where microVMs boot (see there).
#   volbench-inner.sh ORCHESTRATOR CACHE SIZE_MIB ROUNDS
set -euo pipefail
o=$1 cache=$2 size=$3 rounds=$4
work=$(mktemp -d /tmp/orch-volbench.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
cleanup() {
  rc=$?
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/data/sandboxes/*/shim.log "$work"/data/sandboxes/*/console.log; do echo "== $f"; tail -n 15 "$f"; done
    dmesg 2>/dev/null | grep -i -E "oom|killed|seccomp|audit" | tail -n 10 || true
  fi
  "$o" delete vm-bench ns-bench >/dev/null 2>&1 || true
  "$o" volume rm --force vm-vol ns-vol >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
image="oci-layout:$cache/oci-test/layout:busybox"
"$o" volume create vm-vol --size "$((size * 8))Mi" --shared >/dev/null
"$o" volume create ns-vol --size "$((size * 3))Mi" >/dev/null
cat > "$work/bench.yaml" <<YAML
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: vm-bench }
spec:
  image: $image
  isolation: microvm
  memory: 192Mi
  user: root
  disk: $((size * 3))Mi
  command: [sleep, '100000']
  volumes: [ { name: vm-vol, mountPath: /vol } ]
---
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: ns-bench }
spec:
  image: $image
  isolation: namespace
  user: root
  disk: $((size * 3))Mi
  command: [sleep, '100000']
  volumes: [ { name: ns-vol, mountPath: /vol }, { name: vm-vol, mountPath: /vmvol } ]
YAML
"$o" apply -f "$work/bench.yaml" >/dev/null
python3 - "$o" "$cache/rootfs/busybox/bin/busybox" "$work" "$size" "$rounds" <<'PY'
import statistics, subprocess, sys, time
o, busybox, work, size, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def timed(argv):
    t = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.decode().strip()}")
    return time.perf_counter() - t

def inside(name):
    return lambda args: [o, "exec", name, "--", "dd"] + args

cost = {n: statistics.median(timed([o, "exec", n, "--", "true"]) for _ in range(5)) for n in ("vm-bench", "ns-bench")}
vm, ns = inside("vm-bench"), inside("ns-bench")
# Writes end with an fsync, so the data has left the page cache. Reads must not hit a page
# cache either: block-backed paths read with O_DIRECT; the VM's virtio-fs volume (virtiofsd
# refuses O_DIRECT) reads a file the namespace sandbox wrote into the same (shared) volume,
# which the guest has never cached.
targets = {
    "microVM volume (virtio-fs)": (vm, "/vol", cost["vm-bench"], lambda i: (ns, f"/vmvol/r{i}")),
    "microVM writable layer (virtio-blk)": (vm, "/tmp", cost["vm-bench"], None),
    "namespace volume": (ns, "/vol", cost["ns-bench"], None),
    "namespace writable layer": (ns, "/tmp", cost["ns-bench"], None),
}
# The host's own disk, where it takes direct I/O (the harness's L1 runs on tmpfs, which does
# not: there the sandboxes' disks are files in RAM too, and the rows compare the paths alone).
probe = subprocess.run([busybox, "dd", "if=/dev/zero", f"of={work}/probe", "bs=4k", "count=1", "oflag=direct"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if probe.returncode == 0:
    targets["host disk"] = (lambda args: [busybox, "dd"] + args, work, 0.0, None)
else:
    print("host disk: no direct I/O on this host's /tmp (tmpfs); row left out")
quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
results = {k: {"write": [], "read": []} for k in targets}
for i in range(rounds):
    for name, (cmd, d, c, writer) in targets.items():
        w = timed(cmd(["if=/dev/zero", f"of={d}/w", "bs=1M", f"count={size}", "conv=fsync"])) - c
        if writer:
            wcmd, wpath = writer(i)
            subprocess.run(wcmd(["if=/dev/zero", f"of={wpath}", "bs=1M", f"count={size}", "conv=fsync"]), **quiet)
            r = timed(cmd([f"if={d}/r{i}", "of=/dev/null", "bs=1M"])) - c
        else:
            r = timed(cmd([f"if={d}/w", "of=/dev/null", "bs=1M", "iflag=direct"])) - c
        results[name]["write"].append(size * 1.048576 / w)
        results[name]["read"].append(size * 1.048576 / r)
        subprocess.run(cmd(["if=/dev/null", f"of={d}/w"]), **quiet)
print(f"sequential, {size} MiB (writes fsynced, reads uncached), {rounds} rounds alternated, medians (MB/s); exec cost taken off: microVM {cost['vm-bench'] * 1000:.0f} ms, namespace {cost['ns-bench'] * 1000:.0f} ms")
print(f"{'':38} {'write':>8} {'read':>8}")
for name, r in results.items():
    print(f"{name:38} {statistics.median(r['write']):8.1f} {statistics.median(r['read']):8.1f}")
PY
