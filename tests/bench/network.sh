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
#   BENCH_NET_SECONDS (iperf3 duration, default 5), BENCH_NET_CONNECTS (default 1000)
set -euo pipefail
o=$(realpath "${1:?usage: network.sh ORCHESTRATOR ROOTFS [PLUGIN]}")
rootfs=$(realpath "${2:?usage: network.sh ORCHESTRATOR ROOTFS [PLUGIN]}")
here=$(cd "$(dirname "$0")/../.." && pwd)
guard=$(realpath "${3:-$here/target/plugins/egress-guard-c.wasm}")
secs=${BENCH_NET_SECONDS:-5}
connects=${BENCH_NET_CONNECTS:-1000}
for tool in iperf3 pasta slirp4netns cc python3; do
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

gbps() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))'; }
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
  isolation: namespace
  command: [sleep, "100000"]
  network: { mtu: $2 $3 }
YAML
}

for mtu in 1500 65520; do
  echo "== MTU $mtu"
  # Ours: a namespace sandbox, its TUN link into the shim's stack.
  sandbox_yaml "bench-$mtu" "$mtu" "" > "$work/s.yaml"
  in_orch "$o" apply -f "$work/s.yaml" >/dev/null
  ours=$(in_orch "$o" exec "bench-$mtu" -- iperf3 -c "$web" -t "$secs" -J | gbps)
  ours_lat=$(in_orch "$o" exec "bench-$mtu" -- netprobe latency "$web" 7000 "$connects")
  echo "orchestrator: $ours Gbit/s; $ours_lat us"
  row "orchestrator" "$mtu" "$ours" "$(echo "$ours_lat" | awk '{print $2}')" "$(echo "$ours_lat" | awk '{print $4}')"

  # pasta: its own namespace for the command, forwarding through the orchestrator namespace.
  pasta_out=$(in_orch pasta --config-net -m "$mtu" -- sh -c "iperf3 -c $web -t $secs -J > $work/pasta.json; $work/netprobe latency $web 7000 $connects")
  pasta=$(gbps < "$work/pasta.json")
  echo "pasta: $pasta Gbit/s; $pasta_out us"
  row "pasta" "$mtu" "$pasta" "$(echo "$pasta_out" | awk '{print $2}')" "$(echo "$pasta_out" | awk '{print $4}')"

  # slirp4netns: a namespace with a tap device, slirp in the orchestrator namespace.
  in_orch unshare --net --fork sleep 100000 &
  holder=$!
  pids+=($holder)
  sleep 0.3
  target=$(pgrep -P "$holder" sleep || echo "$holder")
  in_orch slirp4netns --configure --mtu="$mtu" --disable-host-loopback "$target" tap0 > "$work/slirp.log" 2>&1 &
  pids+=($!)
  sleep 1
  slirp=$(nsenter -t "$target" -n iperf3 -c "$web" -t "$secs" -J | gbps)
  slirp_lat=$(nsenter -t "$target" -n "$work/netprobe" latency "$web" 7000 "$connects")
  echo "slirp4netns: $slirp Gbit/s; $slirp_lat us"
  row "slirp4netns" "$mtu" "$slirp" "$(echo "$slirp_lat" | awk '{print $2}')" "$(echo "$slirp_lat" | awk '{print $4}')"
  kill "$holder" 2>/dev/null || true
  in_orch "$o" delete "bench-$mtu" >/dev/null
done

echo "== per-flow policy cost (MTU 65520, $connects connections each)"
for cache in 0 60; do
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
