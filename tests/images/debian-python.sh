#!/usr/bin/env bash
# A Debian 12 root filesystem with python3 (debootstrap, minbase) and an OCI layout of it,
# cached outside the work tree. Idempotent. Usage: debian-python.sh CACHE_DIR
set -euo pipefail
cache=${1:?usage: debian-python.sh CACHE_DIR}
rootfs=$cache/rootfs/debian-python
if [ ! -f "$rootfs/.complete" ]; then
  rm -rf "$rootfs"
  mkdir -p "$(dirname "$rootfs")"
  debootstrap --variant=minbase --include=python3-minimal bookworm "$rootfs" >/dev/null
  touch "$rootfs/.complete"
fi
python3 "$(dirname "$0")/oci-images.py" --single "$rootfs" "$cache/oci-debian-python" python \
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "LANG=C.UTF-8"
