#!/usr/bin/env bash
# The main job on examples/: apply two sandboxes, show them, exec into them, apply again
# (nothing restarts), ask a network policy written in C and in Python (Wasm plugins), patch a
# sandbox's root filesystem, then let `serve` reconcile the GitOps directory through a change
# and answer its HTTP API.
# Leaves nothing running. Usage: examples/demo.sh PATH/TO/orchestrator
set -euo pipefail
o=$(realpath "${1:?usage: demo.sh ORCHESTRATOR_BINARY}")
cd "$(dirname "$0")"
export ORCHESTRATOR_INSECURE_REGISTRIES=${ORCHESTRATOR_INSECURE_REGISTRIES:-127.0.0.1:5000}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  rm -f gitops/jobs/extra.yaml
  "$o" delete -f sandboxes.yaml >/dev/null 2>&1 || true
  "$o" delete -f plugins.yaml >/dev/null 2>&1 || true
  "$o" delete -f gitops >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

step "orchestrator apply -f sandboxes.yaml"
"$o" apply -f sandboxes.yaml
"$o" get all

step "exec: inside the sandbox"
"$o" exec web -- sh -c 'echo "hostname: $(hostname)"; echo "pid 1: $(cat /proc/1/comm)"; echo "network: $(ls /sys/class/net)"; echo "user: $(id -un), cwd: $(pwd), GREETING: $GREETING"; wget -qO- http://127.0.0.1:8080/hello.txt'
"$o" image ls
"$o" exec agent -- sh -c 'echo "user namespace map: $(cat /proc/self/uid_map)"'
set +e; "$o" exec web -- sh -c 'exit 7'; echo "exit code: $?"; set -e

step "what untrusted code inside cannot do (docs/security.md)"
"$o" exec agent -- sh -c '
  mknod /tmp/sda b 8 0 2>&1 | sed "s/^/host disk node: /"
  unshare -U true 2>&1 | sed "s/^/new namespace: /"
  (echo h > /proc/sysrq-trigger) 2>&1 | sed "s/^/sysrq: /"
  dd if=/dev/zero of=/fill bs=1M count=300 2>&1 | grep -i "no space" | sed "s/^/300 MiB into a 128Mi disk: /"
  rm -f /fill; df -m / | sed -n "2s/^[^ ]* *\([0-9]*\).*/writable layer: \1 MiB/p"'

step "volumes: a named one outlives the sandbox that wrote it (docs/volumes.md)"
"$o" exec agent -- sh -c 'echo "written by agent" > /scratch/note; df -h /scratch | sed -n "2s/^[^ ]* *\([^ ]*\).*/scratch volume: \1/p"'
"$o" run --rm --isolation namespace -v scratch:/data:ro dir:./rootfs -- sh -c 'cat /data/note; touch /data/x 2>&1 | sed "s/^/another sandbox, read-only: /"'
"$o" volume ls

step "the network: public-only by default, decided per flow (docs/networking.md)"
"$o" exec agent -- sh -c '
  ip -o -4 addr show eth0 | awk "{print \"eth0: \" \$4}"
  wget -qO- http://10.0.2.2:18080/hello.txt 2>&1 | sed "s/^/the host through the gateway: /"
  nslookup ads.tracking.example 2>&1 | grep -i -m1 nxdomain | sed "s/^/a blocked name: /"'
("$o" events agent | grep -E "NetworkDenied|DnsRefused" | tail -n 3) || true
python3 -c 'import urllib.request; print("published port 127.0.0.1:18080 ->", urllib.request.urlopen("http://127.0.0.1:18080/hello.txt", timeout=5).read().decode().strip())'

step "apply again: nothing restarts"
"$o" apply -f sandboxes.yaml
"$o" diff -f sandboxes.yaml && echo "diff: no changes"

step "plugins: the same policy in C and Python, rootfs patches"
"$o" plugin check ../target/plugins/egress-guard-c.wasm
"$o" apply -f plugins.yaml
for p in egress-guard egress-guard-py; do
  "$o" plugin eval "$p" --connect 169.254.169.254:80 || true
  "$o" plugin eval "$p" --connect 93.184.216.34:443 --domain www.example.com
  "$o" plugin eval "$p" --dns tracker.test --sandbox patched || true
done
"$o" plugin eval egress-guard --connect 93.184.216.34:443 --domain example.com --repeat 10000
"$o" exec patched -- sh -c 'cat /etc/motd; tail -n1 /etc/hosts; ls -ld /srv/data'

step "serve --config gitops (GitOps): add a file and watch it reconcile"
"$o" serve --config gitops --resync 2 &
serve_pid=$!
sleep 1
cat > gitops/jobs/extra.yaml <<'YAML'
apiVersion: orchestrator/v1
kind: Sandbox
metadata: { name: gitops-extra }
spec: { image: "dir:../../rootfs", command: [sleep, "3600"] }
YAML
# grep without -q and sed instead of head: both read all their input, so under pipefail the
# writer never dies of SIGPIPE (exit 141) when the reader has seen enough.
for _ in $(seq 50); do "$o" get gitops-extra 2>/dev/null | grep Running >/dev/null && break; sleep 0.1; done
"$o" get
rm gitops/jobs/extra.yaml
sleep 1
"$o" describe gitops-ticker | sed -n '1,12p'
"$o" logs gitops-ticker --tail 1

step "the HTTP API of the same serve: its Unix socket, its token (docs/api.md)"
data=${ORCHESTRATOR_DATA_DIR:-/var/lib/orchestrator}
api() { curl -s --unix-socket "$data/api.sock" -H "Authorization: Bearer $(cat "$data/api.token")" "$@"; }
api http://orchestrator/v1/sandboxes | python3 -c 'import json, sys; print("sandboxes:", ", ".join(s["name"] + " (" + s["status"] + ")" for s in json.load(sys.stdin)))'
api -X POST http://orchestrator/v1/sandboxes/web/exec -d '{"command": ["sh", "-c", "echo hello over the API from $(hostname)"]}'
echo
printf 'without the token: HTTP '; curl -s -o /dev/null -w '%{http_code}\n' --unix-socket "$data/api.sock" http://orchestrator/v1/sandboxes

step "done: cleaning up"
