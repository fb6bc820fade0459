#!/usr/bin/env bash
# The HTTP API against OpenSandbox's own server, side by side in one run on this machine, with
# one client (tests/bench/api_client.py): `/run` of /bin/true p50/p95, session exec p50, a
# 1 KiB file write and read p50, and correct answers/s with 8 concurrent clients.
#   tests/bench/api.sh ORCHESTRATOR ROOTFS [OPENSANDBOX_SRC]
# Ours: `serve --listen 127.0.0.1:PORT --insecure-no-auth` with the busybox rootfs as the
# default image, once with a warm pool (BENCH_POOL sandboxes, default 64: the timed burst of
# /run requests fits in it, as a pool sized for its traffic would hold it) and once without
# (BENCH_RUNS requests per row, default 50; BENCH_SECONDS of 8 clients, default 10). The peer
# runs as its README says it must be run here (../shared/peers/README.md): as root in a
# network and mount namespace of its own (created here, removed after), in a chroot whose /usr
# and /etc are read-only binds of the host's; the client reaches it inside that namespace.
# Without its source, the peer's rows are skipped and the script says so.
# The session rows (exec, file write, file read) take well under a millisecond of work each,
# and how fast this machine runs moves by half within seconds: after the one-pass rows,
# tests/bench/api_pairs.py times them again request by request in turn on the peer and the
# pooled server (BENCH_PAIRS pairs per row, default 200, in BENCH_PAIR_SETS sessions, default
# 3), and the second table gives each server's p50 and in how many pairs ours was faster.
set -euo pipefail
o=$(realpath "${1:?usage: api.sh ORCHESTRATOR ROOTFS [OPENSANDBOX_SRC]}")
rootfs=$(realpath "${2:?usage: api.sh ORCHESTRATOR ROOTFS [OPENSANDBOX_SRC]}")
src=${3:-$(dirname "$0")/../../../shared/peers/opensandbox-process-level}
cache=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}
client=$(realpath "$(dirname "$0")/api_client.py")
runs=${BENCH_RUNS:-50}
seconds=${BENCH_SECONDS:-10}
pool=${BENCH_POOL:-64}
pairs=${BENCH_PAIRS:-200}
pair_sets=${BENCH_PAIR_SETS:-3}
work=$(mktemp -d /tmp/orch-bench-api.XXXXXX)
netns=osb-bench-$$
serve_pid=
peer_up=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  ip netns pids "$netns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
  sleep 0.5
  local names
  names=$(ORCHESTRATOR_DATA_DIR=$work/data "$o" get -o json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(o["name"] for o in json.load(sys.stdin)))' 2>/dev/null || true)
  for n in $names; do
    ORCHESTRATOR_DATA_DIR=$work/data "$o" rm --force "$n" >/dev/null 2>&1 || true
  done
  umount -R "$work/peer-root" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ours() {  # LABEL [SERVE ARGS...]
  local label=$1
  shift
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ORCHESTRATOR_DATA_DIR=$work/data "$o" serve --listen "127.0.0.1:$port" --insecure-no-auth --default-image "dir:$rootfs" --allow-host-paths "$(dirname "$rootfs")" "$@" 2>"$work/serve.log" &
  serve_pid=$!
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
  pool_full() {
    [ "$#" -gt 0 ] || return 0
    for _ in $(seq 300); do
      [ "$(curl -s "http://127.0.0.1:$port/v1/pools" | python3 -c 'import json,sys; p=json.load(sys.stdin); print(all(x["ready"] == x["size"] for x in p))')" = True ] && break
      sleep 0.1
    done
  }
  pool_full "$@"
  if [ "$#" -gt 0 ] && [ -n "$peer_up" ]; then
    # The pairs first, while neither server has work left from earlier rows (the 8 clients'
    # used sandboxes take ours seconds to remove). A second between sets: the sessions they
    # removed (and the pool's refill) are done before the next.
    local r
    for r in $(seq "$pair_sets"); do
      python3 "$(dirname "$0")/api_pairs.py" ours "http://127.0.0.1:$port" - opensandbox http://127.0.0.1:8080 "/var/run/netns/$netns" --runs "$pairs" >> "$work/pairs.jsonl"
      sleep 1
    done
  fi
  if [ "$#" -gt 0 ]; then
    # The native routes on a sandbox of their own (ours only: the peer has none).
    python3 "$(dirname "$0")/api_native.py" "http://127.0.0.1:$port" "$runs" "dir:$rootfs" > "$work/$label.native.json"
    sleep 1
    pool_full "$@"
  fi
  python3 "$client" "http://127.0.0.1:$port" --runs "$runs" --seconds "$seconds" > "$work/$label.json"
  if [ "$#" -gt 0 ]; then
    curl -s "http://127.0.0.1:$port/v1/pools" > "$work/$label.pools.json"
    # POST /v1/sandboxes: the pool's spec (2 GiB) against another (a fresh sandbox each).
    for mem in 2Gi 1Gi; do
      python3 "$(dirname "$0")/api_create.py" "http://127.0.0.1:$port" 20 "$mem" "dir:$rootfs" >> "$work/$label.create.json"
    done
  fi
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=
}

peer() {
  local bin
  bin=$(bash "$(dirname "$0")/opensandbox-peer.sh" "$src" "$cache")
  ip netns add "$netns"
  ip netns exec "$netns" ip link set lo up
  local root=$work/peer-root
  mkdir -p "$root"/{usr,etc,tmp,proc,dev,peer}
  for l in bin lib lib64 sbin; do ln -s "usr/$l" "$root/$l"; done
  cp "$bin" "$root/peer/isolate"
  ip netns exec "$netns" unshare --mount --propagation private --fork -- bash -c "
    set -e
    for d in usr etc; do mount --bind /\$d $root/\$d; mount -o remount,bind,ro $root/\$d; done
    mount -t tmpfs tmpfs $root/tmp
    mount -t proc proc $root/proc
    mount --rbind /dev $root/dev
    exec chroot $root /peer/isolate serve --port 8080 --grpc-port 50051
  " >"$work/peer.log" 2>&1 &
  for _ in $(seq 100); do ip netns exec "$netns" curl -s http://127.0.0.1:8080/health >/dev/null 2>&1 && break; sleep 0.1; done
  peer_up=1
  # It keeps running (idle between its turns) for the pairs against the pooled server.
  peer_client --runs "$runs" --seconds "$seconds" > "$work/opensandbox.json"
}

peer_client() {  # CLIENT ARGS...: the client against the peer, inside its namespace
  ip netns exec "$netns" python3 "$client" http://127.0.0.1:8080 "$@"
}

if [ -d "$src" ]; then
  peer
else
  echo "bench: no OpenSandbox source at $src: its rows are skipped (give its path as the third argument)" >&2
fi
ours "orchestrator-pool" --warm-pool "dir:$rootfs=$pool"
ours "orchestrator"

python3 - "$work" "$pool" <<'PY'
import json, os, sys
work, pool = sys.argv[1], sys.argv[2]
rows = [("OpenSandbox (mount+pid namespaces, root, no cgroups)", "opensandbox"),
        (f"orchestrator, warm pool of {pool} (full isolation)", "orchestrator-pool"),
        ("orchestrator, no pool (full isolation)", "orchestrator")]
print("| server | /run true p50 ms | /run p95 ms | session exec p50 ms | file write 1 KiB p50 ms | file read p50 ms | 8 clients: answers/s | correct/s | wrong |")
print("|---|---|---|---|---|---|---|---|---|")
notes = []
for label, key in rows:
    p = os.path.join(work, key + ".json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    c = r["concurrent"]
    print(f"| {label} | {r['run_true']['p50']} | {r['run_true']['p95']} | {r['session_exec']['p50']} | {r['file_write_1k']['p50']} | {r['file_read_1k']['p50']} | {c['answers_per_s']} | {c['correct_per_s']} | {c['wrong']} |")
    if "pool_hits" in r["run_true"]:
        notes.append(f"{label}: the timed /run true requests took {r['run_true']['pool_hits']} sandboxes from the pool and made {r['run_true']['pool_misses']}")
for n in notes:
    print(f"\n{n}")
creates = os.path.join(work, "orchestrator-pool.create.json")
if os.path.exists(creates):
    print("\n| POST /v1/sandboxes | p50 ms | p95 ms |\n|---|---|---|")
    for line in open(creates):
        c = json.loads(line)
        what = "the pool's spec (from the pool)" if c["memory"] == "2Gi" else f"memory {c['memory']} (a fresh sandbox)"
        print(f"| {what} | {c['p50']} | {c['p95']} |")
pairs = os.path.join(work, "pairs.jsonl")
if os.path.exists(pairs):
    sets = [json.loads(l) for l in open(pairs)]
    print(f"\n| session rows, request by request in turn ({len(sets)} sessions each) | OpenSandbox p50 ms | orchestrator, pool of {pool} p50 ms | pairs ours faster |")
    print("|---|---|---|---|")
    for key, what in (("session_exec", "session exec"), ("file_write_1k", "file write 1 KiB"), ("file_read_1k", "file read 1 KiB")):
        theirs = " / ".join(str(s[key]["opensandbox"]["p50"]) for s in sets)
        ours = " / ".join(str(s[key]["ours"]["p50"]) for s in sets)
        faster, total = sum(s[key]["ours_faster"] for s in sets), sum(s[key]["pairs"] for s in sets)
        print(f"| {what} | {theirs} | {ours} | {faster} of {total} ({round(100 * faster / total)}%) |")
native = os.path.join(work, "orchestrator-pool.native.json")
if os.path.exists(native):
    n = json.load(open(native))
    print("\n| native API, one sandbox (POST /v1/sandboxes) | p50 ms | p95 ms |\n|---|---|---|")
    for key, what in (("file_write_1k", "PUT .../files 1 KiB"), ("file_read_1k", "GET .../files 1 KiB"), ("exec_true", "POST .../exec /bin/true")):
        print(f"| {what} | {n[key]['p50']} | {n[key]['p95']} |")
pools = os.path.join(work, "orchestrator-pool.pools.json")
if os.path.exists(pools):
    for p in json.load(open(pools)):
        print(f"\npool {p['image']}: {p['hits']} hits, {p['misses']} misses")
PY
