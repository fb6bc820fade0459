#!/usr/bin/env bash
# Image pull, side by side in one run, same image (Debian 12 + python3, debootstrap) from the same
# local registry: `orchestrator image pull` into a fresh data dir vs `skopeo copy` to an OCI layout
# followed by `umoci unpack` into a fresh bundle (hyperfine; every run starts empty).
# Then: a second pull and a sandbox start from the store (no download, no unpack).
# Usage: tests/bench/images.sh ORCHESTRATOR CACHE_DIR   (BENCH_IMAGE_RUNS to tune)
set -euo pipefail
o=$(realpath "${1:?usage: images.sh ORCHESTRATOR CACHE}")
cache=${2:?usage: images.sh ORCHESTRATOR CACHE}
runs=${BENCH_IMAGE_RUNS:-5}
here=$(dirname "$0")
work=$(mktemp -d /tmp/orch-image-bench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
trap 'pkill -f "docker-registry serve $work/registry/config.yml" || true; rm -rf "$work"' EXIT
bash "$here/../images/registry.sh" start "$addr" "$work/registry"
bash "$here/../images/registry.sh" push "$cache/oci-debian-python/layout:python" "$addr/bench/python:1"
image=$addr/bench/python:1
export ORCHESTRATOR_INSECURE_REGISTRIES=$addr
size=$(du -sh "$cache/rootfs/debian-python" | cut -f1)
echo "== pull of $image (Debian 12 + python3, $size unpacked), $runs runs each"
hyperfine --runs "$runs" --warmup 1 --export-json "$work/pull.json" \
  --prepare "rm -rf $work/d" -n "orchestrator image pull" "ORCHESTRATOR_DATA_DIR=$work/d $o image pull -q $image" \
  --prepare "rm -rf $work/l $work/b" -n "skopeo copy + umoci unpack" \
  "skopeo copy --quiet --src-tls-verify=false docker://$image oci:$work/l:py && umoci unpack --image $work/l:py $work/b >/dev/null"

export ORCHESTRATOR_DATA_DIR=$work/d
"$o" image pull -q "$image"
echo "== from the store: a second pull (manifest check only) and a sandbox start"
hyperfine --runs 10 --export-json "$work/again.json" -n "second image pull" "$o image pull -q $image" \
  -n "run --rm (image in store) python3 -c pass" "$o run --rm $image -- python3 -c pass"

python3 - "$work/pull.json" "$work/again.json" <<'PY'
import json, sys
rows = {}
print("\n| command | mean s | min s | max s |")
print("|---|---|---|---|")
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        rows[r["command"]] = r["mean"]
        print(f"| `{r['command']}` | {r['mean']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")
ours, peer = rows["orchestrator image pull"], rows["skopeo copy + umoci unpack"]
print(f"\norchestrator image pull vs skopeo copy + umoci unpack: {ours:.2f} s vs {peer:.2f} s (ratio {ours/peer:.2f})")
PY
