#!/usr/bin/env bash
# An OCI bundle for `runc run` on ROOTFS (read-only, no terminal, running /bin/true): the peer
# the sandbox benchmarks compare against.   Usage: tests/bench/runc-bundle.sh BUNDLE_DIR ROOTFS
set -euo pipefail
bundle=${1:?usage: runc-bundle.sh BUNDLE_DIR ROOTFS}
rootfs=${2:?usage: runc-bundle.sh BUNDLE_DIR ROOTFS}
mkdir -p "$bundle"
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" "$rootfs" <<'PY'
import json, sys
path, rootfs = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["root"] = {"path": rootfs, "readonly": True}
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(path, "w"))
PY
