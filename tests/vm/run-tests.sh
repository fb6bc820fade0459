#!/usr/bin/env bash
# Runs the microVM integration tests (tests/microvm.rs) for real: directly when this host's
# KVM can boot a guest, otherwise inside the nested-KVM harness (tests/vm/harness.sh), where
# they are required to run (ORCHESTRATOR_REQUIRE_MICROVM=1), never skipped.
#
#   tests/vm/run-tests.sh [TEST-FILTER...]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}

# The guest kernel (and the L1 kernel, qemu) and the images the tests boot.
eval "$(bash tests/vm/kernels.sh "$cache" | sed -n 's/^\(guest\|l1\)=/kernel_\1=/p')"
export ORCHESTRATOR_KERNEL_DIR=$kernel_guest
bash tests/images/busybox-rootfs.sh "$cache/rootfs/busybox" >/dev/null
python3 tests/images/oci-images.py "$cache/rootfs/busybox" "$cache/oci-test" >/dev/null
bash tests/images/debian-python.sh "$cache" >/dev/null

# The static agent for the initramfs (release: a third of the debug build's size, which every
# guest unpacks at boot), the orchestrator, vmm-run and the test binary.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu
export ORCHESTRATOR_GUEST_AGENT=$PWD/target/x86_64-unknown-linux-gnu/release/orchestrator-agent
cargo build -q -p orchestrator -p vmm --bins
test_bin=$(bash tests/vm/executable.sh test microvm)
[ -x "$test_bin" ] || { echo "test-vm: could not build the microvm test binary" >&2; exit 1; }

export ORCHESTRATOR_REQUIRE_MICROVM=1
if ./target/debug/orchestrator --data-dir "$(mktemp -d)" doctor >/dev/null 2>&1; then
  echo "test-vm: this host's KVM boots guests; running the microVM tests directly"
  exec "$test_bin" --test-threads=1 --nocapture "$@"
fi
echo "test-vm: this host's KVM cannot boot a stock kernel; running the microVM tests in the nested-KVM harness"
exec bash tests/vm/harness.sh --timeout 2400 -- "$test_bin" --test-threads=1 --nocapture "$@"
