#!/usr/bin/env bash
# A Debian 12 root filesystem with python3, curl and the CA bundle (debootstrap, minbase) and an
# OCI layout of it, cached outside the work tree. Idempotent: the cache is rebuilt when the
# package list changes. Usage: debian-python.sh CACHE_DIR
set -euo pipefail
cache=${1:?usage: debian-python.sh CACHE_DIR}
rootfs=$cache/rootfs/debian-python
# curl and ca-certificates: the TLS interception tests use a distro client and its trust store.
packages=python3,curl,ca-certificates
if [ "$(cat "$rootfs/.complete" 2>/dev/null)" != "$packages" ]; then
  rm -rf "$rootfs" "$cache/oci-debian-python"
  mkdir -p "$(dirname "$rootfs")"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" >/dev/null
  echo "$packages" > "$rootfs/.complete"
fi
python3 "$(dirname "$0")/oci-images.py" --single "$rootfs" "$cache/oci-debian-python" python \
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "LANG=C.UTF-8"
