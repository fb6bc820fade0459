#!/usr/bin/env bash
# Builds the smallest useful guest initramfs: busybox-static and an /init that prints a marker line
# and powers the VM off at once. Used to measure bare VM boot time (e.g. the QEMU microvm peer).
#
#   tests/vm/tiny-initrd.sh OUT      writes OUT (an uncompressed newc cpio archive)
#
# Guest console output:
#   GUEST-UP                 as soon as /init runs
#   guest-uptime: SECONDS    the guest kernel's uptime at that point (guest time to init)
# then `poweroff -f`. Run the guest with -no-reboot (and panic=-1) so that the VM exits even if
# the power-off request is not honoured: /init exiting panics the kernel, which reboots.
set -euo pipefail
out=${1:?usage: tiny-initrd.sh OUT}
busybox=/bin/busybox
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep "install ok installed" >/dev/null ||
  { echo "tiny-initrd: busybox-static is not installed (tests/vm/kernels.sh installs it)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/bin" "$tmp/root/proc" "$tmp/root/dev"
cp "$busybox" "$tmp/root/bin/busybox"
ln -s busybox "$tmp/root/bin/sh"
cat > "$tmp/root/init" <<'INIT'
#!/bin/busybox sh
echo GUEST-UP
/bin/busybox mount -t proc proc /proc 2>/dev/null &&
  echo "guest-uptime: $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox poweroff -f
INIT
chmod 755 "$tmp/root/init"
(cd "$tmp/root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
  > "$tmp/initrd.cpio"
mkdir -p "$(dirname "$out")"
mv -f "$tmp/initrd.cpio" "$out"
