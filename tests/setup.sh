#!/usr/bin/env bash
# The project's machine set-up, idempotent: Debian packages, `just`, the busybox root
# filesystem the examples and tests use, and (test, bench) the Wasm plugin toolchains and
# components. Then runs the requested recipe.
#
#   tests/setup.sh demo    set up, then run the main job on examples/ (`just demo`)
#   tests/setup.sh test    set up, then run the test suite (`just test`)
#   tests/setup.sh bench   set up, then run the benchmarks (`just bench`)
#   tests/setup.sh         set up only
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (sandboxes need namespaces, mounts and cgroups; packages need apt)" >&2
  exit 1
fi

packages=(busybox-static ca-certificates docker-registry skopeo python3 erofs-utils e2fsprogs util-linux debootstrap apache2-utils iproute2 curl python3-venv python3-httpx python3-pytest python3-setuptools python3-prometheus-client libseccomp-dev libcap-ng-dev pkg-config)
case "$what" in
  bench) packages+=(runc bubblewrap hyperfine umoci iperf3 passt slirp4netns) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v just >/dev/null 2>&1; then
  echo "setup: installing just (cargo install, once)"
  cargo install --locked --quiet just@1.59.0
fi

cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
bash tests/images/busybox-rootfs.sh "$cache/rootfs/busybox"
ln -sfn "$cache/rootfs/busybox" examples/rootfs
python3 tests/images/oci-images.py "$cache/rootfs/busybox" "$cache/oci-test"

case "$what" in
  demo)
    # The examples run an image from a local registry (loopback, plain HTTP, listed as insecure).
    bash tests/images/registry.sh start 127.0.0.1:5000 "$cache/registry"
    bash tests/images/registry.sh push "$cache/oci-test/layout:busybox" 127.0.0.1:5000/demo/busybox:1
    # Plugin toolchains and components for examples/plugins.yaml.
    bash tests/plugins/toolchains.sh
    bash plugins/build.sh target/plugins ;;
  bench|test)
    # Debian 12 + python3 (debootstrap, ~90 s once; cached).
    bash tests/images/debian-python.sh "$cache"
    # The MCP client the API tests drive our MCP server with (PyPI's `mcp`, pinned; cached).
    bash tests/mcp/venv.sh "$cache"
    # Schemathesis, which the API tests point at the committed OpenAPI document (pinned; cached).
    bash tests/api/schemathesis-venv.sh "$cache"
    # Plugin toolchains (C, Python, JavaScript; cached) and the plugin components.
    bash tests/plugins/toolchains.sh
    bash plugins/build.sh target/plugins
    # virtiofsd for volumes in microVMs (crates.io, pinned; cached).
    bash tests/vm/virtiofsd.sh "$cache" >/dev/null ;;
esac

if [ -n "$what" ]; then
  exec just "$what"
fi
