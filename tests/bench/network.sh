#!/usr/bin/env bash
# Network benchmarks, side by side in one run on this machine:
#   1. iperf3 TCP throughput from a namespace sandbox to a test internet, at MTU 1500 and
#      65520: ours vs pasta (Debian passt) vs slirp4netns, each from a network namespace;
#   2. TCP connect + first byte, p50 / p99 over N connections, the same three;
#   3. our per-flow policy cost: the same latency with a policy plugin asked for every flow
#      (its cache off) and with its answers cached.
# Every packet stays on this machine: the script creates the namespaces it measures in (an
# "orchestrator" namespace whose only link leads to an "internet" namespace holding the servers
# at documentation addresses) and removes them at the end.
# Usage: tests/bench/network.sh ORCHESTRATOR ROOTFS [POLICY_PLUGIN.wasm]
#   BENCH_NET_ISOLATION (namespace, or microvm: ours as a microVM), BENCH_NET_PEERS (0: ours
#   only, as tests/vm/netbench.sh runs it in the nested harness), BENCH_NET_MTUS ("1500 65520"),
#   BENCH_NET_SECONDS (iperf3 duration, default 5), BENCH_NET_ROUNDS (iperf3 runs, the median
#   is reported; default 3), BENCH_NET_CONNECTS (default 1000)
set -euo pipefail
o=$(realpath "${1:?usage: network.sh ORCHESTRATOR ROOTFS [PLUGIN]}")
rootfs=$(realpath "${2:?usage: network.sh ORCHESTRATOR ROOTFS [PLUGIN]}")
here=$(cd "$(dirname "$0")/../.." && pwd)
guard=$(realpath "${3:-$here/target/plugins/egress-guard-c.wasm}")
secs=${BENCH_NET_SECONDS:-5}
connects=${BENCH_NET_CONNECTS:-1000}
isolation=${BENCH_NET_ISOLATION:-namespace}
peers=${BENCH_NET_PEERS:-1}
mtus=${BENCH_NET_MTUS:-1500 65520}
for tool in iperf3 cc python3 $( [ "$peers" = 1 ] && echo pasta slirp4netns ); do
  command -v "$tool" >/dev/null || { echo "network bench: $tool missing (tests/setup.sh bench installs it)" >&2; exit 1; }
done

tag=nb$$
orch=orch-$tag
inet=inet-$tag
web=203.0.113.10
work=$(mktemp -d /tmp/orch-netbench.XXXXXX)
export ORCHESTRATOR_DATA_DIR=$work/data
in_orch() { nsenter --net=/run/netns/$orch -- "$@"; }
in_inet() { nsenter --net=/run/netns/$inet -- "$@"; }
pids=()
cleanup() {
  in_orch "$o" delete bench-1500 bench-65520 bench-plugin bench-plugin-cached >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null || true
  # Whatever a namespace tool forked on its own (pasta daemonises, nsenter forks).
  pkill -f "$work/netprobe" 2>/dev/null || true
  pkill -f "px-$tag" 2>/dev/null || true
  pkill -f "sx-$tag" 2>/dev/null || true
  ip netns del "px-$tag" 2>/dev/null || true
  ip netns del "sx-$tag" 2>/dev/null || true
  ip netns del "$orch" 2>/dev/null || true
  ip netns del "$inet" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$orch"
ip netns add "$inet"
ip link add "vo-$tag" netns "$orch" type veth peer name "vi-$tag" netns "$inet"
ip -n "$orch" link set lo up
ip -n "$orch" addr add 198.51.100.1/24 dev "vo-$tag"
ip -n "$orch" link set "vo-$tag" up
ip -n "$orch" route add default via 198.51.100.2
ip -n "$inet" link set lo up
ip -n "$inet" addr add 198.51.100.2/24 dev "vi-$tag"
ip -n "$inet" link set "vi-$tag" up
ip -n "$inet" addr add "$web/32" dev lo

# The probe (connect latency client and server), static.
cc -static -O2 -o "$work/netprobe" "$here/tests/network/netprobe.c"
in_inet iperf3 -s -B "$web" -D --pidfile "$work/iperf.pid"
in_inet "$work/netprobe" serve "$web" 7000 &
pids+=($!)
sleep 0.5

# The sandbox image: the busybox rootfs with iperf3 (and its libraries) and the probe.
img=$work/rootfs
cp -a "$rootfs" "$img"
mkdir -p "$img/usr/local/bin"
cp "$work/netprobe" "$img/usr/local/bin/netprobe"
cp "$(command -v iperf3)" "$img/usr/local/bin/iperf3"
for lib in $(ldd "$(command -v iperf3)" | grep -o '/[^ ]*'); do
  mkdir -p "$img$(dirname "$lib")"
  cp -L "$lib" "$img$lib"
done

# Gbit/s received from iperf3's JSON; a failed run (pasta drops one now and then) counts as 0.
gbps() { python3 -c '
import json, sys
try:
    print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception as e:
    print("network bench: an iperf3 run failed (%s); counted as 0" % e, file=sys.stderr)
    print("0.00")'; }
# The median of `rounds` iperf3 runs of the command given (pasta in particular varies run to run).
rounds=${BENCH_NET_ROUNDS:-3}
median_gbps() {
  local all=()
  for _ in $(seq "$rounds"); do all+=("$("$@" timeout $((secs + 30)) iperf3 -c "$web" -t "$secs" -J | gbps)"); done
  printf '%s\n' "${all[@]}" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p"
}
results=$work/results
: > "$results"
row() { echo "$1|$2|$3|$4|$5" >> "$results"; }

sandbox_yaml() { # NAME MTU EXTRA
  cat <<YAML
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: $1 }
spec:
  image: "dir:$img"
  isolation: $isolation
  command: [sleep, "100000"]
  network: { mtu: $2 $3 }
YAML
}

for mtu in $mtus; do
  echo "== MTU $mtu"
  # Ours: a namespace sandbox, its TUN link into the shim's stack.
  sandbox_yaml "bench-$mtu" "$mtu" "" > "$work/s.yaml"
  in_orch "$o" apply -f "$work/s.yaml" >/dev/null
  ours=$(median_gbps in_orch "$o" exec "bench-$mtu" --)
  ours_lat=$(in_orch "$o" exec "bench-$mtu" -- netprobe latency "$web" 7000 "$connects")
  echo "orchestrator ($isolation): $ours Gbit/s; $ours_lat us"
  row "orchestrator ($isolation)" "$mtu" "$ours" "$(echo "$ours_lat" | awk '{print $2}')" "$(echo "$ours_lat" | awk '{print $4}')"

  if [ "$peers" != 1 ]; then
    in_orch "$o" delete "bench-$mtu" >/dev/null
    continue
  fi
  # pasta: a namespace of its own (root: pasta is told to stay root rather than build a user
  # namespace), its tap forwarded through the orchestrator namespace's sockets.
  ip netns add "px-$tag"
  in_orch pasta --config-net -q -m "$mtu" --runas 0 -P "$work/pasta.pid" --netns "/run/netns/px-$tag" >/dev/null 2>&1
  sleep 0.5
  pasta=$(median_gbps nsenter --net=/run/netns/px-$tag)
  pasta_lat=$(nsenter --net=/run/netns/px-$tag "$work/netprobe" latency "$web" 7000 "$connects")
  echo "pasta: $pasta Gbit/s; $pasta_lat us"
  row "pasta" "$mtu" "$pasta" "$(echo "$pasta_lat" | awk '{print $2}')" "$(echo "$pasta_lat" | awk '{print $4}')"
  kill "$(cat "$work/pasta.pid")" 2>/dev/null || true
  ip netns del "px-$tag"

  # slirp4netns: a namespace with a tap device, slirp in the orchestrator namespace.
  ip netns add "sx-$tag"
  in_orch slirp4netns --configure --mtu="$mtu" --disable-host-loopback --netns-type=path "/run/netns/sx-$tag" tap0 > "$work/slirp.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do ip -n "sx-$tag" link show tap0 2>/dev/null | grep -q UP && break; sleep 0.1; done
  slirp=$(median_gbps nsenter --net=/run/netns/sx-$tag)
  slirp_lat=$(nsenter --net=/run/netns/sx-$tag "$work/netprobe" latency "$web" 7000 "$connects")
  echo "slirp4netns: $slirp Gbit/s; $slirp_lat us"
  row "slirp4netns" "$mtu" "$slirp" "$(echo "$slirp_lat" | awk '{print $2}')" "$(echo "$slirp_lat" | awk '{print $4}')"
  pkill -f "sx-$tag" 2>/dev/null || true
  ip netns del "sx-$tag"
  in_orch "$o" delete "bench-$mtu" >/dev/null
done

[ "$peers" = 1 ] && echo "== per-flow policy cost (MTU 65520, $connects connections each)"
for cache in $( [ "$peers" = 1 ] && echo 0 60 ); do
  name=bench-plugin
  [ "$cache" = 0 ] || name=bench-plugin-cached
  {
    cat <<YAML
apiVersion: orchestrator/v1
kind: Plugin
metadata: { name: guard-$cache }
spec:
  component: $guard
  config: { ports: "7000,5201", cache-seconds: "$cache" }
---
YAML
    sandbox_yaml "$name" 65520 ", plugins: [ guard-$cache ]"
  } > "$work/p.yaml"
  in_orch "$o" apply -f "$work/p.yaml" >/dev/null
  lat=$(in_orch "$o" exec "$name" -- netprobe latency "$web" 7000 "$connects")
  label="orchestrator + plugin (cache off)"
  [ "$cache" = 0 ] || label="orchestrator + plugin (cached)"
  echo "$label: $lat us"
  row "$label" 65520 "-" "$(echo "$lat" | awk '{print $2}')" "$(echo "$lat" | awk '{print $4}')"
  in_orch "$o" delete "$name" >/dev/null
done

echo
echo "| network | MTU | iperf3 TCP Gbit/s | connect+first byte p50 us | p99 us |"
echo "|---|---|---|---|---|"
while IFS='|' read -r who mtu g p50 p99; do
  echo "| $who | $mtu | $g | $p50 | $p99 |"
done < "$results"
