#!/usr/bin/env bash
# Builds the example plugins (plugins/: C, Python, JavaScript, and Rust where the wasm32-wasip2
# target is installed) and the test plugins (tests/plugins/) into WebAssembly components:
#
#   plugins/build.sh [OUT_DIR]        (default: target/plugins in the repository)
#
# OUT_DIR/<name>.wasm for every plugin below whose toolchain is installed
# (tests/plugins/toolchains.sh installs them all); a plugin whose toolchain is missing is skipped
# with a message saying why. Exits 1 when a build that has its toolchain fails.
# Generated bindings and intermediate files go to OUT_DIR/.build/<name>/, never into the sources.
# A plugin is rebuilt only when its sources, its WIT, this script or the toolchains changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/plugins}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=$out/.build
mkdir -p "$build"

tools_dir=${WASM_TOOLS_DIR:-/var/cache/orchestrator-dev/wasm}
env_file=$tools_dir/env.sh
if [ -f "$env_file" ]; then
  # shellcheck source=/dev/null
  source "$env_file"
fi
no_env="no toolchains ($env_file is missing: run tests/plugins/toolchains.sh as root)"

#         name             language  world                   WIT                               source
plugins=(
  "egress-guard-c          c         network-policy-plugin   wit                               plugins/c/egress-guard/egress_guard.c"
  "egress-guard-py         python    network-policy-plugin   wit                               plugins/python/egress-guard"
  "egress-guard-js         js        network-policy-plugin   wit                               plugins/js/egress-guard/egress-guard.js"
  "test-patch-js           js        rootfs-patch-plugin     wit                               tests/plugins/js/patcher.js"
  "test-secrets-py         python    secret-provider-plugin  wit                               tests/plugins/python/secrets"
  # Built against the WIT as released at 0.1.0: today's host must still load it.
  "test-metrics-py         python    metrics-sink-plugin     tests/plugins/wit-0.1.0           tests/plugins/python/metrics"
  "test-metrics-v2-py      python    metrics-sink-v2-plugin  wit                               tests/plugins/python/metrics-v2"
  # Its WIT directory's deps/ links to tests/plugins/wit-deps (vendored WASI 0.2.12 and wit/plugin.wit).
  "test-http-secrets-py    python    http-secret-provider    tests/plugins/python/http-secrets/wit  tests/plugins/python/http-secrets"
  "log-decisions-js        js        network-policy-plugin   wit                               policies/log-decisions/log-decisions.js"
  "hostile-c               c         all-kinds               wit                               tests/plugins/c/hostile.c"
  "wrong-world-c           c         greeter                 tests/plugins/c/wrong-world.wit   tests/plugins/c/wrong-world.c"
  # Rust: the crate's directory; cargo (workspace target dir) knows the world from the SDK.
  "egress-guard-rs         rust      network-policy-plugin   wit                               plugins/rust/egress-guard"
  "add-ca-rs               rust      rootfs-patch-plugin     wit                               plugins/rust/add-ca"
  "env-secrets-rs          rust      secret-provider-plugin  wit                               plugins/rust/env-secrets"
  "log-sink-rs             rust      metrics-sink-plugin     wit                               plugins/rust/log-sink"
)

# Why a language's toolchain is unusable (empty: usable).
missing_toolchain() {
  local lang=$1
  [ -f "$env_file" ] || { echo "$no_env"; return; }
  [ -x "${WASM_TOOLS:-}" ] || { echo "wasm-tools not found (WASM_TOOLS=${WASM_TOOLS:-}); run tests/plugins/toolchains.sh"; return; }
  case $lang in
    c)
      command -v clang >/dev/null || { echo "clang not installed (Debian: clang lld)"; return; }
      command -v wasm-ld >/dev/null || command -v wasm-ld-14 >/dev/null || { echo "wasm-ld not installed (Debian: lld)"; return; }
      [ -f /usr/lib/wasm32-wasi/libc.a ] || { echo "wasi-libc not installed (Debian: wasi-libc)"; return; }
      compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null ||
        { echo "wasm32 compiler-rt not installed (Debian: libclang-rt-14-dev-wasm32)"; return; }
      [ -x "${WIT_BINDGEN:-}" ] || { echo "wit-bindgen not found (WIT_BINDGEN=${WIT_BINDGEN:-})"; return; }
      [ -f "${WASI_ADAPTER_REACTOR:-}" ] || { echo "WASI reactor adapter not found (WASI_ADAPTER_REACTOR=${WASI_ADAPTER_REACTOR:-})"; return; }
      ;;
    python)
      [ -x "${COMPONENTIZE_PY:-}" ] || { echo "componentize-py not found (COMPONENTIZE_PY=${COMPONENTIZE_PY:-})"; return; } ;;
    rust)
      command -v cargo >/dev/null || { echo "cargo not installed"; return; }
      [ -d "$(rustc --print target-libdir --target wasm32-wasip2 2>/dev/null)" ] ||
        { echo "Rust target wasm32-wasip2 not installed (rustup target add wasm32-wasip2)"; return; } ;;
    js)
      command -v node >/dev/null || { echo "node not installed"; return; }
      [ -x "${COMPONENTIZE_JS:-}" ] || { echo "componentize-js not found (COMPONENTIZE_JS=${COMPONENTIZE_JS:-})"; return; }
      [ -f "${WASI_ADAPTER_REACTOR:-}" ] || { echo "WASI reactor adapter not found (WASI_ADAPTER_REACTOR=${WASI_ADAPTER_REACTOR:-})"; return; } ;;
  esac
}

# A hash of everything a build depends on: sources, WIT, this script, the toolchains' env file.
fingerprint() {
  local wit=$1 src=$2
  shift 2
  {
    # -L: WIT directories may link their deps (tests/plugins/python/http-secrets/wit/deps).
    find -L "$src" "$wit" "$0" "$env_file" "$@" -type f \( -name '*.c' -o -name '*.h' -o -name '*.py' \
      -o -name '*.js' -o -name '*.wit' -o -name '*.sh' -o -name '*.rs' -o -name Cargo.toml \) \
      -not -path '*/__pycache__/*' -print0 |
      sort -z | xargs -0 sha256sum
    "$WASM_TOOLS" --version
  } | sha256sum | cut -d' ' -f1
}

build_c() {  # world wit source work tmp_out
  local world=$1 wit=$2 src=$3 work=$4 tmp=$5
  rm -rf "$work/gen" && mkdir -p "$work/gen"
  "$WIT_BINDGEN" c "$wit" --world "$world" --no-object-file --out-dir "$work/gen"
  # The component type is embedded below by `wasm-tools component embed`, so wit-bindgen's type
  # object is not generated; its bindings still reference a symbol of that object.
  printf 'void __component_type_object_force_link_%s(void) {}\n' "${world//-/_}" >"$work/gen/force_link.c"
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -I "$work/gen" \
    -o "$work/core.wasm" "$src" "$work/gen"/*.c
  "$WASM_TOOLS" component embed "$wit" --world "$world" "$work/core.wasm" -o "$work/embedded.wasm"
  "$WASM_TOOLS" component new "$work/embedded.wasm" \
    --adapt "wasi_snapshot_preview1=$WASI_ADAPTER_REACTOR" -o "$tmp"
}

build_python() {  # world wit source-dir work tmp_out
  local world=$1 wit=$2 src=$3 work=$4 tmp=$5
  # Build from a copy: pre-initialisation runs the app, whose imports write __pycache__ beside
  # the sources. -p names the only directory searched for the app (module `app`); run from the
  # work directory so that nothing else is picked up. Bindings (`wit_world`) are generated inside.
  rm -rf "$work/src" && mkdir -p "$work/src"
  (cd "$src" && find . -name '*.py' -not -path '*/__pycache__/*' -exec cp --parents {} "$work/src/" \;)
  (cd "$work" && "$COMPONENTIZE_PY" -q -d "$wit" -w "$world" componentize app -p "$work/src" -o "$tmp")
}

build_js() {  # world wit source work tmp_out
  local world=$1 wit=$2 src=$3 work=$4 tmp=$5
  # No wasi:http (fetch) and no incoming-handler: the plugin host provides only wasmtime-wasi.
  (cd "$work" && "$COMPONENTIZE_JS" "$src" --wit "$wit" --world-name "$world" \
    --disable http fetch-event --preview2-adapter "$WASI_ADAPTER_REACTOR" -o "$tmp")
}

build_rust() {  # world wit crate-dir work tmp_out
  local world=$1 wit=$2 src=$3 work=$4 tmp=$5 crate
  crate=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$src/Cargo.toml" | sed -n 1p)
  # wasm32-wasip2 links a component directly (wasm-component-ld); the world is the SDK's.
  cargo rustc --quiet --release --target wasm32-wasip2 --manifest-path "$root/Cargo.toml" -p "$crate" --crate-type cdylib
  cp "${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/release/${crate//-/_}.wasm" "$tmp"
}

now() { date +%s%N; }
built=() skipped=() failed=() fresh=()
for line in "${plugins[@]}"; do
  read -r name lang world wit src <<<"$line"
  wit=$root/$wit src=$root/$src
  why=$(missing_toolchain "$lang")
  if [ -n "$why" ]; then
    echo "skipping $name: $why"
    skipped+=("$name")
    continue
  fi
  work=$build/$name
  mkdir -p "$work"
  dest=$out/$name.wasm
  extra=()
  [ "$lang" != rust ] || extra=("$root/plugins/sdk" "$root/Cargo.lock")
  stamp=$(fingerprint "$wit" "$src" "${extra[@]}")
  if [ -f "$dest" ] && [ "$(cat "$work/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "up to date $name ($(stat -c %s "$dest") bytes)"
    fresh+=("$name")
    continue
  fi
  echo "building $name ($lang, world $world)"
  rm -f "$work/stamp"
  start=$(now)
  # A subshell with errexit of its own (not in a condition, where bash would ignore set -e).
  set +e
  (
    set -euo pipefail
    "build_$lang" "$world" "$wit" "$src" "$work" "$work/out.wasm"
    "$WASM_TOOLS" validate "$work/out.wasm"
  ) >"$work/build.log" 2>&1
  rc=$?
  set -e
  if [ $rc != 0 ]; then
    echo "FAILED $name (exit $rc); log: $work/build.log" >&2
    tail -n 30 "$work/build.log" | sed 's/^/    /' >&2
    failed+=("$name")
    continue
  fi
  mv "$work/out.wasm" "$dest"
  echo "$stamp" >"$work/stamp"
  ms=$((($(now) - start) / 1000000))
  printf 'built %s: %s (%s bytes, %d.%01d s)\n' "$name" "$dest" "$(stat -c %s "$dest")" $((ms / 1000)) $((ms % 1000 / 100))
  built+=("$name")
done

echo "plugins: ${#built[@]} built, ${#fresh[@]} up to date, ${#skipped[@]} skipped, ${#failed[@]} failed (in $out)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "plugins: failed: ${failed[*]}" >&2
  exit 1
fi
