#!/usr/bin/env bash
# A local OCI registry (Debian's docker-registry) bound to loopback, started detached.
# Idempotent: nothing happens when something already answers at ADDR.
#   registry.sh start HOST:PORT STORAGE_DIR
#   registry.sh push LAYOUT_DIR:TAG HOST:PORT/REPO:TAG [--all]
set -euo pipefail
up() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
case "${1:-}" in
  start)
    addr=${2:?addr}; dir=${3:?storage dir}
    up "$addr" && exit 0
    mkdir -p "$dir"
    cat > "$dir/config.yml" <<YML
version: 0.1
log: { level: error }
storage:
  filesystem: { rootdirectory: $dir/data }
  delete: { enabled: true }
http: { addr: $addr }
YML
    setsid nohup docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 < /dev/null &
    for _ in $(seq 100); do up "$addr" && exit 0; sleep 0.1; done
    echo "registry.sh: the registry did not come up at $addr (see $dir/registry.log)" >&2
    exit 1 ;;
  push)
    src=${2:?layout:tag}; dest=${3:?host:port/repo:tag}
    skopeo copy --quiet --dest-tls-verify=false ${4:-} "oci:$src" "docker://$dest" ;;
  *) echo "usage: registry.sh start ADDR DIR | push LAYOUT:TAG DEST [--all]" >&2; exit 2 ;;
esac
