#!/usr/bin/env bash
# virtiofsd, the Rust virtio-fs daemon the VMM drives for volumes in microVMs: Debian 12 does
# not package it, so it is built from crates.io (pinned) into CACHE/virtiofsd, once. Needs
# Debian's libseccomp-dev and libcap-ng-dev (tests/setup.sh installs them).
#   tests/vm/virtiofsd.sh CACHE   -> prints the binary's path
set -euo pipefail
cache=${1:?usage: virtiofsd.sh CACHE}
version=1.14.0
bin=$cache/virtiofsd/bin/virtiofsd
if ! [ -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$version"; then
  echo "setup: building virtiofsd $version (cargo install, once; a few minutes)" >&2
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo install --locked --quiet --root "$cache/virtiofsd" "virtiofsd@$version" >&2
fi
echo "$bin"
