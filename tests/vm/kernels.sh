#!/usr/bin/env bash
# Provisions what the microVM tests need, idempotently:
#   - Debian qemu-system-x86 (the L1 harness VM and the QEMU microvm peer), busybox-static;
#   - the Debian cloud kernel for guests (linux-image-cloud-amd64's dependency) and the generic
#     kernel for the L1 harness (linux-image-amd64's dependency), downloaded and extracted into
#     the cache, never installed on the host.
# Prints the two extracted kernel directories as `guest=DIR` and `l1=DIR`.
#
#   tests/vm/kernels.sh [CACHE]      (default /var/cache/orchestrator-dev)
set -euo pipefail
cache=${1:-${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}}/kernels
mkdir -p "$cache"

need=()
for p in qemu-system-x86 busybox-static cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "vm setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The versioned image package a meta package depends on (it changes with kernel updates).
resolve() {
  apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

fetch() {
  local pkg=$1 dir="$cache/$1"
  if [ ! -f "$dir/.complete" ]; then
    echo "vm setup: fetching $pkg" >&2
    local tmp; tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    # mktemp makes it 0700; apt-get download drops privileges to the `_apt` user, which must be
    # able to write here (otherwise apt warns "Download is performed unsandboxed").
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/*.deb "$dir"
    rm -rf "$tmp"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

guest_pkg=$(resolve linux-image-cloud-amd64)
l1_pkg=$(resolve linux-image-amd64)
if [ -z "$guest_pkg" ] || [ -z "$l1_pkg" ]; then
  apt-get update -qq
  guest_pkg=$(resolve linux-image-cloud-amd64)
  l1_pkg=$(resolve linux-image-amd64)
fi
[ -n "$guest_pkg" ] || { echo "vm setup: cannot resolve linux-image-cloud-amd64's kernel package" >&2; exit 1; }
[ -n "$l1_pkg" ] || { echo "vm setup: cannot resolve linux-image-amd64's kernel package" >&2; exit 1; }
echo "guest=$(fetch "$guest_pkg")"
echo "l1=$(fetch "$l1_pkg")"
