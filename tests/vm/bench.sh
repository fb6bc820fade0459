#!/usr/bin/env bash
# The microVM boot benchmark (tests/bench/microvm.rs): our VMM vs QEMU microvm, same kernel and
# initramfs, on a real KVM: directly where this host's KVM boots guests, else in the nested-KVM
# harness. Release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
eval "$(bash tests/vm/kernels.sh "$cache" | sed -n 's/^\(guest\|l1\)=/kernel_\1=/p')"
export ORCHESTRATOR_KERNEL_DIR=$kernel_guest
python3 tests/images/oci-images.py "$cache/rootfs/busybox" "$cache/oci-test" >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu
cargo build -q --release -p orchestrator -p vmm --bins
bench_bin=$(bash tests/vm/executable.sh bench microvm)
[ -x "$bench_bin" ] || { echo "bench: could not build the microvm benchmark" >&2; exit 1; }
export ORCHESTRATOR_BIN=$PWD/target/release/orchestrator ORCHESTRATOR_REQUIRE_MICROVM=1
if "$ORCHESTRATOR_BIN" --data-dir "$(mktemp -d)" doctor >/dev/null 2>&1; then
  exec "$bench_bin"
fi
echo "bench: running the microVM benchmark in the nested-KVM harness (absolute times are TCG-slow; compare ratios)"
exec bash tests/vm/harness.sh --timeout 3000 -- "$bench_bin"
