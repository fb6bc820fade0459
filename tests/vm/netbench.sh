#!/usr/bin/env bash
# The network benchmark with ours as a microVM (tests/bench/network.sh, BENCH_NET_ISOLATION=
# microvm): iperf3 and connect latency from a microVM through virtio-net into the shim's stack,
# beside a namespace sandbox, pasta and slirp4netns in the same run. Where this host's KVM cannot boot a guest it all
# runs inside the nested-KVM harness, whose L1 is emulated: only the ratios mean something.
# (The harness passes no environment into L1: settings travel in the command line.)
#   tests/vm/netbench.sh        (BENCH_NET_* as for tests/bench/network.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
eval "$(bash tests/vm/kernels.sh "$cache" | sed -n 's/^\(guest\|l1\)=/kernel_\1=/p')"
export ORCHESTRATOR_KERNEL_DIR=$kernel_guest
bash tests/images/busybox-rootfs.sh "$cache/rootfs/busybox" >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu
export ORCHESTRATOR_GUEST_AGENT=$PWD/target/x86_64-unknown-linux-gnu/release/orchestrator-agent
cargo build -q --release -p orchestrator
bench="bash tests/bench/network.sh $PWD/target/release/orchestrator $cache/rootfs/busybox $PWD/target/plugins/egress-guard-c.wasm"
# A namespace sandbox first (ours only), then a microVM beside pasta and slirp4netns.
run="BENCH_NET_PEERS=0 $bench; ORCHESTRATOR_KERNEL_DIR=$kernel_guest ORCHESTRATOR_GUEST_AGENT=$ORCHESTRATOR_GUEST_AGENT BENCH_NET_ISOLATION=microvm $bench"
if ./target/release/orchestrator --data-dir "$(mktemp -d)" doctor >/dev/null 2>&1; then
  exec bash -c "$run"
fi
echo "netbench: running in the nested-KVM harness (L1 is emulated: compare the ratio, not the figures)"
exec bash tests/vm/harness.sh --timeout 2400 -- bash -c "$run"
