//! The escape suite: what a root process inside a namespace sandbox tries first, each attempt
//! harmless and each an assertion of a boundary a user relies on. Devices, leaked fds, /proc
//! and /sys, runc's CVE classes as behaviours, namespaces and kernel surface, resources, the
//! host's addresses; then the same with `userNamespace: true`. Real namespaces, cgroups,
//! shims and agents; the probe is a static C program (tests/security/probe.c) built here.

mod common;

use common::*;
use guest_agent::protocol::{ExecRequest, TtySize};
use orchestrator::client::ShimClient;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The probe, compiled once (`cc -static`: it runs in the busybox image, which has no libc).
fn probe_binary() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/security/probe.c");
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/security-probe");
            let st = Command::new("cc").args(["-static", "-O2", "-o"]).arg(&out).arg(&src).status().expect("running cc (Debian's gcc, which Rust links with)");
            assert!(st.success(), "building {} failed", src.display());
            out
        })
        .clone()
}

/// A copy of the busybox rootfs with what an image author could ship: the probe, device nodes
/// of the host's disks and devices (made on the host with mknod, as a `dir:` image can carry
/// them), and a `#!/proc/self/exe` script.
fn hostile_rootfs(env: &Env) -> PathBuf {
    let root = env.dir.path().join("hostile-rootfs");
    let st = Command::new("cp").arg("-a").arg(rootfs()).arg(&root).status().unwrap();
    assert!(st.success());
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::copy(probe_binary(), root.join("usr/local/bin/probe")).unwrap();
    std::fs::create_dir_all(root.join("hostdev")).unwrap();
    for (name, kind, major, minor) in [("loop0", "b", 7, 0), ("kvm", "c", 10, 232), ("tty1", "c", 4, 1), ("mem", "c", 1, 1), ("null", "c", 1, 3), ("tun", "c", 10, 200)] {
        let st = Command::new("mknod").arg(root.join("hostdev").join(name)).arg(kind).arg(major.to_string()).arg(minor.to_string()).status().unwrap();
        assert!(st.success(), "mknod {name}");
    }
    // The script's interpreter is whatever binary the agent runs; it needs its loader and
    // libraries inside to start, as in the images the CVE was exploited from.
    let ldd = Command::new("ldd").arg(BIN).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, &dest).unwrap();
    }
    std::fs::write(root.join("evil.sh"), "#!/proc/self/exe\n").unwrap();
    let st = Command::new("chmod").arg("755").arg(root.join("evil.sh")).status().unwrap();
    assert!(st.success());
    root
}

fn suite_yaml(name: &str, image: &Path, userns: bool) -> String {
    format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n  userNamespace: {userns}\n  memory: 64Mi\n  disk: 64Mi\n  limits: {{ nofile: 1024 }}\n  command: [sh, -c, 'probe fds > /tmp/main-fds; exec sleep 1000000']\n",
        image.display()
    )
}

/// The agent's host pid: the process of the sandbox's cgroup whose innermost pid is 1.
fn agent_pid(instance: &str) -> i32 {
    let procs = ["pids", "memory", ""]
        .iter()
        .find_map(|c| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(c).join("orchestrator").join(instance).join("cgroup.procs")).ok())
        .expect("the sandbox's cgroup");
    procs
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
        })
        .expect("the agent in the sandbox's cgroup")
}

fn escape_suite(userns: bool) {
    let env = Env::new();
    let name = if userns { "escape-userns" } else { "escape" };
    let image = hostile_rootfs(&env);
    // Volumes it mounts read-only: a named one, and a host directory holding a link to `/`.
    env.ok(&["volume", "create", "esc-vol", "--size", "16Mi"]);
    let share = env.dir.path().join("hostshare");
    std::fs::create_dir_all(&share).unwrap();
    std::os::unix::fs::symlink("/", share.join("up")).unwrap();
    let marker = env.dir.path().join("host-only-marker");
    std::fs::write(&marker, "host").unwrap();
    let volumes = format!("  volumes:\n    - {{ name: esc-vol, mountPath: /vol, readOnly: true }}\n    - {{ hostPath: {}, mountPath: /hostro, readOnly: true }}\n", share.display());
    let f = env.file("escape.yaml", &format!("{}{volumes}", suite_yaml(name, &image, userns)));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let inst = env.sandbox(name)["instance"].as_str().unwrap().to_string();
    let mut probes = 0;
    let mut refused = |what: &str, ok: bool, detail: &str| {
        probes += 1;
        assert!(ok, "{name}: {what} was not refused: {detail}");
    };

    // Devices: no mknod, and the nodes an image ships open nothing (nodev, device cgroup).
    // The TUN clone device too: a second link would be a way around the shim's stack.
    let (_, out, _) = env.sh(name, "probe open /hostdev/loop0 /hostdev/kvm /hostdev/tty1 /hostdev/mem /hostdev/null /hostdev/tun");
    for line in out.lines() {
        refused(&format!("opening the image's device node {line}"), !line.ends_with(" ok"), &out);
    }
    assert_eq!(out.lines().count(), 6, "{out}");
    for (node, spec) in [("blk", "b 7 0"), ("kvm", "c 10 232"), ("tty", "c 4 1"), ("mem", "c 1 1"), ("tun", "c 10 200")] {
        let (code, _, err) = env.sh(name, &format!("mknod /tmp/{node} {spec}"));
        refused(&format!("mknod {spec}"), code != 0, &err);
    }
    let (_, out, _) = env.sh(name, "probe open /dev/null /dev/zero /dev/urandom /dev/tty /dev/ptmx");
    assert!(out.lines().take(3).all(|l| l.ends_with(" ok")), "the agent's own nodes still work: {out}");
    // Those nodes are the host's own inodes, bound in: root inside uses them, but their owner,
    // mode and times stay the host's (schemathesis once left the host's /dev/null 0644).
    use std::os::unix::fs::MetadataExt;
    let host_nodes = || ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"].map(|d| std::fs::metadata(d).map(|m| (m.mode(), m.uid(), m.gid(), m.ctime())).unwrap());
    let before = host_nodes();
    for (what, script) in [
        ("chmod of the host's /dev/null", "chmod 600 /dev/null"),
        ("chown of the host's /dev/zero", "chown 1000:1000 /dev/zero"),
        ("new times on the host's /dev/full", "touch /dev/full"),
        ("chmod of the host's /dev/urandom", "chmod 000 /dev/urandom"),
    ] {
        let (code, _, err) = env.sh(name, script);
        refused(what, code != 0 && err.contains("Read-only"), &err);
    }
    assert_eq!(host_nodes(), before, "the host's device nodes are untouched");
    let (code, out, _) = env.sh(name, "echo x > /dev/null && head -c 4 /dev/zero | wc -c");
    assert_eq!((code, out.trim()), (0, "4"), "the nodes still work");
    if Path::new("/sys/fs/cgroup/devices/devices.list").exists() {
        let list = std::fs::read_to_string(format!("/sys/fs/cgroup/devices/orchestrator/{inst}/devices.list")).unwrap();
        refused("a device outside the allow list (cgroup v1 devices.list)", !list.contains("a *:* rwm") && list.contains("c 1:3 rw"), &list);
    }

    // Leaked fds: only 0, 1, 2 in an exec'd process, in the main process, in a PTY session.
    let (_, out, _) = env.sh(name, "probe fds");
    refused("an inherited fd in exec", out.trim() == "0 1 2", &out);
    env.wait_for("the main process's fd list", Duration::from_secs(10), || env.sh(name, "cat /tmp/main-fds").1.contains('0'));
    let (_, out, _) = env.sh(name, "cat /tmp/main-fds");
    refused("an inherited fd in the main process", out.trim() == "0 1 2", &out);
    let mut shim = ShimClient::connect(&env.instance_dir(name).join("shim.sock")).unwrap();
    let req = ExecRequest { argv: vec!["probe".into(), "fds".into()], tty: Some(TtySize { rows: 24, cols: 80 }), ..Default::default() };
    let (_, out, _) = shim.exec(req).unwrap();
    let out = String::from_utf8_lossy(&out);
    refused("an inherited fd in a PTY session", out.trim() == "0 1 2", &out);

    // /proc and /sys.
    for (what, script) in [
        ("writing /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger"),
        ("writing /proc/sys/kernel/core_pattern", "echo '|/tmp/x' > /proc/sys/kernel/core_pattern"),
        ("reading /proc/kcore", "test $(wc -c < /proc/kcore) -gt 0"),
        ("opening /proc/kmsg", "probe open /proc/kmsg | grep -q ' ok$'"),
        ("a cgroup under /sys/fs/cgroup", "mkdir /sys/fs/cgroup/escape"),
        ("writing under /sys", "echo 1 > /sys/kernel/mm/ksm/run"),
        ("listing /proc/1/root", "ls /proc/1/root/"),
        ("reading /proc/1/environ", "cat /proc/1/environ"),
        ("reading the agent's binary (/proc/1/exe)", "cat /proc/1/exe > /dev/null"),
        ("opening the agent's fds (/proc/1/fd/N)", "probe open /proc/1/fd/* | grep -q ' ok$'"),
        ("reading the agent's fd links", "for f in /proc/1/fd/*; do readlink $f && exit 0; done; exit 1"),
        ("the agent's memory (/proc/1/mem)", "probe open /proc/1/mem | grep -q ' ok$'"),
    ] {
        let (code, out, err) = env.sh(name, &format!("{script} 2>/dev/null"));
        refused(what, code != 0, &format!("{out}{err}"));
    }

    // Volumes: read-only stays read-only, nothing is unmounted or moved, and a link in a host
    // directory resolves inside the sandbox.
    for (what, script) in [
        ("remounting a read-only volume writable", "mount -o remount,rw /vol"),
        ("remounting a read-only host path writable", "mount -o remount,rw,bind /hostro"),
        ("unmounting a volume", "umount /vol"),
        ("lazily unmounting a host path", "umount -l /hostro"),
        ("bind-mounting a volume elsewhere", "mkdir -p /tmp/b && mount --bind /vol /tmp/b"),
        ("writing a read-only volume", "touch /vol/x"),
        ("writing a read-only host path", "touch /hostro/x"),
        ("a new mount of the volume's filesystem", "mkdir -p /tmp/m && mount -t ext4 /dev/loop0 /tmp/m"),
    ] {
        let (code, out, err) = env.sh(name, &format!("{script} 2>&1"));
        refused(what, code != 0, &format!("{out}{err}"));
    }
    let (code, _, _) = env.sh(name, &format!("test -e /hostro/up{}", marker.display()));
    refused("reaching the host through a link in a host path", code != 0, "the host's marker file was visible");
    assert!(!share.join("x").exists());

    // CVE-2019-5736: the host binary, reached through a `#!/proc/self/exe` script, cannot be
    // reopened for writing once the script's process is gone (nor from the host while the
    // agent runs it: the sealed read-only mount, not just "text file busy").
    let mut grab = env.cmd(&["exec", name, "--", "probe", "exe-grab", "20"]).stdout(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && grab.try_wait().unwrap().is_none() {
        let _ = env.run(&["exec", name, "--", "/evil.sh"]);
    }
    let out = grab.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("exe "), "{out}");
    assert!(!out.contains("exe none"), "the host binary never showed up as a process inside: {out}");
    // ETXTBSY while the shim still runs the binary; the read-only mount holds after that too.
    refused("reopening the host binary for writing (CVE-2019-5736)", out.contains("mount ro") && !out.contains("reopen ok"), &out);
    let agent = agent_pid(&inst);
    let err = std::fs::OpenOptions::new().write(true).open(format!("/proc/{agent}/exe")).unwrap_err();
    refused("writing the agent's binary from the host's side", [libc::EROFS, libc::ETXTBSY].contains(&err.raw_os_error().unwrap_or(0)), &err.to_string());
    let exe = std::ffi::CString::new(format!("/proc/{agent}/exe")).unwrap();
    // SAFETY: a zeroed statvfs filled by statvfs on a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(exe.as_ptr(), &mut st) }, 0);
    refused("a writable mount under the agent's binary", st.f_flag & libc::ST_RDONLY != 0, &format!("{:#x}", st.f_flag));

    // CVE-2024-21626: a working directory of /proc/self/fd/N lands on no host directory.
    for n in 0..16 {
        let out = env.run(&["exec", "-w", &format!("/proc/self/fd/{n}"), name, "--", "sh", "-c", "ls -a; readlink /proc/self/cwd"]);
        let seen = String::from_utf8_lossy(&out.stdout);
        let host_dir = ["shim.sock", "config.json", "state.db", "disk.ext4", "sandboxes"].iter().any(|m| seen.contains(m));
        refused(&format!("exec -w /proc/self/fd/{n} reaching a host directory"), !host_dir, &seen);
    }

    // Namespaces and kernel surface.
    let (_, out, _) = env.sh(name, "probe syscalls");
    assert!(out.lines().count() >= 30, "every attempt reported: {out}");
    for line in out.lines() {
        refused(line.split(' ').next().unwrap_or(line), line.contains(" refused "), line);
    }
    assert!(out.contains("clone3-user refused ENOSYS"), "clone3 falls back to the checked clone(2): {out}");

    // The host's addresses: the sandbox's loopback is its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, out, _) = env.sh(name, &format!("probe connect {port}; ls /sys/class/net"));
    refused("connecting to a host loopback port", out.starts_with("connect ECONNREFUSED") && out.ends_with("lo\n"), &out);
    assert!(listener.accept().is_err(), "the host's listener saw a connection");

    // Resources: memory bomb killed inside its cgroup, disk bound, nofile.
    let (code, _, _) = env.sh(name, "probe memhog 256");
    refused("allocating 256 MiB in a 64 MiB sandbox", code == 137, &format!("exit {code}"));
    assert_eq!(env.sh(name, "echo alive").1, "alive\n", "the agent survives the memory bomb");
    let (code, _, err) = env.sh(name, "dd if=/dev/zero of=/fill bs=1M count=200");
    refused("writing 200 MiB past a 64 MiB disk", code != 0 && err.contains("No space left"), &err);
    let allocated = std::fs::metadata(env.instance_dir(name).join("disk.ext4")).unwrap().blocks() * 512;
    assert!(allocated <= 64 << 20, "the host holds at most the bound: {allocated} bytes");
    let (code, out, _) = env.sh(name, "rm /fill && echo ok > /after && cat /after");
    assert_eq!((code, out.as_str()), (0, "ok\n"), "the sandbox writes again once it has room");
    let (_, out, _) = env.sh(name, "probe openmany 10000");
    let opened: u32 = out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
    refused("opening 10 000 files under nofile 1024", opened < 1024 && out.contains("EMFILE"), &out);

    // The writable disk is mounted nowhere on the host, and its loop device goes with it.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    refused("a host mount of the writable disk", !mounts.contains(&inst), &inst);
    assert_eq!(loop_devices_backed_by(&inst).len(), 1, "one loop device under the running sandbox's disk");
    env.ok(&["delete", name]);
    let left = leftovers(&inst);
    assert!(left.is_empty(), "left on the host: {left:?}");
    eprintln!("escape suite ({}): {probes} probes, all refused", if userns { "user namespace" } else { "no user namespace" });
}

#[test]
fn a_root_process_in_a_namespace_sandbox_escapes_nowhere() {
    escape_suite(false);
}

#[test]
fn a_root_process_in_a_user_namespaced_sandbox_escapes_nowhere() {
    escape_suite(true);
}

/// runc's CVE-2021-30465 class: an image whose /proc, /dev or /sys is a symlink (here to a host
/// directory) would have the agent mount over whatever the link names, resolved from the
/// host's root before pivot_root. Such an image is refused, and the host directory untouched.
#[test]
fn a_symlinked_mount_point_in_the_image_redirects_no_mount() {
    let env = Env::new();
    let host_dir = env.dir.path().join("host-dir");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("marker"), "host").unwrap();
    for point in ["proc", "dev", "sys"] {
        let root = env.dir.path().join(format!("rootfs-{point}"));
        let st = Command::new("cp").arg("-a").arg(rootfs()).arg(&root).status().unwrap();
        assert!(st.success());
        let _ = std::fs::remove_dir_all(root.join(point));
        std::os::unix::fs::symlink(&host_dir, root.join(point)).unwrap();
        let name = format!("link-{point}");
        let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n  restartPolicy: Never\n", root.display());
        let f = env.file(&format!("{name}.yaml"), &yaml);
        let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
        let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let described = env.run(&["describe", &name]);
        let shown = format!("{shown}{}", String::from_utf8_lossy(&described.stdout));
        assert!(shown.contains(&format!("the image's /{point} is a symlink")), "{point}: {shown}");
        let names: Vec<String> = std::fs::read_dir(&host_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["marker"], "nothing was created in the host directory");
        let _ = env.run(&["delete", &name]);
    }
}

/// `spec.disk` and `run --disk`: validated where they are written, and the bound a user asked
/// for is the size the sandbox sees.
#[test]
fn the_disk_bound_is_validated_and_is_what_the_sandbox_sees() {
    let env = Env::new();
    let f = env.file("small.yaml", &sandbox_yaml("small", "  disk: 1Mi\n"));
    let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("small.yaml:") && err.contains("spec.disk") && err.contains("64Mi minimum"), "{err}");
    let out = env.run(&["run", "--rm", "--disk", "lots", &format!("dir:{}", rootfs().display()), "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--disk"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.ok(&["run", "--rm", "--disk", "200Mi", &format!("dir:{}", rootfs().display()), "--", "sh", "-c", "df -m / | tail -n1"]);
    let size_mib: u64 = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((150..=200).contains(&size_mib), "a 200Mi disk shows as {size_mib} MiB: {out}");
    let out = env.ok(&["run", "--rm", &format!("dir:{}", rootfs().display()), "--", "sh", "-c", "df -m / | tail -n1"]);
    let size_mib: u64 = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((9_000..=10_240).contains(&size_mib), "the default bound is 10Gi: {out}");
}

/// Runs the CLI and returns (exit code, stderr, wall time, peak resident memory in KiB). The
/// peak is the process's own VmHWM, sampled every millisecond while it runs (a child's
/// `ru_maxrss` would include the test process it was spawned from).
fn measured(env: &Env, args: &[&str]) -> (i32, String, Duration, u64) {
    let started = Instant::now();
    let mut child = env.cmd(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        err
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        let hwm = std::fs::read_to_string(&status_file).unwrap_or_default();
        if let Some(kib) = hwm.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()) {
            peak = peak.max(kib);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap(), started.elapsed(), peak)
}

/// The hostile documents of the security issue, through the real CLI (`diff` and `apply` read
/// YAML as `serve` does): each is refused with a located error, quickly and in little memory,
/// and a broken file changes nothing that runs.
#[test]
fn hostile_yaml_is_refused_quickly_in_bounded_memory() {
    let env = Env::new();
    let head = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: bomb }\nspec:\n  image: dir:/\n";
    let levels: String = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        .windows(2)
        .map(|w| format!("    {}: &{} [{}]\n", w[1], w[1], vec![format!("*{}", w[0]); 9].join(",")))
        .collect();
    let bomb = format!("{head}  env:\n    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n{levels}");
    let deep = format!("{head}  env: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    let huge_scalar = format!("{head}  env: {{ A: \"{}\" }}\n", "x".repeat(7 << 20));
    let many_docs = "---\n# empty\n".repeat(200_000);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bomb.yaml", bomb.into_bytes(), "alias bomb"),
        ("deep.yaml", deep.into_bytes(), "nested too deeply"),
        ("huge-scalar.yaml", huge_scalar.into_bytes(), "spec.env.A"),
        ("many-docs.yaml", many_docs.into_bytes(), ""),
        ("not-utf8.yaml", [head.as_bytes(), b"  workdir: /caf\xe9\n"].concat(), "not UTF-8"),
        ("100mb.yaml", vec![b'#'; 100 << 20], "larger than the 8 MiB"),
    ];
    // A running sandbox that a broken file must not touch.
    let keep = env.file("keep/keep.yaml", &sandbox_yaml("keeper", "  command: [sleep, '100000']\n"));
    env.ok(&["apply", "-f", keep.parent().unwrap().to_str().unwrap()]);
    let keeper_shim = env.shim_pid("keeper");
    for (file, content, expect) in cases {
        let path = env.dir.path().join("keep").join(file);
        std::fs::write(&path, &content).unwrap();
        let (code, err, took, rss_kib) = measured(&env, &["diff", "-f", path.to_str().unwrap()]);
        eprintln!("{file}: {} bytes, diff exit {code} in {took:?}, peak RSS {} MiB", content.len(), rss_kib / 1024);
        assert!(took < Duration::from_secs(10), "{file}: {took:?}");
        assert!(rss_kib < 100 * 1024, "{file}: {rss_kib} KiB resident");
        if expect.is_empty() {
            assert_eq!(code, 0, "{file}: nothing to change: {err}");
        } else {
            assert_eq!(code, 2, "{file}: invalid input: {err}");
            assert!(err.contains(file) && err.contains(expect), "{file}: {err}");
        }
        // The same file in the directory source: apply refuses, the sandbox keeps running.
        let (code, _, _, _) = measured(&env, &["apply", "-f", path.parent().unwrap().to_str().unwrap()]);
        assert_eq!(code == 0, expect.is_empty(), "{file}: apply of the directory");
        assert_eq!(env.shim_pid("keeper"), keeper_shim, "{file}: the running sandbox was not touched");
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(env.status("keeper"), "Running");
}

/// `cp` out of a sandbox is a boundary too: what the sandbox put in its files must not become
/// a privileged program or a write through a link on the host.
#[test]
fn copying_out_plants_no_setuid_program_and_follows_no_link() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("loot", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let script = "mkdir -p /x/sub && cp /bin/busybox /x/suid && chmod 6755 /x/suid && chmod 1777 /x/sub \
                  && ln -s /etc /x/etc && ln -s ../../../../../../../../etc/hostname /x/up && echo ok";
    assert_eq!(env.sh("loot", script).1, "ok\n");
    let out = env.dir.path().join("out");
    env.ok(&["cp", "loot:/x", out.to_str().unwrap()]);
    let mode = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755, "setuid and setgid bits are dropped on the host");
    assert_eq!(mode("sub"), 0o777, "and the sticky bit");
    // Links are links, pointing where the sandbox pointed them, never followed by the copy.
    assert_eq!(std::fs::read_link(out.join("etc")).unwrap(), PathBuf::from("/etc"));
    assert_eq!(std::fs::read_link(out.join("up")).unwrap(), PathBuf::from("../../../../../../../../etc/hostname"));
    let copied: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(copied.len(), 4, "{copied:?}");
}

/// The API from inside one of its own clients' sandboxes: a root process there finds neither
/// the server's Unix socket (outside its mount namespace) nor its TCP port (on the host's
/// loopback, reached neither as its own loopback nor through its gateway), even when the
/// server runs without a token. The denial is recorded with the rule that made it.
#[test]
fn an_api_clients_sandbox_reaches_neither_the_api_socket_nor_its_port() {
    let env = Env::new();
    let image = hostile_rootfs(&env);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(env.dir.path().join("serve.log")).unwrap();
    let root = image.parent().unwrap().to_str().unwrap().to_string();
    let mut serve = env
        .cmd(&["serve", "--listen", &format!("127.0.0.1:{port}"), "--insecure-no-auth", "--allow-host-paths", &root])
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let socket = env.data_dir().join("api.sock");
    env.wait_for("the API", Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&socket).is_ok());
    let body = format!(r#"{{"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {{"name": "client"}}, "spec": {{"image": "dir:{}", "isolation": "namespace"}}}}"#, image.display());
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"]).arg(&socket).args(["-X", "POST", "-d", &body, "http://o/v1/sandboxes"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "the API made the sandbox");
    let name = "client";
    let (_, out, _) = env.sh(name, &format!("probe connect {port}; probe connect {port} 10.0.2.2; test -e {} && echo socket-visible; ls / | grep -c api.sock", socket.display()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "connect ECONNREFUSED", "the sandbox's loopback is its own: {out}");
    assert!(lines[1].starts_with("connect E"), "the API's port through the gateway: {out}");
    assert_eq!(lines[2], "0", "no API socket anywhere the sandbox can see: {out}");
    let events = env.ok(&["events", name]);
    assert!(events.contains("NetworkDenied") && events.contains(&format!(":{port}")), "the denial is recorded: {events}");
    let _ = serve.kill();
    let _ = serve.wait();
    env.ok(&["delete", name]);
}
