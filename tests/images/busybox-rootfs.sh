#!/usr/bin/env bash
# Builds a minimal root filesystem from Debian's busybox-static: /bin/busybox, one symlink per
# applet, /etc/passwd and /etc/group with root, an unprivileged `app` user and nobody.
# Idempotent: an existing, complete rootfs is left alone.
# Usage: busybox-rootfs.sh DEST
set -euo pipefail
dest=${1:?usage: busybox-rootfs.sh DEST}
if [ -x "$dest/bin/busybox" ] && [ -f "$dest/.complete" ]; then
  exit 0
fi
busybox=/bin/busybox
if [ ! -x "$busybox" ]; then
  echo "busybox-rootfs: $busybox missing; install Debian's busybox-static (tests/setup.sh does)" >&2
  exit 1
fi
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"/{bin,sbin,etc,tmp,root,proc,sys,dev,home/app,usr/bin,var/log}
cp "$busybox" "$tmp/bin/busybox"
for applet in $("$tmp/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
done
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
GR
echo "busybox sandbox" > "$tmp/etc/motd"
chmod 1777 "$tmp/tmp"
chown 1000:1000 "$tmp/home/app"
touch "$tmp/.complete"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp" "$dest"
