#!/usr/bin/env bash
# The nested-KVM test harness (see ENVIRONMENT.md, "The nested-KVM test harness").
#
# The machines here only have a PVM `/dev/kvm`, which cannot run stock guest kernels. This script
# boots an outer VM ("L1") under QEMU's software emulator (TCG) with an emulated AMD SVM CPU, loads
# kvm + kvm-amd in it, mounts the host's root file system read-only over 9p, and runs one command
# chrooted into that root. The command therefore runs the host's binaries unchanged (test binaries,
# the VMM, qemu) but sees a real, nested-SVM `/dev/kvm`.
#
#   tests/vm/harness.sh [--mem MiB] [--smp N] [--timeout SECONDS] [--keep] -- CMD [ARGS...]
#   tests/vm/harness.sh --check        boot L1 and probe /dev/kvm
#
#   --mem MiB        L1 memory (default 3072)
#   --smp N          L1 vCPUs (default 2; TCG runs one host thread per vCPU)
#   --timeout SECS   kill L1 after this many seconds of wall time (default 1200)
#   --keep           keep an automatically created results directory even when CMD succeeds
#
# Inside L1 the command runs as root with cwd = the caller's cwd, stdin = /dev/null and a clean
# environment: PATH (the caller's), HOME=/root, USER/LOGNAME=root, plus the caller's variables named
# ORCHESTRATOR_*, RUST_*, RUSTUP_*, CARGO_*, RUSTFLAGS, TERM and CI. The file system is the host's,
# read-only, except: /tmp, /var/tmp, /run, /dev/shm are fresh tmpfs; /dev, /proc, /sys, /dev/pts are
# L1's own; the results directory is writable and has the same absolute path as on the host.
# ORCHESTRATOR_HARNESS_RESULTS (exported to the command) names it, so the command can leave files
# there for the caller.
#
# Results directory: $ORCHESTRATOR_HARNESS_RESULTS if set (created if missing, always kept), else a
# fresh `mktemp -d /tmp/orchestrator-harness.XXXXXX` (removed on success unless --keep, kept and
# printed on failure). It holds:
#   output.log   stdout+stderr of CMD (also shown live on this terminal)
#   rc           CMD's exit code
#   console.log  the whole L1 serial console
#   l1-error     why L1 gave up, when it did
#   .harness/    what the host passes to L1 (the results path, env file, command script)
#
# Exit status: CMD's exit code; 125 when L1 itself failed (no rc written: boot failure, no
# /dev/kvm, timeout, ...), with "L1 failed: ..." and the end of the console on stderr.
#
# Knobs for experiments (not needed normally): ORCHESTRATOR_HARNESS_CPU (default qemu64,+svm),
# ORCHESTRATOR_HARNESS_ACCEL (default tcg,thread=multi), ORCHESTRATOR_CACHE (default
# /var/cache/orchestrator-dev; the L1 initramfs is cached under $ORCHESTRATOR_CACHE/harness).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
cache_root=${ORCHESTRATOR_CACHE:-/var/cache/orchestrator-dev}

usage() { sed -n '10,16p' "$self" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "harness: $*" >&2; exit 125; }

mem=3072 smp=2 timeout=1200 keep=0 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) mem=${2:?--mem needs MiB}; shift 2 ;;
    --smp) smp=${2:?--smp needs N}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs SECONDS}; shift 2 ;;
    --keep) keep=1; shift ;;
    --check) check=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "harness: unknown option $1" >&2; usage ;;
  esac
done
for v in "$mem" "$smp" "$timeout"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $v"
done
if [ "$check" = 1 ]; then
  [ $# -eq 0 ] || die "--check takes no command"
  # The probe: is /dev/kvm there, did kvm_amd load with nested SVM, and does KVM_CREATE_VM work?
  # (python3 is only a convenient way to issue the ioctls; it is skipped when the host lacks it.)
  set -- /bin/sh -c '
    echo "uname: $(uname -r)"
    ls -l /dev/kvm
    echo "kvm_amd nested: $(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null || echo "?")"
    dmesg | grep -iE "svm|kvm" || true
    if [ -x /usr/bin/python3 ]; then
      /usr/bin/python3 -c "
import fcntl, os
fd = os.open(\"/dev/kvm\", os.O_RDWR)
print(\"KVM_GET_API_VERSION:\", fcntl.ioctl(fd, 0xAE00, 0))
vm = fcntl.ioctl(fd, 0xAE01, 0)
print(\"KVM_CREATE_VM: ok, fd\", vm)
print(\"KVM_CREATE_VCPU: ok, fd\", fcntl.ioctl(vm, 0xAE41, 0))
"
    fi'
fi
[ $# -gt 0 ] || usage

# ---------------------------------------------------------------------------------------------
# Kernel and modules for L1: Debian's generic kernel package, extracted by kernels.sh (cached).
# ---------------------------------------------------------------------------------------------
kernels=$(bash "$here/kernels.sh" "$cache_root")
l1_dir=$(printf '%s\n' "$kernels" | sed -n 's/^l1=//p')
[ -n "$l1_dir" ] && [ -d "$l1_dir" ] || die "kernels.sh did not report an L1 kernel directory"
vmlinuz=$(ls "$l1_dir"/boot/vmlinuz-* 2>/dev/null | sed -n 1p)
moddir=$(ls -d "$l1_dir"/lib/modules/*/ 2>/dev/null | sed -n 1p)
[ -f "$vmlinuz" ] || die "no vmlinuz-* under $l1_dir/boot"
[ -d "$moddir" ] || die "no lib/modules/*/ under $l1_dir"
# busybox-static's binary (kernels.sh installs the package); Debian's dynamic busybox package
# would install /bin/busybox too, but could not run in the initramfs.
busybox=/bin/busybox
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep "install ok installed" >/dev/null ||
  die "busybox-static is not installed (tests/vm/kernels.sh installs it)"

# Modules to load in L1, in dependency order: 9p over virtio-pci for the host root, then KVM,
# then overlayfs (the orchestrator merges image layers with it when it builds an EROFS disk),
# then vhost-vsock (the QEMU peer in the boot benchmark talks to its guest's agent over it),
# then veth and tun (network tests and benchmarks: their own internet, namespace sandboxes),
# then loop and ext4 (a namespace sandbox's bounded writable disk).
# A module that is not a file in this kernel (built in, or absent) is skipped.
modules=(netfs fscache 9pnet virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
  virtio_pci 9pnet_virtio 9p irqbypass ccp kvm kvm-amd overlay
  vsock vmw_vsock_virtio_transport_common vhost_iotlb vhost vhost_vsock veth tun
  loop crc16 mbcache jbd2 crc32c_generic ext4)

# Module files of this kernel by name (plain, .xz or .zst; `-` and `_` are the same in names).
declare -A module_path=()
while IFS= read -r f; do
  b=${f##*/}; b=${b%%.ko*}; b=${b//-/_}
  [ -n "${module_path[$b]:-}" ] || module_path[$b]=$f
done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
module_file() { local b=${1//-/_}; echo "${module_path[$b]:-}"; }
mod_files=() mod_names=() skipped=()
for m in "${modules[@]}"; do
  f=$(module_file "$m")
  if [ -n "$f" ]; then mod_files+=("$f"); mod_names+=("$m"); else skipped+=("$m"); fi
done

# ---------------------------------------------------------------------------------------------
# L1's /init (busybox sh). It reads everything run-specific from the results export, so the
# initramfs depends only on this script, busybox and the modules, and is cached across runs.
# ---------------------------------------------------------------------------------------------
IFS= read -r -d '' init_script <<'INIT' || true
#!/bin/busybox sh
# L1 init, generated by tests/vm/harness.sh.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1

results_ok=0
# Give up: say why on the console and (when possible) in the results export, then power off
# without writing `rc`, which the host reports as "L1 failed: <reason>".
fail() {
  echo "harness: L1 failed: $*"
  [ "$results_ok" = 1 ] && echo "$*" > /results/l1-error
  sync
  poweroff -f
  sleep 10
}

[ -s /etc/harness/skipped ] && echo "harness: not module files in this kernel (skipped): $(cat /etc/harness/skipped)"
while read -r m; do
  insmod "/lib/modules/$m.ko" || echo "harness: insmod $m failed"
done < /etc/harness/modules

# 9p: msize 512000 (the virtio transport's maximum) makes reads of big binaries cheaper. The
# read-only host root uses cache=loose (L1 caches file data and metadata): starting qemu in L1
# drops from ~1.6 s to ~0.3 s. The price: host files changed during the run may look stale in L1.
# The results export stays uncached, so what L1 writes is on the host at once.
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /results /host
mount -t 9p -o "$opts" results /results || fail "cannot mount the results export over 9p (see console)"
results_ok=1
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "cannot mount the host root over 9p"

[ -c /dev/kvm ] || fail "/dev/kvm does not exist in L1 (kvm_amd did not load: $(dmesg | grep -iE 'kvm|svm|ccp' | tail -n 3 | tr '\n' ' '))"

# The host root is read-only; give the command its own kernel file systems and scratch space.
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null || true
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /host/dev/pts
ln -sf pts/ptmx /host/dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# The host's /tmp stays reachable underneath for a caller working there (a clone under /tmp).
mkdir -p /host-tmp
mount --bind /host/tmp /host-tmp
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
mount -t tmpfs -o mode=0755 tmpfs /host/run
ip link set lo up 2>/dev/null || true
hostname harness-l1

# The results directory appears at its host path (created in the tmpfs when it lives under /tmp).
path=$(cat /results/.harness/path) || fail "no .harness/path in the results export"
mkdir -p "/host$path" 2>/dev/null
mount --bind /results "/host$path" || fail "cannot bind the results export at $path"
# A caller's working directory under /tmp (a clean clone there, as CI makes) is bound back into
# the fresh /tmp, read-only like the rest of the host root: its top directory under /tmp.
cwd=$(cat /results/.harness/cwd 2>/dev/null || true)
case "$cwd" in
  /tmp/?*)
    top=${cwd#/tmp/}; top=${top%%/*}
    mkdir -p "/host/tmp/$top"
    mount --bind "/host-tmp/$top" "/host/tmp/$top" || fail "cannot make /tmp/$top visible in L1"
    ;;
esac

echo "===== harness: L1 up after $(cut -d' ' -f1 /proc/uptime)s, running the command ====="
{ env -i /bin/busybox chroot /host /bin/sh "$path/.harness/run.sh" </dev/null 2>&1; echo $? > /results/rc.tmp; } | tee /results/output.log
rc=$(cat /results/rc.tmp)
echo "===== harness: exit code $rc ====="
mv /results/rc.tmp /results/rc
sync
poweroff -f
sleep 10
INIT

# Cache key: everything that goes into the initramfs (bump the format when the layout changes).
initrd_format=1
key=$( {
  printf '%s\n' "$initrd_format" "$init_script" "${mod_names[@]}" "${skipped[@]}"
  sha256sum "$busybox" "${mod_files[@]}" | cut -d' ' -f1
} | sha256sum | cut -c1-16)
hcache="$cache_root/harness"
initrd="$hcache/l1-initrd-$key.cpio"
tmp_build=""
qemu_pid="" sleep_pid="" results="" auto_results=0
cleanup() {
  [ -n "$sleep_pid" ] && kill "$sleep_pid" 2>/dev/null || true
  if [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  [ -n "$tmp_build" ] && rm -rf "$tmp_build"
  return 0
}
trap cleanup EXIT
trap 'echo "harness: interrupted" >&2; exit 130' INT TERM HUP

if [ ! -f "$initrd" ]; then
  mkdir -p "$hcache"
  echo "harness: building the L1 initramfs ($(basename "$moddir"))" >&2
  [ ${#skipped[@]} -eq 0 ] ||
    echo "harness: not module files in $(basename "$moddir") (built in or absent), skipped: ${skipped[*]}" >&2
  tmp_build=$(mktemp -d "$hcache/.build.XXXXXX")
  root="$tmp_build/root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc/harness,lib/modules,host,results}
  cp "$busybox" "$root/bin/busybox"
  # busybox insmod takes plain .ko files only: decompress here.
  for i in "${!mod_files[@]}"; do
    f=${mod_files[$i]} out="$root/lib/modules/${mod_names[$i]}.ko"
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$out" ;;
      *.ko.zst) zstd -qdc "$f" > "$out" ;;
      *) cp "$f" "$out" ;;
    esac
  done
  printf '%s\n' "${mod_names[@]}" > "$root/etc/harness/modules"
  if [ ${#skipped[@]} -gt 0 ]; then echo "${skipped[*]}"; fi > "$root/etc/harness/skipped"
  printf '%s\n' "$init_script" > "$root/init"
  chmod 755 "$root/init"
  # Uncompressed: unpacking is cheaper under TCG than decompressing.
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
    > "$tmp_build/initrd.cpio"
  mv -f "$tmp_build/initrd.cpio" "$initrd"
  rm -rf "$tmp_build"; tmp_build=""
  # Drop initramfs images of older inputs.
  find "$hcache" -maxdepth 1 -name 'l1-initrd-*.cpio' ! -name "$(basename "$initrd")" -delete
fi

# The L1 kernel as an uncompressed ELF `vmlinux`, booted through its PVH entry point: this skips
# the bzImage decompressor, which under TCG takes longer than the rest of the boot (xz, ~3.5 s
# here). The compressed payload is found by its magic bytes, as scripts/extract-vmlinux does.
# Falls back to the bzImage when no payload decompresses to an ELF file or PVH is not built in.
extract_vmlinux() {
  local in=$1 out=$2 magic tool off
  grep -q '^CONFIG_PVH=y' "$l1_dir"/boot/config-* 2>/dev/null || return 1
  for magic in '\xfd7zXZ\x00:xz -dc --single-stream' '\x28\xb5\x2f\xfd:zstd -qdc' \
      '\x02\x21\x4c\x18:lz4 -dc' '\x1f\x8b\x08:gzip -dc'; do
    tool=${magic#*:}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$in" 2>/dev/null | cut -d: -f1 | sed -n 1,3p); do
      tail -c +"$((off + 1))" "$in" | $tool > "$out" 2>/dev/null || true
      [ "$(head -c 4 "$out" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
    done
  done
  return 1
}
kver=$(basename "$moddir")
vmlinux="$hcache/vmlinux-$kver-$(sha256sum "$vmlinuz" | cut -c1-16)"
l1_kernel=$vmlinuz
if [ -f "$vmlinux" ]; then
  l1_kernel=$vmlinux
else
  mkdir -p "$hcache"
  tmp_build=$(mktemp -d "$hcache/.build.XXXXXX")
  if extract_vmlinux "$vmlinuz" "$tmp_build/vmlinux"; then
    mv -f "$tmp_build/vmlinux" "$vmlinux"
    find "$hcache" -maxdepth 1 -name 'vmlinux-*' ! -name "$(basename "$vmlinux")" -delete
    l1_kernel=$vmlinux
  else
    echo "harness: cannot extract an ELF vmlinux from $vmlinuz; booting the bzImage (slower)" >&2
  fi
  rm -rf "$tmp_build"; tmp_build=""
fi

# ---------------------------------------------------------------------------------------------
# Results directory and what L1 reads from it.
# ---------------------------------------------------------------------------------------------
if [ -n "${ORCHESTRATOR_HARNESS_RESULTS:-}" ]; then
  mkdir -p "$ORCHESTRATOR_HARNESS_RESULTS"
  results=$(cd "$ORCHESTRATOR_HARNESS_RESULTS" && pwd -P)
else
  results=$(mktemp -d /tmp/orchestrator-harness.XXXXXX)
  auto_results=1
fi
[ "$results" != / ] || die "the results directory cannot be /"
rm -rf "$results/.harness" "$results/rc" "$results/rc.tmp" "$results/output.log" \
  "$results/console.log" "$results/l1-error"
mkdir -p "$results/.harness"
printf '%s' "$results" > "$results/.harness/path"

# Single-quotes a string for POSIX sh (the host's /bin/sh runs these files).
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

cwd=$(pwd -P)
printf '%s' "$cwd" > "$results/.harness/cwd"
{
  echo "# Environment for the command in L1, generated by tests/vm/harness.sh."
  echo "export PATH=$(shq "${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}")"
  echo "export HOME=/root USER=root LOGNAME=root"
  echo "export ORCHESTRATOR_HARNESS_RESULTS=$(shq "$results")"
  while IFS= read -r name; do
    case "$name" in ORCHESTRATOR_HARNESS_RESULTS) continue ;; esac
    if [[ "$name" =~ ^(ORCHESTRATOR_|RUST_|RUSTUP_|CARGO_)[A-Za-z0-9_]*$ ]] ||
       [[ "$name" =~ ^(TERM|CI|RUSTFLAGS)$ ]]; then
      echo "export $name=$(shq "${!name}")"
    fi
  done < <(compgen -e)
} > "$results/.harness/env"
{
  echo "# The command for L1, generated by tests/vm/harness.sh."
  echo ". $(shq "$results/.harness/env")"
  echo "cd $(shq "$cwd") || { echo \"harness: cannot cd to $(shq "$cwd") in L1\" >&2; exit 125; }"
  printf 'exec'
  for a in "$@"; do printf ' %s' "$(shq "$a")"; done
  echo
} > "$results/.harness/run.sh"

# ---------------------------------------------------------------------------------------------
# Boot L1. The serial console goes to stdout (live output) and to console.log. stdin is
# /dev/null so QEMU leaves the terminal alone and Ctrl-C stops the harness. -nodefaults drops
# the devices L1 does not use (VGA, NIC, ...); the 9p exports are virtio-pci devices.
# ---------------------------------------------------------------------------------------------
# The CPU is the one ENVIRONMENT.md verified. `qemu64,+svm,+npt` also works (L1's KVM then uses
# nested paging instead of shadow paging; the QEMU microvm peer booted ~10-20% faster) but has
# had less use. MTTCG (thread=multi) runs each vCPU on its own host thread; with thread=single
# and -smp 2, an L2 guest once hung before printing anything.
cpu=${ORCHESTRATOR_HARNESS_CPU:-qemu64,+svm}
accel=${ORCHESTRATOR_HARNESS_ACCEL:-tcg,thread=multi}
qemu=(qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m "$mem" -smp "$smp"
  -nodefaults -display none -no-reboot
  -chardev "stdio,id=con,signal=off,logfile=$results/console.log"
  -serial chardev:con
  -kernel "$l1_kernel" -initrd "$initrd"
  -append "console=ttyS0 panic=-1 quiet loglevel=0"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=$results,mount_tag=results,security_model=none")

start=$(date +%s.%N)
"${qemu[@]}" </dev/null &
qemu_pid=$!
# Timeout: race qemu against a `sleep`; whichever ends first decides (bash >= 5.1 `wait -n -p`).
sleep "$timeout" &
sleep_pid=$!
finished=""
wait -n -p finished "$qemu_pid" "$sleep_pid" || true
if [ "$finished" != "$qemu_pid" ]; then
  echo "timed out after ${timeout}s" > "$results/.harness/timeout"
  kill "$qemu_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$qemu_pid" 2>/dev/null || true
fi
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=""
kill "$sleep_pid" 2>/dev/null || true
wait "$sleep_pid" 2>/dev/null || true
sleep_pid=""
elapsed=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')

if [ -f "$results/rc" ]; then
  rc=$(cat "$results/rc")
  [[ "$rc" =~ ^[0-9]+$ ]] || rc=125
  echo "harness: L1 finished in ${elapsed}s, command exit code $rc" >&2
  if [ "$auto_results" = 1 ] && [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
    rm -rf "$results"
  else
    echo "harness: results in $results" >&2
  fi
  exit "$rc"
fi

reason="no exit code from L1 (qemu exited with $qemu_rc after ${elapsed}s)"
[ -f "$results/.harness/timeout" ] && reason=$(cat "$results/.harness/timeout")
[ -f "$results/l1-error" ] && reason=$(cat "$results/l1-error")
{
  echo "----- last 50 lines of the L1 console ($results/console.log) -----"
  tail -n 50 "$results/console.log" 2>/dev/null || true
  echo "-----"
  echo "L1 failed: $reason"
  echo "harness: results in $results"
} >&2
exit 125
