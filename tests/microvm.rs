//! MicroVM sandboxes for real: our VMM on a real KVM, booting Debian's cloud kernel with the
//! agent's initramfs, from the busybox and Debian+python3 OCI images.
//!
//! These machines' KVM cannot boot a stock kernel (ENVIRONMENT.md), so `just test-vm` runs
//! this same test binary inside the nested-KVM harness (`tests/vm/harness.sh`), with
//! `ORCHESTRATOR_REQUIRE_MICROVM=1`: there a host that cannot run microVMs fails the test. Run
//! directly on such a host, each test prints why it skipped.

mod common;
#[path = "common/https.rs"]
mod https;
#[path = "common/testnet.rs"]
mod testnet;

use common::{leftovers, pid_alive, Env, BIN};
use orchestrator::client::ShimClient;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CACHE: &str = "/var/cache/orchestrator-dev";

fn env() -> Env {
    common::require_root();
    Env { dir: tempfile::Builder::new().prefix("orch-vm-").tempdir_in("/tmp").expect("tempdir"), netns: None, extra_env: Vec::new() }
}

/// True when this host runs microVMs; otherwise says why (and fails where they are required).
fn microvms_work(env: &Env) -> bool {
    let out = env.run(&["doctor"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return true;
    }
    assert!(
        std::env::var_os("ORCHESTRATOR_REQUIRE_MICROVM").is_none(),
        "microVMs are required here (ORCHESTRATOR_REQUIRE_MICROVM) but doctor says:\n{report}"
    );
    eprintln!("SKIPPED (this host cannot run microVMs; `just test-vm` runs this test in the nested-KVM harness):\n{report}");
    false
}

/// `kernel show`'s fields (version, image, boot, modules, cmdline) by name.
fn kernel_show(env: &Env) -> std::collections::BTreeMap<String, String> {
    env.ok(&["kernel", "show"]).lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect()
}

fn kernel_version(env: &Env) -> String {
    kernel_show(env).remove("version").expect("kernel show prints the version")
}

fn vm_yaml(name: &str, image: &str, extra: &str) -> String {
    format!("---\napiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  isolation: microvm\n{extra}")
}

fn busybox_image() -> String {
    format!("oci-layout:{CACHE}/oci-test/layout:busybox")
}

fn python_image() -> String {
    format!("oci-layout:{CACHE}/oci-debian-python/layout:python")
}

#[test]
fn two_microvms_boot_exec_files_stop_and_recover() {
    let env = env();
    if !microvms_work(&env) {
        return;
    }
    let version = kernel_version(&env);
    let yaml = vm_yaml("bb", &busybox_image(), "  memory: 128Mi\n  cpus: 1\n  command: [sh, -c, 'echo main-up; exec sleep 100000']\n")
        + &vm_yaml("py", &python_image(), "  memory: 320Mi\n  cpus: 2\n  command: [sleep, '100000']\n");
    let file = env.file("vms.yaml", &yaml);
    let t0 = Instant::now();
    apply_within(&env, &file, Duration::from_secs(400));
    eprintln!("two microVMs up in {:?}", t0.elapsed());
    assert_eq!(env.status("bb"), "Running");
    assert_eq!(env.status("py"), "Running");
    assert_eq!(env.sandbox("bb")["isolation"], "microvm");

    // Both VMs run at once; each is the Debian kernel, sized as its spec says.
    let (code, uname, _) = env.sh("bb", "uname -r");
    assert_eq!((code, uname.trim()), (0, version.as_str()));
    assert_eq!(env.sh("py", "uname -r").1.trim(), version);
    let mem_kib: u64 = env.sh("bb", "awk '/MemTotal/ {print $2}' /proc/meminfo").1.trim().parse().unwrap();
    assert!((80 * 1024..=128 * 1024).contains(&mem_kib), "bb has 128Mi of RAM, the guest sees {mem_kib} KiB");
    assert_eq!(env.sh("py", "nproc").1.trim(), "2");
    assert_eq!(env.sh("bb", "nproc").1.trim(), "1");
    // No CMOS RTC is emulated: the wall clock comes from kvmclock, and is the host's.
    let guest_now: i64 = env.sh("bb", "date +%s").1.trim().parse().unwrap();
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((guest_now - host_now).abs() < 120, "guest clock {guest_now}, host {host_now}");

    // exec: output, stderr and exit codes; python in the Debian image.
    let (code, out, err) = env.sh("bb", "echo out; echo err >&2; exit 7");
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let out = env.ok(&["exec", "py", "--", "python3", "-c", "import sys; print(6 * 7, sys.version_info.major)"]);
    assert_eq!(out.trim(), "42 3");
    // The root is the image over the scratch disk; the image disk stays read-only.
    // (The busybox test image runs as `app`; root writes into the image's /etc.)
    let out = env.run(&["exec", "-u", "0", "bb", "--", "sh", "-c", "echo changed > /etc/written-here && cat /etc/written-here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "changed\n", "{}", String::from_utf8_lossy(&out.stderr));
    let (_, mounts, _) = env.sh("bb", "cat /proc/mounts");
    assert!(mounts.contains("overlay / overlay"), "{mounts}");

    // The file API through the shim and the vsock bridge: 1 MiB of binary data round-trips.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut c = ShimClient::connect(&env.instance_dir("py").join("shim.sock")).unwrap();
    c.write_file("/tmp/blob.bin", &data, Some(0o600)).unwrap();
    assert_eq!(c.read_file("/tmp/blob.bin").unwrap(), data);
    assert_eq!(env.sh("py", "wc -c < /tmp/blob.bin").1.trim(), "1048576");
    drop(c);

    // Logs of the main process; the console log of the VM exists on the host.
    env.wait_for("bb's main output", Duration::from_secs(30), || env.ok(&["logs", "bb"]).contains("main-up"));
    // `logs --console`: what the guest kernel and agent printed on the VM's serial console.
    let console = env.run(&["logs", "--console", "bb"]);
    assert!(console.status.success(), "{}", String::from_utf8_lossy(&console.stderr));
    assert_eq!(console.stdout, std::fs::read(env.instance_dir("bb").join("console.log")).unwrap());

    // stop: the agent ends everything and powers the VM off; nothing is left.
    let bb_instance = env.sandbox("bb")["instance"].as_str().unwrap().to_string();
    let bb_shim = env.shim_pid("bb");
    env.ok(&["stop", "bb"]);
    assert_eq!(env.status("bb"), "Stopped");
    assert!(!pid_alive(bb_shim), "the VMM (in the shim) exited");
    assert!(leftovers(&bb_instance).is_empty(), "{:?}", leftovers(&bb_instance));

    // A killed VMM: the next reconcile notices and the restart policy boots a new VM.
    let py_shim = env.shim_pid("py");
    // SAFETY: killing the shim process this test's sandbox runs in.
    unsafe { libc::kill(py_shim, libc::SIGKILL) };
    env.wait_for("the killed shim to be gone", Duration::from_secs(10), || !pid_alive(py_shim));
    apply_within(&env, &file, Duration::from_secs(400));
    assert_eq!(env.status("py"), "Running");
    assert_ne!(env.shim_pid("py"), py_shim);
    assert_eq!(env.sh("py", "echo back").1, "back\n");

    let py_instance = env.sandbox("py")["instance"].as_str().unwrap().to_string();
    env.ok(&["delete", "bb", "py"]);
    assert!(leftovers(&py_instance).is_empty(), "{:?}", leftovers(&py_instance));
}

/// A vmlinux whose PVH entry note (Xen's PHYS32_ENTRY, type 18) is renamed away: a kernel as
/// built without CONFIG_PVH, which the VMM must enter through the Linux 64-bit boot protocol.
fn without_pvh_note(mut vmlinux: Vec<u8>) -> Vec<u8> {
    // Note header: namesz 4, descsz 4 or 8, type 18, name "Xen\0".
    let mut found = 0;
    for desc in [4u32, 8] {
        let mut pattern = Vec::new();
        for word in [4u32, desc, 18] {
            pattern.extend_from_slice(&word.to_le_bytes());
        }
        pattern.extend_from_slice(b"Xen\0");
        let mut at = 0;
        while let Some(pos) = vmlinux[at..].windows(pattern.len()).position(|w| w == pattern.as_slice()) {
            let i = at + pos;
            vmlinux[i + 8] = 0x7f; // an unknown Xen note type
            found += 1;
            at = i + pattern.len();
        }
    }
    assert!(found > 0, "the kernel has no PVH note to remove");
    vmlinux
}

/// The cgroup v1 memory controller's file for an instance, or v2's.
fn cgroup_file(instance: &str, v1: &str, v2: &str) -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return Path::new("/sys/fs/cgroup/orchestrator").join(instance).join(v2);
    }
    Path::new("/sys/fs/cgroup/memory/orchestrator").join(instance).join(v1)
}

#[test]
fn a_sandbox_kernel_without_pvh_boots_through_the_64_bit_entry_inside_its_cgroup() {
    let env = env();
    if !microvms_work(&env) {
        return;
    }
    let show = kernel_show(&env);
    let (version, image, modules) = (show["version"].clone(), show["image"].clone(), show["modules"].clone());
    // A package of its own: the vmlinux without its PVH note, Debian's modules beside it.
    let pkg = env.dir.path().join("kernel-nopvh");
    std::fs::create_dir_all(pkg.join("boot")).unwrap();
    std::fs::create_dir_all(pkg.join("lib/modules")).unwrap();
    std::os::unix::fs::symlink(&modules, pkg.join("lib/modules").join(&version)).unwrap();
    let started = Instant::now();
    let vmlinux = vmm::kernel::vmlinux_from(&std::fs::read(&image).unwrap()).unwrap();
    eprintln!("[{:?}] vmlinux unpacked", started.elapsed());
    std::fs::write(pkg.join("boot").join(format!("vmlinux-{version}")), without_pvh_note(vmlinux)).unwrap();
    eprintln!("[{:?}] PVH note renamed away", started.elapsed());

    let yaml = vm_yaml("own", &busybox_image(), &format!("  memory: 128Mi
  cpus: 1
  kernel: {}
", pkg.display()));
    let file = env.file("own.yaml", &yaml);
    apply_within(&env, &file, Duration::from_secs(300));
    eprintln!("[{:?}] applied", started.elapsed());
    assert_eq!(env.status("own"), "Running");
    assert_eq!(env.sh("own", "uname -r").1.trim(), version);
    assert_eq!(env.sh("own", "echo works; exit 3"), (3, "works
".to_string(), String::new()));
    let log = std::fs::read_to_string(env.instance_dir("own").join("shim.log")).unwrap();
    assert!(log.contains("through the Linux 64-bit entry"), "{log}");

    // The VMM runs in the sandbox's cgroup, bounded at guest RAM plus the VMM's headroom.
    let instance = env.sandbox("own")["instance"].as_str().unwrap().to_string();
    let shim = env.shim_pid("own");
    let procs = std::fs::read_to_string(cgroup_file(&instance, "cgroup.procs", "cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l.trim() == shim.to_string()), "shim {shim} not in its cgroup: {procs}");
    let limit: u64 = std::fs::read_to_string(cgroup_file(&instance, "memory.limit_in_bytes", "memory.max")).unwrap().trim().parse().unwrap();
    assert_eq!(limit, (128 << 20) + (64 << 20));
    let used: u64 = std::fs::read_to_string(cgroup_file(&instance, "memory.usage_in_bytes", "memory.current")).unwrap().trim().parse().unwrap();
    assert!(used > 16 << 20, "guest memory is charged to the sandbox: {used} bytes");

    env.ok(&["delete", "own"]);
    assert!(leftovers(&instance).is_empty(), "{:?}", leftovers(&instance));

    // A kernel that is not there is refused with the field that names it.
    let bad = env.file("bad.yaml", &vm_yaml("bad", &busybox_image(), "  kernel: linux-image-not-provisioned
"));
    let out = env.run(&["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && err.contains("spec.kernel") && err.contains("linux-image-not-provisioned"), "{err}");
}

/// Applies `file`; past `limit`, prints every instance's shim log and console and fails, so a
/// VM that never comes up is diagnosable instead of a silent hang.
fn apply_within(env: &Env, file: &Path, limit: Duration) {
    let mut child = env.cmd(&["apply", "-f", file.to_str().unwrap()]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "apply: {}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), instance_logs(env));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    panic!("apply did not finish within {limit:?}:\n{}", instance_logs(env));
}

/// The last lines of every instance's shim log and console, for a failure's report.
fn instance_logs(env: &Env) -> String {
    let mut report = String::new();
    if let Ok(entries) = std::fs::read_dir(env.data_dir().join("sandboxes")) {
        for e in entries.flatten() {
            for f in ["shim.log", "console.log"] {
                let text = std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                report.push_str(&format!("== {}/{f}\n{}\n", e.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
            }
        }
    }
    report
}

/// The VMM binary next to `orchestrator` (same workspace target directory).
fn vmm_run() -> PathBuf {
    Path::new(BIN).with_file_name("vmm-run")
}

#[test]
fn a_guest_kernel_panic_is_reported() {
    let env = env();
    if !microvms_work(&env) {
        return;
    }
    let image = kernel_show(&env)["image"].clone();
    let initrd = env.ok(&["kernel", "initramfs"]).trim().to_string();
    assert!(vmm_run().exists(), "build vmm-run first (`cargo build -p vmm`)");
    // No init at that path and no root disk: the kernel panics, and the VMM says so. Once
    // through PVH, once through the bzImage's own 64-bit entry (its decompressor runs).
    for (boot, entry) in [("auto", "the PVH entry"), ("linux64", "the Linux 64-bit entry at 0x100200")] {
        let out = Command::new(vmm_run())
            .args(["--boot", boot, "--kernel", &image, "--initrd", &initrd, "--console", "/dev/null", "--cmdline", "console=ttyS0 quiet panic=-1 reboot=acpi pci=off rdinit=/no-such-init"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("booting through {entry}")), "{boot}: {err}");
        assert!(err.contains("the guest kernel panicked: ") && err.contains("Kernel panic"), "{boot}: {err}");
    }
}

/// The same network as namespace sandboxes (tests/network.rs), through virtio-net: from a
/// microVM, a GET by name reaches the test internet, a private address and the metadata
/// address are refused at once with events, DNS blocks hold, and ping works.
#[test]
fn a_microvm_reaches_the_test_internet_through_virtio_net_and_the_policy_holds() {
    use testnet::*;
    let env = env();
    if !microvms_work(&env) {
        return;
    }
    let net = TestNet::new("vm");
    let mut env = env;
    env.netns = Some(net.orch_ns());
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), format!("{DNS}:53")));
    let f = env.file("vmnet.yaml", &vm_yaml("vmnet", &busybox_image(), "  command: [sleep, '100000']\n  network:\n    blockDomains: [ evil.example ]\n"));
    apply_within(&env, &f, Duration::from_secs(600));
    let (code, out, err) = env.sh("vmnet", "ip -o link show eth0; wget -q -O - http://web.test/");
    assert_eq!(code, 0, "GET by name from a microVM: {out} {err}");
    assert!(out.trim_end().ends_with("web"), "{out}");
    for addr in [PRIVATE, METADATA, "10.0.2.2"] {
        let started = Instant::now();
        let (code, _, err) = env.sh("vmnet", &format!("wget -q -O - http://{addr}/"));
        assert!(code != 0 && err.contains("refused"), "{addr} from a microVM: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{addr}: refusing took {:?}", started.elapsed());
    }
    let (code, out, err) = env.sh("vmnet", "nslookup evil.example");
    assert!(code != 0 && (out.clone() + &err).contains("NXDOMAIN"), "{out} {err}");
    // The image's user is `app`; busybox's ping needs a raw socket, so root pings.
    let ping = env.run(&["exec", "-u", "root", "vmnet", "--", "ping", "-c", "2", "-W", "5", WEB]);
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success() && out.contains("2 packets received"), "ping from a microVM: {out} {}", String::from_utf8_lossy(&ping.stderr));
    let events = env.ok(&["describe", "vmnet"]);
    assert!(events.contains(&format!("tcp to {PRIVATE}:80 denied by preset public-only")), "{events}");
    assert!(events.contains("evil.example refused by blockDomains evil.example"), "{events}");
    env.ok(&["delete", "vmnet"]);
}

#[test]
fn a_microvm_secret_reaches_only_its_host_through_the_installed_ca() {
    use std::sync::atomic::Ordering;
    use testnet::*;
    let env = env();
    if !microvms_work(&env) {
        return;
    }
    let net = TestNet::new("vmtls");
    let servers = https::HttpsServers::start(&net);
    let mut env = env;
    env.netns = Some(net.orch_ns());
    let ca = env.file("upstream-ca.pem", &servers.ca_pem);
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), format!("{DNS}:53")));
    env.extra_env.push(("ORCHESTRATOR_UPSTREAM_CA".into(), ca.display().to_string()));
    const VALUE: &str = "vm-token-5c0e1b2a";
    env.extra_env.push(("TEST_API_TOKEN".into(), VALUE.into()));
    let secret = "  secrets:\n    - { env: API_TOKEN, provider: env, key: TEST_API_TOKEN, allowHosts: [web.test] }\n";
    let f = env.file("vmtls.yaml", &vm_yaml("vmtls", &python_image(), &format!("  memory: 320Mi\n  command: [sleep, '100000']\n{secret}")));
    apply_within(&env, &f, Duration::from_secs(600));
    // curl over HTTP/2 and Python's urllib, both verifying our leaf against the CA the agent
    // installed in the VM's root.
    let (code, out, err) = env.sh("vmtls", "curl -sS --fail-with-body --http2 -H \"Authorization: Bearer $API_TOKEN\" https://web.test/echo");
    assert_eq!(code, 0, "curl from a microVM: {out} {err}");
    assert!(out.contains("proto=HTTP/2.0") && out.contains(&format!("authorization=Bearer {VALUE}")), "{out}");
    let script = "import os, urllib.request\nr = urllib.request.Request('https://web.test/echo', headers={'Authorization': os.environ['API_TOKEN']})\nprint(urllib.request.urlopen(r).read().decode())";
    let out = env.ok(&["exec", "vmtls", "--", "python3", "-c", script]);
    assert!(out.contains(&format!("authorization={VALUE}")), "{out}");
    let (_, out, _) = env.sh("vmtls", "curl -sS -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer $API_TOKEN\" https://other.test/echo");
    assert_eq!(out.trim(), "403");
    assert_eq!(servers.other_requests.load(Ordering::SeqCst), 0, "the other host received a request");
    let (_, out, _) = env.sh("vmtls", "printf %s \"$API_TOKEN\"; grep -c 'orchestrator: this sandbox' /etc/ssl/certs/ca-certificates.crt");
    assert!(out.starts_with("ORCHESTRATOR_SECRET_") && !out.contains(VALUE) && out.trim_end().ends_with('1'), "{out}");
    env.ok(&["delete", "vmtls"]);
}

/// Volumes across isolation kinds: what a Python program in a namespace sandbox wrote, a
/// microVM reads after that sandbox is gone, read-only (EROFS), while a namespace sandbox reads
/// the same volume at once; a microVM writer's files are seen by a namespace reader; a host
/// directory is shared read-only; nothing of the daemons is left at the end.
#[test]
fn a_volume_is_shared_by_microvms_and_namespace_sandboxes() {
    let mut env = env();
    if !microvms_work(&env) {
        return;
    }
    env.extra_env.push(("ORCHESTRATOR_VIRTIOFSD".into(), format!("{CACHE}/virtiofsd/bin/virtiofsd")));
    env.ok(&["volume", "create", "shared", "--size", "64Mi"]);
    env.ok(&["volume", "create", "vmdata", "--size", "64Mi"]);
    let ns_yaml = |name: &str, extra: &str| format!("---\napiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: {}\n  isolation: namespace\n{extra}", python_image());
    let writer = env.file("writer.yaml", &ns_yaml("pywriter", "  restartPolicy: Never\n  command: [python3, -c, \"open('/data/result.txt', 'w').write('42 from python\\\\n')\"]\n  volumes: [{ name: shared, mountPath: /data }]\n"));
    env.ok(&["apply", "-f", writer.to_str().unwrap()]);
    env.wait_for("the writer to finish", Duration::from_secs(60), || env.status("pywriter") == "Exited");
    env.ok(&["delete", "-f", writer.to_str().unwrap()]);

    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("input.txt"), "from the host\n").unwrap();
    let vm_volumes = format!(
        "  memory: 160Mi\n  command: [sleep, '100000']\n  volumes:\n    - {{ name: shared, mountPath: /data, readOnly: true }}\n    - {{ name: vmdata, mountPath: /out }}\n    - {{ hostPath: {}, mountPath: /in, readOnly: true }}\n",
        share.display()
    );
    let yaml = vm_yaml("vmvol", &busybox_image(), &vm_volumes) + &ns_yaml("nsreader", "  command: [sleep, '100000']\n  volumes:\n    - { name: shared, mountPath: /data, readOnly: true }\n    - { name: vmdata, mountPath: /seen, readOnly: true }\n");
    let file = env.file("volumes.yaml", &yaml);
    apply_within(&env, &file, Duration::from_secs(400));
    assert_eq!(env.sandbox("vmvol")["isolation"], "microvm");

    // Both read the Python program's file at once; the VM's mount is virtio-fs, read-only.
    assert_eq!(env.sh("vmvol", "cat /data/result.txt").1, "42 from python\n");
    assert_eq!(env.sh("nsreader", "cat /data/result.txt").1, "42 from python\n");
    let (code, _, err) = env.sh("vmvol", "echo x > /data/result.txt");
    assert!(code != 0 && err.contains("Read-only file system"), "{err}");
    let (_, mounts, _) = env.sh("vmvol", "grep virtiofs /proc/mounts");
    assert_eq!(mounts.lines().count(), 3, "{mounts}");
    assert!(mounts.lines().any(|l| l.contains(" /data virtiofs ro,")), "{mounts}");
    // A host directory, read-only.
    assert_eq!(env.sh("vmvol", "cat /in/input.txt").1, "from the host\n");
    assert_ne!(env.sh("vmvol", "touch /in/x").0, 0);
    assert!(!share.join("x").exists());
    // The microVM writes a volume a namespace sandbox reads at the same time.
    // (The busybox image runs as `app`; the volume's root belongs to root, as a new volume's does.)
    let (code, _, err) = env.sh("vmvol", "echo written in a microVM > /out/denied.txt");
    assert!(code != 0 && err.contains("Permission denied"), "{err}");
    let out = env.run(&["exec", "-u", "root", "vmvol", "--", "sh", "-c", "echo written in a microVM > /out/vm.txt && sync"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.sh("nsreader", "cat /seen/vm.txt").1, "written in a microVM\n");
    // Its disk I/O, from the VMM's virtio-blk counters through its shim (`top`, `/metrics`).
    let out = env.run(&["exec", "-u", "root", "vmvol", "--", "dd", "if=/dev/zero", "of=/tmp/ballast", "bs=1M", "count=4", "conv=fsync"]);
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_str(&env.ok(&["top", "--once", "-o", "json", "-n", "0.3"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == "vmvol").unwrap_or_else(|| panic!("{rows}"));
    assert!(row["diskWriteBytes"].as_u64().unwrap() >= 4 << 20, "{row}");
    // One writer: a namespace sandbox cannot mount vmdata writable while the VM does.
    let out = env.run(&["run", "--rm", "--isolation", "namespace", "-v", "vmdata:/x", &busybox_image(), "--", "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mounted writable by sandbox \"vmvol\""), "{out:?}");

    env.ok(&["delete", "-f", file.to_str().unwrap()]);
    let daemons = Command::new("pgrep").args(["-f", &env.data_dir().display().to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&daemons.stdout).trim().is_empty(), "processes of the data dir are left: {daemons:?}");
    env.ok(&["volume", "rm", "shared", "vmdata"]);
    assert!(common::loop_devices_backed_by(&env.data_dir().display().to_string()).is_empty());
}
