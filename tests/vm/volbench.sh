#!/usr/bin/env bash
# Volume throughput in both isolation kinds, side by side in one run: sequential writes
# (fsynced) and uncached reads (O_DIRECT on block-backed paths; on the microVM's virtio-fs
# volume, which virtiofsd serves without O_DIRECT, a file the namespace sandbox wrote into the
# same shared volume, so the guest never cached it), busybox dd, on a named volume and on the
# writable layer, in a microVM (virtio-fs through virtiofsd; virtio-blk) and in a namespace
# sandbox (the volume's loop device; the writable disk's), plus the host's own disk where it
# takes direct I/O. Runs where microVMs boot: directly on a host with hardware virtualisation,
# else inside the nested-KVM harness, where absolute figures are emulation-bound and only the
# ratios mean something; its /tmp (the data directory, so every disk image) is tmpfs, whose
# pages a sandbox's cgroup keeps, so the figures are for small writes (32 MiB, 2 rounds).
# Release build.
#   tests/vm/volbench.sh [SIZE_MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
size=${1:-32}
rounds=${2:-2}
eval "$(bash tests/vm/kernels.sh "$cache" | sed -n 's/^\(guest\|l1\)=/kernel_\1=/p')"
export ORCHESTRATOR_KERNEL_DIR=$kernel_guest
bash tests/images/busybox-rootfs.sh "$cache/rootfs/busybox" >/dev/null
python3 tests/images/oci-images.py "$cache/rootfs/busybox" "$cache/oci-test" >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu
export ORCHESTRATOR_GUEST_AGENT=$PWD/target/x86_64-unknown-linux-gnu/release/orchestrator-agent
cargo build -q --release -p orchestrator
export ORCHESTRATOR_VIRTIOFSD
ORCHESTRATOR_VIRTIOFSD=$(bash tests/vm/virtiofsd.sh "$cache")
inner=(bash tests/vm/volbench-inner.sh "$PWD/target/release/orchestrator" "$cache" "$size" "$rounds")
if ./target/release/orchestrator --data-dir "$(mktemp -d)" doctor >/dev/null 2>&1; then
  exec "${inner[@]}"
fi
echo "volbench: in the nested-KVM harness (absolute figures are TCG-slow; compare ratios)"
exec bash tests/vm/harness.sh --timeout 2400 -- "${inner[@]}"
