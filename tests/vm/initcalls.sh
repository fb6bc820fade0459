#!/usr/bin/env bash
# Where a microVM guest's boot time goes: boots Debian's cloud kernel on our VMM (vmm-run) with
# `initcall_debug`, and prints the slowest initcalls and the longest gaps in the kernel log.
# Runs in the nested-KVM harness where this host's KVM cannot boot a guest (as tests do).
#
#   tests/vm/initcalls.sh [--qemu] [EXTRA KERNEL ARGS...]
#     --qemu   boot the bzImage under QEMU -M microvm,acpi=on instead, for comparison
#
# The console costs ~0.5 s a line under nested emulation, so the guest stays quiet: its init
# (busybox, with the agent initramfs's modules) writes `dmesg` to a raw disk, and the host reads
# the log from that disk afterwards. Debug build of vmm-run; release changes the host side only.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
peer=ours
if [ "${1:-}" = "--qemu" ]; then peer=qemu; shift; fi
extra="$*"

eval "$(bash tests/vm/kernels.sh "$cache" | sed -n 's/^\(guest\|l1\)=/kernel_\1=/p')"
export ORCHESTRATOR_KERNEL_DIR=$kernel_guest
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu
cargo build -q -p orchestrator -p vmm --bins
export ORCHESTRATOR_GUEST_AGENT=$PWD/target/x86_64-unknown-linux-gnu/release/orchestrator-agent

# Everything L1 needs lives in a results directory it can see (its /tmp is its own).
work=$(mktemp -d /tmp/initcalls.XXXXXX)
trap 'rm -rf "$work"' EXIT
data="$work/data"
show=$(./target/debug/orchestrator --data-dir "$data" kernel show)
vmlinux=$(sed -n 's/^boot: *//p' <<<"$show")
bzimage=$(sed -n 's/^image: *//p' <<<"$show")
initrd=$(./target/debug/orchestrator --data-dir "$data" kernel initramfs)

# The agent's initramfs with busybox as /init: load the modules, dump the log, power off.
mkdir "$work/root"
(cd "$work/root" && cpio -idm --quiet < "$initrd")
mkdir -p "$work/root/bin"
cp /bin/busybox "$work/root/bin/busybox"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules/order); do /bin/busybox insmod /modules/$m; done
/bin/busybox dmesg > /dev/vda
/bin/busybox poweroff -f
INIT
chmod 755 "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"
truncate -s 8M "$work/log.img"

cmdline="$(sed -n 's/^cmdline: *//p' <<<"$show") initcall_debug printk.time=1 log_buf_len=1M $extra"
if [ "$peer" = qemu ]; then
  boot=(qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config
        -nographic -no-reboot -display none -serial null -kernel "$bzimage" -initrd "$work/initrd.cpio" -append "$cmdline"
        -drive "id=log,file=$work/log.img,format=raw,if=none" -device virtio-blk-device,drive=log)
else
  boot=("$PWD/target/debug/vmm-run" --kernel "$vmlinux" --initrd "$work/initrd.cpio" --mem 256 --console /dev/null
        --cmdline "$cmdline" --disk "$work/log.img")
fi
if ./target/debug/orchestrator --data-dir "$data" doctor >/dev/null 2>&1; then
  "${boot[@]}"
else
  ORCHESTRATOR_HARNESS_RESULTS=$work bash tests/vm/harness.sh --timeout 600 -- "${boot[@]}"
fi

python3 - "$work/log.img" "$peer" <<'PY'
import re, sys
text = open(sys.argv[1], 'rb').read().split(b'\0')[0].decode(errors='replace')
calls, gaps, prev, prev_line, last = [], [], 0.0, '', 0.0
for line in text.splitlines():
    m = re.match(r'\[\s*(\d+\.\d+)\]\s*(.*)', line)
    if not m:
        continue
    t, msg = float(m.group(1)), m.group(2)
    c = re.search(r'initcall (\S+) returned \S+ after (\d+) usecs', msg)
    if c:
        calls.append((int(c.group(2)) / 1e6, c.group(1)))
    gaps.append((t - prev, prev_line[:90], msg[:90]))
    prev, prev_line, last = t, msg, t
if not calls:
    sys.exit(f"no initcall lines in the guest's log (did it boot?):\n{text[-2000:]}")
print(f"{sys.argv[2]}: guest log ends at {last:.2f} s; {sum(s for s, _ in calls):.2f} s in {len(calls)} initcalls")
print("slowest initcalls:")
for s, name in sorted(calls, reverse=True)[:15]:
    print(f"  {s * 1000:9.1f} ms  {name}")
print("longest gaps between log lines:")
for g, before, after in sorted(gaps, reverse=True)[:8]:
    print(f"  {g * 1000:9.1f} ms  after: {before}\n               before: {after}")
PY
