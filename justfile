# Every task a person runs. Run as root. `tests/setup.sh RECIPE` installs what is needed first.

set shell := ["bash", "-euo", "pipefail", "-c"]

cache := env_var_or_default("ORCHESTRATOR_CACHE", "/var/cache/orchestrator-dev")
bin := "target/release/orchestrator"

# List the recipes.
default:
    @just --list

# Install Debian packages, just and the example rootfs (idempotent).
setup:
    bash tests/setup.sh

# Build the busybox root filesystem the examples and tests use.
rootfs:
    bash tests/images/busybox-rootfs.sh {{cache}}/rootfs/busybox
    ln -sfn {{cache}}/rootfs/busybox examples/rootfs

# The release binaries, and the static guest agent microVM initramfs images carry.
build:
    cargo build --release
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p guest-agent --bin orchestrator-agent --target x86_64-unknown-linux-gnu

# The main job: apply examples/, show what runs, exec into it, reconcile a GitOps directory.
demo: rootfs build plugins
    bash examples/demo.sh {{bin}}

# The test suite (unit and integration; real namespaces, cgroups, shims and agents), then the
# microVM tests on a real KVM (in the nested-KVM harness where this host's KVM cannot boot one).
test: rootfs
    ORCHESTRATOR_TEST_KERNEL_DIR="$(bash tests/vm/kernels.sh {{cache}} | sed -n 's/^guest=//p')" cargo test --workspace --no-fail-fast
    bash tests/vm/run-tests.sh

# Regenerate docs/openapi.json from the API's routes and types (a unit test fails until it is).
openapi:
    UPDATE_OPENAPI=1 cargo test -q -p orchestrator --lib api::openapi

# Fuzz the parsers that read hostile input (tests/fuzz): one TARGET or all, SECONDS each.
fuzz target="all" seconds="60":
    bash tests/fuzz/run.sh {{target}} {{seconds}}

# Drop committed fuzz seeds that add no coverage (libFuzzer -merge), keeping their names.
fuzz-minimise target="all":
    bash tests/fuzz/run.sh minimise {{target}}

# Only command start: `--version` and `exec` (optionally against a BASELINE binary), and the
# library's exec round trip.
bench-commands *baseline: rootfs build
    bash tests/bench/commands.sh {{bin}} {{cache}}/rootfs/busybox {{baseline}}

# Only the HTTP API benchmark: ours (with and without a warm pool) vs OpenSandbox's server
# (optionally its source path; default ../shared/peers/opensandbox-process-level).
bench-api *src: rootfs build
    bash tests/bench/api.sh {{bin}} {{cache}}/rootfs/busybox {{src}}

# Only the network benchmark (ours vs pasta and slirp4netns; then a microVM vs a namespace
# sandbox, in the nested harness where needed).
bench-net: rootfs build plugins
    bash tests/bench/network.sh {{bin}} {{cache}}/rootfs/busybox target/plugins/egress-guard-c.wasm
    bash tests/vm/netbench.sh

# Only the /metrics scrape benchmark: 50 running sandboxes (aim: at most 50 ms)
bench-metrics: rootfs build
    bash tests/bench/metrics.sh {{bin}} {{cache}}/rootfs/busybox 50 100

# Only the volume benchmark: sequential write and read on a named volume vs the writable layer vs
# the host's disk, in a namespace sandbox
bench-volumes: rootfs build
    bash tests/bench/volumes.sh {{bin}} {{cache}}/rootfs/busybox 512 3

# Only the volume benchmark across isolation kinds: a microVM (virtio-fs, virtio-blk) beside a
# namespace sandbox, direct I/O, in the nested-KVM harness where the host cannot boot guests
bench-volumes-vm:
    bash tests/vm/volbench.sh 32 2

# Only the TLS interception benchmark: intercepted vs spliced HTTPS from a Debian sandbox
bench-tls:
    bash tests/images/debian-python.sh {{cache}} >/dev/null
    cargo bench -p orchestrator --bench tls -- 1000 100

# Only the microVM tests (the nested-KVM harness when needed; optional test-name filter).
test-vm *filter:
    bash tests/vm/run-tests.sh {{filter}}

# Where a microVM guest's boot time goes: initcall timings from its own log (`--qemu`: the peer's).
vm-initcalls *args:
    bash tests/vm/initcalls.sh {{args}}

# Build every plugin component (C, Python, JavaScript; Rust where wasm32-wasip2 exists) into target/plugins.
plugins:
    bash tests/plugins/toolchains.sh
    bash plugins/build.sh target/plugins

# Benchmarks: sandboxes vs runc and bubblewrap, command start and the library's exec, image pulls vs skopeo + umoci (hyperfine),
# plugin decisions in C, JS and Python vs native Rust, the network vs pasta and slirp4netns,
# microVM boot vs QEMU microvm.
bench: rootfs build plugins
    bash tests/bench/run.sh {{bin}} {{cache}}/rootfs/busybox
    bash tests/bench/commands.sh {{bin}} {{cache}}/rootfs/busybox
    bash tests/bench/network.sh {{bin}} {{cache}}/rootfs/busybox target/plugins/egress-guard-c.wasm
    bash tests/bench/images.sh {{bin}} {{cache}}
    bash tests/bench/api.sh {{bin}} {{cache}}/rootfs/busybox
    cargo bench -p orchestrator --bench plugins
    bash tests/images/debian-python.sh {{cache}} >/dev/null
    cargo bench -p orchestrator --bench tls -- 1000 100
    bash tests/bench/metrics.sh {{bin}} {{cache}}/rootfs/busybox 50 100
    bash tests/vm/bench.sh
    bash tests/vm/netbench.sh
