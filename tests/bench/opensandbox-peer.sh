#!/usr/bin/env bash
# Builds the OpenSandbox peer (its process-level Rust server, for side-by-side benchmarks only)
# from a source tree, once, into the cache, and prints the binary's path.
#   tests/bench/opensandbox-peer.sh SRC CACHE      -> CACHE/peers/opensandbox/isolate
# Needs protobuf-compiler (its build compiles a gRPC schema); installs it when missing.
set -euo pipefail
src=$(realpath "${1:?usage: opensandbox-peer.sh SRC CACHE}")
cache=${2:?usage: opensandbox-peer.sh SRC CACHE}
out=$cache/peers/opensandbox
bin=$out/isolate
stamp=$out/source.sha256
sum=$(cd "$src" && find . -type f \( -name '*.rs' -o -name 'Cargo.*' -o -name '*.proto' -o -name build.rs \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
  echo "$bin"
  exit 0
fi
if ! command -v protoc >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
fi
mkdir -p "$out"
rm -rf "$out/src"
cp -r "$src" "$out/src"
chmod -R u+w "$out/src"
echo "bench: building the OpenSandbox peer (once, about 4 min on 2 cores)" >&2
(cd "$out/src" && CARGO_TARGET_DIR=$out/target cargo build --release --quiet >&2)
cp "$out/target/release/isolate" "$bin"
echo "$sum" > "$stamp"
echo "$bin"
